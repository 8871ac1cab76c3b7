//! What the serving side shares between its kinds of request: how a queued
//! generation ended and waiting for it, the shares an answer is split into,
//! and turning generated hits into answer items.

use std::time::Instant;

use super::request::{ItemSource, RecItem};
use super::scheduler;
use super::state::ServedCatalog;
use crate::catalog::Catalog;
use crate::coldstart::IntentWeight;
use crate::generate::Hit;

/// One share of an answer: `k` items from an intent's sub-trie, or from the
/// history's own generation (or ANN recall) when `intent` is `None`.
pub(super) struct Share<'a> {
    pub(super) intent: Option<&'a IntentWeight>,
    pub(super) k: usize,
}

/// Generated items that the catalog still serves and that are live at `now_ms`.
pub(super) fn items_of(cat: &ServedCatalog, hits: Vec<Hit>, source: ItemSource, now_ms: u64) -> Vec<RecItem> {
    hits.into_iter()
        .filter(|h| cat.catalog.is_live(h.item, now_ms))
        .map(|h| RecItem::new(&cat.catalog, h.item, h.score, source))
        .collect()
}

/// How a queued generation ended.
pub(super) enum Generation {
    Done(Vec<Hit>, usize),
    Failed(scheduler::SharedError),
    Stopped,
    /// The deadline passed first.
    Late,
}

pub(super) async fn wait(rx: tokio::sync::oneshot::Receiver<scheduler::JobResult>, deadline: Instant) -> Generation {
    match tokio::time::timeout_at(deadline.into(), rx).await {
        Ok(Ok(Ok((hits, tokens)))) => Generation::Done(hits, tokens),
        Ok(Ok(Err(e))) => Generation::Failed(e),
        Ok(Err(_)) => Generation::Stopped,
        Err(_) => Generation::Late,
    }
}

/// Items a twin search placed in an answer, and which twin ([`super::explore`]).
pub(super) type Marks = std::collections::HashMap<u32, ItemSource>;

/// Marks the items that twin searches added (exploration, trending).
pub(super) fn mark_sources(items: &mut [RecItem], c: &Catalog, marks: &Marks) {
    if marks.is_empty() {
        return;
    }
    for it in items.iter_mut() {
        if let Some(source) = c.index_of(&it.item_id).and_then(|i| marks.get(&i)) {
            it.source = *source;
        }
    }
}
