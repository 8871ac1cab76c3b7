//! The embeddings again, in the trie's leaf order (`embeddings.leaf.f16`),
//! written with every version that has codebooks. The ANN cells index
//! ([`crate::recall`]) reads a cell's items as one run of rows; with this file
//! it maps them instead of copying every row into leaf order at open, which
//! at 10^8 items would take 12.8 GB of memory and minutes of random reads.

use std::path::Path;

use rayon::prelude::*;

use super::array::{Array, ArrayWriter};
use super::CatalogError;

/// The file's name in a version folder.
pub const LEAF_FILE: &str = "embeddings.leaf.f16";

/// Rows gathered per block.
const BLOCK: usize = 1 << 16;

/// Writes `rows` (f16, `dim` per row) in the order of `leaf_item` (row `j`
/// of the file is `rows[leaf_item[j]]`) into `dir`.
pub fn write(dir: &Path, rows: &[u16], leaf_item: &[u32], dim: usize) -> Result<(), CatalogError> {
    let path = dir.join(LEAF_FILE);
    let mut w = ArrayWriter::<u16>::create(&path)?;
    let p = crate::progress::Progress::new("embeddings in leaf order", leaf_item.len() as u64);
    let mut buf = vec![0u16; BLOCK * dim];
    for (b, items) in leaf_item.chunks(BLOCK).enumerate() {
        let out = &mut buf[..items.len() * dim];
        out.par_chunks_mut(dim.max(1)).zip(items.par_iter()).for_each(|(row, &i)| {
            let at = i as usize * dim;
            row.copy_from_slice(&rows[at..at + dim]);
        });
        w.push_all(out)?;
        p.set(((b + 1) * BLOCK).min(leaf_item.len()) as u64);
    }
    w.finish()?;
    p.finish();
    Ok(())
}

/// Maps the file of version folder `dir` when it is there with `leaves` rows
/// of `dim`; `None` otherwise (a version from before it, or none written).
pub fn open(dir: &Path, leaves: usize, dim: usize) -> Option<Array<u16>> {
    let path = dir.join(LEAF_FILE);
    if !path.is_file() {
        return None;
    }
    match Array::<u16>::map(&path, leaves * dim) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!("{}: {e}; the ANN index copies the rows instead", path.display());
            None
        }
    }
}
