//! Training (`genrec train`) and evaluation (`genrec eval`, `genrec coldstart-eval`).

pub mod average;
mod batches;
pub mod coldstart_baselines;
pub mod coldstart_eval;
pub mod eval;
pub mod metrics;
pub mod profile_prefix;
pub mod profiles;
pub mod sequences;
pub mod trainer;

pub use eval::{evaluate, evaluate_ensemble, EvalOptions};
pub use metrics::TopKMetrics;
pub use trainer::{train, TrainOptions, TrainReport};

/// Most history items `genrec train` and `genrec eval` take (`--max-history`):
/// a 1,000-item history of 4 codes is 4,001 positions, prefilled in chunks
/// when served.
pub const MAX_HISTORY_ITEMS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Data(#[from] crate::dataset::DataError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Generate(#[from] crate::generate::GenerateError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The serving engine that a cold-start evaluation runs requests through.
    #[error("engine: {0}")]
    Engine(#[from] Box<crate::engine::EngineError>),
}

impl From<crate::engine::EngineError> for TrainError {
    fn from(e: crate::engine::EngineError) -> Self {
        TrainError::Engine(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::demo::{generate as demo, DemoOptions};
    use crate::dataset::{Interactions, Split};
    use crate::generate::testutil::random_catalog;
    use crate::model::Model;
    use crate::train::average::Average;

    fn demo_interactions(items: usize) -> Interactions {
        let (_, inter) = demo(&DemoOptions { items, users: 120, mean_length: 10, seed: 1 });
        let mut out = Interactions::default();
        for (u, s) in inter.as_object().unwrap() {
            out.users.push(u.clone());
            out.sequences.push(s.as_array().unwrap().iter().map(|x| x.to_string()).collect());
        }
        out
    }

    /// A one-layer model small enough to train in a test, without averages.
    fn tiny(epochs: usize, batch_size: usize, warmup_steps: usize) -> TrainOptions {
        TrainOptions {
            epochs,
            batch_size,
            hidden: 32,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            ff: 64,
            warmup_steps,
            averages: Vec::new(),
            ..Default::default()
        }
    }

    #[test]
    fn training_lowers_loss_is_deterministic_and_checkpoint_loads() {
        let cat = random_catalog(48, &[4, 4, 3], 1);
        let inter = demo_interactions(48);
        let opts = TrainOptions { lr: 5e-3, ..tiny(2, 32, 2) };
        let base = std::env::temp_dir().join(format!("genrec-train-{}", std::process::id()));
        let mut losses = Vec::new();
        let mut log = |l: &str| {
            if let Some(i) = l.find("loss ") {
                losses.push(l[i + 5..].split(' ').next().unwrap().parse::<f64>().unwrap());
            }
        };
        let a = train(&cat, &base, &inter, &opts, &base.join("a"), &mut log).unwrap();
        assert!(losses.len() >= 2 && losses.last() < losses.first(), "{losses:?}");
        assert!(a.final_loss < (48f64).ln() * 1.2);
        train(&cat, &base, &inter, &opts, &base.join("b"), &mut |_| {}).unwrap();
        let wa = std::fs::read(base.join("a/model.safetensors")).unwrap();
        let wb = std::fs::read(base.join("b/model.safetensors")).unwrap();
        assert_eq!(wa, wb, "same seed, same weights");

        let model = Model::load(&base.join("a"), &candle_core::Device::Cpu).unwrap();
        assert_eq!(model.catalog_dir().unwrap().canonicalize().unwrap(), base.canonicalize().unwrap());
        let m = evaluate(
            &model,
            &cat,
            &inter,
            &EvalOptions {
                split: Split::Test,
                beam: 10,
                batch: 16,
                max_users: Some(50),
                exclude_history: true,
                scoring: Default::default(),
                max_history: None,
            },
            |_, _| {},
        )
        .unwrap();
        assert_eq!(m.users, 50);
        assert!(m.recall10 >= m.recall5 && m.ndcg10 >= m.ndcg5);
        // shorter histories than the model reads are allowed, longer refused
        let o = |n| EvalOptions { max_history: Some(n), ..EvalOptions::validation(20) };
        let short = evaluate(&model, &cat, &inter, &o(1), |_, _| {}).unwrap();
        assert_eq!(short.users, 20);
        let most = model.sidecar.max_history_items;
        assert!(matches!(evaluate(&model, &cat, &inter, &o(most + 1), |_, _| {}), Err(TrainError::Invalid(_))));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn data_parallel_workers_compute_the_same_step() {
        // without dropout, splitting each batch over workers and summing the
        // weighted gradients must give the single-worker update
        let cat = random_catalog(48, &[4, 4, 3], 2);
        let inter = demo_interactions(48);
        let base = std::env::temp_dir().join(format!("genrec-dp-{}", std::process::id()));
        let mut weights = Vec::new();
        for workers in [1, 2, 3] {
            let opts = TrainOptions { dropout: 0.0, workers, ..tiny(1, 40, 1) };
            let out = base.join(format!("w{workers}"));
            train(&cat, &base, &inter, &opts, &out, &mut |_| {}).unwrap();
            let t = candle_core::safetensors::load(out.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
            let mut flat = Vec::new();
            let mut names: Vec<_> = t.keys().cloned().collect();
            names.sort();
            for n in names {
                flat.extend(t[&n].flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            weights.push(flat);
        }
        for w in &weights[1..] {
            let diff = w.iter().zip(&weights[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "max weight difference {diff}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn weight_averages_are_saved_beside_the_last_weights() {
        let cat = random_catalog(48, &[4, 4, 3], 3);
        let inter = demo_interactions(48);
        let base = std::env::temp_dir().join(format!("genrec-ema-{}", std::process::id()));
        let small = tiny(2, 32, 2);
        train(&cat, &base, &inter, &small, &base.join("plain"), &mut |_| {}).unwrap();
        let averaged = TrainOptions { averages: vec![Average::Polynomial, Average::Exponential(0.5)], ..small.clone() };
        train(&cat, &base, &inter, &averaged, &base.join("avg"), &mut |_| {}).unwrap();
        let weights = |d: &str| std::fs::read(base.join(d).join("model.safetensors")).unwrap();
        // averaging takes nothing from the training itself: the last step's
        // weights are those of the run without averages
        assert!(weights("plain") == weights("avg/variants/last"));
        assert!(weights("plain") != weights("avg"));
        assert!(weights("avg") != weights("avg/variants/ema-0.5"));
        for dir in ["avg", "avg/variants/last", "avg/variants/ema-0.5"] {
            let model = Model::load(&base.join(dir), &candle_core::Device::Cpu).unwrap();
            assert_eq!(model.catalog_dir().unwrap().canonicalize().unwrap(), base.canonicalize().unwrap(), "{dir}");
        }
        assert!(!base.join("plain/variants").exists());
        let bad = TrainOptions { averages: vec![Average::Exponential(1.0)], ..small };
        assert!(train(&cat, &base, &inter, &bad, &base.join("bad"), &mut |_| {}).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn relative_paths() {
        let base = std::env::temp_dir().join(format!("genrec-rel-{}", std::process::id()));
        std::fs::create_dir_all(base.join("m/model")).unwrap();
        std::fs::create_dir_all(base.join("m/catalog")).unwrap();
        assert_eq!(trainer::relative_path(&base.join("m/model"), &base.join("m/catalog")), "../catalog");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
