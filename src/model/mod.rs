//! The generative model: a Hugging Face-format decoder checkpoint plus genrec's
//! sidecar.
//!
//! A model folder holds `config.json` (transformers' config, `architectures`
//! `LlamaForCausalLM` or `Qwen3ForCausalLM`), `model.safetensors` (transformers'
//! tensor names; or shards and their index, see [`shards`]) and `genrec.json`
//! (see [`sidecar`]).

pub mod attention;
pub mod config;
pub mod demo;
pub mod ensemble;
pub mod fastexp;
pub mod fused;
pub mod hub;
mod hub_download;
pub mod init;
pub mod kv;
mod ops;
pub mod profile_vocab;
pub mod proj;
pub mod q4_1;
mod rope;
pub mod shards;
pub mod sidecar;
pub mod small_gemm;
pub mod synthetic;
pub mod transformer;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::ModelConfig;
pub use ensemble::Ensemble;
pub use kv::{BeamKv, HistoryKv};
pub use shards::WeightFiles;
pub use sidecar::Sidecar;
pub use transformer::Transformer;

use crate::device::DTypeChoice;
use crate::util::write_atomic;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("config.json: {0}")]
    Config(String),
    #[error("genrec.json: {0}")]
    Sidecar(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("bad model input: {0}")]
    Input(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// A loaded checkpoint: the network, its config and sidecar, and identity
/// (cloning shares the weight tensors).
#[derive(Clone)]
pub struct Model {
    pub net: Transformer,
    pub config: ModelConfig,
    pub sidecar: Sidecar,
    /// Content fingerprint of the weights (first 12 hex digits), shown as the
    /// model's `version` in answers.
    pub fingerprint: String,
    /// Folder it was loaded from, if any.
    pub path: Option<PathBuf>,
}

impl Model {
    /// Name and version as shown in answers: `name/version`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.sidecar.name, self.fingerprint)
    }

    /// Loads a model folder onto `device` in f32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::load_as(dir, device, DType::F32)
    }

    /// Loads a model folder onto `device`, weights and activations in `dtype`
    /// (f32 is the reference; bf16/f16 halve the memory traffic on a GPU).
    pub fn load_as(dir: &Path, device: &Device, dtype: impl Into<DTypeChoice>) -> Result<Self, ModelError> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read(&p).map_err(|e| ModelError::Io { path: p, source: e })
        };
        let weights = WeightFiles::open(|f| {
            let p = dir.join(f);
            std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))
        })?;
        Self::load_opened(&read(CONFIG_FILE)?, &weights, &read(sidecar::SIDECAR_FILE)?, dir, device, dtype)
    }

    /// Loads a checkpoint whose files the caller opened (the engine opens
    /// them inside the model root without following links): the config and
    /// sidecar bytes, and the weight files, which are memory-mapped.
    pub fn load_opened(
        config: &[u8],
        weights: &WeightFiles,
        sidecar: &[u8],
        dir: &Path,
        device: &Device,
        dtype: impl Into<DTypeChoice>,
    ) -> Result<Self, ModelError> {
        let dtype = dtype.into().resolve(device, parameters_of(config)?);
        // the weights are mapped, not read: the tensors are made from the
        // mapped pages once, and the files are never held twice in memory
        let maps = weights
            .files
            .iter()
            // SAFETY: checkpoints are written to a temporary name and renamed;
            // a file changed in place while it loads can give wrong weights (the
            // fingerprint then no longer names them) but not unsafety in Rust
            // code that only reads the bytes.
            .map(|(name, f)| {
                unsafe { memmap2::Mmap::map(f) }.map_err(|e| ModelError::Io { path: dir.join(name), source: e })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shards: Vec<(&str, &[u8])> =
            weights.files.iter().zip(&maps).map(|((n, _), m)| (n.as_str(), &m[..])).collect();
        let mut m = Self::from_shards_as(config, &shards, weights.index.as_deref(), sidecar, device, dtype)?;
        m.path = Some(dir.to_path_buf());
        Ok(m)
    }

    /// Loads a model from the bytes of its three files, in f32.
    pub fn from_bytes(config: &[u8], weights: &[u8], sidecar: &[u8], device: &Device) -> Result<Self, ModelError> {
        Self::from_bytes_as(config, weights, sidecar, device, DType::F32)
    }

    /// [`Model::from_bytes`] in `dtype`.
    pub fn from_bytes_as(
        config: &[u8],
        weights: &[u8],
        sidecar: &[u8],
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        Self::from_shards_as(config, &[(WEIGHTS_FILE, weights)], None, sidecar, device, dtype)
    }

    /// Loads a model from its config and sidecar bytes and its weight files'
    /// bytes (`model.safetensors` alone, or the shards `index` names), in `dtype`.
    pub fn from_shards_as(
        config: &[u8],
        shards: &[(&str, &[u8])],
        index: Option<&[u8]>,
        sidecar: &[u8],
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let config: ModelConfig =
            serde_json::from_slice(config).map_err(|e| ModelError::Json { path: CONFIG_FILE.into(), source: e })?;
        let sidecar: Sidecar = serde_json::from_slice(sidecar)
            .map_err(|e| ModelError::Json { path: sidecar::SIDECAR_FILE.into(), source: e })?;
        config.validate()?;
        sidecar.check_positions(&config)?;
        let names = weights::check(shards, &config)?;
        if let Some(index) = index {
            shards::check_placement(index, &names)?;
        }
        let mut tensors = HashMap::new();
        for &(name, bytes) in shards {
            let part = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
                .map_err(|e| ModelError::Weights(format!("{name}: {e}")))?;
            for (k, v) in part {
                tensors.insert(k, v.to_dtype(dtype)?.to_device(device)?);
            }
        }
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let mut net = Transformer::load(vb, &config).map_err(|e| match e {
            ModelError::Tensor(t) => ModelError::Weights(t.to_string()),
            other => other,
        })?;
        // a loaded checkpoint serves; it is never trained further in place
        net.fuse_projections()?;
        if sidecar.min_vocab() > config.vocab_size {
            return Err(ModelError::Sidecar(format!(
                "layout needs {} tokens, vocab_size is {}",
                sidecar.min_vocab(),
                config.vocab_size
            )));
        }
        let version = shards::weights_fingerprint(shards);
        Ok(Model { net, config, sidecar, fingerprint: version, path: None })
    }

    /// The catalog folder named by the sidecar, resolved against the model folder.
    pub fn catalog_dir(&self) -> Option<PathBuf> {
        let c = Path::new(&self.sidecar.catalog);
        if c.is_absolute() {
            Some(c.to_path_buf())
        } else {
            self.path.as_ref().map(|p| p.join(c))
        }
    }
}

/// The parameter count `config.json` (its bytes) implies.
pub fn parameters_of(config: &[u8]) -> Result<usize, ModelError> {
    let cfg: ModelConfig =
        serde_json::from_slice(config).map_err(|e| ModelError::Json { path: CONFIG_FILE.into(), source: e })?;
    cfg.validate()?;
    Ok(init::tensor_shapes(&cfg)?.iter().map(|(_, s)| s.iter().product::<usize>()).sum())
}

/// A checkpoint's version: the first 12 hex digits of its weights' fingerprint.
pub fn weights_fingerprint(weights: &[u8]) -> String {
    shards::weights_fingerprint(&[(WEIGHTS_FILE, weights)])
}

/// Writes a checkpoint folder: `config.json`, `model.safetensors`, `genrec.json`.
/// The weights file is written first and the sidecar last, each atomically.
pub fn save_checkpoint(
    dir: &Path,
    config: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
    sidecar: &Sidecar,
) -> Result<(), ModelError> {
    let io = |p: &Path, e| ModelError::Io { path: p.to_path_buf(), source: e };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| ModelError::Weights(e.to_string()))?;
    let p = dir.join(WEIGHTS_FILE);
    write_atomic(&p, &bytes).map_err(|e| io(&p, e))?;
    let p = dir.join(CONFIG_FILE);
    let c = serde_json::to_vec_pretty(config).map_err(|e| ModelError::Json { path: p.clone(), source: e })?;
    write_atomic(&p, &c).map_err(|e| io(&p, e))?;
    let p = dir.join(sidecar::SIDECAR_FILE);
    let s = serde_json::to_vec_pretty(sidecar).map_err(|e| ModelError::Json { path: p.clone(), source: e })?;
    write_atomic(&p, &s).map_err(|e| io(&p, e))?;
    Ok(())
}
