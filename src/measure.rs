//! The measuring commands: `bench` (load test of a running server),
//! `bench-catalog` (live catalog edits beside recommendation traffic),
//! `synth` (a synthetic catalog of any size), `coldstart-eval` (cold-start
//! quality on held-out users) and `gpu-check` (the GPU path against the CPU
//! reference, and its speed). Their argument structs and handlers; `main.rs`
//! dispatches to them.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use genrec::catalog::embed::{TextEncoder, DEFAULT_ENCODER_DIR};
use genrec::dataset;
use genrec::engine::Pair;

use crate::{progress, SplitArg};

#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// Device to check: cuda:N, or cpu (the kernel's CPU port stands in: checks the harness only).
    #[arg(long, default_value = "cuda:0")]
    device: genrec::device::DeviceSpec,
    /// Checkpoint for the end-to-end parts (default: the embedded demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Catalog of --model (default: the one its genrec.json names).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Instead of --model: a Qwen3-shaped model with random weights, built on
    /// the device over a random catalog (qwen3-0.6b: 28 layers, hidden 1024;
    /// qwen3-1.7b: 28 layers, hidden 2048; qwen3-tiny: 2 layers, for trying
    /// the harness). Its end-to-end rows are not timed on the CPU.
    #[arg(long, value_enum, conflicts_with_all = ["model", "catalog"])]
    synthetic: Option<SyntheticShape>,
    /// Semantic-ID layout of the synthetic catalog: onerec (3 levels of 8,192
    /// codes) or tiger (4 levels of 256).
    #[arg(long, value_enum, default_value = "onerec")]
    layout: SyntheticLayout,
    /// Items of the synthetic catalog.
    #[arg(long, default_value_t = 1_000_000)]
    synthetic_items: usize,
    /// History length of the end-to-end requests, in items (with 3 levels, a
    /// 1,000-token context is 333 items).
    #[arg(long, default_value_t = 20)]
    history_items: usize,
    /// Requests compared with the CPU in the end-to-end check (default 64;
    /// 8 with --synthetic, whose CPU reference is slow).
    #[arg(long)]
    e2e_requests: Option<usize>,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Smaller run: tries of 10^4 and 10^6 items, 10 repetitions.
    #[arg(long)]
    quick: bool,
    /// Skip part 2 (the beam step's timing table), e.g. for a second model
    /// in the same device session.
    #[arg(long)]
    no_step_times: bool,
    /// Beam widths of the end-to-end table (part 3).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 256])]
    e2e_beams: Vec<usize>,
    /// Batch sizes of the step and end-to-end tables.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    batches: Vec<usize>,
    /// Memory bandwidth for the floor, GB/s (default: from the card's name; H100 SXM 3350, H200 4800).
    #[arg(long)]
    bandwidth_gbs: Option<f64>,
}

/// `--synthetic` shapes (see genrec::model::synthetic::Shape).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SyntheticShape {
    #[value(name = "qwen3-0.6b")]
    Qwen3Small,
    #[value(name = "qwen3-1.7b")]
    Qwen3Large,
    #[value(name = "qwen3-tiny")]
    Tiny,
}

/// `--layout` of a synthetic catalog.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SyntheticLayout {
    Onerec,
    Tiger,
}

