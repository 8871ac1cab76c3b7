//! The generative model: a Hugging Face-format decoder checkpoint plus genrec's
//! sidecar.
//!
//! A model folder holds `config.json` (transformers' config, `architectures`
//! `LlamaForCausalLM`, `Qwen2ForCausalLM` or `Qwen3ForCausalLM`),
//! `model.safetensors` (transformers' tensor names; or shards and their index,
//! see [`shards`]) and `genrec.json` (see [`sidecar`]). How its tokens carry
//! semantic IDs, genrec's own layout or an LLM's text vocabulary with
//! semantic-ID tokens ([`llm`]), is resolved at load into a [`Vocab`].

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
pub mod llm;
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
pub mod vocab;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::ModelConfig;
pub use ensemble::Ensemble;
pub use kv::{BeamKv, HistoryKv};
pub use llm::PromptText;
pub use shards::WeightFiles;
pub use sidecar::Sidecar;
pub use transformer::Transformer;
pub use vocab::{LevelHead, Vocab};

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
    /// How its tokens carry semantic IDs (resolved from the sidecar).
    pub vocab: Vocab,
    /// Where each level's logits are in the output layer.
    pub level_heads: Vec<LevelHead>,
}

/// Reads a file the sidecar names in the model folder (none: a model given
/// as bytes, which can only have genrec's own layout).
pub type SidecarFiles<'a> = Option<&'a dyn Fn(&str) -> Result<Vec<u8>, ModelError>>;

impl Model {
    /// Assembles a model from its network, config and sidecar: resolves the
    /// sidecar's token layout (an `llm` section reads its files with `files`)
    /// and each level's output rows.
    pub fn assemble(
        net: Transformer,
        config: ModelConfig,
        mut sidecar: Sidecar,
        fingerprint: String,
        files: SidecarFiles,
    ) -> Result<Self, ModelError> {
        let vocab = resolve_vocab(&mut sidecar, &config, files)?;
        Self::with_vocab(net, config, sidecar, fingerprint, vocab)
    }

