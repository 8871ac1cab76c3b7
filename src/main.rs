//! The `genrec` command line: build catalogs, train, evaluate, serve.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use genrec::catalog::build::{build_catalog, load_embeddings};
use genrec::catalog::collab::{collaborative_embeddings, mix, CollabOptions};
use genrec::catalog::embed::{TextEncoder, DEFAULT_ENCODER_DIR};
use genrec::catalog::{Catalog, RqOptions};
use genrec::dataset::{self, demo, Split};
use genrec::engine::Snapshot;
use genrec::generate::Scoring;
use genrec::model::Model;
use genrec::train::{self, EvalOptions, TrainOptions};


#[derive(Parser)]
#[command(name = "genrec", version, about = "Generative recommendation: semantic IDs, a transformer that generates the next items, trie-constrained beam search, served over HTTP.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a catalog: embed item texts, learn semantic IDs (RQ-KMeans), write CATALOG_DIR.
    Index(IndexArgs),
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
    GpuCheck(GpuCheckArgs),
    /// Load-test a running server with real histories; prints a table and JSON.
    Bench(BenchArgs),
    /// Cold-start evaluation: users held out of training get recommendations
    /// from their sign-up profile alone, scored against their first items
    /// (popularity, encoder intents, LLM intents); JSON on the last line.
    ColdstartEval(ColdEvalArgs),
}

#[derive(clap::Args)]
struct GpuCheckArgs {
    /// Device to check: cuda:N, or cpu (the kernel's CPU port stands in: checks the harness only).
    #[arg(long, default_value = "cuda:0")]
    device: genrec::device::DeviceSpec,
    /// Checkpoint for the end-to-end parts (default: the embedded demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Catalog of --model (default: the one its genrec.json names).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Smaller run: tries of 10^4 and 10^6 items, 10 repetitions.
    #[arg(long)]
    quick: bool,
    /// Memory bandwidth for the floor, GB/s (default: from the card's name; H100 SXM 3350, H200 4800).
    #[arg(long)]
    bandwidth_gbs: Option<f64>,
}