#[derive(clap::Args)]
pub struct ColdEvalArgs {
    /// Interactions file, NAME.inter.json.
    #[arg(long)]
    data: PathBuf,
    /// Profiles, NAME.user.json ({"user": {"age": .., "gender": .., "occupation": ..}}).
    #[arg(long)]
    users: PathBuf,
    /// Model trained with the same --holdout-users (needed by `embedding`
    /// and `llm`).
    #[arg(long, required_unless_present = "catalog")]
    model: Option<PathBuf>,
    /// Catalog folder, for the popularity methods alone (default: the model's).
    #[arg(long, conflicts_with = "model")]
    catalog: Option<PathBuf>,
    /// Share of users held out of training (as given to `genrec train --holdout-users`).
    #[arg(long, default_value_t = 0.3)]
    holdout_users: f64,
    /// Which half of the held-out users: `valid` to pick settings, `test` to report.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,
    /// Methods to run, comma-separated: popularity (every interaction of the
    /// training users), first-popularity (their first --first items),
    /// first-popularity-age (the same within the user's age bracket, plus
    /// --age-blend times the overall list), embedding, llm.
    #[arg(long, default_value = "popularity,first-popularity,first-popularity-age,embedding,llm")]
    methods: String,
    /// Weight of the overall first-item list added to an age bracket's.
    #[arg(long, default_value_t = 1.0)]
    age_blend: f64,
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
    /// With the encoder loaded, the LLM scores only this many labels closest
    /// to the profile's text (0: all), as `genrec serve --intent-shortlist`.
    #[arg(long, default_value_t = genrec::coldstart::DEFAULT_SHORTLIST)]
    intent_shortlist: usize,
    /// Only the first N held-out users (e.g. for a quick latency check).
    #[arg(long)]
    max_users: Option<usize>,
    /// Softmax temperature over the LLM's label scores.
    #[arg(long, default_value_t = genrec::coldstart::ColdStartOptions::default().temperature)]
    temperature: f32,
    /// Share of the empty-profile label score subtracted (contextual calibration).
    #[arg(long, default_value_t = genrec::coldstart::ColdStartOptions::default().calibration)]
    calibration: f32,
    /// How intents steer generation (embedding, llm), as a request's `steering`.
    #[arg(long, value_enum, default_value = "soft")]
    steering: SteeringArg,
    /// Weights of soft steering, as `genrec serve --steering-weight`,
    /// comma-separated: each is scored with the same (cached) intents (0: the
    /// model's own answer for an empty history).
    #[arg(long, value_delimiter = ',', default_values_t = [genrec::engine::DEFAULT_STEERING_WEIGHT])]
    steering_weight: Vec<f32>,
    /// Items file with genres (NAME.item.json): every held-out user declares
    /// in `profile.interests` the 2 most frequent genres of their items after
    /// the first --first (a stand-in for a sign-up interest picker).
    #[arg(long)]
    interests_from: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SteeringArg {
    Soft,
    Hard,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Interactions file whose test-split histories (last 20 items) are sent, round-robin.
    #[arg(long)]
    data: PathBuf,
    /// Send only this many users' histories, evenly spaced over the file (0:
    /// every user); the same users as the in-process bench's `--users`.
    #[arg(long, default_value_t = 0)]
    users: usize,
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
    /// Send `exclude_history: false` (history items may be recommended), so
    /// that the server does the in-process engine's work and never fills
    /// with ANN the places of excluded items.
    #[arg(long)]
    keep_history: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the open loop's arrival times.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let data = dataset::load_interactions(&a.data)?;
    let histories = genrec::loadgen::histories(&data, a.users);
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
    if a.keep_history {
        extra.insert("exclude_history".into(), serde_json::json!(false));
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

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder: NAME.jsonl, NAME.safetensors, NAME.inter.json.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "synth")]
    name: String,
    #[arg(long, default_value_t = dataset::synth::SynthOptions::default().items)]
    items: usize,
    /// Embedding dimensions.
    #[arg(long, default_value_t = dataset::synth::SynthOptions::default().dim)]
    dim: usize,
    /// Mixture components (0: one per 1,000 items, 16 to 65,536).
    #[arg(long, default_value_t = 0)]
    components: usize,
    /// Zipf exponent of the component sizes.
    #[arg(long, default_value_t = dataset::synth::SynthOptions::default().zipf)]
    zipf: f64,
    /// Users in NAME.inter.json (histories for a small model).
    #[arg(long, default_value_t = dataset::synth::SynthOptions::default().users)]
    users: usize,
    /// Store the embeddings as F16 instead of F32.
    #[arg(long)]
    f16: bool,
    #[arg(long, default_value_t = dataset::synth::SynthOptions::default().seed)]
    seed: u64,
}

impl SynthArgs {
    fn options(&self) -> dataset::synth::SynthOptions {
        dataset::synth::SynthOptions {
            items: self.items,
            dim: self.dim,
            components: self.components,
            zipf: self.zipf,
            users: self.users,
            f16: self.f16,
            seed: self.seed,
            ..Default::default()
        }
    }
}

