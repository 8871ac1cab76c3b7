//! Building a catalog (`genrec index`) at any size: items streamed from the
//! items file (ids kept, titles written as they come), embeddings read row by
//! row from a memory-mapped safetensors file (F32, F16 or BF16) or computed
//! with MiniLM, semantic IDs from RQ-KMeans ([`super::rqkmeans`]) or imported
//! (`--sids`), then every file of version 1, the trie, the id map, intent
//! labels and the ANN index. Everything goes to a temporary folder renamed
//! into place at the end: a failed run leaves nothing half-written.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use memmap2::Mmap;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::array::Array;
use super::array::ArrayWriter;
use super::assign::{assign_all, NearestPaths};
use super::base::{Base, Embeddings};
use super::edit::{MAX_ID_BYTES, MAX_TITLE_BYTES};
use super::format::{self, catalog_fingerprint, Manifest};
use super::idmap::IdMapBuilder;
use super::rqkmeans::{quantize_rows, with_collision_codes, Quantized, Rows, RqOptions, SliceRows};
use super::shard::{CodebooksFile, ShardSet};
use super::strings::{StringTable, StringsBuilder};
use super::trie::Trie;
use super::{Catalog, CatalogError};
use crate::dataset::{self, DataError};
use crate::progress::Progress;

/// Texts kept for intent labels (a uniform sample of the catalog).
const INTENT_SAMPLE: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("ANN index: {0}")]
    Ann(String),
}

/// The items as read: ids (in memory, for the id map), titles (written
/// already), texts (all of them when asked for, else a sample for intents).
pub struct ItemsRead {
    pub ids: StringTable,
    pub titles: StringTable,
    /// Every item's text, when kept.
    pub texts: Option<Vec<String>>,
    /// `(row, text)` of a uniform sample, for intent labels.
    pub sample: Vec<(u32, String)>,
    pub idmap: super::idmap::IdMap,
}

impl ItemsRead {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Reads the items file (see [`dataset::for_each_item`]), checking ids and
/// titles as they come: an id given twice, an empty or over-long id, an
/// over-long title stop with an error naming the line.
pub fn read_items(path: &Path, keep_texts: bool, seed: u64) -> Result<ItemsRead, IndexError> {
    let p = Progress::new("reading items", 0);
    let mut ids = StringsBuilder::default();
    let mut titles = StringsBuilder::default();
    let mut lines: Vec<u32> = Vec::new(); // (a line number past u32 reads as u32::MAX)
    let mut texts = keep_texts.then(Vec::new);
    let mut sample: Vec<(u32, String)> = Vec::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x1d);
    let bad = |line: usize, msg: String| DataError::Line { path: path.into(), line, msg };
    let mut idmap = IdMapBuilder::new(1 << 16);
    let mut seen = 0usize;
    dataset::for_each_item(path, |line, it| {
        if it.id.trim().is_empty() {
            return Err(bad(line, "empty id".into()));
        }
        if it.id.len() > MAX_ID_BYTES {
            return Err(bad(line, format!("id is {} bytes, at most {MAX_ID_BYTES}", it.id.len())));
        }
        if it.title.len() > MAX_TITLE_BYTES {
            return Err(bad(line, format!("title is {} bytes, at most {MAX_TITLE_BYTES}", it.title.len())));
        }
        let row = ids.len() as u32;
        // the id map grows by rebuilding at powers of two (amortised O(1))
        if (row as usize + 1) * 2 > idmap_slots(&idmap) {
            let mut bigger = IdMapBuilder::new((row as usize + 1) * 2);
            for j in 0..row {
                let _ = bigger.insert(ids.get(j as usize).as_bytes(), j, |k| ids.get(k as usize).as_bytes());
            }
            idmap = bigger;
        }
        idmap
            .insert(it.id.as_bytes(), row, |k| ids.get(k as usize).as_bytes())
            .map_err(|d| bad(line, format!("id {:?} repeats the item of line {}", it.id, lines[d.first])))?;
        ids.push(&it.id);
        titles.push(&it.title);
        lines.push(u32::try_from(line).unwrap_or(u32::MAX));
        // reservoir sample of texts for intent labels
        seen += 1;
        if sample.len() < INTENT_SAMPLE {
            sample.push((row, it.text.clone()));
        } else {
            let j = rng.random_range(0..seen);
            if j < INTENT_SAMPLE {
                sample[j] = (row, it.text.clone());
            }
        }
        if let Some(t) = texts.as_mut() {
            t.push(it.text);
        }
        if row.is_multiple_of(65_536) {
            p.set(row as u64);
        }
        Ok(())
    })?;
    p.finish();
    // (the growing map and the line numbers go before the final map is
    // built: 1.4 GB at 10^8 items)
    drop((idmap, lines));
    let ids = ids.finish();
    // the final map, sized for the count (what the catalog stores)
    let idmap = super::idmap::IdMap::build(&ids)
        .map_err(|d| CatalogError::Format(format!("duplicate id at rows {} and {}", d.first, d.second)))?;
    Ok(ItemsRead { ids, titles: titles.finish(), texts, sample, idmap })
}

