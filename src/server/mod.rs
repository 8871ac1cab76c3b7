//! The HTTP server (axum on tokio): routes, start-up, graceful shutdown.

pub mod admin;
pub mod api;
pub mod auth;
pub mod events;
pub mod metrics;
pub mod openapi;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument;

use crate::catalog::embed::{TextEncoder, DEFAULT_ENCODER_DIR};
use crate::coldstart::{ColdStart, ColdStartOptions, IntentLm, PromptTemplate, DEFAULT_INTENT_MODEL};
use crate::engine::edits::{open_store, EditStore};
use crate::engine::{BatchOptions, Engine, EngineOptions};
use crate::generate::kernel::contract::BeamKernel;
use crate::model::hub::{CheckpointLocation, HubOptions, WhenUnreachable};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Header that carries the request id (taken from the client when given).
pub const REQUEST_ID: &str = "x-request-id";
/// How often `--watch` looks for new checkpoints.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Flags of `genrec serve`; each can also be set with `GENREC_<NAME>`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model folder (config.json, model.safetensors or its shards, genrec.json),
    /// or a checkpoint on the Hugging Face Hub, hf:ORG/REPO[@REVISION], pulled
    /// into the Hugging Face cache at start (HF_ENDPOINT, HF_HOME, HF_TOKEN and
    /// HF_HUB_OFFLINE=1 apply; a Hub model needs --catalog). Default: the
    /// embedded demo model.
    #[arg(long, env = "GENREC_MODEL")]
    pub model: Option<CheckpointLocation>,
    /// Catalog folder (default: the one named by the model's genrec.json).
    #[arg(long, env = "GENREC_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Start with the catalog only (answers come from ANN recall) and wait for
    /// a model from POST /admin/models or --watch; needs --catalog.
    #[arg(long, env = "GENREC_NO_MODEL", requires = "catalog", conflicts_with = "model")]
    pub no_model: bool,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "GENREC_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Beam width of the search (raised to k for larger requests).
    #[arg(long, env = "GENREC_BEAM", default_value_t = 20)]
    pub beam: usize,
    /// How a code's log-probability is normalised: `model`, over the whole
    /// vocabulary (transformers' `generate` scores; computes the full output
    /// layer), or `trie`, over the trie's valid children (computes only the
    /// level's semantic-ID rows: much less work for an LLM with a large text
    /// vocabulary; rankings may differ). Ensembles always use `model`.
    #[arg(long, env = "GENREC_SCORING", value_enum, default_value = "model")]
    pub scoring: crate::generate::Scoring,
    /// Where the model runs: cpu, or cuda:N (needs the binary of
    /// scripts/build-cuda.sh; the beam step then runs as a CUDA kernel and
    /// batches go to the GPU whole). Fails clearly when no GPU is found.
    #[arg(long, env = "GENREC_DEVICE", default_value = "cpu")]
    pub device: crate::device::DeviceSpec,
    /// Weights and activations: auto (bf16 for models above 100M parameters
    /// on a GPU, f32 otherwise; decided for each model loaded), f32 (the
    /// reference), bf16 or f16. Half-precision models keep their residual
    /// stream, norms, attention softmax and output layer in f32.
    #[arg(long, env = "GENREC_DTYPE", default_value = "auto", value_parser = crate::device::parse_dtype_choice)]
    pub dtype: crate::device::DTypeChoice,
    /// The GPU beam step's selection: radix (every candidate through a
    /// global radix select; verified on an H200) or pool (a bound from each
    /// lane's best candidate, the survivors sorted on chip; the same answers
    /// in the CPU port's tests, awaiting its GPU run). Ignored on the CPU.
    #[arg(long, env = "GENREC_BEAM_KERNEL", value_enum, default_value_t = BeamKernel::Radix)]
    pub beam_kernel: BeamKernel,
    /// The recall@10 the ANN index probes enough cells for (0-1; read off
    /// the calibration curve written with the catalog version).
    #[arg(long, env = "GENREC_ANN_RECALL", default_value_t = crate::recall::ivf::DEFAULT_TARGET_RECALL, value_parser = parse_recall)]
    pub ann_recall: f64,
    /// Folder under which POST /admin/models (and --watch) may load checkpoints.
    #[arg(long, env = "GENREC_MODEL_ROOT")]
    pub model_root: Option<PathBuf>,
    /// File holding the bearer token of the /admin routes (its first line).
    /// Without a token the admin routes are off. Ten failed attempts from one
    /// address within a minute lock it out (429) for the rest of that minute.
    #[arg(long, env = "GENREC_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// The token itself (shows in `ps`: prefer --admin-token-file or the
    /// environment variable).
    #[arg(long, env = "GENREC_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Requests that may wait for generation; more get 429 at once.
    #[arg(long, env = "GENREC_MAX_QUEUE", default_value_t = 256)]
    pub max_queue: usize,
    /// Requests per batched generation.
    #[arg(long, env = "GENREC_MAX_BATCH", default_value_t = 32)]
    pub max_batch: usize,
    /// How long the first request of a batch waits for others, in ms. 0: a
    /// batch takes what queued while the previous one ran (on a CPU waiting
    /// only adds latency: 1.6 vs 3.8 ms single-request p50 on the demo model,
    /// same throughput); worth a few ms on a GPU, where a batch costs about
    /// what one request does.
    #[arg(long, env = "GENREC_MAX_WAIT_MS", default_value_t = 0)]
    pub max_wait_ms: u64,
    /// Batching workers. Default: one per core on the CPU, each on
    /// single-threaded kernels (for genrec's small CPU models that beats one
    /// worker splitting every product over the cores); 1 on a GPU.
    #[arg(long, env = "GENREC_WORKERS")]
    pub workers: Option<usize>,
    /// Default deadline of a request in ms (a request may set its own
    /// timeout_ms); past it, ANN recall answers.
    #[arg(long, env = "GENREC_TIMEOUT_MS", default_value_t = 500)]
    pub timeout_ms: u64,
    /// Load the newest checkpoint folder under --model-root whenever one appears.
    #[arg(long, env = "GENREC_WATCH", requires = "model_root")]
    pub watch: bool,
    /// Sentence encoder (fetched by scripts/fetch-models.sh): embeds the text of
    /// POST /admin/items, and matches profiles to intents when no intent model
    /// is loaded.
    #[arg(long, env = "GENREC_ENCODER", default_value = DEFAULT_ENCODER_DIR)]
    pub encoder: PathBuf,
    /// Fold the edit log into a small segment of the catalog folder when the
    /// log passes this many MiB (it writes only what the edits changed;
    /// segments merge in tiers); 0: never.
    #[arg(long, env = "GENREC_FOLD_LOG_MB", default_value_t = (crate::engine::DEFAULT_FOLD_LOG_BYTES >> 20) as f64,
        value_parser = non_negative_mb)]
    pub fold_log_mb: f64,
    /// Compact the catalog (write a whole new version) when the edits above
    /// its version, segments and log together, pass this many MiB [default:
    /// 1024]; 0: only on POST /admin/catalog/compact. (The older
    /// --compact-log-mb and GENREC_COMPACT_LOG_MB still set it.)
    #[arg(long, alias = "compact-log-mb", env = "GENREC_COMPACT_EDITS_MB")]
    pub compact_edits_mb: Option<u64>,
    /// Cold-start intent LLM: `none` (profiles are matched to the intent
    /// labels with the sentence encoder), `smollm2` (SmolLM2-135M-Instruct as
    /// scripts/fetch-models.sh puts it), a llama GGUF file, or a Hugging Face
    /// folder (config.json, model.safetensors, tokenizer.json). Off by
    /// default: on MovieLens-100K its intents added nothing measurable to a
    /// model that reads the profile itself, while costing ~0.4 s per new
    /// profile and ~150 MB (benches/results/coldstart.md).
    #[arg(long, env = "GENREC_INTENT_MODEL", default_value = "none")]
    pub intent_model: IntentModelArg,
    /// Prompt template for intent inference (checked at start).
    #[arg(long, env = "GENREC_PROMPT", default_value = "prompts/intent.prompt")]
    pub prompt: PathBuf,
    /// Intents kept per profile; the k items are spread over them by weight.
    #[arg(long, env = "GENREC_INTENT_TOP", default_value_t = ColdStartOptions::default().top)]
    pub intent_top: usize,
    /// With a sentence encoder, the intent LLM scores only the intent labels
    /// closest to the profile's text, this many (0: all of them; each label
    /// scored costs LLM time).
    #[arg(long, env = "GENREC_INTENT_SHORTLIST", value_name = "N", default_value_t = ColdStartOptions::default().shortlist)]
    pub intent_shortlist: usize,
    /// Weight of the profile's intents in soft steering (a request's
    /// `"steering": "soft"`, the default): times the log of the intents'
    /// weights, added to the model's first-level log-probabilities. 0: the
    /// model's own answer for the history; larger: closer to hard steering.
    #[arg(long, env = "GENREC_STEERING_WEIGHT", default_value_t = crate::engine::DEFAULT_STEERING_WEIGHT)]
    pub steering_weight: f32,
    /// Weight of the trending prior when a request does not set
    /// `"trending"`: times the log of each trie node's smoothed engagement
    /// rate over its parent's (from `POST /v1/events`), added at every level
    /// of the trending search. 0: off. On, a request runs a second search
    /// (see --trending-share).
    #[arg(long, env = "GENREC_TRENDING_WEIGHT", default_value_t = crate::engine::DEFAULT_TRENDING_WEIGHT)]
    pub trending_weight: f32,
    /// Share of a list that the trending search fills, after the model's own
    /// best items, when a request does not set `"trending_share"`: a second
    /// search in the same batch, steered by the prior. 1: the prior steers
    /// the request's own search instead (one search; hot items can push out
    /// every personal pick).
    #[arg(long, env = "GENREC_TRENDING_SHARE", value_name = "SHARE",
        default_value_t = crate::engine::DEFAULT_TRENDING_SHARE)]
    pub trending_share: f32,
    /// An item takes a trending slot only when it engages at least this many
    /// times the catalog's rate right now (its path's lifts add up to at
    /// least the log of this); an item without engagement of its own never
    /// does. At least 1.
    #[arg(long, env = "GENREC_TRENDING_MIN_RATIO", value_name = "RATIO",
        default_value_t = crate::engine::DEFAULT_TRENDING_MIN_RATIO)]
    pub trending_min_ratio: f32,
    /// What a node's engagement is divided by: `items`, the served items
    /// under it (engagement per item: how fast it is taken up right now), or
    /// `impressions` (a click rate, which falls for whatever is shown to
    /// everyone).
    #[arg(long, env = "GENREC_TRENDING_EXPOSURE", value_enum, default_value_t)]
    pub trending_exposure: crate::catalog::engagement::Exposure,
    /// Half-life of the engagement counts, in seconds (an event counts half
    /// as much this long after its time).
    #[arg(long, env = "GENREC_EVENTS_HALF_LIFE_S", value_name = "S", default_value_t = 600,
        value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=604_800))]
    pub events_half_life_s: u64,
    /// How an item added since the catalog was indexed is scored at the
    /// last semantic-ID level, whose code (a collision code) the model never
    /// saw there: `sibling`, the best logit of its trained siblings under the
    /// same prefix when higher than its own (it comes right after the best of
    /// them); `model`, its own logit, as transformers' `generate` scores it
    /// (a new item is then rarely generated). Items of the catalog as indexed
    /// are scored by the model either way.
    #[arg(long, env = "GENREC_NEW_ITEMS", value_enum, default_value_t = crate::engine::NewItemScoring::Sibling)]
    pub new_items: crate::engine::NewItemScoring,
    /// A search request's (`"query"`) candidates: the items nearest to the
    /// query's embedding that the model may rank (items whose titles contain
    /// every query word join them, up to as many again).
    #[arg(long, env = "GENREC_SEARCH_CANDIDATES", value_name = "N", default_value_t = crate::engine::search::DEFAULT_SEARCH_CANDIDATES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub search_candidates: usize,
    /// Weight of the model in a personalized search's ranking: an item's
    /// score is its text similarity to the query (plus 1 when its title has
    /// every query word) plus this times the model's log-probability of the
    /// item after the history. 0: text order, the model only breaks ties.
    #[arg(long, env = "GENREC_SEARCH_MODEL_WEIGHT", value_name = "W", default_value_t = crate::engine::search::DEFAULT_SEARCH_MODEL_WEIGHT)]
    pub search_model_weight: f32,
    /// Replica feed, redis://[USER:PASSWORD@]HOST:PORT/STREAM (rediss:// for
    /// TLS): this server becomes one replica of a deployment that shares one
    /// catalog and one model. Admin edits and model changes received by any
    /// replica go to the stream and every replica applies the stream in
    /// order. The catalog folder is the shared one (read by every replica;
    /// compaction writes its next version and records the stream position it
    /// covers). Needs --catalog or --model, and --feed-key-file.
    #[arg(long, env = "GENREC_FEED", conflicts_with = "watch", requires = "feed_key_file")]
    pub feed: Option<String>,
    /// The key the replicas seal their feed records with (its first line, at
    /// least 32 bytes; `openssl rand -hex 32`), the same file on every
    /// replica: a record that is not sealed with it is skipped by all of
    /// them, so access to Redis alone changes nothing any replica serves.
    #[arg(long, env = "GENREC_FEED_KEY_FILE", value_name = "FILE")]
    pub feed_key_file: Option<PathBuf>,
    /// The feed server's password (its first line), instead of one in the
    /// --feed address (which would show in `ps`); with an ACL user, put the
    /// user in the address: redis://USER@HOST:PORT/STREAM.
    #[arg(long, env = "GENREC_FEED_PASSWORD_FILE", value_name = "FILE")]
    pub feed_password_file: Option<PathBuf>,
    /// This replica's name in the feed (logs, positions, the compaction
    /// lease); unique per replica. Default: $HOSTNAME (a pod's name), else
    /// the host name, and the process id.
    #[arg(long, env = "GENREC_REPLICA_NAME")]
    pub replica_name: Option<String>,
    /// Seconds after which a replica that stopped recording its feed position
    /// (every 2 s while it runs) is taken for gone: until then compaction
    /// keeps the feed records and the catalog version it may still need.
    #[arg(long, env = "GENREC_FEED_MARK_TTL_S", default_value_t = crate::engine::replica::DEFAULT_MARK_TTL.as_secs())]
    pub feed_mark_ttl_s: u64,
}

