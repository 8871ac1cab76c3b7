//! The on-disk layout of one catalog version (`genrec-catalog/2`): a folder of
//! flat little-endian arrays that the server memory-maps as they are, and a
//! small JSON manifest written last (a folder with a manifest is complete).
//!
//! | file | contents |
//! |---|---|
//! | `manifest.json` | [`Manifest`]: sizes, codebook sizes, fingerprint, version, last edit |
//! | `ids.offsets`, `ids.bytes` | item ids: `u64 [rows + 1]` offsets into UTF-8 bytes |
//! | `titles.offsets`, `titles.bytes` | item titles, the same way |
//! | `sids.u32` | semantic IDs `[rows × levels]` |
//! | `embeddings.f16` (or `.f32`) | unit-norm item embeddings `[rows × dim]` |
//! | `codebooks.f32` | k-means codebooks, level after level `[codes × dim]` (absent for imported IDs) |
//! | `idmap.u32` | id → row hash table (see [`super::idmap`]) |
//! | `removed.u32` | sorted rows kept for their index but not served |
//! | `expiry.rows.u32`, `expiry.ms.u64` | served rows with a lifetime, sorted, and their expiry (ms since the epoch; absent when none) |
//! | `trie.{level_start,child_start,child_code,leaf_item}.u32` | the trie's CSR arrays |
//! | `intents.json` | first-level cluster labels |
//! | `ivf.*`, `embeddings.ivf.f16` | the ANN index: its quantiser, lists and the served rows in cell order (see [`crate::recall::ivf`]) |

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::array::{write_array, Array};
use super::base::{Base, Embeddings};
use super::idmap::IdMap;
use super::strings::StringTable;
use super::trie::Trie;
use super::CatalogError;
use crate::util::Fnv64;

/// The format of a version folder.
pub const FORMAT: &str = "genrec-catalog/2";
pub const MANIFEST_FILE: &str = "manifest.json";

/// A catalog version's JSON manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub name: String,
    /// Rows (item indices) in the version, served or not.
    pub num_items: usize,
    /// Codes per level; the last level is the collision code.
    pub codebook_sizes: Vec<u32>,
    pub embedding_dim: usize,
    /// Where the embeddings came from (encoder name or the file given).
    pub embedder: String,
    pub seed: u64,
    /// Fingerprint of the item ids and semantic IDs the catalog was indexed
    /// with; model sidecars name it. Compactions keep it: live edits reuse the
    /// codebooks, so models trained on the indexed catalog stay valid.
    pub fingerprint: String,
    /// Version number (1 for `genrec index`, +1 per compaction; 0: a legacy
    /// `genrec-catalog/1` folder).
    #[serde(default)]
    pub version: u64,
    /// Id of the last edit this version contains (0: none).
    #[serde(default)]
    pub last_edit_id: u64,
    /// `f16` or `f32` (`embeddings.f16` / `.f32`).
    #[serde(default = "default_dtype")]
    pub embedding_dtype: String,
    /// Rows in `removed.u32`.
    #[serde(default)]
    pub removed_rows: usize,
    /// Rows in `expiry.rows.u32` and `expiry.ms.u64` (served items with a
    /// lifetime, [`super::expiry`]).
    #[serde(default)]
    pub expiring_rows: usize,
    /// Rows when `genrec index` wrote the catalog (kept by compactions): the
    /// items a model trained on it knows; rows after them were added live.
    /// Absent (older folders): the base version's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexed_rows: Option<usize>,
    /// Whether `codebooks.f32` is there (not for imported semantic IDs).
    #[serde(default)]
    pub has_codebooks: bool,
    /// The replica feed's position this version covers (`genrec serve
    /// --feed`): replicas that open it replay the feed after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_position: Option<String>,
}

fn default_dtype() -> String {
    "f32".into()
}

impl Manifest {
    /// The manifest of version 1 of a new catalog (f32 embeddings in memory).
    pub fn new(
        name: &str,
        num_items: usize,
        codebook_sizes: Vec<u32>,
        embedding_dim: usize,
        embedder: &str,
        seed: u64,
        fingerprint: String,
    ) -> Self {
        Manifest {
            format: FORMAT.into(),
            name: name.into(),
            num_items,
            codebook_sizes,
            embedding_dim,
            embedder: embedder.into(),
            seed,
            fingerprint,
            version: 1,
            last_edit_id: 0,
            embedding_dtype: "f32".into(),
            removed_rows: 0,
            expiring_rows: 0,
            indexed_rows: Some(num_items),
            has_codebooks: false,
            feed_position: None,
        }
    }

    pub fn levels(&self) -> usize {
        self.codebook_sizes.len()
    }
}

/// Fingerprint of the id → semantic-ID mapping, in row order.
pub fn catalog_fingerprint<S: AsRef<str>>(item_ids: &[S], sids: &[u32]) -> String {
    fingerprint_of(item_ids.iter().map(|s| s.as_ref()), sids)
}

/// [`catalog_fingerprint`] over ids as they come (no list of them held).
pub fn fingerprint_of<'a>(item_ids: impl Iterator<Item = &'a str>, sids: &[u32]) -> String {
    let mut h = Fnv64::default();
    for id in item_ids {
        h.update(id.as_bytes());
        h.update(&[0]);
    }
    for s in sids {
        h.update(&s.to_le_bytes());
    }
    h.hex()
}

