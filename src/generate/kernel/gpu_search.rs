//! The decode levels of [`crate::generate::generate_with`] on a CUDA device:
//! the same loop as the CPU search, with the beam step as one kernel per level
//! over device-resident logits, beam state and trie tables. The host sees
//! only the final beams and, after them, each level's live-beam count (the
//! decoded tokens, counted as the CPU search counts them).

use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Tensor, D};

use super::cuda::{self, GpuBeams, GpuFilters, GpuTrie, Scratch, StepArgs};
use super::filters::LevelFilters;
use crate::catalog::trie::Trie;
use crate::catalog::Catalog;
use crate::generate::search::collect_hits;
use crate::generate::{GenRequest, GenerateError, Generated, Scoring};
use crate::generate::step::StepShape;
use crate::model::{BeamKv, HistoryKv, Model};

/// Device copies of recently used tries, by (trie id, device id): a catalog
/// base version is uploaded once, a compaction (a new base trie) uploads again.
static TRIES: Mutex<Vec<(u64, candle_core::cuda_backend::DeviceId, Arc<GpuTrie>)>> = Mutex::new(Vec::new());
const CACHED_TRIES: usize = 4;

/// The device copy of `trie`, uploaded on first use.
pub fn device_trie(dev: &CudaDevice, trie: &Trie) -> candle_core::Result<Arc<GpuTrie>> {
    let mut cache = TRIES.lock().unwrap_or_else(|p| p.into_inner());
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

/// Runs the levels after the prefill; see the CPU loop in `search.rs`.
#[allow(clippy::too_many_arguments)]
pub fn decode_levels(
    dev: &CudaDevice,
    model: &Model,
    catalog: &Catalog,
    reqs: &[GenRequest],
    beam: usize,
    scoring: Scoring,
    hist: HistoryKv,
    mut hidden: Tensor,
    lens: &[usize],
) -> Result<Generated, GenerateError> {
    let sc = &model.sidecar;
    let levels = sc.levels();
    let r = reqs.len();
    if beam > cuda::MAX_BEAMS {
        return Err(GenerateError::Mismatch(format!("beam {beam} exceeds the GPU kernel's {}", cuda::MAX_BEAMS)));
    }
    let trie = device_trie(dev, catalog.trie().base())?;
    let (mut scores, mut nodes) = GpuBeams::start(dev, r)?;
    let mut scratch = Scratch::default();
    let mut beams_kv = BeamKv::new(model.config.num_hidden_layers);
    let mut beams_in = 1;
    // the node buffers of the levels before the last: their live beams are
    // counted once the last level is on the host (no extra sync per level)
    let mut earlier = Vec::with_capacity(levels);
    for level in 0..levels {
        let codes = sc.codebook_sizes[level] as usize;
        let offset = sc.code_offsets[level] as usize;
        let (logits, col0, norm) = match scoring {
            Scoring::Model => {
                let full = model.net.logits(&hidden)?.to_dtype(DType::F32)?.contiguous()?;
                let lse = full.log_sum_exp(D::Minus1)?.contiguous()?;
                (full, offset, Some(lse))
            }
            Scoring::Trie => (model.net.logits_range(&hidden, offset, codes)?.to_dtype(DType::F32)?.contiguous()?, 0, None),
        };
        let filters = GpuFilters::upload(dev, &LevelFilters::new(catalog, reqs, level))?;
        let shape = StepShape { requests: r, beams_in, beams_out: beam, codes };
        let args = StepArgs {
            logits: &logits,
            col0,
            norm: norm.as_ref(),
            scores: &scores,
            nodes: &nodes,
            token_offset: sc.token(level, 0),
            pad_token: sc.pad_token_id,
        };
        let out = cuda::beam_step(dev, &trie, level, shape, &args, &filters, &mut scratch)?;
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
        beams_kv.reorder_rows(&cuda::tensor_u32(dev, out.row))?;
        let pos: Vec<u32> = (0..r * beam).map(|s| (lens[s / beam] + level) as u32).collect();
        let pos = Tensor::from_vec(pos, r * beam, model.net.device())?;
        hidden = model.net.decode_ids(&hist, &mut beams_kv, &cuda::tensor_u32(dev, out.token), &pos)?;
        scores = out.score;
        let before = std::mem::replace(&mut nodes, out.node);
        if level > 0 {
            earlier.push(before); // the previous level's output (level 0's input is the start state)
        }
        beams_in = beam;
    }
    Err(GenerateError::Mismatch("model has no levels".into()))
}
