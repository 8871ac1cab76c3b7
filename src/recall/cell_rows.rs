//! The embeddings in the IVF index's cell order (`embeddings.ivf.f16`), so a
//! probed cell's items are one run of rows rather than one random read each:
//! written to a version folder in passes ([`write`]), or copied in memory
//! for a version without the file ([`copy`]).

use std::path::Path;

use rayon::prelude::*;

use crate::catalog::array::{Array, ArrayWriter};
use crate::catalog::base::Embeddings;
use crate::catalog::CatalogError;

/// Bytes of ordered rows gathered in memory per pass.
const PASS_BYTES: usize = 2 << 30;

/// Writes `rows` (f16, `dim` per row) in the order of `order` (row `j` of
/// the file is `rows[order[j]]`; each row at most once) to `path`. The rows
/// are read in their own order, a pass per 2 GiB of output, never at
/// random: at 10^8 items they do not fit the page cache beside the build,
/// and random reads of them thrash.
pub fn write(path: &Path, rows: &[u16], order: &[u32], dim: usize) -> Result<(), CatalogError> {
    write_in_passes(path, rows, order, dim, PASS_BYTES)
}

fn write_in_passes(
    path: &Path,
    rows: &[u16],
    order: &[u32],
    dim: usize,
    pass_bytes: usize,
) -> Result<(), CatalogError> {
    let mut w = ArrayWriter::<u16>::create(path)?;
    let (n, total) = (rows.len() / dim.max(1), order.len());
    let p = crate::progress::Progress::new("embeddings in IVF cell order", total as u64);
    // each row's position (u32::MAX: in no cell, a removed row)
    let mut position = vec![u32::MAX; n];
    for (j, &i) in order.iter().enumerate() {
        position[i as usize] = j as u32;
    }
    let per_pass = (pass_bytes / (2 * dim.max(1))).max(1);
    let mut start = 0;
    while start < total {
        let len = per_pass.min(total - start);
        let mut buf = vec![0u16; len * dim];
        let window = start as u32..(start + len) as u32;
        for (i, j) in position.iter().enumerate() {
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

/// `rows` reordered in memory: row `j` is the embedding of `order[j]`.
pub fn copy(rows: &Embeddings, order: &[u32], dim: usize) -> Embeddings {
    fn gather<T: bytemuck::Pod + Default + Send + Sync>(a: &[T], order: &[u32], dim: usize) -> Vec<T> {
        let mut out = vec![T::default(); order.len() * dim];
        out.par_chunks_mut(dim.max(1)).zip(order.par_iter()).for_each(|(row, &i)| {
            row.copy_from_slice(&a[i as usize * dim..(i as usize + 1) * dim]);
        });
        out
    }
    match rows {
        Embeddings::F32(a) => Embeddings::F32(Array::owned(gather(a, order, dim))),
        Embeddings::F16(a) => Embeddings::F16(Array::owned(gather(a, order, dim))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any number of passes writes row `order[j]` as row `j`, rows in no
    /// cell left out, and a copy in memory holds the same rows.
    #[test]
    fn passes_gather_rows_in_order() {
        let (n, dim) = (103, 3);
        let rows: Vec<u16> = (0..n * dim).map(|x| x as u16).collect();
        // every third row removed, the rest in a scrambled order
        let mut order: Vec<u32> = (0..n as u32).filter(|i| i % 3 != 1).collect();
        order.reverse();
        order.swap(0, 17);
        let want: Vec<u16> =
            order.iter().flat_map(|&i| rows[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
        for pass_bytes in [1, 2 * dim * 5, 2 * dim * 7 + 1, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rows.f16");
            write_in_passes(&path, &rows, &order, dim, pass_bytes).unwrap();
            let got = Array::<u16>::map(&path, order.len() * dim).unwrap();
            assert_eq!(&got[..], &want[..], "{pass_bytes} bytes per pass");
        }
        match copy(&Embeddings::F16(Array::owned(rows)), &order, dim) {
            Embeddings::F16(a) => assert_eq!(&a[..], &want[..]),
            Embeddings::F32(_) => panic!("f16 stays f16"),
        }
    }
}
