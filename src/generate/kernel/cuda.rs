//! Launches `kernels/beam_step.cu` on candle's CUDA stream: the trie uploaded
//! once per catalog base version, the request filters once per batch, and per
//! level one kernel that reads the model's logits where they lie and leaves
//! its outputs (beam state, cache rows to keep, next tokens) on the device.

use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Storage, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::filters::{LevelFilters, NodeLists};
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
    level_start: Vec<u32>,
    codebook_sizes: Vec<u32>,
    bytes: usize,
}

impl GpuTrie {
    pub fn upload(dev: &CudaDevice, trie: &Trie) -> Result<Self> {
        let a = trie.arrays();
        let mut bytes = 4 * (a.child_start.len() + a.child_code.len());
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

fn padded(v: &[u32]) -> Vec<u32> {
    if v.is_empty() {
        vec![0]
    } else {
        v.to_vec()
    }
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
    for l in [&filters.allow, &filters.ban] {
        match l {
            Some((s, v)) => b.arg(s).arg(v),
            None => b.arg(&null).arg(&null),
        };
    }
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
    // caller), the pool's capacity checked against its shared buffer.
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
