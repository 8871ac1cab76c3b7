//! Catalog files: a small JSON manifest (`catalog.json`), the item ids and titles
//! (`items.json`) and the tensors (`catalog.safetensors`: `semantic_ids` U32
//! `[items × levels]`, `embeddings` F32 `[items × dim]`, `codebook.{l}` F32
//! `[codes × dim]`) and the intent labels (`intents.json`, optional). Loading
//! works from files or from bytes (the embedded default model).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};
use crate::util::{write_atomic, Fnv64};

pub const MANIFEST_FILE: &str = "catalog.json";
pub const ITEMS_FILE: &str = "items.json";
pub const TENSORS_FILE: &str = "catalog.safetensors";

/// The catalog's JSON manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub name: String,
    pub num_items: usize,
    /// Codes per level; the last level is the collision code.
    pub codebook_sizes: Vec<u32>,
    pub embedding_dim: usize,
    /// Where the embeddings came from (encoder name or the file given).
    pub embedder: String,
    pub seed: u64,
    /// Fingerprint of item ids and semantic IDs; model sidecars name it.
    pub fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct ItemRow {
    id: String,
    title: String,
}

/// Fingerprint of the id → semantic-ID mapping.
pub fn catalog_fingerprint(item_ids: &[String], sids: &[u32]) -> String {
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

fn json_err(path: &Path, source: serde_json::Error) -> CatalogError {
    CatalogError::Json { path: path.to_path_buf(), source }
}

impl Catalog {
    /// Writes the catalog into `dir` (created if needed); each file is replaced
    /// atomically.
    pub fn save(&self, dir: &Path) -> Result<(), CatalogError> {
        std::fs::create_dir_all(dir).map_err(|e| CatalogError::io(dir, e))?;
        let n = self.len();
        let dev = Device::Cpu;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        tensors.insert(
            "semantic_ids".into(),
            Tensor::from_slice(&self.sids, (n, self.levels()), &dev)?,
        );
        tensors.insert(
            "embeddings".into(),
            Tensor::from_slice(&self.embeddings, (n, self.manifest.embedding_dim), &dev)?,
        );
        for (l, cb) in self.codebooks.iter().enumerate() {
            let d = self.manifest.embedding_dim;
            tensors.insert(format!("codebook.{l}"), Tensor::from_slice(cb, (cb.len() / d, d), &dev)?);
        }
        let bytes = safetensors::serialize(&tensors, None)
            .map_err(|e| CatalogError::Format(format!("serialising tensors: {e}")))?;
        let p = dir.join(TENSORS_FILE);
        write_atomic(&p, &bytes).map_err(|e| CatalogError::io(&p, e))?;
        let rows: Vec<ItemRow> = self
            .item_ids
            .iter()
            .zip(&self.titles)
            .map(|(id, title)| ItemRow { id: id.clone(), title: title.clone() })
            .collect();
        let p = dir.join(ITEMS_FILE);
        let items = serde_json::to_vec(&rows).map_err(|e| json_err(&p, e))?;
        write_atomic(&p, &items).map_err(|e| CatalogError::io(&p, e))?;
        super::intents::save(&self.intents, dir)?;
        // manifest last: a folder with a manifest is complete
        let p = dir.join(MANIFEST_FILE);
        let m = serde_json::to_vec_pretty(&self.manifest).map_err(|e| json_err(&p, e))?;
        write_atomic(&p, &m).map_err(|e| CatalogError::io(&p, e))?;
        Ok(())
    }

    /// Loads a catalog folder written by [`Catalog::save`].
    pub fn load(dir: &Path) -> Result<Self, CatalogError> {
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
        Self::from_parts(manifest, &read(ITEMS_FILE)?, &read(TENSORS_FILE)?, intents).map_err(|e| match e {
            CatalogError::Format(m) => CatalogError::Format(format!("{}: {m}", dir.display())),
            other => other,
        })
    }

    /// Loads a catalog from the bytes of its three files (intent labels from
    /// the titles).
    pub fn from_bytes(manifest: &[u8], items: &[u8], tensors: &[u8]) -> Result<Self, CatalogError> {
        let manifest: Manifest =
            serde_json::from_slice(manifest).map_err(|e| json_err(Path::new(MANIFEST_FILE), e))?;
        Self::from_parts(manifest, items, tensors, None)
    }

    fn from_parts(manifest: Manifest, items: &[u8], tensors: &[u8], intents: Option<Vec<super::Intent>>) -> Result<Self, CatalogError> {
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
        let (item_ids, titles) = rows.into_iter().map(|r| (r.id, r.title)).unzip();
        let cat = Catalog::with_intents(manifest, item_ids, titles, sids, embeddings, codebooks, intents)?;
        let fp = catalog_fingerprint(&cat.item_ids, &cat.sids);
        if fp != cat.manifest.fingerprint {
            return Err(CatalogError::Format(format!(
                "fingerprint mismatch: manifest {} but files give {fp}",
                cat.manifest.fingerprint
            )));
        }
        Ok(cat)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::{quantize, RqOptions};

    pub(crate) fn tiny_catalog() -> Catalog {
        let dim = 3;
        let emb: Vec<f32> = (0..30).map(|i| ((i * 7 % 11) as f32).sin()).collect();
        let q = quantize(&emb, dim, &RqOptions { levels: 2, codebook_size: 3, iterations: 5, seed: 1 }).unwrap();
        let ids: Vec<String> = (0..10).map(|i| format!("item-{i}")).collect();
        let manifest = Manifest {
            format: "genrec-catalog/1".into(),
            name: "tiny".into(),
            num_items: 10,
            codebook_sizes: q.codebook_sizes.clone(),
            embedding_dim: dim,
            embedder: "test".into(),
            seed: 1,
            fingerprint: catalog_fingerprint(&ids, &q.sids),
        };
        let titles = (0..10).map(|i| format!("title {i}")).collect();
        Catalog::new(manifest, ids, titles, q.sids, emb, q.codebooks).unwrap()
    }

    #[test]
    fn save_load_roundtrip() {
        let c = tiny_catalog();
        let dir = std::env::temp_dir().join(format!("genrec-cat-{}", std::process::id()));
        c.save(&dir).unwrap();
        let d = Catalog::load(&dir).unwrap();
        assert_eq!(d.manifest, c.manifest);
        assert_eq!(d.sids, c.sids);
        assert_eq!(d.embeddings, c.embeddings);
        assert_eq!(d.codebooks, c.codebooks);
        assert_eq!(d.index_of("item-3"), Some(3));
        assert_eq!(d.trie.lookup(d.sid(7)), Some(7));
        // a tampered items file is refused
        std::fs::write(dir.join(ITEMS_FILE), b"[]").unwrap();
        assert!(Catalog::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
