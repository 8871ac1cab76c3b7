//! The `genrec` command line: build catalogs, train, evaluate, serve.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use genrec::catalog::build::{self as index_build, MappedRows, SidSource};
use genrec::catalog::collab::{collaborative_embeddings, mix, CollabOptions};
use genrec::catalog::embed::{TextEncoder, DEFAULT_ENCODER_DIR};
use genrec::catalog::rqkmeans::{Rows, SliceRows, DEFAULT_MAX_GROUP, DEFAULT_SAMPLE};
use genrec::catalog::{Catalog, CatalogError, RqOptions};
use genrec::dataset::{self, demo, Split};
use genrec::engine::pair::check_pair;
use genrec::engine::Pair;
use genrec::generate::Scoring;
use genrec::model::Model;
use genrec::train::{self, EvalOptions, TrainOptions};

mod measure;


#[derive(Parser)]
#[command(name = "genrec", version, about = "Generative recommendation: semantic IDs, a transformer that generates the next items, trie-constrained beam search, served over HTTP.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a catalog: embed item texts (or read embeddings), learn semantic IDs
    /// (RQ-KMeans) or import them, write CATALOG_DIR with its trie and ANN index.
    Index(IndexArgs),
    /// Catalog folder maintenance: `compact` folds the edit log into a new version.
    Catalog(CatalogArgs),
    /// Train the generative model on user histories (last two items per user held out).
    Train(TrainArgs),
    /// Evaluate a model with the TIGER protocol; prints Recall/NDCG@5/10 as JSON on the last line.
    Eval(EvalArgs),
    /// Serve recommendations over HTTP (the embedded demo model when --model is not given).
    Serve(genrec::server::ServeArgs),
    /// Write a small synthetic data set (demo.item.json, demo.inter.json) in the shared/data format.
    DemoData(DemoArgs),
    /// GPU check (scripts/gpu-check.sh runs it on the GPU machine): the beam-step
    /// kernel and GPU generation against the CPU reference, the kernel's time per
    /// step beside its floors, and end-to-end GPU vs CPU speed. Table on stdout.
    GpuCheck(measure::GpuCheckArgs),
    /// Load-test a running server with real histories; prints a table and JSON.
    Bench(measure::BenchArgs),
    /// Live catalog edits against a running server (NDJSON batches, single
    /// upserts) beside recommendation traffic; prints a table and JSON.
    BenchCatalog(measure::BenchCatalogArgs),
    /// Write a synthetic catalog of any size (Gaussian mixture with
    /// Zipf-sized components): items JSON Lines, embeddings, interactions.
    Synth(measure::SynthArgs),
    /// Cold-start evaluation: users held out of training get recommendations
    /// from their sign-up profile alone, scored against their first items
    /// (popularity, encoder intents, LLM intents); JSON on the last line.
    ColdstartEval(measure::ColdEvalArgs),
}

