//! The `genrec` command line: build catalogs, train, evaluate, serve.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use genrec::catalog::Catalog;
use genrec::dataset::{self, demo, Split};
use genrec::engine::pair::check_pair;
use genrec::generate::Scoring;
use genrec::model::{Ensemble, Model};
use genrec::train::{self, EvalOptions, TrainOptions};

mod catalog_cmd;
mod measure;

use catalog_cmd::{CatalogArgs, IndexArgs};

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
    /// Sharded build, stage 1: learn the semantic-ID codebooks on a sample of
    /// the embeddings and write them (safetensors). Then `genrec assign` for
    /// every shard, then `genrec index --codebooks --assigned` merges.
    Codebooks(catalog_cmd::CodebooksArgs),
    /// Sharded build, stage 2: one shard's share of the items (--shard I/N)
    /// gets its nearest codes at every level; run all N at once, on one
    /// machine or many that share the output folder.
    Assign(catalog_cmd::AssignArgs),
    /// Catalog folder maintenance: `compact` folds the edit log into a new version.
    Catalog(CatalogArgs),
    /// Train the generative model on user histories (last two items per user held out).
    Train(TrainArgs),
    /// Evaluate a model with the TIGER protocol; prints Recall/NDCG@5/10 as JSON on the last line.
    Eval(EvalArgs),
    /// Serve recommendations over HTTP (the embedded demo model when --model is not given).
    Serve(genrec::server::ServeArgs),
    /// Pull a checkpoint from the Hugging Face Hub into the Hugging Face cache
    /// and print its folder; `serve --model hf:...` then starts from the cache,
    /// and with HF_HUB_OFFLINE=1 never touches the network (say, a container
    /// image built with the model inside). Honours HF_ENDPOINT, HF_HOME and
    /// HF_TOKEN.
    Pull(PullArgs),
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
struct PullArgs {
    /// hf:ORG/REPO, or hf:ORG/REPO@REVISION (a branch, tag or commit; default main).
    name: genrec::model::hub::HubName,
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
    /// History items the model reads (up to 1,000: long histories are
    /// prefilled in chunks when served).
    #[arg(long, default_value_t = TrainOptions::default().max_history,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=genrec::train::MAX_HISTORY_ITEMS as u64))]
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
    /// Also train each user's first N items as targets of an empty history
    /// (weight 1), so that a new user's answer (no history) follows the
    /// catalog's first items; 0: off.
    #[arg(long, value_name = "N", default_value_t = TrainOptions::default().first_items)]
    first_items: usize,
    /// Users' sign-up profiles (NAME.user.json: user id -> age, gender,
    /// occupation, ...). The model learns to read them as profile tokens
    /// before the history, so a new user's answer follows their profile.
    #[arg(long, value_name = "USERS_JSON")]
    users: Option<PathBuf>,
    /// With --users: items file with genres (NAME.item.json). Each training
    /// user declares as interests the 2 most frequent genres of their items
    /// after their first --first-items (10 when 0): the stand-in for a
    /// sign-up interest picker that `genrec coldstart-eval --interests-from`
    /// evaluates.
    #[arg(long, value_name = "ITEMS_JSON", requires = "users")]
    interests_from: Option<PathBuf>,
    /// Training threads (default: all cores). Each thread runs its share of a
    /// batch with single-threaded kernels (data parallel), which on small
    /// models is much faster than splitting every matrix product.
    #[arg(long)]
    threads: Option<usize>,
    /// Models to train and serve together (an ensemble searched by the mean
    /// of their log-probabilities): the same settings with seeds SEED,
    /// SEED+1, ...; the first is written to OUT, the others to
    /// OUT/members/1, ..., and OUT's genrec.json lists them, so OUT serves
    /// and hot-swaps as one model. Training takes N times as long. 2 is the
    /// benchmark recipe (benches/results/quality.md: at or above TIGER on
    /// all four figures of Amazon Beauty and Sports, 8-15% over one model).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=genrec::model::ensemble::MAX_MEMBERS as u64))]
    members: usize,
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
    /// History items each user's request carries (default and most: the
    /// model's `max_history_items`).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=genrec::train::MAX_HISTORY_ITEMS as u64))]
    max_history: Option<usize>,
    /// How a code's probability is normalised: `model` (softmax over the whole
    /// vocabulary, as transformers' constrained generate) or `trie` (over the
    /// valid children only).
    #[arg(long, value_enum, default_value = "model")]
    scoring: Scoring,
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
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Index(a) => catalog_cmd::index(a),
        Command::Codebooks(a) => catalog_cmd::codebooks(a),
        Command::Assign(a) => catalog_cmd::assign(a),
        Command::Catalog(a) => catalog_cmd::catalog_cmd(a),
        Command::Train(a) => train_cmd(a),
        Command::Eval(a) => eval(a),
        Command::ColdstartEval(a) => measure::coldstart_eval(a),
        Command::Serve(a) => genrec::server::run(a),
        Command::Pull(a) => {
            let opts = genrec::model::hub::HubOptions::from_env()?;
            let pulled = genrec::model::hub::pull(&a.name, &opts, genrec::model::hub::WhenUnreachable::Fail)
                .with_context(|| format!("pulling {}", a.name))?;
            eprintln!("{} is {} ({} files downloaded, the rest cached)", a.name, pulled.pinned(), pulled.downloaded);
            println!("{}", pulled.dir.display());
            Ok(())
        }
        Command::Bench(a) => measure::bench(a),
        Command::BenchCatalog(a) => measure::bench_catalog(a),
        Command::Synth(a) => measure::synth(a),
        Command::GpuCheck(a) => measure::gpu_check(a),
        Command::DemoData(a) => {
            let o = demo::DemoOptions { items: a.items, users: a.users, seed: a.seed, ..Default::default() };
            demo::write(&a.out, &o)?;
            println!(
                "wrote {}/demo.item.json and demo.inter.json ({} items, {} users)",
                a.out.display(),
                a.items,
                a.users
            );
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
            0.0 => None,
            h if h.is_finite() && h > 0.0 => Some(h),
            h => anyhow::bail!("--recency-half-life must be a positive number of items or 0, got {h}"),
        },
        first_items: a.first_items,
        profiles: match &a.users {
            None => Default::default(),
            Some(path) => {
                let users = dataset::load_users(path)?;
                let genres = a.interests_from.as_deref().map(dataset::load_item_genres).transpose()?;
                let skip = if a.first_items > 0 { a.first_items } else { 10 };
                let f = train::profile_prefix::user_features(&inter, &users, genres.as_ref(), skip, 2);
                if f.is_empty() {
                    anyhow::bail!("--users {}: no training user has a profile there", path.display());
                }
                f
            }
        },
    };
    let mut member_dirs = Vec::new();
    for k in 0..a.members {
        let rel = format!("{}/{k}", genrec::model::ensemble::MEMBERS_DIR);
        let out = if k == 0 { a.out.clone() } else { a.out.join(&rel) };
        let opts = TrainOptions { seed: a.seed + k as u64, ..opts.clone() };
        if a.members > 1 {
            eprintln!("train: member {} of {} (seed {}) -> {}", k + 1, a.members, opts.seed, out.display());
        }
        let report = train::train(&catalog, &a.catalog, &inter, &opts, &out, &mut |l| eprintln!("{l}"))?;
        println!(
            "trained {} parameters for {} steps in {:.0}s, final epoch loss {:.4}; wrote {}",
            report.parameters,
            report.steps,
            report.seconds,
            report.final_loss,
            out.display()
        );
        if k > 0 {
            member_dirs.push(rel);
        }
    }
    // the lead's sidecar lists the others last: until then OUT is a
    // complete single model
    genrec::model::ensemble::list_members(&a.out, &member_dirs)?;
    if a.valid_users > 0 {
        let model = Ensemble::load_as(&a.out, &candle_core::Device::Cpu, candle_core::DType::F32)?;
        let o = EvalOptions::validation(a.valid_users);
        let m = train::evaluate_ensemble(&model.members(), &catalog, &inter, &o, |d, t| progress("validation", d, t))?;
        println!("validation: {}", serde_json::to_string(&m)?);
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let t0 = Instant::now();
    // every folder's members (an ensemble folder gives all of its own)
    let mut loaded = Vec::new();
    for dir in &a.model {
        let e = Ensemble::load_as(dir, &candle_core::Device::Cpu, candle_core::DType::F32)
            .with_context(|| format!("loading {}", dir.display()))?;
        loaded.push((dir, e));
    }
    let catalog_dir = match (&a.catalog, loaded.first()) {
        (Some(c), _) => c.clone(),
        (None, Some((_, e))) => e.catalog_dir().context("the model names no catalog: pass --catalog")?,
        (None, None) => anyhow::bail!("--model is required"),
    };
    let catalog = &Catalog::load(&catalog_dir)?;
    for (dir, e) in &loaded {
        for m in e.members() {
            check_pair(m, catalog).with_context(|| format!("{} and the catalog", dir.display()))?;
        }
    }
    let models: Vec<&Model> = loaded.iter().flat_map(|(_, e)| e.members()).collect();
    if models.len() > 1 {
        eprintln!("eval: {} models searched together", models.len());
    }
    let inter = dataset::load_interactions(&a.data)?;
    let split = match a.split {
        SplitArg::Valid => Split::Valid,
        SplitArg::Test => Split::Test,
    };
    let scoring = a.scoring;
    let o = EvalOptions {
        split,
        beam: a.beam,
        batch: a.batch,
        max_users: a.max_users,
        exclude_history: !a.keep_history,
        scoring,
        max_history: a.max_history,
    };
    let m = train::evaluate_ensemble(&models, catalog, &inter, &o, |d, t| progress("eval", d, t))?;
    eprintln!("eval: {} users in {:.1}s (beam {})", m.users, t0.elapsed().as_secs_f64(), a.beam.max(10));
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}
