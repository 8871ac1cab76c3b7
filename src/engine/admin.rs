//! Model changes, made off the serving path: loading and validating
//! checkpoints, the atomic swap, rollback, the watched model root. Every
//! change is serialised by one lock; readers never wait for it. (Catalog
//! edits are in [`super::edits`].)

use std::sync::Arc;
use std::time::Duration;

use super::model_root::{CheckpointDir, RootError};
use super::pair::check_pair;
use super::state::{LoadedModel, ModelInfo};
use super::{Engine, EngineError};
use crate::generate::{generate_ensemble, GenRequest, Scoring};
use crate::model::hub::{pull, HubName, HubOptions, WhenUnreachable};
use crate::model::{Ensemble, Model};

/// The Hub settings for a pull the admin API asked for: no progress bars
/// among the server's log lines. (Such a pull is made with
/// [`WhenUnreachable::Fail`]: an admin load wants what the Hub has now, not an
/// older cached revision; a name pinned to a cached commit is still read
/// from the cache.)
fn admin_hub_options() -> Result<HubOptions, EngineError> {
    Ok(HubOptions { progress: false, ..HubOptions::from_env()? })
}

/// A smoke generation that failed while validating a checkpoint.
#[derive(Debug, thiserror::Error)]
#[error("smoke generation failed: {0}")]
struct SmokeFailed(#[source] crate::generate::GenerateError);

/// A model change, as asked through the admin API.
pub(super) enum ModelOrder {
    /// Load, validate and swap in the checkpoint at this path (under the
    /// model root, or `hf:ORG/REPO[@REVISION]`).
    Load(String),
    /// Put the previous model back in service.
    Rollback,
}

impl Engine {
    fn lock_admin(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.changes.lock_admin()
    }

    /// Checks a model (every member of an ensemble) against the catalog in
    /// service and runs one smoke generation over the longest history it will
    /// be given (`max_history_items` items); the model is not swapped in.
    fn validate(&self, model: &Ensemble) -> Result<(), EngineError> {
        let cat = self.catalog();
        for m in model.members() {
            check_pair(m, &cat.catalog).map_err(EngineError::refused)?;
        }
        let longest = model.sidecar().max_history_items;
        let served: Vec<u32> = (0..cat.catalog.len() as u32).filter(|&i| cat.serves(i)).take(longest).collect();
        if served.is_empty() {
            return Ok(()); // nothing to generate over yet
        }
        let history: Vec<u32> = served.iter().copied().cycle().take(longest).collect();
        let req = GenRequest { history, k: 1, exclude: Default::default(), ..Default::default() };
        let out = generate_ensemble(&model.members(), &cat.catalog, &[req], self.opts.batch.beam, Scoring::Model)
            .map_err(|e| EngineError::refused(SmokeFailed(e)))?;
        if out.hits.first().is_none_or(|h| h.is_empty()) && cat.catalog.served_len() > 1 {
            return Err(EngineError::refused("smoke generation returned no item"));
        }
        Ok(())
    }

    /// Validates `model` (one model or an ensemble; see [`Engine::validate`])
    /// and swaps it in; the model it replaces is kept for [`Engine::rollback`].
    pub fn install(&self, model: impl Into<Ensemble>, source: String) -> Result<ModelInfo, EngineError> {
        let _g = self.lock_admin();
        self.install_locked(model.into(), source)
    }

    fn install_locked(&self, model: Ensemble, source: String) -> Result<ModelInfo, EngineError> {
        self.validate(&model)?;
        let loaded = Arc::new(LoadedModel::new(model, source));
        let info = loaded.info();
        let old = self.serving.model.swap(Some(loaded));
        *self.changes.previous.lock() = old;
        tracing::info!(model = %info.name, version = %info.version, source = %info.source, "model in service");
        Ok(info)
    }

    /// Opens a checkpoint folder under the model root (relative to it, or
    /// absolute under it) without following links: 403 for a path outside
    /// the root and for one that does not exist alike.
    fn open_checkpoint(&self, path: &str) -> Result<CheckpointDir, EngineError> {
        let root = self.changes.model_root.as_ref().ok_or_else(|| {
            EngineError::Forbidden("no --model-root is configured: checkpoints cannot be loaded".into())
        })?;
        root.open(path).map_err(|e| match e {
            e @ RootError::Invalid(_) => EngineError::refused(e),
            other => EngineError::Forbidden(other.to_string()),
        })
    }

    /// Loads, validates and swaps in the checkpoint at `path` (under the model
    /// root). Blocking: call it off the async runtime.
    /// With a replica feed, the change goes through the feed: every replica
    /// loads it, and this call answers with what this replica made of it.
    /// `path` may also name a checkpoint on the Hub (`hf:ORG/REPO[@REVISION]`,
    /// see [`crate::model::hub`]): it is pulled into the Hugging Face cache
    /// first, and replicas are sent the name pinned to its commit, so that
    /// all of them serve the same files.
    pub fn load_checkpoint(&self, path: &str) -> Result<ModelInfo, EngineError> {
        self.submit_model(ModelOrder::Load(path.to_string()))
    }

    /// Puts the previous model back in service (the current one becomes the
    /// previous, so a second rollback undoes the first).
    /// With a replica feed, every replica goes back to the model this
    /// replica's previous one was loaded from.
    pub fn rollback(&self) -> Result<ModelInfo, EngineError> {
        self.submit_model(ModelOrder::Rollback)
    }

    /// Carries out a model change on this engine (the local write path).
    pub(super) fn apply_model_order(&self, order: ModelOrder) -> Result<ModelInfo, EngineError> {
        match order {
            ModelOrder::Load(path) => self.load_checkpoint_here(&path),
            ModelOrder::Rollback => self.rollback_here(),
        }
    }

    /// The name a feed record gives a checkpoint so that every replica loads
    /// the same files: a Hub name pinned to the commit it resolves to now
    /// (pulled here first), or a folder under the model root (checked here).
    pub(super) fn shareable_checkpoint(&self, path: &str) -> Result<String, EngineError> {
        match HubName::parse_if_hub(path)? {
            Some(name) => Ok(pull(&name, &admin_hub_options()?, WhenUnreachable::Fail)?.pinned().to_string()),
            None => {
                self.open_checkpoint(path)?;
                Ok(path.to_string())
            }
        }
    }

    /// [`Engine::load_checkpoint`] on this engine alone.
    pub(super) fn load_checkpoint_here(&self, path: &str) -> Result<ModelInfo, EngineError> {
        if let Some(name) = HubName::parse_if_hub(path)? {
            return self.load_from_hub(&name);
        }
        let dir = self.open_checkpoint(path)?;
        let _g = self.lock_admin();
        let lead = self.load_opened(&dir)?;
        // an ensemble's members: folders under the lead's, opened from its
        // handle (no link followed)
        let member_error = |rel: &str, e: String| crate::model::ModelError::Sidecar(format!("member {rel}: {e}"));
        let model = Ensemble::with_members(lead, |rel| {
            let member = dir.open_below(rel).map_err(|e| member_error(rel, e.to_string()))?;
            self.load_opened(&member).map_err(|e| member_error(rel, e.to_string()))
        })
        .map_err(EngineError::refused)?;
        self.install_locked(model, dir.path().display().to_string())
    }

    /// Pulls a checkpoint from the Hub (outside the admin lock: a download
    /// does not hold other changes back), then loads, validates and swaps it
    /// in. Its files are read from the Hugging Face cache, whose snapshot
    /// folders are links into the cache's blobs; the model root does not
    /// apply.
    fn load_from_hub(&self, name: &HubName) -> Result<ModelInfo, EngineError> {
        let pulled = pull(name, &admin_hub_options()?, WhenUnreachable::Fail)?;
        let _g = self.lock_admin();
        let model = Ensemble::load_as(&pulled.dir, &self.opts.device, self.opts.dtype)
            .map_err(|e| EngineError::refused(format!("{name}: {e}")))?;
        self.install_locked(model, pulled.pinned().to_string())
    }

    /// Loads the model in an opened checkpoint folder onto the engine's device.
    fn load_opened(&self, dir: &CheckpointDir) -> Result<Model, EngineError> {
        let read = |f: &str| dir.read(f).map_err(EngineError::refused);
        let (config, sidecar) = (read(crate::model::CONFIG_FILE)?, read(crate::model::sidecar::SIDECAR_FILE)?);
        let weights = crate::model::WeightFiles::open(|f| dir.file(f)).map_err(EngineError::refused)?;
        // an LLM layout's tokenizer, item map and prompt: plain files of the
        // folder too
        let files = |f: &str| {
            crate::model::llm::check_file_name(f)?;
            dir.read(f).map_err(|e| crate::model::ModelError::Sidecar(e.to_string()))
        };
        Model::load_opened(&config, &weights, &sidecar, Some(&files), dir.path(), &self.opts.device, self.opts.dtype)
            .map_err(EngineError::refused)
    }

    /// The model in service and the one before it.
    pub fn models(&self) -> (Option<ModelInfo>, Option<ModelInfo>) {
        let prev = self.changes.previous.lock().as_ref().map(|m| m.info());
        (self.model().map(|m| m.info()), prev)
    }

    /// [`Engine::rollback`] on this engine alone.
    pub(super) fn rollback_here(&self) -> Result<ModelInfo, EngineError> {
        let _g = self.lock_admin();
        let mut prev = self.changes.previous.lock();
        let back =
            prev.take().ok_or_else(|| EngineError::Conflict("there is no previous model to roll back to".into()))?;
        let cat = self.catalog();
        if let Err(e) = back.model.members().into_iter().try_for_each(|m| check_pair(m, &cat.catalog)) {
            *prev = Some(back);
            return Err(e);
        }
        let info = back.info();
        *prev = self.serving.model.swap(Some(back));
        tracing::info!(version = %info.version, "rolled back");
        Ok(info)
    }

    /// Watches the model root (see [`super::watch`]) every `every` until the
    /// engine is dropped; `None` without a model root.
    pub fn watch(self: &Arc<Self>, every: Duration) -> Option<std::thread::JoinHandle<()>> {
        super::watch::spawn(Arc::downgrade(self), self.changes.model_root.clone()?, every)
    }
}