/// Writes `bytes` to `path` and syncs it (files inside a version folder that
/// is renamed into place when complete need no temporary name of their own).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
    let mut f = File::create(path).map_err(|e| CatalogError::io(path, e))?;
    f.write_all(bytes).and_then(|_| crate::util::sync_file(&f, path)).map_err(|e| CatalogError::io(path, e))
}

/// Syncs a folder, so that the names created in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), CatalogError> {
    crate::util::sync_dir(dir).map_err(|e| CatalogError::io(dir, e))
}

/// Writes the manifest (last: it marks the folder complete) and syncs the folder.
pub fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), CatalogError> {
    let p = dir.join(MANIFEST_FILE);
    let bytes = serde_json::to_vec_pretty(m).map_err(|e| CatalogError::Json { path: p.clone(), source: e })?;
    write_file(&p, &bytes)?;
    sync_dir(dir)
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, CatalogError> {
    let p = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&p).map_err(|e| CatalogError::io(&p, e))?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| CatalogError::Json { path: p.clone(), source: e })?;
    if m.format != FORMAT {
        return Err(CatalogError::Format(format!("{}: format {:?}, expected {FORMAT:?}", p.display(), m.format)));
    }
    if m.codebook_sizes.is_empty() || m.codebook_sizes.contains(&0) || m.embedding_dim == 0 {
        return Err(CatalogError::Format(format!(
            "{}: codebook sizes and the embedding dimension must be positive",
            p.display()
        )));
    }
    Ok(m)
}

impl Base {
    /// Writes every file of the version into `dir` (which must exist), the
    /// manifest last.
    pub fn write(&self, dir: &Path) -> Result<(), CatalogError> {
        match &self.embeddings {
            Embeddings::F32(a) => write_array(&dir.join("embeddings.f32"), a)?,
            Embeddings::F16(a) => write_array(&dir.join("embeddings.f16"), a)?,
        }
        self.write_all_but_embeddings(dir)
    }

    /// [`Base::write`] without the embeddings file (written already, by a
    /// writer that streams them).
    pub fn write_all_but_embeddings(&self, dir: &Path) -> Result<(), CatalogError> {
        self.ids.write(dir, "ids")?;
        self.titles.write(dir, "titles")?;
        write_array(&dir.join("sids.u32"), &self.sids)?;
        if !self.codebooks.is_empty() {
            write_array(&dir.join("codebooks.f32"), &self.codebooks.concat())?;
        }
        write_array(&dir.join("idmap.u32"), self.idmap.slots())?;
        write_array(&dir.join("removed.u32"), &self.removed)?;
        if !self.expiry.is_empty() {
            self.expiry.write(dir)?;
        }
        self.trie.write(dir)?;
        super::intents::save(&self.intents, dir)?;
        let mut m = self.manifest.clone();
        m.format = FORMAT.into();
        m.embedding_dtype = self.embeddings.dtype().into();
        m.removed_rows = self.removed.len();
        m.expiring_rows = self.expiry.len();
        m.has_codebooks = !self.codebooks.is_empty();
        write_manifest(dir, &m)
    }

    /// Maps a version folder written by [`Base::write`] (or the indexer).
    pub fn map(dir: &Path) -> Result<Self, CatalogError> {
        let manifest = read_manifest(dir)?;
        let n = manifest.num_items;
        let dim = manifest.embedding_dim;
        let levels = manifest.levels();
        let ids = StringTable::map(dir, "ids", n)?;
        let titles = StringTable::map(dir, "titles", n)?;
        let sids = Array::<u32>::map(&dir.join("sids.u32"), n * levels)?;
        let embeddings = match manifest.embedding_dtype.as_str() {
            "f16" => Embeddings::F16(Array::map(&dir.join("embeddings.f16"), n * dim)?),
            "f32" => Embeddings::F32(Array::map(&dir.join("embeddings.f32"), n * dim)?),
            other => return Err(CatalogError::Format(format!("{}: embedding dtype {other:?}", dir.display()))),
        };
        let codebooks = if manifest.has_codebooks {
            let rows: usize = manifest.codebook_sizes[..levels - 1].iter().map(|&s| s as usize).sum();
            let all = Array::<f32>::map(&dir.join("codebooks.f32"), rows * dim)?;
            let mut out = Vec::new();
            let mut at = 0;
            for &s in &manifest.codebook_sizes[..levels - 1] {
                out.push(all[at..at + s as usize * dim].to_vec());
                at += s as usize * dim;
            }
            out
        } else {
            Vec::new()
        };
        let idmap = IdMap::map(&dir.join("idmap.u32"), super::idmap::slots_for(n))?;
        let removed = Array::<u32>::map(&dir.join("removed.u32"), manifest.removed_rows)?;
        let expiry = super::expiry::BaseExpiry::map(dir, manifest.expiring_rows)?;
        let trie = Trie::map(dir, &manifest.codebook_sizes)?;
        let first = manifest.codebook_sizes[0];
        let intents = super::intents::load(dir, first)?.unwrap_or_default();
        let base = Base {
            manifest,
            ids,
            titles,
            sids,
            embeddings,
            codebooks,
            trie,
            idmap,
            intents,
            removed,
            expiry,
            source: Some(dir.to_path_buf()),
        };
        base.check().map_err(|e| CatalogError::Format(format!("{}: {e}", dir.display())))?;
        Ok(base)
    }
}