/// Shared state of the handlers.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: PrometheusHandle,
    /// The admin routes' token; `None` turns them off.
    pub admin: Option<auth::AdminAuth>,
}

/// The application's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let admin_routes = Router::new()
        .route("/admin/models", get(admin::list_models).post(admin::load_model))
        .route("/admin/models/rollback", post(admin::rollback))
        .route("/admin/items", post(admin::add_item).layer(DefaultBodyLimit::max(admin::MAX_BATCH_BYTES)))
        .route("/admin/items/{id}", get(admin::get_item).delete(admin::remove_item))
        .route("/admin/catalog", get(admin::catalog_info))
        .route("/admin/catalog/compact", post(admin::compact))
        .route("/admin/catalog/fold", post(admin::fold))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authorise));
    Router::new()
        .route("/v1/recommend", post(api::recommend))
        .route("/v1/events", post(events::record_events).layer(DefaultBodyLimit::max(admin::MAX_BATCH_BYTES)))
        .route("/v1/intents", get(api::intents))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics_text))
        .route("/openapi.json", get(openapi::spec))
        .merge(admin_routes)
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Gives every request an id (the client's `x-request-id`, or a new one), a
/// tracing span carrying it, and the id in the answer's headers.
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:x}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed)));
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut res = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    res
}

