//! Evaluation with the TIGER protocol: leave-one-out (last item = test, second
//! to last = validation), history truncated to the last `max_history_items`,
//! ranking over the full catalog by trie-constrained beam search.

use std::collections::HashSet;

use super::metrics::TopKMetrics;
use super::TrainError;
use crate::catalog::Catalog;
use crate::dataset::{heldout, Interactions, Split};
use crate::generate::{generate_ensemble, GenRequest, Scoring};
use crate::model::Model;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub split: Split,
    pub beam: usize,
    /// Requests per batched generation.
    pub batch: usize,
    /// Evaluate an evenly spaced subset of at most this many users.
    pub max_users: Option<usize>,
    /// Drop history items from the ranking (the held-out item never repeats
    /// its history in the benchmark sets, so this only removes impossible hits).
    pub exclude_history: bool,
    pub scoring: Scoring,
    /// History items each request carries (`None`: the model's
    /// `max_history_items`, which is also the most).
    pub max_history: Option<usize>,
}

impl EvalOptions {
    /// The validation run of `genrec train`: `users` evenly spaced validation
    /// users, beam 20, history excluded, default scoring.
    pub fn validation(users: usize) -> Self {
        EvalOptions {
            split: Split::Valid,
            beam: 20,
            batch: 64,
            max_users: Some(users),
            exclude_history: true,
            scoring: Scoring::default(),
            max_history: None,
        }
    }
}

/// Maps a sequence of external item ids to catalog indices, dropping unknown ids.
pub fn to_indices(catalog: &Catalog, seq: &[String]) -> Vec<u32> {
    seq.iter().filter_map(|id| catalog.index_of(id)).collect()
}

/// Held-out examples `(history, target)` of a split, subsampled if asked.
pub fn examples(
    catalog: &Catalog,
    inter: &Interactions,
    split: Split,
    max_history: usize,
    max_users: Option<usize>,
) -> Vec<(Vec<u32>, u32)> {
    let all: Vec<(Vec<u32>, u32)> = inter
        .sequences
        .iter()
        .filter_map(|s| heldout(&to_indices(catalog, s), split, max_history))
        .filter(|(h, _)| !h.is_empty())
        .collect();
    crate::dataset::evenly_spaced(all, max_users.unwrap_or(0))
}

/// Recall/NDCG at 5 and 10 of `model` on a split; `progress(done, total)` after each batch.
pub fn evaluate(
    model: &Model,
    catalog: &Catalog,
    inter: &Interactions,
    opts: &EvalOptions,
    progress: impl FnMut(usize, usize),
) -> Result<TopKMetrics, TrainError> {
    evaluate_ensemble(&[model], catalog, inter, opts, progress)
}

/// [`evaluate`] for an ensemble of models on the same catalog (see
/// [`generate_ensemble`]); one model is [`evaluate`].
pub fn evaluate_ensemble(
    models: &[&Model],
    catalog: &Catalog,
    inter: &Interactions,
    opts: &EvalOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<TopKMetrics, TrainError> {
    let model = *models.first().ok_or_else(|| TrainError::Invalid("no model to evaluate".into()))?;
    let most = model.sidecar.max_history_items;
    let max_history = match opts.max_history {
        Some(n) if n > most => {
            return Err(TrainError::Invalid(format!("max_history {n}: the model reads at most {most} history items")))
        }
        Some(n) => n,
        None => most,
    };
    let ex = examples(catalog, inter, opts.split, max_history, opts.max_users);
    let mut m = TopKMetrics::default();
    let mut done = 0;
    for chunk in ex.chunks(opts.batch.max(1)) {
        let reqs: Vec<GenRequest> = chunk
            .iter()
            .map(|(h, _)| GenRequest {
                history: h.clone(),
                k: 10,
                exclude: if opts.exclude_history { h.iter().copied().collect() } else { HashSet::new() },
                ..Default::default()
            })
            .collect();
        let out = generate_ensemble(models, catalog, &reqs, opts.beam.max(10), opts.scoring)?;
        for ((_, target), hits) in chunk.iter().zip(&out.hits) {
            let ranked: Vec<u32> = hits.iter().map(|h| h.item).collect();
            m.add(&ranked, *target);
        }
        done += chunk.len();
        progress(done, ex.len());
    }
    Ok(m.mean())
}