    /// This model with each level's codes read from and written to other
    /// tokens (`levels[l][code]`, below `vocab_size`): a different model,
    /// whose search takes the gathered-rows path of scattered semantic-ID
    /// tokens (the GPU check holds it to the CPU's).
    pub fn with_token_map(&self, levels: Vec<Vec<u32>>) -> Result<Model, ModelError> {
        let vocab = self.vocab.with_levels(levels);
        Self::with_vocab(self.net.clone(), self.config.clone(), self.sidecar.clone(), self.fingerprint.clone(), vocab)
    }

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
        let files = |name: &str| Self::read_sidecar_file(dir, name);
        Self::load_opened(
            &read(CONFIG_FILE)?,
            &weights,
            &read(sidecar::SIDECAR_FILE)?,
            Some(&files),
            dir,
            device,
            dtype,
        )
    }

    /// Reads a file the sidecar names, in `dir` (see
    /// [`llm::check_file_name`]: a sidecar cannot point a server at files
    /// outside its folder).
    pub fn read_sidecar_file(dir: &Path, name: &str) -> Result<Vec<u8>, ModelError> {
        llm::check_file_name(name)?;
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| ModelError::Io { path: p, source: e })
    }

    /// Loads a checkpoint whose files the caller opened (the engine opens
    /// them inside the model root without following links): the config and
    /// sidecar bytes, the weight files, which are memory-mapped, and the
    /// files an LLM layout's sidecar names, read with `files`.
    #[allow(clippy::too_many_arguments)] // each is a separately opened part of the folder
    pub fn load_opened(
        config: &[u8],
        weights: &WeightFiles,
        sidecar: &[u8],
        files: SidecarFiles,
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
        let mut m = Self::from_shards_with(config, &shards, weights.index.as_deref(), sidecar, files, device, dtype)?;
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
        Self::from_shards_with(config, shards, index, sidecar, None, device, dtype)
    }

    /// [`Model::from_shards_as`] reading the files an LLM layout's sidecar
    /// names with `files`.
    pub fn from_shards_with(
        config: &[u8],
        shards: &[(&str, &[u8])],
        index: Option<&[u8]>,
        sidecar: &[u8],
        files: SidecarFiles,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let config: ModelConfig =
            serde_json::from_slice(config).map_err(|e| ModelError::Json { path: CONFIG_FILE.into(), source: e })?;
        let mut sidecar = Sidecar::from_json(sidecar)?;
        config.validate()?;
        // (before the positions check: an LLM layout's sizes come from its files)
        let vocab = resolve_vocab(&mut sidecar, &config, files)?;
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
        Model::with_vocab(net, config, sidecar, version, vocab)
    }

    /// [`Model::assemble`] with the layout resolved already.
    fn with_vocab(
        net: Transformer,
        config: ModelConfig,
        sidecar: Sidecar,
        fingerprint: String,
        vocab: Vocab,
    ) -> Result<Self, ModelError> {
        if vocab.min_vocab() > config.vocab_size {
            return Err(ModelError::Sidecar(format!(
                "the semantic-ID tokens need {} token ids, vocab_size is {}",
                vocab.min_vocab(),
                config.vocab_size
            )));
        }
        let level_heads = vocab.level_heads(net.head_weights(), net.device())?;
        Ok(Model { net, config, sidecar, fingerprint, path: None, vocab, level_heads })
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

/// The token layout a sidecar describes. An `llm` section is loaded from its
/// files, and the sidecar's derived fields are filled from it: sizes, special
/// tokens (from `config.json`), the item map's catalog fingerprint, and the
/// catalog folder (`catalog` in the model folder when unnamed).
fn resolve_vocab(sidecar: &mut Sidecar, config: &ModelConfig, files: SidecarFiles) -> Result<Vocab, ModelError> {
    let Some(section) = &sidecar.llm else {
        // (before any range is built: a size from the file bounds an allocation)
        let fits = sidecar.code_offsets.len() == sidecar.codebook_sizes.len()
            && sidecar
                .code_offsets
                .iter()
                .zip(&sidecar.codebook_sizes)
                .all(|(&o, &s)| o as u64 + s as u64 <= config.vocab_size as u64);
        if !fits {
            return Err(ModelError::Sidecar(format!(
                "code_offsets {:?} and codebook_sizes {:?} must pair up within vocab_size {}",
                sidecar.code_offsets, sidecar.codebook_sizes, config.vocab_size
            )));
        }
        return Ok(Vocab::codes(sidecar));
    };
    if !sidecar.members.is_empty() {
        return Err(ModelError::Sidecar("an LLM layout (`llm`) is served alone: it lists no members".into()));
    }
    let files = files.ok_or_else(|| {
        ModelError::Sidecar("an LLM layout (`llm` in genrec.json) loads from its model folder".into())
    })?;
    let layout = llm::TextLayout::load(section, files)?;
    sidecar.codebook_sizes = layout.codebook_sizes();
    sidecar.code_offsets = Vec::new();
    sidecar.catalog_fingerprint = layout.catalog_fingerprint();
    let eos = config.eos_token_id.unwrap_or(0);
    sidecar.eos_token_id = eos;
    sidecar.bos_token_id = config.bos_token_id.unwrap_or(eos);
    sidecar.pad_token_id = config.pad_token_id.unwrap_or(eos);
    if sidecar.catalog.is_empty() {
        sidecar.catalog = llm::DEFAULT_CATALOG.into();
    }
    Ok(Vocab::text(std::sync::Arc::new(layout), sidecar.pad_token_id))
}

/// Positions the rotary tables hold (a model serves at most
/// `min(max_position_embeddings, this)`).
pub fn rope_positions() -> usize {
    rope::TABLE_POSITIONS
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A codes sidecar whose sizes leave the vocabulary is refused before any
    /// allocation they would size (an admin load must not abort the server).
    #[test]
    fn codebook_sizes_beyond_the_vocabulary_are_refused_not_allocated() {
        let config = include_bytes!("../../models/demo/model/config.json");
        let weights = include_bytes!("../../models/demo/model/model.safetensors");
        let mut sidecar: serde_json::Value =
            serde_json::from_slice(include_bytes!("../../models/demo/model/genrec.json")).unwrap();
        sidecar["codebook_sizes"][0] = serde_json::json!(4_000_000_000u32);
        let e = Model::from_bytes(config, weights, sidecar.to_string().as_bytes(), &Device::Cpu);
        let e = e.err().expect("refused").to_string();
        assert!(e.contains("within vocab_size"), "{e}");
    }
}
