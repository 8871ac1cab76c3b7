//! Flat arrays of plain numbers (`u32`, `u64`, `f32`, `u16`, ...) that a
//! catalog reads either from memory it owns (a catalog built in this process)
//! or straight from a memory-mapped file (a catalog version on disk): the
//! server starts without reading a 10^7-item catalog into memory, and pages
//! come in as requests touch them. Files hold the values little-endian with
//! no header; the manifest gives their lengths. Writing them is here too
//! ([`write_array`], [`ArrayWriter`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use bytemuck::Pod;
use memmap2::Mmap;

use super::CatalogError;

#[cfg(not(target_endian = "little"))]
compile_error!("catalog files are little-endian and read in place: genrec needs a little-endian target");

/// What keeps an array's memory alive.
enum Owner<T> {
    Vec(Vec<T>),
    Map(#[allow(dead_code)] Arc<Mmap>),
}

/// A read-only slice of `T`, owned or memory-mapped.
pub struct Array<T: Pod> {
    ptr: *const T,
    len: usize,
    _owner: Owner<T>,
}

// SAFETY: the array is read-only after construction, and both owners (a Vec
// that is never touched again, a read-only map) may be shared across threads.
unsafe impl<T: Pod + Send> Send for Array<T> {}
unsafe impl<T: Pod + Sync> Sync for Array<T> {}

impl<T: Pod> Array<T> {
    pub fn owned(v: Vec<T>) -> Self {
        Array { ptr: v.as_ptr(), len: v.len(), _owner: Owner::Vec(v) }
    }

    /// Maps `len` values of the file at `path` (its size must be exactly
    /// `len * size_of::<T>()`).
    pub fn map(path: &Path, len: usize) -> Result<Self, CatalogError> {
        let want = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| CatalogError::Format(format!("{}: length {len} overflows", path.display())))?;
        let file = File::open(path).map_err(|e| CatalogError::io(path, e))?;
        let got = file.metadata().map_err(|e| CatalogError::io(path, e))?.len();
        if got != want as u64 {
            return Err(CatalogError::Format(format!(
                "{}: {got} bytes, the manifest says {len} values ({want} bytes)",
                path.display()
            )));
        }
        if len == 0 {
            return Ok(Self::owned(Vec::new()));
        }
        // SAFETY: catalog version files are written once, then only read; a
        // version is replaced by writing a new folder, and a file is only ever
        // replaced by renaming a new one over it (`genrec catalog ann`): a
        // mapping keeps the old file's pages.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| CatalogError::io(path, e))?;
        let ptr = map.as_ptr() as *const T;
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(CatalogError::Format(format!("{}: mapping is not aligned", path.display())));
        }
        Ok(Array { ptr, len, _owner: Owner::Map(Arc::new(map)) })
    }

    /// Bytes of memory the values take (mapped or owned).
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self._owner, Owner::Map(_))
    }

    /// Reads a mapped file's pages in, in file order (`madvise(WILLNEED)`,
    /// then one read per page), so that later requests find them in the page
    /// cache instead of waiting on the disk for each; nothing for owned
    /// values. Returns the bytes touched.
    pub fn read_ahead(&self) -> usize {
        let Owner::Map(m) = &self._owner else { return 0 };
        if let Err(e) = m.advise(memmap2::Advice::WillNeed) {
            tracing::debug!("madvise(WILLNEED): {e}");
        }
        let mut sum = 0u8;
        for page in m.chunks(4096) {
            sum = sum.wrapping_add(page[0]);
        }
        std::hint::black_box(sum);
        m.len()
    }
}

impl<T: Pod> std::ops::Deref for Array<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` points at `len` initialised, aligned values kept alive
        // by `_owner` for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: Pod> Default for Array<T> {
    fn default() -> Self {
        Self::owned(Vec::new())
    }
}

impl<T: Pod> Clone for Array<T> {
    /// A mapped array clones its mapping (no copy); an owned one copies.
    fn clone(&self) -> Self {
        match &self._owner {
            Owner::Vec(v) => Self::owned(v.clone()),
            Owner::Map(m) => Array { ptr: self.ptr, len: self.len, _owner: Owner::Map(m.clone()) },
        }
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array[{}{}]", self.len, if self.is_mapped() { ", mapped" } else { "" })
    }
}

/// Writes values as a little-endian file (used by the catalog writer).
pub fn write_values<T: Pod>(w: &mut impl std::io::Write, values: &[T]) -> std::io::Result<()> {
    w.write_all(bytemuck::cast_slice(values))
}

/// Writes values as a little-endian file, synced to disk.
pub fn write_array<T: Pod>(path: &Path, values: &[T]) -> Result<(), CatalogError> {
    let mut w = ArrayWriter::<T>::create(path)?;
    w.push_all(values)?;
    w.finish()
}

/// Streams values into a little-endian file (the indexer writes 10^7 rows
/// without holding them).
pub struct ArrayWriter<T> {
    w: BufWriter<File>,
    path: std::path::PathBuf,
    count: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Pod> ArrayWriter<T> {
    pub fn create(path: &Path) -> Result<Self, CatalogError> {
        let f = File::create(path).map_err(|e| CatalogError::io(path, e))?;
        Ok(ArrayWriter { w: BufWriter::with_capacity(1 << 20, f), path: path.into(), count: 0, _t: Default::default() })
    }

    pub fn push_all(&mut self, values: &[T]) -> Result<(), CatalogError> {
        self.count += values.len();
        self.w.write_all(bytemuck::cast_slice(values)).map_err(|e| CatalogError::io(&self.path, e))
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Flushes and syncs the file.
    pub fn finish(self) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let f = self.w.into_inner().map_err(|e| CatalogError::io(&path, e.into_error()))?;
        crate::util::sync_file(&f, &path).map_err(|e| CatalogError::io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_equals_owned_and_sizes_are_checked() {
        let dir = std::env::temp_dir().join(format!("genrec-array-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("v.u32");
        let v: Vec<u32> = (0..1000).map(|i| i * 7).collect();
        let mut f = File::create(&p).unwrap();
        write_values(&mut f, &v).unwrap();
        drop(f);
        let a = Array::<u32>::map(&p, 1000).unwrap();
        assert!(a.is_mapped());
        assert_eq!(&a[..], &v[..]);
        let b = a.clone();
        assert_eq!(&b[..], &v[..]);
        assert!(Array::<u32>::map(&p, 999).is_err(), "length mismatch is refused");
        assert_eq!(&Array::owned(v.clone())[..], &v[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
