//! Model changes, made off the serving path: loading and validating
//! checkpoints, the atomic swap, rollback, the watched model root. Every
//! change is serialised by one lock; readers never wait for it. (Catalog
//! edits are in [`super::edits`].)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::pair::check_pair;
use super::state::{LoadedModel, ModelInfo};
use super::{Engine, EngineError};
use crate::catalog::embed::TextEncoder;
use crate::generate::{generate, GenRequest};
use crate::model::Model;

/// Files a checkpoint folder must hold.
const CHECKPOINT_FILES: [&str; 3] = ["config.json", "model.safetensors", "genrec.json"];

impl Engine {
    fn lock_admin(&self) -> std::sync::MutexGuard<'_, ()> {
        self.admin_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a model against the catalog in service and runs one smoke
    /// generation over the longest history it will be given
    /// (`max_history_items` items); the model is not swapped in.
    fn validate(&self, model: &Model) -> Result<(), EngineError> {
        let cat = self.catalog();
        check_pair(model, &cat.catalog).map_err(|e| EngineError::Refused(e.to_string()))?;
        let longest = model.sidecar.max_history_items;
        let served: Vec<u32> = (0..cat.catalog.len() as u32).filter(|&i| cat.serves(i)).take(longest).collect();
        if served.is_empty() {
            return Ok(()); // nothing to generate over yet
        }
        let history: Vec<u32> = served.iter().copied().cycle().take(longest).collect();
        let req = GenRequest { history, k: 1, exclude: Default::default(), within: Vec::new() };
        let out = generate(model, &cat.catalog, &[req], self.opts.batch.beam)
            .map_err(|e| EngineError::Refused(format!("smoke generation failed: {e}")))?;
        if out.hits.first().is_none_or(|h| h.is_empty()) && cat.catalog.served_len() > 1 {
            return Err(EngineError::Refused("smoke generation returned no item".into()));
        }
        Ok(())
    }

    /// Validates `model` (see [`Engine::validate`]) and swaps it in; the model
    /// it replaces is kept for [`Engine::rollback`].
    pub fn install(&self, model: Model, source: String) -> Result<ModelInfo, EngineError> {
        let _g = self.lock_admin();
        self.install_locked(model, source)
    }

    fn install_locked(&self, model: Model, source: String) -> Result<ModelInfo, EngineError> {
        self.validate(&model)?;
        let loaded = Arc::new(LoadedModel::new(model, source));
        let info = loaded.info();
        let old = self.model.swap(Some(loaded));
        *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = old;
        tracing::info!(model = %info.name, version = %info.version, source = %info.source, "model in service");
        Ok(info)
    }

    /// Resolves a checkpoint path (relative to the model root, or absolute)
    /// and refuses anything outside the root.
    pub fn checkpoint_dir(&self, path: &str) -> Result<PathBuf, EngineError> {
        let root = self
            .opts
            .model_root
            .as_ref()
            .ok_or_else(|| EngineError::Forbidden("no --model-root is configured: checkpoints cannot be loaded".into()))?;
        let root = root
            .canonicalize()
            .map_err(|e| EngineError::Forbidden(format!("model root {}: {e}", root.display())))?;
        let asked = Path::new(path);
        let joined = if asked.is_absolute() { asked.to_path_buf() } else { root.join(asked) };
        let dir = joined.canonicalize().map_err(|e| EngineError::Refused(format!("{path}: {e}")))?;
        if !dir.starts_with(&root) || dir == root {
            return Err(EngineError::Forbidden(format!("{path} is not a folder under the model root")));
        }
        Ok(dir)
    }

    /// Loads, validates and swaps in the checkpoint at `path` (under the model
    /// root). Blocking: call it off the async runtime.
    pub fn load_checkpoint(&self, path: &str) -> Result<ModelInfo, EngineError> {
        let dir = self.checkpoint_dir(path)?;
        for f in CHECKPOINT_FILES {
            if !dir.join(f).is_file() {
                return Err(EngineError::Refused(format!("{} has no {f}", dir.display())));
            }
        }
        let _g = self.lock_admin();
        let model = Model::load_as(&dir, &self.opts.device, self.opts.dtype).map_err(|e| EngineError::Refused(e.to_string()))?;
        self.install_locked(model, dir.display().to_string())
    }

    /// The model in service and the one before it.
    pub fn models(&self) -> (Option<ModelInfo>, Option<ModelInfo>) {
        let prev = self.previous.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|m| m.info());
        (self.model().map(|m| m.info()), prev)
    }

    /// Puts the previous model back in service (the current one becomes the
    /// previous, so a second rollback undoes the first).
    pub fn rollback(&self) -> Result<ModelInfo, EngineError> {
        let _g = self.lock_admin();
        let mut prev = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        let back = prev.take().ok_or_else(|| EngineError::Conflict("there is no previous model to roll back to".into()))?;
        if let Err(e) = check_pair(&back.model, &self.catalog().catalog) {
            *prev = Some(back);
            return Err(e);
        }
        let info = back.info();
        *prev = self.model.swap(Some(back));
        tracing::info!(version = %info.version, "rolled back");
        Ok(info)
    }

    pub(super) fn encoder(&self) -> Result<Arc<TextEncoder>, EngineError> {
        let mut slot = self.encoder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let dir = self.opts.encoder.as_ref().ok_or_else(|| EngineError::InvalidField {
            field: "text",
            message: "no sentence encoder is configured: send an embedding".into(),
        })?;
        let enc = TextEncoder::load(dir).map_err(|e| EngineError::InvalidField {
            field: "text",
            message: format!("the sentence encoder is not available ({e}): run scripts/fetch-models.sh or send an embedding"),
        })?;
        let enc = Arc::new(enc);
        *slot = Some(enc.clone());
        Ok(enc)
    }

    /// Watches the model root: every `every`, the newest checkpoint folder
    /// under it (by the time of its `model.safetensors`) is loaded when it is
    /// newer than the model in service. A folder that fails validation is
    /// reported once and skipped until its files change. Runs until the
    /// engine is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) -> Option<std::thread::JoinHandle<()>> {
        let root = self.opts.model_root.clone()?;
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("genrec-watch".into())
            .spawn(move || {
                let mut refused: Option<(PathBuf, SystemTime)> = None;
                loop {
                    std::thread::sleep(every);
                    let Some(engine) = weak.upgrade() else { return };
                    let Some((dir, mtime)) = newest_checkpoint(&root) else { continue };
                    let current = engine.model().map(|m| (m.source.clone(), m.loaded_at));
                    let newer = match &current {
                        Some((src, at)) => Path::new(src) != dir && mtime > *at,
                        None => true,
                    };
                    if !newer || refused.as_ref() == Some(&(dir.clone(), mtime)) {
                        continue;
                    }
                    match engine.load_checkpoint(&dir.to_string_lossy()) {
                        Ok(info) => tracing::info!(version = %info.version, "watch: loaded {}", dir.display()),
                        Err(e) => {
                            tracing::warn!(error = %e, "watch: refused {}", dir.display());
                            refused = Some((dir, mtime));
                        }
                    }
                }
            })
            .ok()
    }
}

/// The checkpoint folder directly under `root` with the newest weights.
fn newest_checkpoint(root: &Path) -> Option<(PathBuf, SystemTime)> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| CHECKPOINT_FILES.iter().all(|f| e.path().join(f).is_file()))
        .filter_map(|e| {
            let t = e.path().join("model.safetensors").metadata().ok()?.modified().ok()?;
            Some((e.path(), t))
        })
        .max_by_key(|(_, t)| *t)
}