#[derive(clap::Args)]
struct IndexArgs {
    /// Items: NAME.item.json ({"item id": {"title": ..., ...}}, read in id
    /// order) or JSON Lines NAME.jsonl (one {"id": ..., "title": ..., ...} per
    /// line, streamed in file order).
    #[arg(long)]
    items: PathBuf,
    /// Output catalog folder (built under a temporary name, renamed at the end;
    /// replaces a catalog folder there).
    #[arg(long)]
    out: PathBuf,
    /// Precomputed embeddings instead of MiniLM: a safetensors file with one
    /// tensor [items, dim] in F32, F16 or BF16, rows in the items' order (the
    /// file order of a .jsonl, the id order of a .json). Read through a memory
    /// map, a block at a time.
    #[arg(long)]
    embeddings: Option<PathBuf>,
    /// Semantic IDs computed elsewhere (e.g. an RQ-VAE trained in PyTorch):
    /// JSON Lines, one {"id": ..., "sid": [c1, c2, ...]} per line, every item
    /// once, codes below --codebook-size. A collision code is added on top.
    /// The catalog then has no codebooks: live upserts give their semantic_id.
    #[arg(long)]
    sids: Option<PathBuf>,
    /// Sentence encoder folder (fetched by scripts/fetch-models.sh).
    #[arg(long, env = "GENREC_ENCODER", default_value = DEFAULT_ENCODER_DIR)]
    encoder: PathBuf,
    /// K-means levels of the semantic ID (a collision code is added on top).
    #[arg(long, default_value_t = 3)]
    levels: usize,
    /// Codes per level.
    #[arg(long, default_value_t = 256)]
    codebook_size: usize,
    /// Lloyd iterations per level.
    #[arg(long, default_value_t = 25)]
    iterations: usize,
    /// Items the codebooks are learned on (a uniform sample; all items when
    /// the catalog is smaller). Every item is then assigned its codes.
    #[arg(long, default_value_t = DEFAULT_SAMPLE)]
    sample: usize,
    /// Largest group of items that may share all k-means codes (the width of
    /// the collision code): a code under a prefix takes no more items than
    /// the levels below can hold in groups this size, the others go to their
    /// next-nearest code. 0: plain nearest codes (groups unbounded).
    #[arg(long, default_value_t = DEFAULT_MAX_GROUP)]
    max_group: usize,
    /// Random seed: the same seed gives the same semantic IDs.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Catalog name (default: the items file's name before the first dot).
    #[arg(long)]
    name: Option<String>,
    /// Texts per encoder batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Interactions file, NAME.inter.json: mixes collaborative embeddings
    /// (items bought together, from the training part of each sequence: all but
    /// its last two items) into the content embeddings before quantising.
    #[arg(long)]
    interactions: Option<PathBuf>,
    /// Share of the collaborative part in the mixed embedding (0..1; with
    /// --interactions; 0.8 was best on Beauty's validation split among 0.5, 0.8, 0.95).
    #[arg(long, default_value_t = 0.8)]
    collab_weight: f32,
    /// Dimensions of the collaborative embedding (with --interactions).
    #[arg(long, default_value_t = 64)]
    collab_dim: usize,
    /// Write the report (phases, sizes, collisions) as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CatalogArgs {
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Fold a catalog folder's edit log into a new version (written beside
    /// the current one with its ANN index, switched to by an atomic rename).
    /// The folder must not be in use by a server: a running server compacts
    /// by itself (--compact-log-mb) or on POST /admin/catalog/compact.
    Compact {
        /// Catalog folder.
        dir: PathBuf,
    },
    /// Print a catalog folder's version, sizes and pending edits as JSON.
    Info {
        /// Catalog folder.
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Interactions file, NAME.inter.json: {"user": [item id, ...]} in time order.
    #[arg(long)]
    data: PathBuf,
    /// Catalog folder written by `genrec index`.
    #[arg(long)]
    catalog: PathBuf,
    /// Output model folder (config.json, model.safetensors, genrec.json).
    #[arg(long)]
    out: PathBuf,
    /// Model name shown in answers (default: the catalog's name).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value_t = TrainOptions::default().epochs)]
    epochs: usize,
    /// Sequences per optimiser step (smaller batches give more steps for the same compute; 64 was chosen on Beauty's validation)
    #[arg(long, default_value_t = TrainOptions::default().batch_size)]
    batch_size: usize,
    /// Peak learning rate (linear warm-up, cosine decay to a tenth).
    #[arg(long, default_value_t = TrainOptions::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = TrainOptions::default().weight_decay)]
    weight_decay: f64,
    #[arg(long, default_value_t = TrainOptions::default().warmup_steps)]
    warmup_steps: usize,
    #[arg(long, default_value_t = TrainOptions::default().dropout)]
    dropout: f32,
    /// Hidden size.
    #[arg(long, default_value_t = TrainOptions::default().hidden)]
    hidden: usize,
    #[arg(long, default_value_t = TrainOptions::default().layers)]
    layers: usize,
    #[arg(long, default_value_t = TrainOptions::default().heads)]
    heads: usize,
    /// Key/value heads (grouped-query attention).
    #[arg(long, default_value_t = TrainOptions::default().kv_heads)]
    kv_heads: usize,
    /// MLP inner size.
    #[arg(long, default_value_t = TrainOptions::default().ff)]
    ff: usize,
    /// History items the model reads.
    #[arg(long, default_value_t = TrainOptions::default().max_history)]
    max_history: usize,
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    seed: u64,
    /// After training, evaluate on this many validation users (0: skip).
    #[arg(long, default_value_t = 2000)]
    valid_users: usize,
    /// Also evaluate on the validation users every this many epochs (0: only at the end).
    #[arg(long, default_value_t = 0)]
    valid_every: usize,
    /// Hold this share of users out of training entirely (picked by a hash of
    /// the user id; see `genrec coldstart-eval`).
    #[arg(long, default_value_t = 0.0)]
    holdout_users: f64,
    /// Averages of the weights to keep, comma-separated: `poly`
    /// (polynomial-decay averaging: about the last ninth of training),
    /// `ema-DECAY` (exponential, e.g. ema-0.999), or `none`. The model folder
    /// gets the first; OUT/variants/ gets the last step's weights (`last`) and
    /// the other averages, each a complete model folder for `genrec eval`.
    #[arg(long, value_delimiter = ',', default_values_t = default_averages())]
    average: Vec<String>,
    /// Weigh recent targets more: an item d items before the end of its
    /// user's training part counts 0.5^(d / ITEMS) in the loss (0: every
    /// target counts the same). The held-out items follow the training part,
    /// and the last purchases predict them better than older ones; 3 was
    /// chosen on Beauty's validation.
    #[arg(long, value_name = "ITEMS", default_value_t = TrainOptions::default().recency_half_life.unwrap_or(0.0))]
    recency_half_life: f64,
    /// Training threads (default: all cores). Each thread runs its share of a
    /// batch with single-threaded kernels (data parallel), which on small
    /// models is much faster than splitting every matrix product.
    #[arg(long)]
    threads: Option<usize>,
}

fn default_averages() -> Vec<String> {
    let d = TrainOptions::default().averages;
    if d.is_empty() {
        vec!["none".into()]
    } else {
        d.iter().map(ToString::to_string).collect()
    }
}

/// `--average` values: `none` alone, or a list of averages.
fn parse_averages(v: &[String]) -> Result<Vec<train::average::Average>> {
    if v.iter().any(|s| s == "none") {
        anyhow::ensure!(v.len() == 1, "--average none cannot be combined with other averages");
        return Ok(Vec::new());
    }
    v.iter().map(|s| s.parse().map_err(|e: String| anyhow::anyhow!("--average: {e}"))).collect()
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SplitArg {
    Valid,
    Test,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Interactions file, NAME.inter.json.
    #[arg(long)]
    data: PathBuf,
    /// Model folder. Give it more than once to evaluate an ensemble (e.g. the
    /// same settings trained with different seeds): the beams follow the mean
    /// of the models' log-probabilities; all must share one catalog.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// Catalog folder (default: the one named by the first model's genrec.json).
    #[arg(long)]
    catalog: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,
    /// Beam width (at least 10).
    #[arg(long, default_value_t = 20)]
    beam: usize,
    /// Requests per batched generation.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Evaluate an evenly spaced subset of users.
    #[arg(long)]
    max_users: Option<usize>,
    /// Keep history items in the ranking.
    #[arg(long)]
    keep_history: bool,
    /// How a code's probability is normalised: `model` (softmax over the whole
    /// vocabulary, as transformers' constrained generate) or `trie` (over the
    /// valid children only).
    #[arg(long, value_enum, default_value = "model")]
    scoring: ScoringArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScoringArg {
    Model,
    Trie,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = demo::DemoOptions::default().items)]
    items: usize,
    #[arg(long, default_value_t = demo::DemoOptions::default().users)]
    users: usize,
    #[arg(long, default_value_t = demo::DemoOptions::default().seed)]
    seed: u64,
}

// mimalloc, tuned by `genrec::runtime::tune_allocator` (see there).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    genrec::runtime::tune_allocator();
    genrec::runtime::pin_thread_count();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Index(a) => index(a),
        Command::Catalog(a) => catalog_cmd(a),
        Command::Train(a) => train_cmd(a),
        Command::Eval(a) => eval(a),
        Command::ColdstartEval(a) => measure::coldstart_eval(a),
        Command::Serve(a) => genrec::server::run(a),
        Command::Bench(a) => measure::bench(a),
        Command::BenchCatalog(a) => measure::bench_catalog(a),
        Command::Synth(a) => measure::synth(a),
        Command::GpuCheck(a) => measure::gpu_check(a),
        Command::DemoData(a) => {
            let o = demo::DemoOptions { items: a.items, users: a.users, seed: a.seed, ..Default::default() };
            demo::write(&a.out, &o)?;
            println!("wrote {}/demo.item.json and demo.inter.json ({} items, {} users)", a.out.display(), a.items, a.users);
            Ok(())
        }
    }
}

