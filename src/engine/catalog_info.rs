//! What the admin API shows of the catalog: one item (`GET
//! /admin/items/{id}`) and the served version with its pending edits and
//! edit log (`GET /admin/catalog`). Split from [`super::edits`], which makes
//! the changes these describe.

use super::{Engine, EngineError};

/// An item as `GET /admin/items/{id}` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ItemInfo {
    pub item_id: String,
    pub title: String,
    pub semantic_id: Vec<u32>,
    /// Whether the item is served now (false: removed or expired, kept
    /// until compaction).
    pub served: bool,
    /// When it stops (stopped) being served, RFC 3339 UTC; absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The same, ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Its engagement right now (`POST /v1/events`).
    pub rates: super::events::ItemRates,
}

impl Engine {
    /// An item as the admin API shows it (served or not).
    pub fn item(&self, id: &str) -> Result<ItemInfo, EngineError> {
        let cat = self.catalog();
        let c = &cat.catalog;
        let i = c.index_of(id).ok_or_else(|| EngineError::NotFound(format!("item {id:?} is not in the catalog")))?;
        let expires_at_ms = c.expires_at(i);
        Ok(ItemInfo {
            item_id: id.to_string(),
            title: c.title(i).to_string(),
            semantic_id: c.sid(i).to_vec(),
            served: c.is_live(i, self.now_ms()),
            expires_at: expires_at_ms.map(crate::catalog::expiry::format_rfc3339),
            expires_at_ms,
            rates: self.item_rates(i),
        })
    }

    /// The catalog's state for `GET /admin/catalog`: version, sizes, bytes of
    /// each part in memory (mapped parts count whole), the edits pending
    /// compaction and the edit log.
    pub fn catalog_info(&self) -> CatalogInfo {
        let cat = self.catalog();
        let c = &cat.catalog;
        let m = c.manifest();
        let w = self.lock_writer();
        CatalogInfo {
            name: m.name.clone(),
            version: m.version,
            fingerprint: m.fingerprint.clone(),
            rows: c.len(),
            served: c.served_len(),
            codebook_sizes: m.codebook_sizes.clone(),
            embedding_dim: m.embedding_dim,
            last_edit_id: c.last_edit_id(),
            overlay_items: c.overlay().len(),
            trie_patch_nodes: c.overlay().trie().added_nodes(&c.base().trie),
            fullness: c.fullness(),
            ann: AnnInfo {
                cells: cat.ann.ivf().cells(),
                probes: cat.ann.probes(),
                base: cat.ann.base_len(),
                added: cat.ann.added_len(),
                memory_bytes: cat.ann.memory(),
            },
            bytes: c.base().memory().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            durable: w.store.is_some() || self.changes.replica().is_some(),
            compacting: w.compacting(),
            log: w.store.as_ref().map(|s| LogInfo { path: s.log.path().display().to_string(), bytes: s.log.len() }),
            segments: w.store.as_ref().and_then(|s| s.dir.as_ref()).map(|d| d.segments().list().to_vec()),
            feed: self.feed_info(),
        }
    }
}

/// `GET /admin/catalog`: the served catalog version and its pending edits.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CatalogInfo {
    pub name: String,
    /// Catalog version (a compaction writes the next one).
    pub version: u64,
    pub fingerprint: String,
    /// Items with a row: served ones and removed ones kept until compaction.
    pub rows: usize,
    pub served: usize,
    pub codebook_sizes: Vec<u32>,
    pub embedding_dim: usize,
    /// Id of the last edit applied (0: none since the catalog was built).
    pub last_edit_id: u64,
    /// Items added, changed or removed since the version was written.
    pub overlay_items: usize,
    /// Trie nodes the pending edits added.
    pub trie_patch_nodes: usize,
    /// How full the semantic-ID prefixes are (see `catalog::fullness`).
    pub fullness: crate::catalog::fullness::Fullness,
    pub ann: AnnInfo,
    /// Bytes of each part of the version (memory-mapped parts count whole).
    pub bytes: std::collections::BTreeMap<String, usize>,
    /// Whether edits are durable before they are acknowledged: in the edit
    /// log, or (with `--feed`) in the replica feed.
    pub durable: bool,
    /// A compaction or a fold runs.
    pub compacting: bool,
    /// The edit log (null when edits are kept in memory only, or in the feed).
    #[schema(required = true)]
    pub log: Option<LogInfo>,
    /// The segments on the version, oldest first: edit logs folded (see
    /// `catalog::segments`). Null without a catalog folder, and while a fold
    /// or compaction runs.
    #[schema(required = true)]
    pub segments: Option<Vec<crate::catalog::segments::SegmentInfo>>,
    /// The replica feed this server follows (absent without `--feed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<super::replica::FeedInfo>,
}

/// The ANN index's sizes (see [`crate::recall`]).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AnnInfo {
    /// Cells of the IVF index.
    pub cells: usize,
    /// Cells a query probes (for `serve --ann-recall`).
    pub probes: usize,
    /// Items in the lists written with the catalog version.
    pub base: usize,
    /// Vectors added since (live edits).
    pub added: usize,
    /// Bytes held in memory (mapped files not counted).
    pub memory_bytes: usize,
}

/// The edit log.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LogInfo {
    pub path: String,
    pub bytes: u64,
}
