//! External item id → item index, as an open-addressing hash table of `u32`
//! slots (item + 1; 0 = empty) over the ids in a [`StringTable`]: 8 bytes per
//! item at the default load, written beside the ids and memory-mapped, so a
//! 10^7-item catalog needs no `HashMap<String, u32>` built at start.
//!
//! The hash is 64-bit FNV-1a of the id's bytes (stable across versions and
//! machines, as the table is stored); probing is linear.

use super::array::Array;
use super::strings::StringTable;
use super::CatalogError;
use crate::util::Fnv64;

/// Slots per item, at least (a load factor of one half).
const SLOTS_PER_ITEM: usize = 2;

fn hash(id: &[u8]) -> u64 {
    let mut h = Fnv64::default();
    h.update(id);
    // FNV's low bits mix poorly for short keys: fold the high half in
    let v = h.value();
    v ^ (v >> 29)
}

/// The table's slot count for `n` items (a power of two).
pub fn slots_for(n: usize) -> usize {
    (n.max(8) * SLOTS_PER_ITEM).next_power_of_two()
}

#[derive(Clone, Default, Debug)]
pub struct IdMap {
    slots: Array<u32>,
}

/// What [`IdMap::build`] found wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct DuplicateId {
    /// The two rows that share an id.
    pub first: usize,
    pub second: usize,
}

impl IdMap {
    /// Indexes every id of `ids`; an id given twice is an error naming both rows.
    pub fn build(ids: &StringTable) -> Result<Self, DuplicateId> {
        let mut b = IdMapBuilder::new(ids.len());
        for i in 0..ids.len() {
            b.insert(ids.get_bytes(i), i as u32, |j| ids.get_bytes(j as usize))?;
        }
        Ok(b.finish())
    }

    /// Maps a stored table of `slots` entries.
    pub fn map(path: &std::path::Path, slots: usize) -> Result<Self, CatalogError> {
        if !slots.is_power_of_two() {
            return Err(CatalogError::Format(format!("{}: {slots} slots is not a power of two", path.display())));
        }
        Ok(IdMap { slots: Array::map(path, slots)? })
    }

    /// The item whose id is `id`.
    pub fn get(&self, id: &str, ids: &StringTable) -> Option<u32> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let mask = n - 1;
        let mut s = hash(id.as_bytes()) as usize & mask;
        for _ in 0..n {
            match self.slots[s] {
                0 => return None,
                v if ids.get_bytes((v - 1) as usize) == id.as_bytes() => return Some(v - 1),
                _ => s = (s + 1) & mask,
            }
        }
        None
    }

    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    pub fn bytes(&self) -> usize {
        self.slots.bytes()
    }
}

/// Builds an [`IdMap`] while ids arrive (the indexer checks duplicates as it
/// streams the items file).
pub struct IdMapBuilder {
    slots: Vec<u32>,
}

impl IdMapBuilder {
    /// A table sized for `n` items.
    pub fn new(n: usize) -> Self {
        IdMapBuilder { slots: vec![0; slots_for(n)] }
    }

    /// Inserts item `item` with id bytes `id`; `id_of(j)` gives the bytes of an
    /// item already inserted. Errors when the id is there already.
    pub fn insert<'a>(&mut self, id: &[u8], item: u32, id_of: impl Fn(u32) -> &'a [u8]) -> Result<(), DuplicateId> {
        let mask = self.slots.len() - 1;
        let mut s = hash(id) as usize & mask;
        loop {
            match self.slots[s] {
                0 => {
                    self.slots[s] = item + 1;
                    return Ok(());
                }
                v if id_of(v - 1) == id => {
                    return Err(DuplicateId { first: (v - 1) as usize, second: item as usize });
                }
                _ => s = (s + 1) & mask,
            }
        }
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub fn finish(self) -> IdMap {
        IdMap { slots: Array::owned(self.slots) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_id_and_reports_duplicates() {
        let ids: Vec<String> = (0..5000).map(|i| format!("item-{i}")).collect();
        let t = StringTable::from_strings(&ids);
        let m = IdMap::build(&t).unwrap();
        assert_eq!(m.slots().len(), 16384);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(m.get(id, &t), Some(i as u32));
        }
        assert_eq!(m.get("item-5000", &t), None);
        assert_eq!(m.get("", &t), None);
        let dup = StringTable::from_strings(&["a", "b", "a"]);
        assert_eq!(IdMap::build(&dup).unwrap_err(), DuplicateId { first: 0, second: 2 });
        assert_eq!(IdMap::default().get("a", &t), None);
    }
}
