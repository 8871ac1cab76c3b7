//! The first catalog format (`genrec-catalog/1`), read for the embedded demo
//! model and folders written before `genrec-catalog/2`: a JSON manifest
//! (`catalog.json`), the item ids and titles (`items.json`) and the tensors
//! (`catalog.safetensors`: `semantic_ids` U32 `[items × levels]`, `embeddings`
//! F32 `[items × dim]`, `codebook.{l}` F32 `[codes × dim]`), plus optional
//! intent labels (`intents.json`). Read whole into memory; a compaction writes
//! it as a version of the current format.

use std::path::Path;

use candle_core::Device;
use serde::Deserialize;

use super::base::Base;
use super::{Catalog, CatalogError, Intent, Manifest};

pub const MANIFEST_FILE: &str = "catalog.json";
pub const ITEMS_FILE: &str = "items.json";
pub const TENSORS_FILE: &str = "catalog.safetensors";
pub const FORMAT: &str = "genrec-catalog/1";

#[derive(Deserialize)]
struct ItemRow {
    id: String,
    title: String,
}

fn json_err(path: &Path, source: serde_json::Error) -> CatalogError {
    CatalogError::Json { path: path.to_path_buf(), source }
}

/// Loads a folder of the first format.
pub fn load(dir: &Path) -> Result<Base, CatalogError> {
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read(&p).map_err(|e| CatalogError::io(&p, e))
    };
    let manifest: Manifest = {
        let p = dir.join(MANIFEST_FILE);
        serde_json::from_slice(&read(MANIFEST_FILE)?).map_err(|e| json_err(&p, e))?
    };
    let first = manifest.codebook_sizes.first().copied().unwrap_or(0);
    let intents = super::intents::load(dir, first)?;
    from_parts(manifest, &read(ITEMS_FILE)?, &read(TENSORS_FILE)?, intents).map_err(|e| match e {
        CatalogError::Format(m) => CatalogError::Format(format!("{}: {m}", dir.display())),
        other => other,
    })
}

/// Loads a catalog of the first format from the bytes of its three files
/// (intent labels from the titles).
pub fn from_bytes(manifest: &[u8], items: &[u8], tensors: &[u8]) -> Result<Base, CatalogError> {
    let manifest: Manifest = serde_json::from_slice(manifest).map_err(|e| json_err(Path::new(MANIFEST_FILE), e))?;
    from_parts(manifest, items, tensors, None)
}

fn from_parts(
    manifest: Manifest,
    items: &[u8],
    tensors: &[u8],
    intents: Option<Vec<Intent>>,
) -> Result<Base, CatalogError> {
    if manifest.format != FORMAT {
        return Err(CatalogError::Format(format!(
            "{MANIFEST_FILE}: format {:?}, expected {FORMAT:?}",
            manifest.format
        )));
    }
    let rows: Vec<ItemRow> = serde_json::from_slice(items).map_err(|e| json_err(Path::new(ITEMS_FILE), e))?;
    let mut t = candle_core::safetensors::load_buffer(tensors, &Device::Cpu)?;
    let mut take = |name: &str| {
        t.remove(name).ok_or_else(|| CatalogError::Format(format!("{TENSORS_FILE} lacks tensor {name:?}")))
    };
    let sids = take("semantic_ids")?.flatten_all()?.to_vec1::<u32>()?;
    let embeddings = take("embeddings")?.flatten_all()?.to_vec1::<f32>()?;
    let mut codebooks = Vec::new();
    for l in 0..manifest.codebook_sizes.len().saturating_sub(1) {
        codebooks.push(take(&format!("codebook.{l}"))?.flatten_all()?.to_vec1::<f32>()?);
    }
    if rows.len() != manifest.num_items {
        return Err(CatalogError::Format(format!(
            "manifest says {} items, {ITEMS_FILE} has {}",
            manifest.num_items,
            rows.len()
        )));
    }
    let (item_ids, titles): (Vec<String>, Vec<String>) = rows.into_iter().map(|r| (r.id, r.title)).unzip();
    let fp = super::catalog_fingerprint(&item_ids, &sids);
    if fp != manifest.fingerprint {
        return Err(CatalogError::Format(format!(
            "fingerprint mismatch: manifest {} but files give {fp}",
            manifest.fingerprint
        )));
    }
    Base::from_vecs(manifest, item_ids, titles, sids, embeddings, codebooks, intents)
}

impl Catalog {
    /// Loads a catalog of the first format from the bytes of its three files.
    pub fn from_bytes(manifest: &[u8], items: &[u8], tensors: &[u8]) -> Result<Self, CatalogError> {
        from_bytes(manifest, items, tensors).map(Catalog::from_base)
    }
}
