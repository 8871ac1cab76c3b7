//! Batched, trie-constrained beam search over the semantic-ID levels (the
//! generative retrieval of TIGER, arXiv 2305.05065): prefill every request's
//! history once, then one decode step per remaining level for all beams, each
//! followed by the beam step of [`super::step`].

use candle_core::Tensor;

use super::diversity::{any_capped, level_limits, GroupCap};
use super::kernel::LevelFilters;
use super::request::{collect_hits, GenRequest, Generated, Scoring};
use super::step::{beam_step_capped, StepShape};
use super::GenerateError;
use crate::catalog::trie::NONE;
use crate::catalog::Catalog;
use crate::model::profile_vocab::MAX_PROFILE_TOKENS;
use crate::model::{BeamKv, HistoryKv, Model};

/// Generates for a batch of requests with `beam` beams each (at least each
/// request's `k`), scoring with [`Scoring::Model`].
pub fn generate(
    model: &Model,
    catalog: &Catalog,
    reqs: &[GenRequest],
    beam: usize,
) -> Result<Generated, GenerateError> {
    generate_with(model, catalog, reqs, beam, Scoring::Model)
}

/// [`generate`] with a choice of scoring.
pub fn generate_with(
    model: &Model,
    catalog: &Catalog,
    reqs: &[GenRequest],
    beam: usize,
    scoring: Scoring,
) -> Result<Generated, GenerateError> {
    if reqs.is_empty() {
        return Ok(Generated { hits: Vec::new(), tokens: 0 });
    }
    let beam = checked_beam(model, catalog, reqs, beam)?;
    #[cfg(feature = "cuda")]
    if let Some(dev) = kernel_device(model, catalog, reqs) {
        return gpu_decode(&dev, &[model], catalog, reqs, beam, scoring);
    }
    decode_levels(&[model], catalog, reqs, beam, scoring)
}

/// Whether a batch's beam steps can run as the GPU kernel: the models are on
/// a CUDA device and no request is diversity-capped (the kernel knows no
/// caps; the CPU beam step searches those while the models still run on the
/// device). Live edits, soft steering, new items and trending all run in the
/// kernel ([`super::kernel::patch`], [`super::kernel::priors`]).
#[cfg(feature = "cuda")]
fn kernel_device(
    model: &Model,
    _catalog: &Catalog,
    reqs: &[GenRequest],
) -> Option<candle_core::cuda_backend::CudaDevice> {
    match model.net.device() {
        candle_core::Device::Cuda(dev) if !any_capped(reqs) => Some(dev.clone()),
        _ => None,
    }
}

/// Prefills every model and runs the levels on the GPU.
#[cfg(feature = "cuda")]
fn gpu_decode(
    dev: &candle_core::cuda_backend::CudaDevice,
    models: &[&Model],
    catalog: &Catalog,
    reqs: &[GenRequest],
    beam: usize,
    scoring: Scoring,
) -> Result<Generated, GenerateError> {
    use super::kernel::gpu_beam::{decode_levels, GpuMember};
    let (prefilled, lens) = prefill_all(models, catalog, reqs)?;
    let members = prefilled.into_iter().map(|(m, hist, hidden)| GpuMember::new(m, hist, hidden)).collect();
    decode_levels(dev, members, catalog, reqs, beam, scoring, &lens)
}