#[derive(clap::Args)]
struct ColdEvalArgs {
    /// Interactions file, NAME.inter.json.
    #[arg(long)]
    data: PathBuf,
    /// Profiles, NAME.user.json ({"user": {"age": .., "gender": .., "occupation": ..}}).
    #[arg(long)]
    users: PathBuf,
    /// Model trained with the same --holdout-users.
    #[arg(long)]
    model: PathBuf,
    /// Share of users held out of training (as given to `genrec train --holdout-users`).
    #[arg(long, default_value_t = 0.3)]
    holdout_users: f64,
    /// Which half of the held-out users: `valid` to pick settings, `test` to report.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,
    /// Methods to run, comma-separated: popularity, embedding, llm.
    #[arg(long, default_value = "popularity,embedding,llm")]
    methods: String,
    /// Items of each user's history that count as relevant (from the start).
    #[arg(long, default_value_t = 10)]
    first: usize,
    /// List length.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Intent LLM (GGUF file or Hugging Face folder).
    #[arg(long, default_value = genrec::coldstart::DEFAULT_INTENT_MODEL)]
    intent_model: PathBuf,
    #[arg(long, default_value = "prompts/intent.prompt")]
    prompt: PathBuf,
    #[arg(long, default_value = DEFAULT_ENCODER_DIR)]
    encoder: PathBuf,
    /// Intents per profile.
    #[arg(long, default_value_t = genrec::coldstart::ColdStartOptions::default().top)]
    intent_top: usize,
    /// Only the first N held-out users (e.g. for a quick latency check).
    #[arg(long)]
    max_users: Option<usize>,
    /// Softmax temperature over the LLM's label scores.
    #[arg(long, default_value_t = genrec::coldstart::ColdStartOptions::default().temperature)]
    temperature: f32,
    /// Share of the empty-profile label score subtracted (contextual calibration).
    #[arg(long, default_value_t = genrec::coldstart::ColdStartOptions::default().calibration)]
    calibration: f32,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Interactions file whose test-split histories (last 20 items) are sent, round-robin.
    #[arg(long)]
    data: PathBuf,
    /// Closed loop: clients that each wait for their answer (ignored with --rate).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Open loop: Poisson arrivals at this many requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 2000, conflicts_with = "seconds")]
    requests: usize,
    /// Stop after this many seconds instead.
    #[arg(long)]
    seconds: Option<f64>,
    /// Items per request.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Request strategy: auto, generative or ann.
    #[arg(long)]
    strategy: Option<String>,
    /// Per-request timeout_ms (default: the server's).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the open loop's arrival times.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(clap::Args)]
struct IndexArgs {
    /// Items file, NAME.item.json: {"item id": {"title": ..., ...}}.
    #[arg(long)]
    items: PathBuf,
    /// Output catalog folder.
    #[arg(long)]
    out: PathBuf,
    /// Precomputed embeddings (safetensors, one F32 tensor [items, dim] in item-id order) instead of MiniLM.
    #[arg(long)]
    embeddings: Option<PathBuf>,
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
    /// Training threads (default: all cores). Each thread runs its share of a
    /// batch with single-threaded kernels (data parallel), which on small
    /// models is much faster than splitting every matrix product.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Valid,
    Test,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Interactions file, NAME.inter.json.
    #[arg(long)]
    data: PathBuf,
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Catalog folder (default: the one named by the model's genrec.json).
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
        Command::Train(a) => train_cmd(a),
        Command::Eval(a) => eval(a),
        Command::ColdstartEval(a) => coldstart_eval(a),
        Command::Serve(a) => genrec::server::run(a),
        Command::Bench(a) => bench(a),
        Command::GpuCheck(a) => gpu_check(a),
        Command::DemoData(a) => {
            let o = demo::DemoOptions { items: a.items, users: a.users, seed: a.seed, ..Default::default() };
            demo::write(&a.out, &o)?;
            println!("wrote {}/demo.item.json and demo.inter.json ({} items, {} users)", a.out.display(), a.items, a.users);
            Ok(())
        }
    }
}

fn progress(label: &str, done: usize, total: usize) {
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
    items: &[dataset::ItemRecord],
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
    let index: HashMap<&str, u32> = items.iter().enumerate().map(|(i, it)| (it.id.as_str(), i as u32)).collect();
    let seqs: Vec<Vec<u32>> = data
        .sequences
        .iter()
        .map(|s| dataset::train_part(s).iter().filter_map(|id| index.get(id.as_str()).copied()).collect())
        .collect();
    let opts = CollabOptions { dim: a.collab_dim, seed: a.seed, ..Default::default() };
    let cf = collaborative_embeddings(items.len(), &seqs, &opts);
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

fn bench(a: BenchArgs) -> Result<()> {
    let data = dataset::load_interactions(&a.data)?;
    let histories = genrec::loadgen::histories(&data);
    if histories.is_empty() {
        bail!("{}: no user has a test history", a.data.display());
    }
    let mut extra = serde_json::Map::new();
    if let Some(s) = &a.strategy {
        extra.insert("strategy".into(), serde_json::json!(s));
    }
    if let Some(t) = a.timeout_ms {
        extra.insert("timeout_ms".into(), serde_json::json!(t));
    }
    let opts = genrec::loadgen::BenchOptions {
        url: a.url.clone(),
        load: match a.rate {
            Some(rate) => genrec::loadgen::Load::Open { rate },
            None => genrec::loadgen::Load::Closed { concurrency: a.concurrency },
        },
        stop: match a.seconds {
            Some(s) => genrec::loadgen::Stop::Seconds(s),
            None => genrec::loadgen::Stop::Requests(a.requests),
        },
        k: a.k,
        extra,
        seed: a.seed,
    };
    eprintln!("bench: {} histories from {}, {}", histories.len(), a.data.display(), a.url);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(genrec::loadgen::run(&opts, &histories));
    print!("{}", report.table());
    let js = serde_json::to_string(&report)?;
    if let Some(p) = &a.json {
        std::fs::write(p, &js).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{js}");
    if report.ok == 0 {
        bail!("no request succeeded: is the server running at {}?", a.url);
    }
    Ok(())
}

fn index(a: IndexArgs) -> Result<()> {
    let t0 = Instant::now();
    let items = dataset::load_items(&a.items)?;
    if items.is_empty() {
        bail!("{}: no items", a.items.display());
    }
    eprintln!("index: {} items from {}", items.len(), a.items.display());
    let (emb, dim, embedder) = match &a.embeddings {
        Some(p) => {
            let (e, d) = load_embeddings(p, items.len())?;
            (e, d, format!("file:{}", p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()))
        }
        None => {
            let enc = TextEncoder::load(&a.encoder)?;
            let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
            let e = enc.embed(&texts, a.batch, |d, t| progress("embedding", d, t))?;
            (e, enc.dim(), enc.name().to_string())
        }
    };
    let (emb, dim, embedder) = match &a.interactions {
        Some(p) => mix_collaborative(&items, p, emb, dim, &embedder, &a)?,
        None => (emb, dim, embedder),
    };
    eprintln!("index: {} x {} embeddings in {:.1}s; learning semantic IDs", items.len(), dim, t0.elapsed().as_secs_f64());
    let opts = RqOptions { levels: a.levels, codebook_size: a.codebook_size, iterations: a.iterations, seed: a.seed };
    let name = a.name.clone().unwrap_or_else(|| stem(&a.items).to_lowercase());
    let (cat, q) = build_catalog(&name, &items, emb, dim, &embedder, &opts)?;
    cat.save(&a.out)?;
    for (l, used) in q.used_codes.iter().enumerate() {
        println!("level {l}: {used}/{} codes used", q.codebook_sizes[l]);
    }
    println!(
        "collisions: {} items in {} groups share their first {} codes; collision level size {}",
        q.collided_items,
        q.collision_groups,
        a.levels,
        q.codebook_sizes.last().copied().unwrap_or(0)
    );
    println!(
        "wrote catalog {:?} ({} items, semantic IDs {:?}) to {} in {:.1}s",
        name,
        cat.len(),
        q.codebook_sizes,
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
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
        name: a.name.clone().unwrap_or_else(|| catalog.manifest.name.clone()),
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
    let snap = Snapshot::load(&a.model, a.catalog.as_deref(), &candle_core::Device::Cpu)?;
    let (model, catalog) = (&snap.model, &snap.catalog);
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
    let m = train::evaluate(model, catalog, &inter, &o, |d, t| progress("eval", d, t))?;
    eprintln!("eval: {} users in {:.1}s (beam {})", m.users, t0.elapsed().as_secs_f64(), a.beam.max(10));
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

fn coldstart_eval(a: ColdEvalArgs) -> Result<()> {
    use genrec::coldstart::{ColdStart, ColdStartOptions, IntentLm, PromptTemplate};
    use genrec::train::coldstart_eval as ce;
    let dev = candle_core::Device::Cpu;
    let snap = Snapshot::load(&a.model, None, &dev)?;
    let inter = dataset::load_interactions(&a.data)?;
    let users = dataset::load_users(&a.users)?;
    let group = match a.split {
        SplitArg::Valid => dataset::ColdGroup::Valid,
        SplitArg::Test => dataset::ColdGroup::Test,
    };
    let mut cold = ce::cold_users(&snap.catalog, &inter, &users, a.holdout_users, group, a.first);
    cold.truncate(a.max_users.unwrap_or(usize::MAX));
    if cold.is_empty() {
        bail!("no held-out users with a profile (check --holdout-users and --users)");
    }
    eprintln!("coldstart-eval: {} held-out users, first {} items each", cold.len(), a.first);
    let opts = ColdStartOptions { top: a.intent_top.max(1), temperature: a.temperature, calibration: a.calibration, ..Default::default() };
    let mut results = Vec::new();
    let mut encoder = None; // loaded once, for the first method that needs it
    for method in a.methods.split(',').map(str::trim) {
        let t0 = Instant::now();
        let m = match method {
            "popularity" => ce::eval_popular(&cold, &ce::popular(&snap.catalog, &inter, a.holdout_users, a.k), a.k),
            "embedding" | "llm" => {
                if encoder.is_none() {
                    encoder = Some(std::sync::Arc::new(TextEncoder::load(&a.encoder)?));
                }
                let lm = if method == "llm" {
                    Some((IntentLm::load(&a.intent_model)?, PromptTemplate::load(&a.prompt)?))
                } else {
                    None
                };
                let cs = ColdStart::new(&snap.catalog, lm, encoder.clone(), opts.clone())?;
                cs.warm()?;
                ce::eval_intents((*snap.model).clone(), (*snap.catalog).clone(), cs, &cold, a.k, |d, t| progress(method, d, t))?
            }
            other => bail!("unknown method {other:?} (popularity, embedding, llm)"),
        };
        eprintln!(
            "{:<11} R@{k} {:.4}  N@{k} {:.4}  p50 {} ms  ({:.0}s)",
            m.method,
            m.recall,
            m.ndcg,
            m.p50_ms.map_or("-".into(), |x| format!("{x:.1}")),
            t0.elapsed().as_secs_f64(),
            k = a.k
        );
        results.push(m);
    }
    println!("{}", serde_json::to_string(&results)?);
    Ok(())
}

fn gpu_check(a: GpuCheckArgs) -> Result<()> {
    let mut opts = genrec::gpu_check::CheckOptions {
        device: a.device,
        model: a.model,
        catalog: a.catalog,
        bandwidth_gbs: a.bandwidth_gbs,
        ..Default::default()
    };
    if a.quick {
        opts.trie_items = vec![10_000, 1_000_000];
        opts.reps = 10;
    }
    let (report, result) = match genrec::gpu_check::run(&opts) {
        Ok(report) => (Some(report), Ok(())),
        Err(genrec::gpu_check::CheckError::Failed { failures, report }) => {
            (Some(*report), Err(anyhow::anyhow!("gpu-check: {} part(s) failed:\n  {}", failures.len(), failures.join("\n  "))))
        }
        Err(e) => (None, Err(e.into())),
    };
    if let (Some(out), Some(report)) = (a.out, report) {
        std::fs::write(&out, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("gpu-check: wrote {}", out.display());
    }
    result
}
