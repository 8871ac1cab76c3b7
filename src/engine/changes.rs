//! The changing side of the engine: catalog edits, compaction and model
//! changes, made through one write path chosen when the engine starts
//! ([`WritePath`]). Each operation is written once ([`super::edits`],
//! [`super::admin`]); it turns what was asked into item edits or a model
//! change and hands them to [`Engine::submit_items`] or
//! [`Engine::submit_model`], the only places that look at the write path.
//! Locally they are applied at once; on a replica they are appended to the
//! feed, and the feed thread applies them here with the same functions, in
//! feed order, like every other replica.
//!
//! Edits run on a small pool of threads below serving's CPU priority
//! ([`super::edit_pool`]).

use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;

use super::admin::ModelOrder;
use super::edit_pool::{EditJob, EditPool};
use super::edits::{CompactReport, ItemDone, Writer};
use super::model_root::ModelRoot;
use super::replica::Replica;
use super::state::{LoadedModel, ModelInfo, ServedCatalog};
use super::{Engine, EngineError, EngineOptions};
use crate::feed::record::ItemEdit;
use crate::feed::Position;

/// Where changes go, chosen once when the engine starts.
pub enum WritePath {
    /// Applied here: logged to the catalog folder when it is open for
    /// writing, kept in memory otherwise (see [`super::edits::EditStore`]).
    Local,
    /// Appended to the replica feed; the feed thread applies them here, as
    /// every replica does.
    Replicated(Arc<Replica>),
}

/// The changing side's state.
pub struct Changes {
    pub(super) path: WritePath,
    /// The edit side of the catalog: the newest view, the edit log, views
    /// waiting for a sync.
    writer: Mutex<Writer>,
    /// The model a rollback puts back.
    pub(super) previous: Mutex<Option<Arc<LoadedModel>>>,
    /// Serialises model changes.
    admin_lock: Mutex<()>,
    /// Threads that run edits, below serving's priority.
    edit_pool: EditPool,
    /// `--model-root`, resolved once at start.
    pub(super) model_root: Option<ModelRoot>,
}

impl Changes {
    pub(super) fn new(path: WritePath, writer: Writer, opts: &EngineOptions) -> Result<Self, EngineError> {
        let model_root = match &opts.model_root {
            Some(p) => Some(ModelRoot::new(p).map_err(EngineError::refused)?),
            None => None,
        };
        Ok(Changes {
            path,
            writer: Mutex::new(writer),
            previous: Mutex::new(None),
            admin_lock: Mutex::new(()),
            edit_pool: EditPool::start().map_err(EngineError::Worker)?,
            model_root,
        })
    }

    pub(super) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock()
    }

    pub(super) fn lock_admin(&self) -> MutexGuard<'_, ()> {
        self.admin_lock.lock()
    }

    /// The replica this engine is, if it follows a feed.
    pub(super) fn replica(&self) -> Option<&Arc<Replica>> {
        match &self.path {
            WritePath::Local => None,
            WritePath::Replicated(rep) => Some(rep),
        }
    }
}

impl Engine {
    pub(super) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.changes.lock_writer()
    }

    /// Makes `served` the newest view and serves it; returns the edit lock,
    /// still held (a replica moves its position under it).
    pub(super) fn publish_head(&self, served: Arc<ServedCatalog>) -> MutexGuard<'_, Writer> {
        let mut w = self.lock_writer();
        w.head = served.clone();
        self.serving.catalog.store(served);
        w
    }

    /// Item edits through the write path: each one's outcome, in order, and
    /// with a feed, the position of the last record (applied here; another
    /// replica has applied it once its `/readyz` position is at or past it).
    #[allow(clippy::type_complexity)]
    pub(super) fn submit_items(
        &self,
        edits: Vec<ItemEdit>,
    ) -> Result<(Vec<Result<ItemDone, EngineError>>, Option<Position>), EngineError> {
        match &self.changes.path {
            WritePath::Local => Ok((self.apply_items_here(edits)?, None)),
            WritePath::Replicated(rep) => self.publish_items(rep.as_ref(), edits).map(|(out, p)| (out, Some(p))),
        }
    }

    /// A model change through the write path: what this engine made of it.
    pub(super) fn submit_model(&self, order: ModelOrder) -> Result<ModelInfo, EngineError> {
        match &self.changes.path {
            WritePath::Local => self.apply_model_order(order),
            WritePath::Replicated(rep) => self.publish_model_order(rep.as_ref(), order),
        }
    }

    /// Writes the live edits into a new catalog version: this engine's own
    /// folder ([`Engine::compact_here`]), or the replicas' shared folder under
    /// the feed's compaction lease. Blocking: run it off the async runtime.
    pub fn compact(&self) -> Result<CompactReport, EngineError> {
        match &self.changes.path {
            WritePath::Local => self.compact_here(),
            WritePath::Replicated(rep) => self.compact_shared(rep.as_ref()),
        }
    }

    /// Runs a catalog edit on the edit pool (lower CPU priority than
    /// serving) and waits for it without blocking the async runtime.
    pub async fn edit<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let job: EditJob = Box::new(move || {
            let _ = tx.send(f(&me));
        });
        if !self.changes.edit_pool.send(job) {
            return Err(EngineError::Stopped);
        }
        rx.await.map_err(|_| EngineError::Stopped)?
    }
}
