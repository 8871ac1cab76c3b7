//! Building a catalog (`genrec index`): item texts → embeddings (MiniLM or a
//! user's own safetensors file) → RQ-KMeans semantic IDs.

use std::path::Path;

use candle_core::Device;

use super::store::{catalog_fingerprint, Manifest};
use super::{quantize, Catalog, CatalogError, Quantized, RqOptions};
use crate::dataset::ItemRecord;

pub const CATALOG_FORMAT: &str = "genrec-catalog/1";

/// Reads precomputed embeddings: a safetensors file with one F32 tensor
/// `[items × dim]` (named `embeddings`, or the only tensor in the file), rows in
/// the item order of the item file. Rows are L2-normalised.
pub fn load_embeddings(path: &Path, items: usize) -> Result<(Vec<f32>, usize), CatalogError> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| CatalogError::Format(format!("{}: {e}", path.display())))?;
    let tensor = match t.remove("embeddings") {
        Some(x) => x,
        None if t.len() == 1 => t.into_values().next().ok_or_else(|| CatalogError::Format("empty file".into()))?,
        None => {
            return Err(CatalogError::Format(format!(
                "{}: expected a tensor named \"embeddings\" (or a single tensor)",
                path.display()
            )))
        }
    };
    let (n, dim) = tensor.dims2().map_err(|_| {
        CatalogError::Format(format!("{}: embeddings must be 2-d [items, dim], got {:?}", path.display(), tensor.dims()))
    })?;
    if n != items {
        return Err(CatalogError::Format(format!("{}: {n} rows for {items} items", path.display())));
    }
    let mut v = tensor.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    for row in v.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    Ok((v, dim))
}

/// Quantises embeddings and assembles the catalog.
pub fn build_catalog(
    name: &str,
    items: &[ItemRecord],
    embeddings: Vec<f32>,
    dim: usize,
    embedder: &str,
    opts: &RqOptions,
) -> Result<(Catalog, Quantized), CatalogError> {
    let q = quantize(&embeddings, dim, opts)?;
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let titles = items.iter().map(|i| i.title.clone()).collect();
    let manifest = Manifest {
        format: CATALOG_FORMAT.into(),
        name: name.into(),
        num_items: items.len(),
        codebook_sizes: q.codebook_sizes.clone(),
        embedding_dim: dim,
        embedder: embedder.into(),
        seed: opts.seed,
        fingerprint: catalog_fingerprint(&ids, &q.sids),
    };
    // labels from the full text (title, genres, categories, ...), not titles only
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let intents = super::intents::derive(&texts, &super::intents::first_codes(&q.sids, q.codebook_sizes.len()));
    let cat = Catalog::with_intents(manifest, ids, titles, q.sids.clone(), embeddings, q.codebooks.clone(), Some(intents))?;
    Ok((cat, q))
}