/// Generates with an ensemble of models trained on the same catalog (e.g. the
/// same settings, different seeds): each member scores every code with its
/// own log-probability ([`Scoring::Model`]) and the beams follow the members'
/// mean, the log of their geometric mean left unnormalised (a product of
/// experts). Scores stay on the log-probability scale. One member is exactly
/// [`generate_with`]; more than one take [`Scoring::Model`] only.
pub fn generate_ensemble(
    models: &[&Model],
    catalog: &Catalog,
    reqs: &[GenRequest],
    beam: usize,
    scoring: Scoring,
) -> Result<Generated, GenerateError> {
    let Some((first, rest)) = models.split_first() else {
        return Err(GenerateError::Invalid("an ensemble needs at least one model".into()));
    };
    if rest.is_empty() {
        return generate_with(first, catalog, reqs, beam, scoring);
    }
    if scoring != Scoring::Model {
        return Err(GenerateError::Invalid(
            "an ensemble scores with the models' own probabilities (scoring model)".into(),
        ));
    }
    if let Some(m) = rest.iter().find(|m| !m.sidecar.same_layout(&first.sidecar)) {
        return Err(GenerateError::Mismatch(format!(
            "ensemble members {} and {} differ in token layout or catalog",
            first.label(),
            m.label()
        )));
    }
    if reqs.is_empty() {
        return Ok(Generated { hits: Vec::new(), tokens: 0 });
    }
    let beam = checked_beam(first, catalog, reqs, beam)?;
    #[cfg(feature = "cuda")]
    if let Some(dev) = kernel_device(first, catalog, reqs) {
        return gpu_decode(&dev, models, catalog, reqs, beam, scoring);
    }
    decode_levels(models, catalog, reqs, beam, scoring)
}

/// The beam width a batch runs with (at least every request's `k`), after
/// checking that the model's levels are the catalog's.
fn checked_beam(model: &Model, catalog: &Catalog, reqs: &[GenRequest], beam: usize) -> Result<usize, GenerateError> {
    let levels = model.sidecar.levels();
    if levels != catalog.levels() {
        return Err(GenerateError::Mismatch(format!("model has {levels} levels, catalog {}", catalog.levels())));
    }
    Ok(reqs.iter().map(|r| r.k).max().unwrap_or(1).max(beam).max(1))
}

/// One model's search state: its history cache, the hidden state of each beam
/// and the beams' own decoded tokens.
struct Member<'a> {
    model: &'a Model,
    hist: HistoryKv,
    hidden: Tensor,
    beams_kv: BeamKv,
}

impl Member<'_> {
    /// This level's code logits of every beam, flat, and (for
    /// [`Scoring::Model`]) each beam's log-normaliser over the whole vocabulary.
    fn level_logits(&self, level: usize, scoring: Scoring) -> Result<(Vec<f32>, Option<Vec<f32>>), GenerateError> {
        let m = self.model;
        Ok(match scoring {
            Scoring::Trie => {
                let l = m.net.level_logits(&self.hidden, &m.level_heads[level])?;
                (l.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?, None)
            }
            Scoring::Model => {
                let full = m.net.logits(&self.hidden)?.to_dtype(candle_core::DType::F32)?;
                let (lse, level_logits) = normalise_rows(&full, m.vocab.level_tokens(level))?;
                (level_logits, Some(lse))
            }
        })
    }
}

/// The members' mean log-probability of each code of this level, with a zero
/// normaliser (each member's scores are normalised already).
fn mean_log_probs(members: &[Member], level: usize) -> Result<(Vec<f32>, Option<Vec<f32>>), GenerateError> {
    let codes = members.first().map_or(1, |m| m.model.sidecar.codebook_sizes[level] as usize).max(1);
    let share = 1.0 / members.len() as f32;
    let mut mean: Vec<f32> = Vec::new();
    for m in members {
        let (logits, lse) = m.level_logits(level, Scoring::Model)?;
        let lse = lse.unwrap_or_default();
        mean.resize(logits.len(), 0.0);
        for ((acc, row), norm) in mean.chunks_mut(codes).zip(logits.chunks(codes)).zip(&lse) {
            for (a, l) in acc.iter_mut().zip(row) {
                *a += share * (l - norm);
            }
        }
    }
    let rows = mean.len() / codes;
    Ok((mean, Some(vec![0.0; rows])))
}

