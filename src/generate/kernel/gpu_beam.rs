//! The decode levels of [`crate::generate::generate_with`] on a CUDA device:
//! the same loop as the CPU search, with the beam step as one kernel per level
//! over device-resident logits, beam state, trie tables and the live
//! overlay's patched nodes, with the level's priors. The host sees
//! only the final beams and, after them, each level's live-beam count (the
//! decoded tokens, counted as the CPU search counts them).

use parking_lot::Mutex;
use std::sync::Arc;

use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Tensor, D};

use super::cuda::{self, GpuBeams, GpuFilters, GpuLive, GpuPatch, GpuPriors, GpuTrend, GpuTrie, Scratch, StepArgs};
use super::filters::LevelFilters;
use super::patch::PatchTable;
use super::priors::{LevelPriors, TrendTables};
use crate::catalog::trie::Trie;
use crate::catalog::Catalog;
use crate::generate::request::collect_hits;
use crate::generate::step::StepShape;
use crate::generate::{GenRequest, GenerateError, Generated, Scoring};
use crate::model::{BeamKv, HistoryKv, LevelHead, Model};

/// Device copies of recently used tries, by (trie id, device id): a catalog
/// base version is uploaded once, a compaction (a new base trie) uploads again.
static TRIES: Mutex<Vec<(u64, candle_core::cuda_backend::DeviceId, Arc<GpuTrie>)>> = Mutex::new(Vec::new());
const CACHED_TRIES: usize = 4;

/// The device copy of `trie`, uploaded on first use.
pub fn device_trie(dev: &CudaDevice, trie: &Trie) -> candle_core::Result<Arc<GpuTrie>> {
    let mut cache = TRIES.lock();
    if let Some((_, _, t)) = cache.iter().find(|(id, d, _)| *id == trie.id() && *d == dev.id()) {
        return Ok(t.clone());
    }
    let t = Arc::new(GpuTrie::upload(dev, trie)?);
    if cache.len() >= CACHED_TRIES {
        cache.remove(0);
    }
    cache.push((trie.id(), dev.id(), t.clone()));
    Ok(t)
}

/// The live overlay of a base trie on a device: the host table and its
/// device copy, in step with each other.
pub struct LivePatch {
    table: PatchTable,
    gpu: GpuPatch,
}

impl LivePatch {
    /// Brings the device copy to `view`'s overlay (the slots and records
    /// changed since the last search on this base; see [`PatchTable::sync`]).
    pub fn sync(&mut self, dev: &CudaDevice, view: &crate::catalog::TrieView) -> candle_core::Result<()> {
        let sync = self.table.sync(view);
        self.gpu.apply(dev, &self.table, &sync)
    }

    pub fn gpu(&self) -> &GpuPatch {
        &self.gpu
    }
}

/// The overlays on recently used base tries, by (trie id, device id). A
/// search holds its base's lock from the sync to its last level, so no
/// other search moves the overlay under it.
#[allow(clippy::type_complexity)]
static PATCHES: Mutex<Vec<(u64, candle_core::cuda_backend::DeviceId, Arc<Mutex<LivePatch>>)>> = Mutex::new(Vec::new());

/// The overlay of `trie` on `dev` (empty at first use).
pub fn device_patch(dev: &CudaDevice, trie: &Trie) -> candle_core::Result<Arc<Mutex<LivePatch>>> {
    let mut cache = PATCHES.lock();
    if let Some((_, _, p)) = cache.iter().find(|(id, d, _)| *id == trie.id() && *d == dev.id()) {
        return Ok(p.clone());
    }
    let p = Arc::new(Mutex::new(LivePatch { table: PatchTable::default(), gpu: GpuPatch::new(dev)? }));
    if cache.len() >= CACHED_TRIES {
        cache.remove(0);
    }
    cache.push((trie.id(), dev.id(), p.clone()));
    Ok(p)
}

/// One model's part of a GPU search: its history cache (after the prefill),
/// the hidden state of each beam and the beams' own decoded tokens.
pub struct GpuMember<'a> {
    pub model: &'a Model,
    pub hist: HistoryKv,
    pub hidden: Tensor,
    beams_kv: BeamKv,
}

impl<'a> GpuMember<'a> {
    /// A member after its prefill (`hist`, `hidden` from `prefill`).
    pub fn new(model: &'a Model, hist: HistoryKv, hidden: Tensor) -> Self {
        GpuMember { model, hist, hidden, beams_kv: BeamKv::new(model.config.num_hidden_layers) }
    }
}