fn parse_recall(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err(format!("a recall between 0 (exclusive) and 1, not {s:?}")),
    }
}

/// `--compact-edits-mb`, else the older variable `GENREC_COMPACT_LOG_MB`,
/// else the default.
fn compact_edits_mb(flag: Option<u64>) -> Result<u64> {
    if let Some(mb) = flag {
        return Ok(mb);
    }
    match std::env::var("GENREC_COMPACT_LOG_MB") {
        Ok(v) => {
            v.trim().parse().map_err(|_| anyhow::anyhow!("GENREC_COMPACT_LOG_MB: a whole number of MiB, not {v:?}"))
        }
        Err(_) => Ok(crate::engine::DEFAULT_COMPACT_EDIT_BYTES >> 20),
    }
}

fn non_negative_mb(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(v),
        _ => Err(format!("a size in MiB, 0 or more (fractions allowed), not {s:?}")),
    }
}

/// Builds the engine the flags describe: catalog, then model (validated and
/// warmed up by one smoke generation).
pub fn build_engine(args: &ServeArgs) -> Result<Arc<Engine>> {
    let dev = args.device.open()?;
    crate::generate::kernel::set_serving_kernel(args.beam_kernel);
    crate::recall::set_target_recall(args.ann_recall);
    let dtype = args.dtype;
    tracing::info!(device = ?args.device, ?dtype, "model device");
    let (model, catalog_dir, source) = match (&args.model, args.no_model) {
        (_, true) => (None, args.catalog.clone().context("--no-model needs --catalog")?, String::new()),
        (Some(CheckpointLocation::Folder(dir)), false) => {
            let m = crate::model::Ensemble::load_as(dir, &dev, dtype)
                .with_context(|| format!("loading the model {}", dir.display()))?;
            let cat = args
                .catalog
                .clone()
                .or_else(|| m.catalog_dir())
                .context("the model names no catalog: pass --catalog")?;
            crate::engine::pair::ensure_item_map_catalog(m.lead(), &cat)
                .with_context(|| format!("writing the item map's catalog to {}", cat.display()))?;
            // the folder's canonical path, as checkpoints loaded later are
            // named: a replica's rollback compares them
            let source = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            (Some(m), cat, source.display().to_string())
        }
        (Some(CheckpointLocation::Hub(name)), false) => {
            let opts = HubOptions::from_env()?;
            // a restart while the Hub is down still starts, from the cache
            let pulled = crate::model::hub::pull(name, &opts, WhenUnreachable::UseCache)
                .with_context(|| format!("pulling {name}"))?;
            let m = crate::model::Ensemble::load_as(&pulled.dir, &dev, dtype)
                .with_context(|| format!("loading the model {name} from {}", pulled.dir.display()))?;
            // a catalog path relative to the model means nothing in the
            // Hugging Face cache; an absolute one may be this machine's
            let named = m.catalog_dir().filter(|c| c.is_absolute() && !c.starts_with(&opts.cache));
            let cat = args.catalog.clone().or(named).with_context(|| match m.lead().vocab.text_layout() {
                Some(_) => format!(
                    "{name} comes from the Hub: pass --catalog DIR (its item map's catalog is written there on the first start)"
                ),
                None => format!("{name} comes from the Hub, whose checkpoints carry no catalog: pass --catalog"),
            })?;
            crate::engine::pair::ensure_item_map_catalog(m.lead(), &cat)
                .with_context(|| format!("writing the item map's catalog to {}", cat.display()))?;
            // the name pinned to the commit, as a later load of it is named
            (Some(m), cat, pulled.pinned().to_string())
        }
        (None, false) => {
            if args.feed.is_some() {
                anyhow::bail!("--feed needs a shared catalog folder: pass --catalog (or --model)");
            }
            let (m, c) = crate::model::demo::load_as(&dev, dtype.resolve(&dev, 0))
                .context("loading the embedded default model")?;
            return finish_engine(
                args,
                Some((m.into(), "embedded".to_string())),
                c,
                Changes::Local(EditStore::Memory),
                dev,
                dtype,
            );
        }
    };
    let t0 = std::time::Instant::now();
    let (catalog, store, report) = if args.feed.is_some() {
        // replicas share the folder: nobody holds it, edits come from the feed
        let (c, r) = crate::catalog::dir::open_read_only(&catalog_dir)
            .with_context(|| format!("opening the shared catalog {}", catalog_dir.display()))?;
        (c, EditStore::Memory, r)
    } else {
        open_store(&catalog_dir).with_context(|| format!("opening the catalog {}", catalog_dir.display()))?
    };
    tracing::info!(
        catalog = %catalog_dir.display(),
        version = report.version,
        items = catalog.served_len(),
        replayed = report.replayed,
        durable = matches!(store, EditStore::Durable(_)),
        seconds = t0.elapsed().as_secs_f64(),
        "catalog open"
    );
    let start = crate::engine::replica::covered_position(&catalog).context("the catalog version's feed position")?;
    let Some(address) = &args.feed else {
        return finish_engine(args, model.map(|m| (m, source)), catalog, Changes::Local(store), dev, dtype);
    };
    let password = match &args.feed_password_file {
        Some(p) => Some(first_line(p).with_context(|| format!("reading --feed-password-file {}", p.display()))?),
        None => None,
    };
    let key_file = args.feed_key_file.as_ref().context("--feed needs --feed-key-file")?;
    let key = crate::feed::auth::FeedKey::from_file(key_file)?;
    let feed: Arc<dyn crate::feed::Feed> = Arc::from(crate::feed::open(address, password)?);
    let address = feed.describe();
    let name = args.replica_name.clone().unwrap_or_else(default_replica_name);
    let opts = crate::engine::replica::ReplicaOptions::new(
        name.clone(),
        catalog_dir.clone(),
        Duration::from_secs(args.feed_mark_ttl_s.max(1)),
        key,
    );
    let replica = crate::engine::replica::Replica::new(feed, opts, start, Arc::new(metrics::FeedMetrics));
    let engine = finish_engine(args, model.map(|m| (m, source)), catalog, Changes::Replicated(replica), dev, dtype)?;
    // (down until the feed thread connects; set before it starts)
    ::metrics::gauge!(metrics::FEED_UP).set(0.0);
    engine.follow_feed()?;
    tracing::info!(feed = %address, replica = %name, from = %start, "following the replica feed");
    Ok(engine)
}

