//! Item ids and titles as one byte buffer plus offsets (`offsets[i]..offsets[i + 1]`
//! is string `i`), so that 10^7 strings cost their bytes and 8 bytes each, can
//! be memory-mapped, and need no allocation per string.

use std::path::Path;

use super::array::Array;
use super::CatalogError;

/// A read-only table of UTF-8 strings.
#[derive(Clone, Default)]
pub struct StringTable {
    offsets: Array<u64>,
    bytes: Array<u8>,
}

impl std::fmt::Debug for StringTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StringTable[{} strings, {} bytes]", self.len(), self.bytes.len())
    }
}

impl StringTable {
    pub fn from_strings<S: AsRef<str>>(strings: &[S]) -> Self {
        let mut b = StringsBuilder::default();
        for s in strings {
            b.push(s.as_ref());
        }
        b.finish()
    }

    /// Maps `NAME.offsets` (`n + 1` u64) and `NAME.bytes`. Nothing is read
    /// here (a 10^7-item catalog starts without touching its titles): each
    /// string is checked when it is read.
    pub fn map(dir: &Path, name: &str, n: usize) -> Result<Self, CatalogError> {
        let offsets = Array::<u64>::map(&dir.join(format!("{name}.offsets")), n + 1)?;
        let total = offsets.last().copied().unwrap_or(0) as usize;
        let bytes = Array::<u8>::map(&dir.join(format!("{name}.bytes")), total)?;
        Ok(StringTable { offsets, bytes })
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Raw bytes of string `i` (empty when `i` is out of range or the
    /// offsets are damaged).
    pub fn get_bytes(&self, i: usize) -> &[u8] {
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => self.bytes.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// String `i`; empty when out of range or not UTF-8 (a damaged file never
    /// panics a reader).
    pub fn get(&self, i: usize) -> &str {
        std::str::from_utf8(self.get_bytes(i)).unwrap_or("")
    }

    /// Memory the table takes.
    pub fn bytes(&self) -> usize {
        self.offsets.bytes() + self.bytes.bytes()
    }

    /// Writes the table as `NAME.offsets` and `NAME.bytes` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), CatalogError> {
        super::array::write_array(&dir.join(format!("{name}.offsets")), &self.offsets)?;
        super::array::write_array(&dir.join(format!("{name}.bytes")), &self.bytes)
    }
}

/// Builds a [`StringTable`] string by string.
#[derive(Default)]
pub struct StringsBuilder {
    offsets: Vec<u64>,
    bytes: Vec<u8>,
}

impl StringsBuilder {
    pub fn with_capacity(n: usize) -> Self {
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        StringsBuilder { offsets, bytes: Vec::new() }
    }

    pub fn push(&mut self, s: &str) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.bytes.extend_from_slice(s.as_bytes());
        self.offsets.push(self.bytes.len() as u64);
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// String `i` pushed so far.
    pub fn get(&self, i: usize) -> &str {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        // SAFETY: only `&str`s were pushed, each ending on a boundary.
        unsafe { std::str::from_utf8_unchecked(&self.bytes[a..b]) }
    }

    pub fn finish(mut self) -> StringTable {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        StringTable { offsets: Array::owned(self.offsets), bytes: Array::owned(self.bytes) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_through_files() {
        let strings = ["a", "", "héllo", "x y z"];
        let t = StringTable::from_strings(&strings);
        assert_eq!(t.len(), 4);
        assert_eq!(t.get(2), "héllo");
        assert_eq!(t.get(1), "");
        let dir = std::env::temp_dir().join(format!("genrec-strings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        t.write(&dir, "ids").unwrap();
        let m = StringTable::map(&dir, "ids", 4).unwrap();
        for (i, s) in strings.iter().enumerate() {
            assert_eq!(m.get(i), *s);
        }
        assert_eq!(m.get(9), "", "out of range reads as empty");
        // a string that ends inside a character reads as empty, never panics
        std::fs::write(dir.join("bad.bytes"), "é".as_bytes()).unwrap();
        let mut f = std::fs::File::create(dir.join("bad.offsets")).unwrap();
        super::super::array::write_values(&mut f, &[0u64, 1, 2]).unwrap();
        drop(f);
        let bad = StringTable::map(&dir, "bad", 2).unwrap();
        assert_eq!((bad.get(0), bad.get(1)), ("", ""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