/// This level's logits for the beam step, the column of its first code, and
/// the log-normalisers: one model's own (see [`Scoring`]), or for an
/// ensemble the members' mean log-probability of each code with a zero
/// normaliser (the mean of normalised scores; `Scoring::Model` only, as on
/// the CPU).
fn level_logits(
    members: &[GpuMember],
    level: usize,
    scoring: Scoring,
) -> Result<(Tensor, usize, Option<Tensor>), GenerateError> {
    // a level's columns of full logits: a range of them, or gathered
    let columns = |m: &GpuMember, full: &Tensor| -> Result<(Tensor, usize), GenerateError> {
        Ok(match &m.model.level_heads[level] {
            LevelHead::Range { start, .. } => (full.clone(), *start),
            LevelHead::Rows { ids, .. } => (full.index_select(ids, 1)?.contiguous()?, 0),
        })
    };
    let narrow = |full: &Tensor, m: &GpuMember| -> Result<Tensor, GenerateError> {
        let (cols, col0) = columns(m, full)?;
        Ok(cols.narrow(D::Minus1, col0, m.model.vocab.level_tokens(level).len())?)
    };
    match (members, scoring) {
        ([m], Scoring::Model) => {
            let full = m.model.net.logits(&m.hidden)?.to_dtype(DType::F32)?.contiguous()?;
            let lse = full.log_sum_exp(D::Minus1)?.contiguous()?;
            let (cols, col0) = columns(m, &full)?;
            Ok((cols, col0, Some(lse)))
        }
        ([m], Scoring::Trie) => {
            let head = &m.model.level_heads[level];
            Ok((m.model.net.level_logits(&m.hidden, head)?.to_dtype(DType::F32)?.contiguous()?, 0, None))
        }
        (many, _) => {
            let mut sum: Option<Tensor> = None;
            for m in many {
                let full = m.model.net.logits(&m.hidden)?.to_dtype(DType::F32)?;
                let lse = full.log_sum_exp(D::Minus1)?.unsqueeze(D::Minus1)?;
                let log_probs = narrow(&full, m)?.broadcast_sub(&lse)?;
                sum = Some(match sum {
                    None => log_probs,
                    Some(s) => (s + log_probs)?,
                });
            }
            let sum = sum.ok_or_else(|| GenerateError::Invalid("an ensemble needs at least one model".into()))?;
            let mean = (sum / many.len() as f64)?.contiguous()?;
            let zeros = Tensor::zeros(mean.dim(0)?, DType::F32, mean.device())?;
            Ok((mean, 0, Some(zeros)))
        }
    }
}

/// Runs the levels after the prefill for one model or an ensemble (members
/// of one token layout); see the CPU loop in `beam.rs`.
pub fn decode_levels(
    dev: &CudaDevice,
    mut members: Vec<GpuMember>,
    catalog: &Catalog,
    reqs: &[GenRequest],
    beam: usize,
    scoring: Scoring,
    lens: &[usize],
) -> Result<Generated, GenerateError> {
    let model = members
        .first()
        .map(|m| m.model)
        .ok_or_else(|| GenerateError::Invalid("an ensemble needs at least one model".into()))?;
    let sc = &model.sidecar;
    let levels = sc.levels();
    let r = reqs.len();
    if beam > cuda::MAX_BEAMS {
        return Err(GenerateError::Mismatch(format!("beam {beam} exceeds the GPU kernel's {}", cuda::MAX_BEAMS)));
    }
    let view = catalog.trie();
    let trie = device_trie(dev, view.base())?;
    let overlay = device_patch(dev, view.base())?;
    let mut overlay = overlay.lock();
    overlay.sync(dev, &view)?;
    let trend = GpuTrend::upload(dev, &TrendTables::new(catalog, &view, reqs))?;
    let (mut scores, mut nodes) = GpuBeams::start(dev, r)?;
    let mut scratch = Scratch::default();
    let mut beams_in = 1;
    // the node buffers of the levels before the last: their live beams are
    // counted once the last level is on the host (no extra sync per level)
    let mut earlier = Vec::with_capacity(levels);
    for level in 0..levels {
        let codes = sc.codebook_sizes[level] as usize;
        let (logits, col0, norm) = level_logits(&members, level, scoring)?;
        // the kernel writes `token_offset + code` (or the pad token) for the
        // next step; a level whose tokens are not contiguous writes the code
        // and the tokens are looked up in the level's ids after it (a dead
        // beam gets code 0's token: its output is never read, as the pad's)
        let (token_offset, pad_token) = match model.vocab.level_start(level) {
            Some(s) => (s, model.vocab.pad),
            None => (0, 0),
        };
        let filters = GpuFilters::upload(dev, &LevelFilters::new(catalog, reqs, level))?;
        let shape = StepShape { requests: r, beams_in, beams_out: beam, codes };
        let args = StepArgs {
            logits: &logits,
            col0,
            norm: norm.as_ref(),
            scores: &scores,
            nodes: &nodes,
            token_offset,
            pad_token,
        };
        let priors = GpuPriors::upload(dev, &LevelPriors::new(catalog, reqs, level)?)?;
        let live = GpuLive { patch: overlay.gpu(), priors: &priors, trend: &trend };
        let out =
            cuda::beam_step(dev, &trie, level, shape, &args, &filters, &live, &mut scratch, super::serving_kernel())?;
        if level + 1 == levels {
            let (last, scores) = (dev.clone_dtoh(&out.node)?, dev.clone_dtoh(&out.score)?);
            let live = |n: &[u32]| n.iter().filter(|&&n| n != crate::catalog::trie::NONE).count();
            let mut decoded = live(&last);
            if level > 0 {
                // this level's input is the level before's output
                decoded += live(&dev.clone_dtoh(&nodes)?);
            }
            for level_nodes in &earlier {
                decoded += live(&dev.clone_dtoh(level_nodes)?);
            }
            return Ok(Generated { hits: collect_hits(catalog, reqs, beam, &last, &scores), tokens: decoded });
        }
        let (rows, mut tokens) = (cuda::tensor_u32(dev, out.row), cuda::tensor_u32(dev, out.token));
        if let LevelHead::Rows { ids, .. } = &model.level_heads[level] {
            tokens = ids.index_select(&tokens, 0)?;
        }
        let pos: Vec<u32> = (0..r * beam).map(|s| (lens[s / beam] + level) as u32).collect();
        let pos = Tensor::from_vec(pos, r * beam, model.net.device())?;
        for m in &mut members {
            m.beams_kv.reorder_rows(&rows)?;
            m.hidden = m.model.net.decode_ids(&m.hist, &mut m.beams_kv, &tokens, &pos)?;
        }
        scores = out.score;
        let before = std::mem::replace(&mut nodes, out.node);
        if level > 0 {
            earlier.push(before); // the previous level's output (level 0's input is the start state)
        }
        beams_in = beam;
    }
    Err(GenerateError::Mismatch("model has no levels".into()))
}