pub(crate) fn progress(label: &str, done: usize, total: usize) {
    eprint!("\r{label}: {done}/{total}");
    if done == total {
        eprintln!();
    }
    let _ = std::io::stderr().flush();
}

fn stem(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().split('.').next().unwrap_or("catalog").to_string())
        .unwrap_or_else(|| "catalog".into())
}

/// Mixes collaborative embeddings from the training part of `inter` into the
/// content embeddings `emb` (see `genrec::catalog::collab`).
fn mix_collaborative(
    ids: &[&str],
    inter: &Path,
    emb: Vec<f32>,
    dim: usize,
    embedder: &str,
    a: &IndexArgs,
) -> Result<(Vec<f32>, usize, String)> {
    if !(0.0..=1.0).contains(&a.collab_weight) {
        bail!("--collab-weight must be between 0 and 1, got {}", a.collab_weight);
    }
    let t0 = Instant::now();
    let data = dataset::load_interactions(inter)?;
    let index: HashMap<&str, u32> = ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
    let seqs: Vec<Vec<u32>> = data
        .sequences
        .iter()
        .map(|s| dataset::train_part(s).iter().filter_map(|id| index.get(id.as_str()).copied()).collect())
        .collect();
    let opts = CollabOptions { dim: a.collab_dim, seed: a.seed, ..Default::default() };
    let cf = collaborative_embeddings(ids.len(), &seqs, &opts);
    let silent = cf.chunks(opts.dim).filter(|r| r.iter().all(|&x| x == 0.0)).count();
    eprintln!(
        "index: collaborative embeddings ({} dims, weight {}) from {} sequences in {:.1}s; {silent} items co-occur with nothing",
        opts.dim,
        a.collab_weight,
        seqs.len(),
        t0.elapsed().as_secs_f64()
    );
    let mixed = mix(&emb, dim, &cf, opts.dim, a.collab_weight);
    Ok((mixed, dim + opts.dim, format!("{embedder}+collab{}x{}", opts.dim, a.collab_weight)))
}