pub fn synth(a: SynthArgs) -> Result<()> {
    if a.items == 0 || a.dim == 0 {
        bail!("--items and --dim must be positive");
    }
    let r = dataset::synth::write(&a.out, &a.name, &a.options())?;
    println!(
        "wrote {n}.jsonl, {n}.safetensors, {n}.inter.json to {}: {} items in {} components (largest {}), {} users, {:.1}s",
        a.out.display(),
        r.items,
        r.components,
        r.largest_component,
        r.users,
        r.seconds,
        n = a.name
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchCatalogArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The server's admin token.
    #[arg(long, env = "GENREC_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Interactions file whose test histories the recommendation clients send.
    #[arg(long)]
    data: PathBuf,
    /// The synthetic catalog's --items, --dim and --seed (new items come from
    /// its mixture): give the values `genrec synth` was run with.
    #[arg(long)]
    synth_items: usize,
    #[arg(long, default_value_t = dataset::synth::SynthOptions::default().dim)]
    synth_dim: usize,
    #[arg(long, default_value_t = dataset::synth::SynthOptions::default().seed)]
    synth_seed: u64,
    /// Recommendation clients (closed loop); 0: upserts alone.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds of recommendation traffic alone.
    #[arg(long, default_value_t = 20.0)]
    idle_seconds: f64,
    /// Seconds of upsert batches.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Items per NDJSON batch.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Batch senders at once (each waits for its answer before the next batch).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Single-item upserts timed after the stream.
    #[arg(long, default_value_t = 300)]
    singles: usize,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn bench_catalog(a: BenchCatalogArgs) -> Result<()> {
    let data = dataset::load_interactions(&a.data)?;
    let histories = genrec::loadgen::histories(&data, 0);
    if histories.is_empty() {
        bail!("{}: no user has a test history", a.data.display());
    }
    let synth = dataset::synth::SynthOptions {
        items: a.synth_items,
        dim: a.synth_dim,
        seed: a.synth_seed,
        ..Default::default()
    };
    let o = genrec::loadgen::catalog::CatalogBenchOptions {
        url: a.url.clone(),
        token: a.token.clone(),
        histories,
        synth,
        concurrency: a.concurrency,
        idle_seconds: a.idle_seconds,
        stream_seconds: a.seconds,
        batch: a.batch.max(1),
        writers: a.writers.max(1),
        singles: a.singles,
        k: a.k,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(genrec::loadgen::catalog::run(&o)).map_err(|e| anyhow::anyhow!(e))?;
    print!("{}", report.table());
    let js = serde_json::to_string(&report)?;
    if let Some(p) = &a.json {
        std::fs::write(p, &js).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{js}");
    Ok(())
}

pub fn coldstart_eval(a: ColdEvalArgs) -> Result<()> {
    use genrec::coldstart::{ColdStart, ColdStartOptions, IntentLm, PromptTemplate};
    use genrec::train::coldstart_baselines as cb;
    use genrec::train::coldstart_eval as ce;
    let dev = candle_core::Device::Cpu;
    let snap = match (&a.model, &a.catalog) {
        (Some(m), _) => Some(Pair::load(m, None, &dev)?),
        _ => None,
    };
    let catalog = match (&snap, &a.catalog) {
        (Some(p), _) => p.catalog.clone(),
        (None, Some(c)) => std::sync::Arc::new(genrec::catalog::dir::open_read_only(c)?.0),
        (None, None) => bail!("give --model or --catalog"),
    };
    let methods: Vec<&str> = a.methods.split(',').map(str::trim).collect();
    if snap.is_none() && methods.iter().any(|m| matches!(*m, "embedding" | "llm")) {
        bail!("methods embedding and llm need --model (with --catalog, run --methods popularity,first-popularity,first-popularity-age)");
    }
    let inter = dataset::load_interactions(&a.data)?;
    let users = dataset::load_users(&a.users)?;
    let group = match a.split {
        SplitArg::Valid => dataset::ColdGroup::Valid,
        SplitArg::Test => dataset::ColdGroup::Test,
    };
    let mut cold = ce::cold_users(&catalog, &inter, &users, a.holdout_users, group, a.first);
    cold.truncate(a.max_users.unwrap_or(usize::MAX));
    if let Some(items) = &a.interests_from {
        let genres = dataset::load_item_genres(items)?;
        let none = Vec::new();
        ce::declare_interests(&mut cold, |i| genres.get(catalog.item_id(i)).unwrap_or(&none), 2);
        let declared = cold.iter().filter(|u| !u.profile.interests.is_empty()).count();
        eprintln!("coldstart-eval: {declared} of {} users declare interests", cold.len());
    }
    let steering = match a.steering {
        SteeringArg::Soft => genrec::engine::Steering::Soft,
        SteeringArg::Hard => genrec::engine::Steering::Hard,
    };
    if let Some(w) = a.steering_weight.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        bail!("--steering-weight: {w} is not a finite number >= 0");
    }
    if cold.is_empty() {
        bail!("no held-out users with a profile (check --holdout-users and --users)");
    }
    eprintln!("coldstart-eval: {} held-out users, first {} items each", cold.len(), a.first);
    let opts = ColdStartOptions {
        top: a.intent_top.max(1),
        temperature: a.temperature,
        calibration: a.calibration,
        shortlist: a.intent_shortlist,
        ..Default::default()
    };
    let mut results = Vec::new();
    let mut encoder = None; // loaded once, for the first method that needs it
    for method in methods {
        let t0 = Instant::now();
        let ms = match method {
            "popularity" | "first-popularity" => {
                let counted = if method == "popularity" { cb::Counted::All } else { cb::Counted::First(a.first) };
                let list = cb::popular(&catalog, &inter, a.holdout_users, counted, a.k);
                vec![cb::eval_lists(method, &cold, a.k, |_| &list)]
            }
            "first-popularity-age" => {
                let lists = cb::popular_by_age(&catalog, &inter, &users, a.holdout_users, a.first, a.age_blend, a.k);
                let overall = lists.len() - 1;
                vec![cb::eval_lists(method, &cold, a.k, |u| &lists[u.profile.age.map_or(overall, cb::age_bracket)])]
            }
            "embedding" | "llm" => {
                let Some(snap) = &snap else { bail!("method {method} needs --model") };
                if encoder.is_none() {
                    encoder = Some(std::sync::Arc::new(TextEncoder::load(&a.encoder)?));
                }
                let lm = if method == "llm" {
                    Some((IntentLm::load(&a.intent_model)?, PromptTemplate::load(&a.prompt)?))
                } else {
                    None
                };
                let cs = std::sync::Arc::new(ColdStart::new(&snap.catalog, lm, encoder.clone(), opts.clone())?);
                cs.warm()?;
                let runs: Vec<(String, f32)> = match steering {
                    genrec::engine::Steering::Hard => vec![(format!("{method} hard"), 0.0)],
                    genrec::engine::Steering::Soft => {
                        a.steering_weight.iter().map(|w| (format!("{method} soft w={w}"), *w)).collect()
                    }
                };
                let mut ms = Vec::new();
                for (label, w) in runs {
                    let (model, catalog) = ((*snap.model).clone(), (*snap.catalog).clone());
                    let m = ce::eval_intents(model, catalog, cs.clone(), &cold, a.k, (steering, w), |d, t| {
                        progress(&label, d, t)
                    })?;
                    ms.push(ce::ColdMetrics { method: label, ..m });
                }
                ms
            }
            other => {
                bail!("unknown method {other:?} (popularity, first-popularity, first-popularity-age, embedding, llm)")
            }
        };
        for m in ms {
            eprintln!(
                "{:<24} R@{k} {:.4}  N@{k} {:.4}  p50 {} ms  ({:.0}s)",
                m.method,
                m.recall,
                m.ndcg,
                m.p50_ms.map_or("-".into(), |x| format!("{x:.1}")),
                t0.elapsed().as_secs_f64(),
                k = a.k
            );
            results.push(m);
        }
    }
    println!("{}", serde_json::to_string(&results)?);
    Ok(())
}

pub fn gpu_check(a: GpuCheckArgs) -> Result<()> {
    let mut opts = genrec::gpu_check::CheckOptions {
        device: a.device,
        model: a.model,
        catalog: a.catalog,
        bandwidth_gbs: a.bandwidth_gbs,
        history_items: a.history_items,
        step_times: !a.no_step_times,
        e2e_beams: a.e2e_beams,
        batches: a.batches,
        ..Default::default()
    };
    if opts.e2e_beams.iter().chain(&opts.batches).any(|&n| n == 0) {
        anyhow::bail!("--e2e-beams and --batches take sizes of at least 1");
    }
    if let Some(shape) = a.synthetic {
        use genrec::model::synthetic::{Layout, Shape};
        opts.synthetic = Some(genrec::gpu_check::synthetic::Synthetic {
            shape: match shape {
                SyntheticShape::Qwen3Small => Shape::Qwen3_0_6B,
                SyntheticShape::Qwen3Large => Shape::Qwen3_1_7B,
                SyntheticShape::Tiny => Shape::Tiny,
            },
            layout: match a.layout {
                SyntheticLayout::Onerec => Layout::OneRec,
                SyntheticLayout::Tiger => Layout::Tiger,
            },
            items: a.synthetic_items,
        });
        opts.e2e_requests = 8;
    }
    if let Some(n) = a.e2e_requests {
        opts.e2e_requests = n;
    }
    if a.quick {
        opts.trie_items = vec![10_000, 1_000_000];
        opts.reps = 10;
    }
    let (report, result) = match genrec::gpu_check::run(&opts) {
        Ok(report) => (Some(report), Ok(())),
        Err(genrec::gpu_check::CheckError::Failed { failures, report }) => (
            Some(*report),
            Err(anyhow::anyhow!("gpu-check: {} part(s) failed:\n  {}", failures.len(), failures.join("\n  "))),
        ),
        Err(e) => (None, Err(e.into())),
    };
    if let (Some(out), Some(report)) = (a.out, report) {
        std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("gpu-check: wrote {}", out.display());
    }
    result
}