/// How the engine a server starts takes changes.
enum Changes {
    /// Here, into this store.
    Local(EditStore),
    /// Through the replica feed.
    Replicated(Arc<crate::engine::replica::Replica>),
}

/// The first line of a secret's file, surrounding whitespace removed.
fn first_line(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.lines().next().unwrap_or("").trim().to_string())
}

/// `$HOSTNAME` (a Kubernetes pod's name), else the host name; and the pid.
fn default_replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "genrec".into());
    format!("{host}-{}", std::process::id())
}

fn finish_engine(
    args: &ServeArgs,
    model: Option<(crate::model::Ensemble, String)>,
    catalog: crate::catalog::Catalog,
    changes: Changes,
    dev: candle_core::Device,
    dtype: crate::device::DTypeChoice,
) -> Result<Arc<Engine>> {
    if !(args.steering_weight.is_finite() && args.steering_weight >= 0.0) {
        anyhow::bail!("--steering-weight must be a finite number >= 0, not {}", args.steering_weight);
    }
    if !(0.0..=1.0).contains(&args.trending_share) {
        anyhow::bail!("--trending-share must be between 0 and 1, not {}", args.trending_share);
    }
    if !(args.trending_min_ratio.is_finite() && args.trending_min_ratio >= 1.0) {
        anyhow::bail!("--trending-min-ratio must be a number of at least 1, not {}", args.trending_min_ratio);
    }
    if !(args.trending_weight.is_finite() && (0.0..=crate::engine::MAX_TRENDING).contains(&args.trending_weight)) {
        anyhow::bail!(
            "--trending-weight must be between 0 and {}, not {}",
            crate::engine::MAX_TRENDING,
            args.trending_weight
        );
    }
    if !(args.search_model_weight.is_finite() && args.search_model_weight >= 0.0) {
        anyhow::bail!("--search-model-weight must be a finite number >= 0, not {}", args.search_model_weight);
    }
    let opts = EngineOptions {
        batch: BatchOptions {
            max_queue: args.max_queue.max(1),
            max_batch: args.max_batch.max(1),
            max_wait: Duration::from_millis(args.max_wait_ms),
            beam: args.beam.max(1),
            scoring: args.scoring,
            workers: match (args.workers, &args.device) {
                (Some(n), _) => n.max(1),
                (None, crate::device::DeviceSpec::Cpu) => crate::runtime::cores(),
                (None, _) => 1,
            },
        },
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        model_root: args.model_root.clone(),
        encoder: Some(args.encoder.clone()),
        device: dev.clone(),
        dtype,
        compact_edit_bytes: compact_edits_mb(args.compact_edits_mb)? << 20,
        fold_log_bytes: (args.fold_log_mb * (1u64 << 20) as f64) as u64,
        steering_weight: args.steering_weight,
        search_candidates: args.search_candidates,
        search_model_weight: args.search_model_weight,
        clock: crate::clock::Clock::system(),
        events_half_life_ms: args.events_half_life_s * 1000,
        trending_weight: args.trending_weight,
        trending_share: args.trending_share,
        trending_min_ratio: args.trending_min_ratio,
        trending_exposure: args.trending_exposure,
        new_items: args.new_items,
    };
    ::metrics::gauge!(metrics::CATALOG_ITEMS).set(catalog.served_len() as f64);
    let coldstart = build_coldstart(args, &catalog)?;
    let t0 = std::time::Instant::now();
    let observer = Arc::new(metrics::SchedulerMetrics);
    let engine = match changes {
        Changes::Local(store) => Engine::with_store(catalog, store, opts, observer)?,
        Changes::Replicated(replica) => Engine::replica(catalog, replica, opts, observer)?,
    };
    tracing::info!(seconds = t0.elapsed().as_secs_f64(), "ANN index open");
    engine.set_coldstart(coldstart.map(Arc::new));
    if let Some((m, source)) = model {
        let info = engine.install(m, source)?;
        metrics::model_swapped(None, &info);
    }
    Ok(engine)
}