fn idmap_slots(b: &IdMapBuilder) -> usize {
    b.slot_count()
}

/// Embeddings in a safetensors file, read row by row from a memory map and
/// normalised to unit length on the way.
pub struct MappedRows {
    map: Mmap,
    offset: usize,
    n: usize,
    dim: usize,
    dtype: safetensors::Dtype,
}

impl MappedRows {
    /// Opens `path`: one 2-d tensor (named `embeddings`, or the only one) in
    /// F32, F16 or BF16 with one row per item, every row finite and non-zero.
    pub fn open(path: &Path, items: usize) -> Result<Self, CatalogError> {
        let rows = Self::map(path)?;
        if rows.n != items {
            return Err(CatalogError::Format(format!(
                "{}: {} rows for {items} items (one row per item, in the items file's order)",
                path.display(),
                rows.n
            )));
        }
        rows.check(0..rows.n, path)?;
        Ok(rows)
    }

    /// Maps `path` as [`Self::open`] does, with any number of rows, none
    /// read yet (see [`Self::check`]).
    pub fn map(path: &Path) -> Result<Self, CatalogError> {
        let f = std::fs::File::open(path).map_err(|e| CatalogError::io(path, e))?;
        // SAFETY: the file is only read; a writer changing it under us gives
        // wrong values, never unsafety in safe code reading the bytes.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| CatalogError::io(path, e))?;
        let bad = |m: String| CatalogError::Format(format!("{}: {m}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
        let names = st.names();
        let name = if names.contains(&"embeddings") {
            "embeddings".to_string()
        } else if names.len() == 1 {
            names[0].to_string()
        } else {
            return Err(bad("expected a tensor named \"embeddings\" (or a single tensor)".into()));
        };
        let t = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
        let (n, dim) = match t.shape() {
            [n, d] => (*n, *d),
            other => return Err(bad(format!("embeddings must be 2-d [items, dim], got {other:?}"))),
        };
        if dim == 0 {
            return Err(bad("embeddings have no columns".into()));
        }
        let dtype = t.dtype();
        if !matches!(dtype, safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16) {
            return Err(bad(format!("dtype {dtype:?}: expected F32, F16 or BF16")));
        }
        let offset = t.data().as_ptr() as usize - map.as_ptr() as usize;
        drop(st);
        Ok(MappedRows { map, offset, n, dim, dtype })
    }

    /// Checks that the rows of `range` are finite and non-zero; the first
    /// bad row is named (`path`: the file, for the message).
    pub fn check(&self, range: std::ops::Range<usize>, path: &Path) -> Result<(), CatalogError> {
        let dim = self.dim;
        let bad_row = range.into_par_iter().find_first(|&i| {
            let mut v = vec![0f32; dim];
            self.raw_row(i, &mut v);
            let norm = v.iter().map(|x| x * x).sum::<f32>();
            !norm.is_finite() || norm <= 1e-24
        });
        match bad_row {
            Some(i) => Err(CatalogError::Format(format!("{}: row {i} is not finite or is all zeros", path.display()))),
            None => Ok(()),
        }
    }

    fn raw_row(&self, i: usize, out: &mut [f32]) {
        let width = match self.dtype {
            safetensors::Dtype::F32 => 4,
            _ => 2,
        };
        let at = self.offset + i * self.dim * width;
        let bytes = &self.map[at..at + self.dim * width];
        match self.dtype {
            safetensors::Dtype::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            safetensors::Dtype::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            _ => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }

    /// Every row, normalised, in memory (for collaborative mixing on small catalogs).
    pub fn to_vec(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.n * self.dim];
        v.par_chunks_mut(self.dim).enumerate().for_each(|(i, out)| self.row_into(i, out));
        v
    }
}

impl Rows for MappedRows {
    fn len(&self) -> usize {
        self.n
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn row_into(&self, i: usize, out: &mut [f32]) {
        self.raw_row(i, out);
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        out.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Reads `--sids FILE.jsonl`: one `{"id": ..., "sid": [c1, c2, ...]}` per
/// line, every item once, every code below `codebook_size`, every line with
/// the same number of codes. Returns the codes `[rows × levels]` and `levels`.
pub fn read_sids(path: &Path, items: &ItemsRead, codebook_size: usize) -> Result<(Vec<u32>, usize), IndexError> {
    let file = std::fs::File::open(path).map_err(|e| CatalogError::io(path, e))?;
    let r = std::io::BufReader::with_capacity(1 << 20, file);
    let bad = |line: usize, msg: String| DataError::Line { path: path.into(), line, msg };
    let n = items.len();
    let mut levels = 0usize;
    let mut codes: Vec<u32> = Vec::new();
    let mut given: Vec<usize> = vec![0; n]; // line that gave each row (0: none yet)
    for (i, line) in r.split(b'\n').enumerate() {
        let ln = i + 1;
        let line = line.map_err(|e| CatalogError::io(path, e))?;
        let text = std::str::from_utf8(&line).map_err(|e| bad(ln, format!("not UTF-8 ({e})")))?.trim();
        if text.is_empty() {
            continue;
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SidLine {
            id: serde_json::Value,
            sid: Vec<u32>,
        }
        let l: SidLine = serde_json::from_str(text)
            .map_err(|e| bad(ln, format!("expected {{\"id\": ..., \"sid\": [codes]}}: {e}")))?;
        let id = match l.id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(x) => x.to_string(),
            _ => return Err(bad(ln, "id must be a string or a number".into()).into()),
        };
        if levels == 0 {
            if l.sid.is_empty() {
                return Err(bad(ln, "sid must have at least one code".into()).into());
            }
            levels = l.sid.len();
            codes = vec![0; n * levels];
        }
        if l.sid.len() != levels {
            return Err(bad(ln, format!("{} codes, the first line has {levels}", l.sid.len())).into());
        }
        if let Some(c) = l.sid.iter().find(|&&c| c as usize >= codebook_size) {
            return Err(bad(ln, format!("code {c} exceeds the codebook size {codebook_size} (--codebook-size)")).into());
        }
        let row =
            items.idmap.get(&id, &items.ids).ok_or_else(|| bad(ln, format!("id {id:?} is not in the items file")))?
                as usize;
        if given[row] != 0 {
            return Err(bad(ln, format!("id {id:?} was given on line {} already", given[row])).into());
        }
        given[row] = ln;
        codes[row * levels..(row + 1) * levels].copy_from_slice(&l.sid);
    }
    if let Some(row) = given.iter().position(|&g| g == 0) {
        return Err(DataError::Format {
            path: path.into(),
            msg: format!("no semantic ID for item {:?}", items.ids.get(row)),
        }
        .into());
    }
    Ok((codes, levels))
}

/// What `genrec index` did, phase by phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexReport {
    pub items: usize,
    pub dim: usize,
    pub codebook_sizes: Vec<u32>,
    pub used_codes: Vec<usize>,
    pub collided_items: usize,
    pub collision_groups: usize,
    /// Largest group of items sharing their k-means codes.
    pub max_group: usize,
    /// Items moved off their nearest code by capacity, per level.
    pub moved: Vec<usize>,
    /// Seconds per phase.
    pub phases: Vec<(String, f64)>,
    /// Bytes of each part of the written version.
    pub bytes: Vec<(String, u64)>,
}

/// Semantic IDs imported from elsewhere: the given codes (each below
/// `codebook_size`, as [`read_sids`] checks) plus a collision code, as the
/// quantiser adds.
pub fn imported(codes: Vec<u32>, levels: usize, codebook_size: usize) -> Quantized {
    with_collision_codes(codes, Vec::new(), levels, codebook_size, vec![0; levels])
}

/// Progress bars by phase name, for the quantiser's `progress(phase, done, total)`.
#[derive(Default)]
pub struct Bars(parking_lot::Mutex<HashMap<String, Progress>>);

impl Bars {
    pub fn set(&self, phase: &str, done: usize, total: usize) {
        let mut b = self.0.lock();
        let p = b.entry(phase.to_string()).or_insert_with(|| Progress::new(phase, total as u64));
        p.set(done as u64);
        if done >= total {
            if let Some(p) = b.remove(phase) {
                p.finish();
            }
        }
    }
}

/// The items of a build: read already, or read once the semantic IDs are
/// made, so that their strings and id map never share memory with the
/// assignment (at 10^8 items, 8 GB and 6 GB).
pub enum Items<'a> {
    Read(Box<ItemsRead>),
    After(Box<dyn FnOnce() -> Result<ItemsRead, IndexError> + 'a>),
}

/// How semantic IDs are made.
pub enum SidSource<'a> {
    /// RQ-KMeans over the embeddings.
    Learn(RqOptions),
    /// `--sids FILE.jsonl`.
    Import { path: &'a Path, codebook_size: usize },
    /// Codebooks learned beforehand (`genrec codebooks`), each item assigned
    /// here, or from the nearest paths that shards computed (`genrec assign`).
    Given { books: &'a CodebooksFile, max_group: usize, shards: Option<&'a ShardSet> },
}

/// Builds a catalog from items and embeddings and writes it to `out`: a new
/// catalog folder (version 1), or the next version of the catalog folder
/// there, which then serves only the new catalog (refused while a server
/// holds the folder; see [`super::dir::Staged`]). `ann` writes the ANN
/// index into the version folder.
#[allow(clippy::too_many_arguments)] // each is a separate input of the build; see catalog_cmd
pub fn index(
    out: &Path,
    name: &str,
    embedder: &str,
    items: Items,
    rows: &dyn Rows,
    sids: SidSource,
    seed: u64,
    ann: &dyn Fn(&Catalog, &Path) -> Result<(), CatalogError>,
) -> Result<IndexReport, IndexError> {
    let n = rows.len();
    let dim = rows.dim();
    let (items, later) = match items {
        Items::Read(items) => (Some(*items), None),
        Items::After(read) => (None, Some(read)),
    };
    let mut phases = Vec::new();
    let t = Instant::now();
    let mut q = match sids {
        SidSource::Learn(opts) => {
            let bars = Bars::default();
            quantize_rows(rows, &opts, &|p, d, t| bars.set(p, d, t))?
        }
        SidSource::Import { path, codebook_size } => {
            let items = items
                .as_ref()
                .ok_or_else(|| CatalogError::Format("imported semantic IDs need the items read first".into()))?;
            let (codes, levels) = read_sids(path, items, codebook_size)?;
            imported(codes, levels, codebook_size)
        }
        SidSource::Given { books, max_group, shards } => {
            books.check_shape(rows)?;
            let bars = Bars::default();
            let paths = shards.map(|s| s as &dyn NearestPaths);
            let (codes, moved) = assign_all(rows, &books.codebooks, max_group, paths, &|p, d, t| bars.set(p, d, t))?;
            let cb = &books.codebooks;
            with_collision_codes(codes, cb.books.clone(), cb.books.len(), cb.k, moved)
        }
    };
    phases.push(("semantic_ids".to_string(), t.elapsed().as_secs_f64()));
    let items = match (items, later) {
        (Some(items), _) => items,
        (None, Some(read)) => read()?,
        (None, None) => return Err(CatalogError::Format("no items".into()).into()),
    };
    if items.len() != n {
        return Err(CatalogError::Format(format!("{} items for {n} rows of embeddings", items.len())).into());
    }
    let levels = q.codebook_sizes.len();

    // the new version, staged: beside `out`, or inside the catalog folder
    // there (under its lock) as its next version (see `dir::Staged`)
    let staged = super::dir::Staged::new(out)?;
    let vdir = staged.version_dir();
    let number = staged.number();
    let result = (|| -> Result<IndexReport, IndexError> {
        let t = Instant::now();
        // embeddings as f16, streamed
        let p = Progress::new("writing embeddings", n as u64);
        let mut w = ArrayWriter::<u16>::create(&vdir.join("embeddings.f16"))?;
        let mut row = vec![0f32; dim];
        let mut half_row = vec![0u16; dim];
        for i in 0..n {
            rows.row_into(i, &mut row);
            half_row.iter_mut().zip(&row).for_each(|(h, x)| *h = half::f16::from_f32(*x).to_bits());
            w.push_all(&half_row)?;
            if i % 65_536 == 0 {
                p.set(i as u64);
            }
        }
        w.finish()?;
        p.finish();
        let fingerprint = format::fingerprint_of((0..n).map(|i| items.ids.get(i)), &q.sids);
        let t_trie = Instant::now();
        let trie = Trie::build(&q.sids, levels, &q.codebook_sizes)?;
        let trie_secs = t_trie.elapsed().as_secs_f64();
        let first_codes: Vec<u32> = items.sample.iter().map(|(r, _)| q.sids[*r as usize * levels]).collect();
        let texts: Vec<String> = items.sample.iter().map(|(_, t)| t.clone()).collect();
        let mut intents = super::intents::derive(&texts, &first_codes);
        let mut sizes = vec![0usize; q.codebook_sizes[0] as usize];
        q.sids.iter().step_by(levels).for_each(|&c| sizes[c as usize] += 1);
        intents.iter_mut().for_each(|i| i.items = sizes[i.code as usize]);
        let manifest = Manifest {
            format: format::FORMAT.into(),
            name: name.into(),
            num_items: n,
            codebook_sizes: q.codebook_sizes.clone(),
            embedding_dim: dim,
            embedder: embedder.into(),
            seed,
            fingerprint,
            version: number,
            last_edit_id: 0,
            feed_position: None,
            embedding_dtype: "f16".into(),
            removed_rows: 0,
            expiring_rows: 0,
            indexed_rows: Some(n),
            has_codebooks: !q.codebooks.is_empty(),
        };
        let emb = Array::<u16>::map(&vdir.join("embeddings.f16"), n * dim)?;
        let base = Base {
            manifest,
            ids: items.ids,
            titles: items.titles,
            sids: Array::owned(std::mem::take(&mut q.sids)),
            embeddings: Embeddings::F16(emb),
            codebooks: std::mem::take(&mut q.codebooks),
            trie,
            idmap: items.idmap,
            intents,
            removed: Array::default(),
            expiry: Default::default(),
            source: None,
        };
        base.write_all_but_embeddings(&vdir)?;
        phases.push(("write".to_string(), t.elapsed().as_secs_f64() - trie_secs));
        phases.push(("trie".to_string(), trie_secs));
        let t = Instant::now();
        // the ANN indexes read the version as written: mapped, so that the
        // ids, titles and id map built in memory (6 GB at 10^8) are freed first
        drop(base);
        let cat = Catalog::from_base(Base::map(&vdir)?);
        ann(&cat, &vdir)?;
        phases.push(("ann".to_string(), t.elapsed().as_secs_f64()));
        format::sync_dir(&vdir)?;
        let mut bytes = Vec::new();
        for e in std::fs::read_dir(&vdir).map_err(|e| CatalogError::io(&vdir, e))?.flatten() {
            bytes.push((e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
        bytes.sort();
        Ok(IndexReport {
            items: n,
            dim,
            codebook_sizes: q.codebook_sizes.clone(),
            used_codes: q.used_codes.clone(),
            collided_items: q.collided_items,
            collision_groups: q.collision_groups,
            max_group: *q.codebook_sizes.last().unwrap_or(&0) as usize,
            moved: q.moved.clone(),
            phases: phases.clone(),
            bytes,
        })
    })();
    let report = result?;
    staged.commit()?;
    Ok(report)
}

/// Quantises in-memory embeddings and assembles an in-memory catalog (tests,
/// small tools).
pub fn build_catalog(
    name: &str,
    items: &[dataset::ItemRecord],
    embeddings: Vec<f32>,
    dim: usize,
    embedder: &str,
    opts: &RqOptions,
) -> Result<(Catalog, Quantized), CatalogError> {
    let q = quantize_rows(&SliceRows { data: &embeddings, dim }, opts, &|_, _, _| {})?;
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let titles = items.iter().map(|i| i.title.clone()).collect();
    let manifest = Manifest::new(
        name,
        items.len(),
        q.codebook_sizes.clone(),
        dim,
        embedder,
        opts.seed,
        catalog_fingerprint(&ids, &q.sids),
    );
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let intents = super::intents::derive(&texts, &super::intents::first_codes(&q.sids, q.codebook_sizes.len()));
    let cat =
        Catalog::with_intents(manifest, ids, titles, q.sids.clone(), embeddings, q.codebooks.clone(), Some(intents))?;
    Ok((cat, q))
}
