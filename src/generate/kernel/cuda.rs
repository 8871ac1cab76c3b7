//! Launches `kernels/beam_step.cu` on candle's CUDA stream: the trie uploaded
//! once per catalog base version, the live overlay's patched nodes kept in
//! step by the few slots and records each sync changes ([`GpuPatch`]), the
//! request filters and priors once per batch, and per level one kernel that
//! reads the model's logits where they lie and leaves its outputs (beam
//! state, cache rows to keep, next tokens) on the device.

use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Storage, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::filters::{LevelFilters, NodeLists};
use super::patch::{PatchSync, PatchTable};
use super::priors::{LevelPriors, TrendTables};
use crate::catalog::trie::Trie;
use crate::generate::step::StepShape;

/// The kernel, compiled to PTX by build.rs.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/beam_step.ptx"));
const MODULE: &str = "genrec_beam_step";
/// Threads per request (8 warps; one warp per beam while scoring).
const BLOCK: u32 = 256;
pub use super::contract::{BeamKernel, MAX_BEAMS};

type Result<T> = candle_core::Result<T>;

/// The trie's arrays on the device.
pub struct GpuTrie {
    child_start: CudaSlice<u32>,
    child_code: CudaSlice<u32>,
    dense: Vec<Option<CudaSlice<u32>>>,
    /// The base's item of each leaf (for the new-item rule; one unused
    /// entry when the trie has no leaves).
    leaf_item: CudaSlice<u32>,
    level_start: Vec<u32>,
    codebook_sizes: Vec<u32>,
    bytes: usize,
}