/// Which intent LLM cold start uses (`genrec serve --intent-model`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentModelArg {
    /// No LLM: the sentence encoder matches profiles to intents.
    None,
    /// SmolLM2-135M-Instruct where scripts/fetch-models.sh puts it.
    SmolLm2,
    /// A llama GGUF file or a Hugging Face folder.
    Path(PathBuf),
}

impl IntentModelArg {
    /// The file or folder to load, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            IntentModelArg::None => None,
            IntentModelArg::SmolLm2 => Some(Path::new(DEFAULT_INTENT_MODEL)),
            IntentModelArg::Path(p) => Some(p),
        }
    }
}

impl std::fmt::Display for IntentModelArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntentModelArg::None => f.write_str("none"),
            IntentModelArg::SmolLm2 => f.write_str("smollm2"),
            IntentModelArg::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl std::str::FromStr for IntentModelArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" => Err("expected none, smollm2, or a GGUF file or model folder".into()),
            "none" => Ok(IntentModelArg::None),
            "smollm2" => Ok(IntentModelArg::SmolLm2),
            _ => Ok(IntentModelArg::Path(PathBuf::from(s))),
        }
    }
}

/// Cold-start intent inference as the flags ask: the prompt template is
/// checked first (a bad one stops the start), then the intent LLM when one is
/// named (it must load) and the sentence encoder.
fn build_coldstart(args: &ServeArgs, catalog: &crate::catalog::Catalog) -> Result<Option<ColdStart>> {
    let template = if args.prompt.exists() {
        PromptTemplate::load(&args.prompt)?
    } else if args.prompt == Path::new("prompts/intent.prompt") {
        PromptTemplate::parse("prompts/intent.prompt (built in)", crate::coldstart::prompt::DEFAULT_PROMPT)?
    } else {
        anyhow::bail!("prompt template {} not found", args.prompt.display());
    };
    let lm = match args.intent_model.path() {
        None => None,
        // a missing file is named by the loader, with how to fetch SmolLM2
        Some(p) => Some(IntentLm::load(p).with_context(|| {
            format!(
                "--intent-model {}: loading {} (the flag takes none, smollm2, a GGUF file or a model folder)",
                args.intent_model,
                p.display()
            )
        })?),
    };
    let encoder = match TextEncoder::load(&args.encoder) {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => {
            tracing::warn!(error = %e, "no sentence encoder");
            None
        }
    };
    if lm.is_none() && encoder.is_none() {
        tracing::warn!("cold start is off: profile requests answer 503");
        return Ok(None);
    }
    if let Some(lm) = &lm {
        tracing::info!(model = lm.name(), prompt = template.name(), "intent model loaded");
    }
    let opts = ColdStartOptions { top: args.intent_top.max(1), shortlist: args.intent_shortlist, ..Default::default() };
    let cs = ColdStart::new(catalog, lm.map(|l| (l, template)), encoder, opts)?;
    cs.warm()?;
    Ok(Some(cs))
}