/// The CPU search over all levels for one model or an ensemble (which must
/// share the token layout; [`Scoring::Model`] for more than one).
fn decode_levels(
    models: &[&Model],
    catalog: &Catalog,
    reqs: &[GenRequest],
    beam: usize,
    scoring: Scoring,
) -> Result<Generated, GenerateError> {
    let (prefilled, lens) = prefill_all(models, catalog, reqs)?;
    let mut members: Vec<Member> = prefilled
        .into_iter()
        .map(|(model, hist, hidden)| Member {
            model,
            hist,
            hidden,
            beams_kv: BeamKv::new(model.config.num_hidden_layers),
        })
        .collect();
    let sc = &models[0].sidecar;
    let vocab = &models[0].vocab;
    let levels = sc.levels();
    let r = reqs.len();
    let trie = catalog.trie();
    let mut beams_in = 1;
    let mut scores = vec![0f32; r];
    let mut nodes = vec![0u32; r];
    // each beam's first-level code, for the diversity cap
    let capped = any_capped(reqs);
    let mut groups = vec![0u32; r];
    let mut trending = super::trending::TrendingPriors::new(reqs);
    let new_items = super::new_items::applies(catalog, reqs);
    let mut decoded = 0usize;
    for level in 0..levels {
        let codes = sc.codebook_sizes[level] as usize;
        let (mut logits, norm) = match members.as_slice() {
            [one] => one.level_logits(level, scoring)?,
            many => mean_log_probs(many, level)?,
        };
        let at = LevelAt { level, codes, nodes: &nodes, beams_in };
        add_level_priors(catalog, &trie, reqs, at, &mut logits, new_items, trending.as_ref())?;
        let last = level + 1 == levels;
        let shape = StepShape { requests: r, beams_in, beams_out: beam, codes };
        let filters = LevelFilters::new(catalog, reqs, level);
        let limits = if capped { level_limits(reqs, beam, level, levels) } else { Vec::new() };
        let cap = capped.then(|| GroupCap { beam_group: (level > 0).then_some(groups.as_slice()), limit: &limits });
        let out = beam_step_capped(
            &trie,
            shape,
            &logits,
            &scores,
            &nodes,
            norm.as_deref(),
            |req, node| filters.keep(req, node),
            cap,
        );
        decoded += out.node.iter().filter(|&&n| n != NONE).count();
        if last {
            let hits = collect_hits(catalog, reqs, beam, &out.node, &out.score);
            return Ok(Generated { hits, tokens: decoded });
        }
        // feed the chosen codes back for the next level
        let parents: Vec<u32> = (0..r * beam).map(|s| (s / beam * beams_in) as u32 + out.parent[s]).collect();
        let toks: Vec<u32> = (0..r * beam)
            .map(|s| if out.node[s] == NONE { vocab.pad } else { vocab.token(level, out.code[s]) })
            .collect();
        let pos: Vec<u32> = (0..r * beam).map(|s| (lens[s / beam] + level) as u32).collect();
        if let Some(t) = &mut trending {
            t.advance(&parents, &out.code);
        }
        for m in &mut members {
            m.beams_kv.reorder(&parents)?;
            m.hidden = m.model.net.decode(&m.hist, &mut m.beams_kv, &toks, &pos)?;
        }
        if capped {
            groups = (0..r * beam)
                .map(|s| if level == 0 { out.code[s] } else { groups[s / beam * beams_in + out.parent[s] as usize] })
                .collect();
        }
        scores = out.score;
        nodes = out.node;
        beams_in = beam;
    }
    Err(GenerateError::Mismatch("model has no levels".into()))
}

/// Where a level's logits are: the level, its codes and the beams' nodes.
#[derive(Clone, Copy)]
pub(super) struct LevelAt<'a> {
    pub level: usize,
    pub codes: usize,
    pub nodes: &'a [u32],
    pub beams_in: usize,
}

/// Adds a level's priors to its logits (`[requests x beams_in, codes]`), in
/// the order the GPU kernel adds them ([`super::kernel::priors`]): the
/// first-level prior, then the new-item rule on the last level (before the
/// trending prior: a new item keeps its own lift), then the trending prior.
pub(super) fn add_level_priors(
    catalog: &Catalog,
    trie: &crate::catalog::TrieView,
    reqs: &[GenRequest],
    at: LevelAt,
    logits: &mut [f32],
    new_items: bool,
    trending: Option<&super::trending::TrendingPriors>,
) -> Result<(), GenerateError> {
    let LevelAt { level, codes, nodes, beams_in } = at;
    if level == 0 {
        add_priors(logits, reqs, codes)?;
    }
    if level + 1 == trie.levels() && new_items {
        super::new_items::score_as_siblings(trie, catalog.trained_rows(), reqs, logits, codes, nodes, beams_in);
    }
    if let Some(t) = trending {
        t.add(trie, logits, codes, nodes, beams_in);
    }
    Ok(())
}