fn index(a: IndexArgs) -> Result<()> {
    let t0 = Instant::now();
    if a.levels == 0 || a.codebook_size < 2 {
        bail!("--levels must be at least 1 and --codebook-size at least 2");
    }
    let need_texts = a.embeddings.is_none();
    let items = index_build::read_items(&a.items, need_texts, a.seed)?;
    if items.is_empty() {
        bail!("{}: no items", a.items.display());
    }
    eprintln!("index: {} items from {} in {:.1}s", items.len(), a.items.display(), t0.elapsed().as_secs_f64());
    // the embeddings: a mapped file read row by row, or computed in memory
    let mapped;
    let owned: Vec<f32>;
    let in_memory;
    let (rows, embedder): (&dyn Rows, String) = match (&a.embeddings, &a.interactions) {
        (Some(p), None) => {
            mapped = MappedRows::open(p, items.len())?;
            (&mapped, format!("file:{}", p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()))
        }
        (src, inter) => {
            let (e, d, name) = match src {
                Some(p) => {
                    let m = MappedRows::open(p, items.len())?;
                    let name = format!("file:{}", p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
                    (m.to_vec(), m.dim(), name)
                }
                None => {
                    let enc = TextEncoder::load(&a.encoder)?;
                    let texts = items.texts.as_ref().context("item texts")?;
                    let p = genrec::progress::Progress::new("embedding texts", texts.len() as u64);
                    let e = enc.embed(texts, a.batch, |d, _| p.set(d as u64))?;
                    p.finish();
                    (e, enc.dim(), enc.name().to_string())
                }
            };
            let (e, d, name) = match inter {
                Some(p) => {
                    let ids: Vec<&str> = (0..items.len()).map(|i| items.ids.get(i)).collect();
                    mix_collaborative(&ids, p, e, d, &name, &a)?
                }
                None => (e, d, name),
            };
            owned = e;
            in_memory = SliceRows { data: &owned, dim: d };
            (&in_memory, name)
        }
    };
    eprintln!("index: {} x {} embeddings ready in {:.1}s", items.len(), rows.dim(), t0.elapsed().as_secs_f64());
    let sids = match &a.sids {
        Some(p) => SidSource::Import { path: p, codebook_size: a.codebook_size },
        None => SidSource::Learn(RqOptions {
            levels: a.levels,
            codebook_size: a.codebook_size,
            iterations: a.iterations,
            seed: a.seed,
            sample: a.sample,
            max_group: a.max_group,
        }),
    };
    let name = a.name.clone().unwrap_or_else(|| stem(&a.items).to_lowercase());
    let self_recall = std::sync::Mutex::new(0.0);
    let graph = |cat: &Catalog, dir: &Path| {
        let r = genrec::recall::build_and_save(cat, dir).map_err(|e| CatalogError::Format(e.to_string()))?;
        *self_recall.lock().unwrap_or_else(|p| p.into_inner()) = r;
        Ok(())
    };
    let mut report = index_build::index(&a.out, &name, &embedder, items, rows, sids, a.seed, &graph)?;
    report.ann_self_recall = *self_recall.lock().unwrap_or_else(|p| p.into_inner());
    println!("ANN index: {:.1}% of probed items are their own nearest neighbour", 100.0 * report.ann_self_recall);
    for (l, used) in report.used_codes.iter().enumerate() {
        println!("level {l}: {used}/{} codes used; {} items moved off their nearest code by --max-group", report.codebook_sizes[l], report.moved[l]);
    }
    println!(
        "collisions: {} items in {} groups share their k-means codes; largest group {} (collision level size)",
        report.collided_items, report.collision_groups, report.max_group
    );
    let total: u64 = report.bytes.iter().map(|b| b.1).sum();
    println!(
        "wrote catalog {:?} ({} items, semantic IDs {:?}, {:.1} MB) to {} in {:.1}s",
        name,
        report.items,
        report.codebook_sizes,
        total as f64 / 1e6,
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

fn catalog_cmd(a: CatalogArgs) -> Result<()> {
    match a.command {
        CatalogCommand::Compact { dir } => {
            let t0 = Instant::now();
            let (cat, log, mut wd, report) = genrec::catalog::dir::open_writable(&dir)?;
            eprintln!("compact: version {} with {} edits replayed", report.version, report.replayed);
            let (new_log, number) = wd.rotate()?;
            drop(log);
            let prev = cat.base().source.as_ref().map(|d| d.join(genrec::recall::ANN_FILE));
            let graph = |v: &Catalog, d: &Path| {
                genrec::recall::write_version_graph(v, prev.as_deref(), d).map_err(|e| CatalogError::Format(e.to_string()))
            };
            let vdir = wd.commit_version(&cat, number, &graph)?;
            drop(new_log);
            println!(
                "compacted {} into {} ({} items served) in {:.1}s",
                dir.display(),
                vdir.display(),
                cat.served_len(),
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        CatalogCommand::Info { dir } => {
            let (cat, report) = genrec::catalog::dir::open_read_only(&dir)?;
            let m = cat.manifest();
            let parts: serde_json::Map<String, serde_json::Value> =
                cat.base().memory().into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
            let info = serde_json::json!({
                "version": report.version,
                "name": m.name,
                "rows": cat.len(),
                "served": cat.served_len(),
                "codebook_sizes": m.codebook_sizes,
                "embedding_dim": m.embedding_dim,
                "fingerprint": m.fingerprint,
                "last_edit_id": cat.last_edit_id(),
                "edits_replayed": report.replayed,
                "overlay_items": cat.overlay().len(),
                "bytes": parts,
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
    }
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    let workers = a.threads.unwrap_or_else(genrec::runtime::cores).max(1);
    if workers > 1 {
        // candle reads these when it sizes its kernels' thread use; nothing
        // has touched candle yet, and no other thread runs
        std::env::set_var("RAYON_NUM_THREADS", "1");
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let catalog = Catalog::load(&a.catalog)?;
    let mut inter = dataset::load_interactions(&a.data)?;
    if a.holdout_users > 0.0 {
        let all = inter.users.len();
        inter = inter.filter_users(|u| dataset::cold_group(u, a.holdout_users) == dataset::ColdGroup::Train);
        eprintln!("train: {} of {all} users held out (--holdout-users {})", all - inter.users.len(), a.holdout_users);
    }
    let opts = TrainOptions {
        name: a.name.clone().unwrap_or_else(|| catalog.manifest().name.clone()),
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup_steps,
        dropout: a.dropout,
        hidden: a.hidden,
        layers: a.layers,
        heads: a.heads,
        kv_heads: a.kv_heads,
        ff: a.ff,
        max_history: a.max_history,
        seed: a.seed,
        valid_every: a.valid_every,
        valid_users: a.valid_users,
        workers,
        averages: parse_averages(&a.average)?,
        recency_half_life: match a.recency_half_life {
            h if h == 0.0 => None,
            h if h.is_finite() && h > 0.0 => Some(h),
            h => anyhow::bail!("--recency-half-life must be a positive number of items or 0, got {h}"),
        },
    };
    let report = train::train(&catalog, &a.catalog, &inter, &opts, &a.out, &mut |l| eprintln!("{l}"))?;
    println!(
        "trained {} parameters for {} steps in {:.0}s, final epoch loss {:.4}; wrote {}",
        report.parameters,
        report.steps,
        report.seconds,
        report.final_loss,
        a.out.display()
    );
    if a.valid_users > 0 {
        let model = Model::load(&a.out, &candle_core::Device::Cpu)?;
        let o = EvalOptions::validation(a.valid_users);
        let m = train::evaluate(&model, &catalog, &inter, &o, |d, t| progress("validation", d, t))?;
        println!("validation: {}", serde_json::to_string(&m)?);
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let t0 = Instant::now();
    let (first, rest) = a.model.split_first().context("--model is required")?;
    let snap = Pair::load(first, a.catalog.as_deref(), &candle_core::Device::Cpu)?;
    let catalog = &snap.catalog;
    let mut others = Vec::new();
    for dir in rest {
        let m = Model::load(dir, &candle_core::Device::Cpu).with_context(|| format!("loading {}", dir.display()))?;
        check_pair(&m, catalog).with_context(|| format!("{} and the catalog", dir.display()))?;
        others.push(m);
    }
    let models: Vec<&Model> = std::iter::once(snap.model.as_ref()).chain(&others).collect();
    let inter = dataset::load_interactions(&a.data)?;
    let split = match a.split {
        SplitArg::Valid => Split::Valid,
        SplitArg::Test => Split::Test,
    };
    let scoring = match a.scoring {
        ScoringArg::Model => Scoring::Model,
        ScoringArg::Trie => Scoring::Trie,
    };
    let o = EvalOptions {
        split,
        beam: a.beam,
        batch: a.batch,
        max_users: a.max_users,
        exclude_history: !a.keep_history,
        scoring,
    };
    let m = train::evaluate_ensemble(&models, catalog, &inter, &o, |d, t| progress("eval", d, t))?;
    eprintln!("eval: {} users in {:.1}s (beam {})", m.users, t0.elapsed().as_secs_f64(), a.beam.max(10));
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}