/// Runs the server until SIGINT/SIGTERM, then drains the requests in flight.
pub fn run(args: ServeArgs) -> Result<()> {
    let state_metrics = metrics::handle();
    let engine = build_engine(&args)?;
    match engine.model() {
        Some(m) => tracing::info!(model = %m.label(), items = engine.catalog().catalog.len(), "model loaded"),
        None => tracing::info!("no model: answering from ANN recall until one is loaded"),
    }
    let _watch = if args.watch { engine.watch(WATCH_EVERY) } else { None };
    let admin = match (&args.admin_token_file, &args.admin_token) {
        (Some(file), _) => Some(auth::AdminAuth::from_file(file)?),
        (None, Some(token)) => Some(auth::AdminAuth::new(token.clone())?),
        (None, None) => None,
    };
    let state = Arc::new(AppState { engine, metrics: state_metrics, admin });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
        let local = listener.local_addr()?;
        // tests and scripts read this line to find the port
        println!("genrec listening on http://{local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // the peer address reaches the admin lock-out as ConnectInfo
        let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
        tracing::info!("server stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::IntentModelArg;

    #[test]
    fn intent_model_names_parse() {
        assert_eq!("none".parse(), Ok(IntentModelArg::None));
        assert_eq!("smollm2".parse(), Ok(IntentModelArg::SmolLm2));
        assert_eq!("SmolLM2".parse(), Ok(IntentModelArg::SmolLm2));
        assert_eq!("None".parse(), Ok(IntentModelArg::None));
        assert_eq!("m/x.gguf".parse(), Ok(IntentModelArg::Path("m/x.gguf".into())));
        assert!("".parse::<IntentModelArg>().is_err());
        assert_eq!(IntentModelArg::None.path(), None);
        assert_eq!(IntentModelArg::SmolLm2.to_string(), "smollm2", "error messages name the flag's value");
    }
}