/// Adds each request's first-level prior to its row of first-level logits
/// (one beam per request at the first level).
fn add_priors(logits: &mut [f32], reqs: &[GenRequest], codes: usize) -> Result<(), GenerateError> {
    for (row, q) in logits.chunks_exact_mut(codes.max(1)).zip(reqs) {
        for (l, p) in row.iter_mut().zip(super::kernel::priors::first_level_prior(q, codes)?) {
            *l += p;
        }
    }
    Ok(())
}

/// Each row's log-normaliser over the whole vocabulary (log-sum-exp) and the
/// row's columns `tokens` (one level's codes, in code order), in one pass
/// over the logits `[rows, vocab]` (the level's columns flat, row by row).
fn normalise_rows(full: &Tensor, tokens: &[u32]) -> Result<(Vec<f32>, Vec<f32>), GenerateError> {
    let (rows, vocab) = full.dims2()?;
    let flat = full.flatten_all()?.to_vec1::<f32>()?;
    let mut scratch = Vec::with_capacity(vocab);
    let mut lse = Vec::with_capacity(rows);
    let mut cols = Vec::with_capacity(rows * tokens.len());
    for row in flat.chunks_exact(vocab.max(1)) {
        lse.push(crate::model::fastexp::log_sum_exp(row, &mut scratch));
        cols.extend(tokens.iter().map(|&t| row[t as usize]));
    }
    Ok((lse, cols))
}