impl GpuTrie {
    pub fn upload(dev: &CudaDevice, trie: &Trie) -> Result<Self> {
        let a = trie.arrays();
        let mut bytes = 4 * (a.child_start.len() + a.child_code.len() + a.leaf_item.len());
        let dense = (0..trie.levels())
            .map(|d| {
                a.dense_table(d)
                    .map(|t| {
                        bytes += 4 * t.len();
                        dev.clone_htod(t)
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GpuTrie {
            child_start: dev.clone_htod(a.child_start)?,
            child_code: dev.clone_htod(a.child_code)?,
            leaf_item: dev.clone_htod(&padded(a.leaf_item))?,
            dense,
            level_start: a.level_start.to_vec(),
            codebook_sizes: a.codebook_sizes.to_vec(),
            bytes,
        })
    }

    /// Device memory the tables take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// One level's filters on the device.
pub struct GpuFilters {
    allow: Option<(CudaSlice<u32>, CudaSlice<u32>)>,
    ban: Option<(CudaSlice<u32>, CudaSlice<u32>)>,
}

impl GpuFilters {
    pub fn upload(dev: &CudaDevice, f: &LevelFilters) -> Result<Self> {
        let up = |l: &Option<NodeLists>| -> Result<Option<(CudaSlice<u32>, CudaSlice<u32>)>> {
            match l {
                None => Ok(None),
                // a zero-length device buffer cannot be allocated: pad with one unused entry
                Some(l) => Ok(Some((dev.clone_htod(&l.start)?, dev.clone_htod(&padded(&l.nodes))?))),
            }
        };
        Ok(GpuFilters { allow: up(&f.allow)?, ban: up(&f.ban)? })
    }
}

fn padded<T: Copy + Default>(v: &[T]) -> Vec<T> {
    if v.is_empty() {
        vec![T::default()]
    } else {
        v.to_vec()
    }
}

fn msg(what: &str) -> impl Fn(cudarc::driver::DriverError) -> candle_core::Error + '_ {
    move |e| candle_core::Error::Msg(format!("{what}: {e}"))
}

/// The device copy of a [`PatchTable`]: the slot of every node and the
/// record pool, each with room to grow.
pub struct GpuPatch {
    slot: CudaSlice<u32>,
    code: CudaSlice<u32>,
    node: CudaSlice<u32>,
    item: CudaSlice<u32>,
    /// Slots the kernel may read (the table's node count).
    nodes: usize,
    /// Whether any node is patched.
    live: bool,
}

/// Room for `need` entries, doubled ahead.
fn room(need: usize) -> usize {
    need.max(1).next_power_of_two()
}

impl GpuPatch {
    pub fn new(dev: &CudaDevice) -> Result<Self> {
        Ok(GpuPatch {
            slot: dev.alloc_zeros::<u32>(1)?,
            code: dev.alloc_zeros::<u32>(1)?,
            node: dev.alloc_zeros::<u32>(1)?,
            item: dev.alloc_zeros::<u32>(1)?,
            nodes: 0,
            live: false,
        })
    }

    /// Follows one [`PatchTable::sync`] of `table`: clears the slots for a
    /// rebuild, grows the buffers (keeping their contents) when the table
    /// outgrew them, copies the appended records and writes the changed
    /// slots with one small kernel.
    pub fn apply(&mut self, dev: &CudaDevice, table: &PatchTable, sync: &PatchSync) -> Result<()> {
        let stream = dev.cuda_stream();
        let need = table.slot.len();
        if self.slot.len() < need {
            let mut grown = dev.alloc_zeros::<u32>(room(need))?;
            if !sync.rebuilt {
                let old = self.slot.len();
                dev.memcpy_dtod(&self.slot, &mut grown.slice_mut(..old))?;
            }
            self.slot = grown;
        } else if sync.rebuilt {
            stream.memset_zeros(&mut self.slot).map_err(msg("clear patch slots"))?;
        }
        let (from, len) = (if sync.rebuilt { 0 } else { sync.pool_from }, table.code.len());
        for (dst, src) in [(&mut self.code, &table.code), (&mut self.node, &table.node), (&mut self.item, &table.item)]
        {
            if dst.len() < len {
                // SAFETY: entries past `from` are written below before any kernel reads them
                let mut grown = unsafe { dev.alloc::<u32>(room(len))? };
                if from > 0 {
                    dev.memcpy_dtod(&dst.slice(..from), &mut grown.slice_mut(..from))?;
                }
                *dst = grown;
            }
            if len > from {
                dev.memcpy_htod(&src[from..len], &mut dst.slice_mut(from..len))?;
            }
        }
        if !sync.slots.is_empty() {
            let (idx, val): (Vec<u32>, Vec<u32>) = sync.slots.iter().copied().unzip();
            let (idx, val) = (dev.clone_htod(&idx)?, dev.clone_htod(&val)?);
            let n = sync.slots.len() as u32;
            let func = dev.get_or_load_custom_func("genrec_set_slots", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&mut self.slot).arg(&idx).arg(&val).arg(&n);
            let cfg = LaunchConfig { grid_dim: (n.div_ceil(256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: genrec_set_slots(slot, idx, val, n); every idx is a node
            // below the table's node count, which the slot buffer holds.
            unsafe { b.launch(cfg) }.map_err(msg("patch slots launch"))?;
        }
        self.nodes = need;
        self.live = !table.is_empty();
        Ok(())
    }
}

/// One level's priors on the device.
pub struct GpuPriors {
    first: Option<CudaSlice<f32>>,
    siblings: Option<CudaSlice<u32>>,
    trained_rows: u32,
}

impl GpuPriors {
    pub fn upload(dev: &CudaDevice, p: &LevelPriors) -> Result<Self> {
        Ok(GpuPriors {
            first: (!p.first.is_empty()).then(|| dev.clone_htod(&p.first)).transpose()?,
            siblings: (!p.siblings.is_empty()).then(|| dev.clone_htod(&p.siblings)).transpose()?,
            trained_rows: p.trained_rows,
        })
    }
}

/// A search's trending lifts on the device (`None`: no request has a weight).
pub struct GpuTrend {
    lists: Option<[CudaSlice<u32>; 3]>,
    weight_lift: Option<[CudaSlice<f32>; 2]>,
}

impl GpuTrend {
    pub fn upload(dev: &CudaDevice, t: &TrendTables) -> Result<Self> {
        if t.weight.is_empty() {
            return Ok(GpuTrend { lists: None, weight_lift: None });
        }
        Ok(GpuTrend {
            lists: Some([dev.clone_htod(&t.lo)?, dev.clone_htod(&t.hi)?, dev.clone_htod(&padded(&t.node))?]),
            weight_lift: Some([dev.clone_htod(&t.weight)?, dev.clone_htod(&padded(&t.lift))?]),
        })
    }
}

/// What a live catalog and the batch's priors add to a step, on the device.
pub struct GpuLive<'a> {
    /// The overlay (an empty patch: the base alone).
    pub patch: &'a GpuPatch,
    pub priors: &'a GpuPriors,
    pub trend: &'a GpuTrend,
}

/// The beams after a step, on the device; `row` and `token` feed the next
/// decode (cache rows to keep, input tokens).
pub struct GpuBeams {
    pub parent: CudaSlice<u32>,
    pub code: CudaSlice<u32>,
    pub node: CudaSlice<u32>,
    pub score: CudaSlice<f32>,
    pub row: CudaSlice<u32>,
    pub token: CudaSlice<u32>,
}

impl GpuBeams {
    /// The starting state: one beam per request at the root, score 0.
    pub fn start(dev: &CudaDevice, requests: usize) -> Result<(CudaSlice<f32>, CudaSlice<u32>)> {
        Ok((dev.alloc_zeros::<f32>(requests)?, dev.alloc_zeros::<u32>(requests)?))
    }
}

/// A reusable per-batch scratch buffer (`requests ×`
/// [`BeamKernel::scratch_keys`] keys: the candidates, and for the pooled
/// selection also the lanes' best scores).
#[derive(Default)]
pub struct Scratch {
    keys: Option<CudaSlice<u64>>,
}

impl Scratch {
    fn get(&mut self, dev: &CudaDevice, len: usize) -> Result<&CudaSlice<u64>> {
        if self.keys.as_ref().is_none_or(|k| k.len() < len) {
            // SAFETY: the kernel writes each key before reading it back.
            self.keys = Some(unsafe { dev.alloc::<u64>(len.max(1))? });
        }
        self.keys.as_ref().ok_or_else(|| candle_core::Error::Msg("scratch".into()))
    }
}

/// Inputs of one step that live on the device.
pub struct StepArgs<'a> {
    /// `[rows, ld]` f32, contiguous: the full-vocabulary logits of every beam.
    pub logits: &'a Tensor,
    /// First column of this level's codes in `logits`.
    pub col0: usize,
    /// `[rows]` f32 log-normalisers, or `None` (softmax over valid children).
    pub norm: Option<&'a Tensor>,
    pub scores: &'a CudaSlice<f32>,
    pub nodes: &'a CudaSlice<u32>,
    pub token_offset: u32,
    pub pad_token: u32,
}

/// Runs the fused beam step at trie depth `depth`, with the kernel of
/// `selection` (the same answer either way).
#[allow(clippy::too_many_arguments)]
pub fn beam_step(
    dev: &CudaDevice,
    trie: &GpuTrie,
    depth: usize,
    shape: StepShape,
    args: &StepArgs,
    filters: &GpuFilters,
    live: &GpuLive,
    scratch: &mut Scratch,
    selection: BeamKernel,
) -> Result<GpuBeams> {
    let StepShape { requests, beams_in, beams_out, codes } = shape;
    super::contract::check_step(&trie.codebook_sizes, depth, shape, selection)
        .map_err(|m| candle_core::Error::Msg(format!("beam step: {m}")))?;
    let (rows, ld) = args.logits.dims2()?;
    if rows != requests * beams_in
        || args.col0 + codes > ld
        || args.logits.dtype() != DType::F32
        || !args.logits.is_contiguous()
    {
        candle_core::bail!(
            "beam step: logits {:?} {:?} do not fit {shape:?}",
            args.logits.shape(),
            args.logits.dtype()
        );
    }
    let (ls, ll) = args.logits.storage_and_layout();
    let Storage::Cuda(lc) = &*ls else { candle_core::bail!("beam step: logits are not on the GPU") };
    let logits = lc.as_cuda_slice::<f32>()?.slice(ll.start_offset()..);
    let norm_guard = args.norm.map(|n| n.storage_and_layout());
    let norm = match &norm_guard {
        Some((s, l)) => match &**s {
            Storage::Cuda(c) => Some(c.as_cuda_slice::<f32>()?.slice(l.start_offset()..)),
            _ => candle_core::bail!("beam step: normalisers are not on the GPU"),
        },
        None => None,
    };
    let n = requests * beams_out;
    // SAFETY: uninitialised device buffers; the kernel writes every slot of
    // every output (live or dead) before anything reads them.
    let out = unsafe {
        GpuBeams {
            parent: dev.alloc::<u32>(n)?,
            code: dev.alloc::<u32>(n)?,
            node: dev.alloc::<u32>(n)?,
            score: dev.alloc::<f32>(n)?,
            row: dev.alloc::<u32>(n)?,
            token: dev.alloc::<u32>(n)?,
        }
    };
    let stride = selection.scratch_keys(beams_in, codes);
    let keys = scratch.get(dev, requests * stride)?;
    let name = match selection {
        BeamKernel::Radix => "genrec_beam_step",
        BeamKernel::Pool { .. } => "genrec_beam_step_pool",
    };
    let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let null = 0u64;
    let (ld32, col0, dense_base) = (ld as u32, args.col0 as u32, trie.level_start[depth]);
    let (bi, bo, cd) = (beams_in as u32, beams_out as u32, codes as u32);
    let levels = trie.codebook_sizes.len();
    let (leaves_start, base_nodes) = (trie.level_start[levels], trie.level_start[levels + 1]);
    let patch = Some(live.patch).filter(|p| p.live);
    let patch_nodes = patch.map_or(0, |p| p.nodes as u32);
    let trained_rows = live.priors.trained_rows;
    let mut b = func.builder();
    b.arg(&logits).arg(&ld32).arg(&col0);
    match &norm {
        Some(v) => b.arg(v),
        None => b.arg(&null),
    };
    b.arg(args.scores).arg(args.nodes).arg(&trie.child_start).arg(&trie.child_code);
    match &trie.dense[depth] {
        Some(t) => b.arg(t),
        None => b.arg(&null),
    };
    b.arg(&dense_base);
    match patch {
        Some(p) => b.arg(&p.slot).arg(&patch_nodes).arg(&p.code).arg(&p.node).arg(&p.item),
        None => b.arg(&null).arg(&patch_nodes).arg(&null).arg(&null).arg(&null),
    };
    b.arg(&trie.leaf_item).arg(&leaves_start).arg(&base_nodes);
    for l in [&filters.allow, &filters.ban] {
        match l {
            Some((s, v)) => b.arg(s).arg(v),
            None => b.arg(&null).arg(&null),
        };
    }
    match &live.priors.first {
        Some(v) => b.arg(v),
        None => b.arg(&null),
    };
    match &live.priors.siblings {
        Some(v) => b.arg(v),
        None => b.arg(&null),
    };
    b.arg(&trained_rows);
    match (&live.trend.weight_lift, &live.trend.lists) {
        (Some([w, lift]), Some([lo, hi, node])) => b.arg(w).arg(lo).arg(hi).arg(node).arg(lift),
        _ => b.arg(&null).arg(&null).arg(&null).arg(&null).arg(&null),
    };
    b.arg(&bi).arg(&bo).arg(&cd).arg(&args.token_offset).arg(&args.pad_token).arg(keys);
    // the pooled kernel's two extra arguments follow the scratch
    let pool_args = match selection {
        BeamKernel::Pool { capacity } => Some((capacity as u32, stride as u64)),
        BeamKernel::Radix => None,
    };
    if let Some((capacity, stride)) = &pool_args {
        b.arg(capacity).arg(stride);
    }
    b.arg(&out.parent).arg(&out.code).arg(&out.node).arg(&out.score).arg(&out.row).arg(&out.token);
    let cfg = LaunchConfig { grid_dim: (requests as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the argument list matches the signature of genrec_beam_step
    // (or genrec_beam_step_pool, with capacity and stride after the scratch)
    // in kernels/beam_step.cu; every buffer is sized for `shape` above (logits
    // checked, outputs and scratch allocated here, scores/nodes by the
    // caller), the pool's capacity checked against its shared buffer. The
    // patch's slots cover `patch_nodes` nodes and its records are the
    // table's (GpuPatch::apply); the priors are sized per request (first:
    // requests x codes) by LevelPriors / TrendTables for this batch.
    unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Msg(format!("beam step launch: {e}")))?;
    Ok(out)
}

/// Launches the empty kernel and waits for it: the launch-and-sync floor
/// under which no step can go.
pub fn launch_noop(dev: &CudaDevice) -> Result<()> {
    let func = dev.get_or_load_custom_func("genrec_noop", MODULE, PTX)?;
    let mut b = func.builder();
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: genrec_noop takes no arguments and touches no memory.
    unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Msg(format!("noop launch: {e}")))?;
    synchronize(dev)
}

/// Waits for everything queued on the device's stream.
pub fn synchronize(dev: &CudaDevice) -> Result<()> {
    dev.cuda_stream().synchronize().map_err(|e| candle_core::Error::Msg(format!("synchronize: {e}")))
}

/// The card's name as the driver reports it.
pub fn card_name(dev: &CudaDevice) -> String {
    dev.cuda_stream().context().name().unwrap_or_else(|_| "unknown GPU".into())
}

/// Wraps a device buffer as a candle tensor (no copy).
pub fn tensor_u32(dev: &CudaDevice, s: CudaSlice<u32>) -> Tensor {
    let n = s.len();
    Tensor::from_storage(Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone())), n, BackpropOp::none(), false)
}
