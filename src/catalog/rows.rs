//! Rows of item embeddings as the index build reads them: from memory, or
//! (see [`super::build::MappedRows`]) from a memory-mapped file, one row at a
//! time.

/// Rows of embeddings, read one at a time (in memory, or from a mapped file).
pub trait Rows: Sync {
    fn len(&self) -> usize;
    fn dim(&self) -> usize;
    /// Row `i` into `out` (`dim` values).
    fn row_into(&self, i: usize, out: &mut [f32]);
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows of a flat in-memory matrix.
pub struct SliceRows<'a> {
    pub data: &'a [f32],
    pub dim: usize,
}

impl Rows for SliceRows<'_> {
    fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn row_into(&self, i: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[i * self.dim..(i + 1) * self.dim]);
    }
}