/// [`prefill`] for every model of an ensemble: each model with its history
/// cache and hidden states, and the history lengths (the same for all).
#[allow(clippy::type_complexity)]
fn prefill_all<'m>(
    models: &[&'m Model],
    catalog: &Catalog,
    reqs: &[GenRequest],
) -> Result<(Vec<(&'m Model, HistoryKv, Tensor)>, Vec<usize>), GenerateError> {
    let mut out = Vec::with_capacity(models.len());
    let mut lens = Vec::new();
    for &m in models {
        let (hist, hidden, l) = prefill(m, catalog, reqs)?;
        lens = l;
        out.push((m, hist, hidden));
    }
    Ok((out, lens))
}

/// A request's input tokens (its profile tokens or prompt texts and its
/// last `max_history_items` items), refused when the model has no positions
/// for them and the codes decoded after them. A server checks a request of
/// an LLM layout with this before batching it, so that one long prompt fails
/// alone, not its batch.
pub fn request_input(model: &Model, catalog: &Catalog, q: &GenRequest) -> Result<Vec<u32>, GenerateError> {
    let sc = &model.sidecar;
    let room = model.config.max_position_embeddings.min(crate::model::rope_positions());
    let start = q.history.len().saturating_sub(sc.max_history_items);
    let sids = q.history[start..].iter().map(|&i| catalog.sid(i));
    let tokens = model.vocab.request_tokens(&q.profile_tokens, &q.prompt, sids)?;
    // (the codes fed back after it, all levels but the last, need positions too)
    if tokens.len() + sc.levels().saturating_sub(1) > room {
        return Err(GenerateError::Invalid(format!(
            "the prompt is {} tokens; with {} levels to decode the model has positions for {room}",
            tokens.len(),
            sc.levels()
        )));
    }
    Ok(tokens)
}

/// Prefills every request's history (its profile tokens and its last
/// `max_history_items` items as tokens, right-padded into one batch). Returns the shared history cache, the
/// hidden state after each history and the history lengths in tokens.
pub(crate) fn prefill(
    model: &Model,
    catalog: &Catalog,
    reqs: &[GenRequest],
) -> Result<(HistoryKv, Tensor, Vec<usize>), GenerateError> {
    let sc = &model.sidecar;
    let profile = sc.profile.as_ref().map_or(0..0, |p| p.offset..p.end());
    if let Some(q) = reqs
        .iter()
        .find(|q| q.profile_tokens.len() > MAX_PROFILE_TOKENS || q.profile_tokens.iter().any(|t| !profile.contains(t)))
    {
        return Err(GenerateError::Invalid(format!(
            "profile tokens {:?} are not among the model's (at most {MAX_PROFILE_TOKENS} of {profile:?})",
            q.profile_tokens
        )));
    }
    let rows: Vec<Vec<u32>> =
        reqs.iter().map(|q| request_input(model, catalog, q)).collect::<Result<_, GenerateError>>()?;
    let (r, t) = (rows.len(), rows.iter().map(Vec::len).max().unwrap_or(1));
    let mut flat = vec![model.vocab.pad; r * t];
    for (i, row) in rows.iter().enumerate() {
        flat[i * t..i * t + row.len()].copy_from_slice(row);
    }
    let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    let tokens = Tensor::from_vec(flat, (r, t), model.net.device())?;
    let (hist, hidden) = model.net.prefill(&tokens, &lens)?;
    Ok((hist, hidden, lens))
}

#[cfg(test)]
mod precision_tests {
    //! How far a half-precision model's answers are from f32's, on the CPU
    //! (the demo model; the GPU showed the same picture, 13-19 of 64 lists
    //! identical before the f32 output layer).
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::Model;

    fn demo(dtype: DType) -> (Model, Catalog) {
        crate::model::demo::load_as(&Device::Cpu, dtype).unwrap()
    }

    /// The demo model with its weights rounded to bf16, computed in f32.
    fn rounded_weights() -> Model {
        let w = candle_core::safetensors::load_buffer(
            include_bytes!("../../models/demo/model/model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let w: HashMap<String, Tensor> =
            w.into_iter().map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap())).collect();
        let bytes = safetensors::serialize(&w, None).unwrap();
        Model::from_bytes(
            include_bytes!("../../models/demo/model/config.json"),
            &bytes,
            include_bytes!("../../models/demo/model/genrec.json"),
            &Device::Cpu,
        )
        .unwrap()
    }

    /// Identical top-10 lists of 64 requests, and the largest score difference.
    fn agreement(a: &Model, b: &Model, catalog: &Catalog) -> (usize, f32) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let reqs: Vec<GenRequest> = (0..64)
            .map(|_| {
                let h: Vec<u32> = (0..20).map(|_| rng.random_range(0..catalog.len() as u32)).collect();
                GenRequest { exclude: h.iter().copied().collect(), history: h, k: 10, ..Default::default() }
            })
            .collect();
        let (x, y) = (generate(a, catalog, &reqs, 64).unwrap(), generate(b, catalog, &reqs, 64).unwrap());
        let same =
            x.hits.iter().zip(&y.hits).filter(|(p, q)| p.iter().map(|h| h.item).eq(q.iter().map(|h| h.item))).count();
        let worst = x
            .hits
            .iter()
            .zip(&y.hits)
            .flat_map(|(p, q)| p.iter().zip(q).map(|(u, v)| (u.score - v.score).abs()))
            .fold(0f32, f32::max);
        (same, worst)
    }

    #[test]
    fn bf16_precision_budget() {
        let (f32m, catalog) = demo(DType::F32);
        let (bf16m, _) = demo(DType::BF16);
        let rounded = rounded_weights();
        let (s1, d1) = agreement(&rounded, &f32m, &catalog);
        let (s2, d2) = agreement(&bf16m, &rounded, &catalog);
        let (s3, d3) = agreement(&bf16m, &f32m, &catalog);
        eprintln!("weights rounded to bf16, f32 compute vs f32: {s1}/64 (max diff {d1}); bf16 compute vs the same rounded weights in f32: {s2}/64 ({d2}); bf16 vs f32: {s3}/64 ({d3})");
        // measured here: 49/64, 42/64, 38/64 (max diffs 0.013, 0.041, 0.042).
        // Rounding the weights alone leaves 49 of 64 lists as in f32, so the
        // issue's 60/64 cannot be reached with bf16 weights on this model.
        // Half-precision activations everywhere gave 17/64 (0.061); with the
        // output layer, norms and residual stream in f32, 29/64; softmax in
        // f32 too, 38/64.
        assert!(s3 >= 32, "bf16 vs f32: {s3}/64 identical lists");
        assert!(d3 < 0.05, "bf16 vs f32: max |score diff| {d3}");
    }
}
