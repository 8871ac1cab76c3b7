//! Embeddings written again in another order, so that an ANN index reads a
//! cell's items as one run of rows: the IVF index's cell order
//! ([`crate::recall::ivf`], `embeddings.ivf.f16`, written with every
//! version), and the trie's leaf order (`embeddings.leaf.f16`), which versions
//! carried for the semantic-ID cells index until the IVF index replaced it as
//! the default; the cells index maps it when a version has it and copies the
//! rows at open otherwise.

use std::path::Path;

use super::array::{Array, ArrayWriter};
use super::CatalogError;

/// The file's name in a version folder.
pub const LEAF_FILE: &str = "embeddings.leaf.f16";

/// Bytes of ordered rows gathered in memory per pass.
const PASS_BYTES: usize = 2 << 30;

/// Writes `rows` (f16, `dim` per row) in the order of `leaf_item` (row `j`
/// of the file is `rows[leaf_item[j]]`) into `dir`. The rows are read in
/// their own order, a pass per 4 GiB of output, never at random: at 10^8
/// items the rows do not fit the page cache beside the build, and random
/// reads of them thrash.
pub fn write(dir: &Path, rows: &[u16], leaf_item: &[u32], dim: usize) -> Result<(), CatalogError> {
    write_ordered(&dir.join(LEAF_FILE), "embeddings in leaf order", rows, leaf_item, dim)
}

/// Writes `rows` in the order of `order` to `path` the same way (the IVF
/// index's cell order uses it too), with a progress bar named `label`.
pub fn write_ordered(path: &Path, label: &str, rows: &[u16], order: &[u32], dim: usize) -> Result<(), CatalogError> {
    write_in_passes(path, label, rows, order, dim, PASS_BYTES)
}

fn write_in_passes(
    path: &Path,
    label: &str,
    rows: &[u16],
    leaf_item: &[u32],
    dim: usize,
    pass_bytes: usize,
) -> Result<(), CatalogError> {
    let mut w = ArrayWriter::<u16>::create(path)?;
    let (n, leaves) = (rows.len() / dim.max(1), leaf_item.len());
    let p = crate::progress::Progress::new(label, leaves as u64);
    // each row's leaf (u32::MAX: not a leaf, a removed row)
    let mut leaf_of = vec![u32::MAX; n];
    for (j, &i) in leaf_item.iter().enumerate() {
        leaf_of[i as usize] = j as u32;
    }
    let per_pass = (pass_bytes / (2 * dim.max(1))).max(1);
    let mut start = 0;
    while start < leaves {
        let len = per_pass.min(leaves - start);
        let mut buf = vec![0u16; len * dim];
        let window = start as u32..(start + len) as u32;
        for (i, j) in leaf_of.iter().enumerate() {
            if window.contains(j) {
                let at = (*j - window.start) as usize * dim;
                buf[at..at + dim].copy_from_slice(&rows[i * dim..(i + 1) * dim]);
            }
        }
        w.push_all(&buf)?;
        start += len;
        p.set(start as u64);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Any number of passes writes row `leaf_item[j]` as row `j`, rows that
    /// are no leaf (removed) left out.
    #[test]
    fn passes_gather_rows_in_leaf_order() {
        let (n, dim) = (103, 3);
        let rows: Vec<u16> = (0..n * dim).map(|x| x as u16).collect();
        // every third row removed, the rest in a scrambled order
        let mut leaf_item: Vec<u32> = (0..n as u32).filter(|i| i % 3 != 1).collect();
        leaf_item.reverse();
        leaf_item.swap(0, 17);
        let want: Vec<u16> =
            leaf_item.iter().flat_map(|&i| rows[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
        for pass_bytes in [1, 2 * dim * 5, 2 * dim * 7 + 1, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            write_in_passes(&dir.path().join(LEAF_FILE), "rows", &rows, &leaf_item, dim, pass_bytes).unwrap();
            let got = open(dir.path(), leaf_item.len(), dim).unwrap();
            assert_eq!(&got[..], &want[..], "{pass_bytes} bytes per pass");
        }
    }
}
