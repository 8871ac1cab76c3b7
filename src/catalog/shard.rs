//! The index build split over processes or machines that share a folder:
//! `genrec codebooks` learns the codebooks on a sample and writes them as
//! safetensors ([`CodebooksFile`]); `genrec assign --shard i/N` computes the
//! nearest paths ([`super::assign`]) of one range of items into
//! `assign-i-of-N.*` files ([`write_shard`]); `genrec index --codebooks
//! --assigned` reads all N back ([`ShardSet`]) and finishes the build in one
//! process. The catalog it writes equals the one-process build's, byte for
//! byte.
//!
//! Every file is written under a temporary name, synced and renamed; a
//! shard's `.json` goes last and marks the shard complete, so a shard that
//! died halfway is simply absent, and running it again replaces it.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::array::{Array, ArrayWriter};
use super::assign::Codebooks;
use super::assign::{nearest_paths, NearestPaths, CANDIDATES};
use super::rows::Rows;
use super::CatalogError;

/// The codebooks file's `format` metadata.
pub const CODEBOOKS_FORMAT: &str = "genrec-codebooks/1";
/// A shard description's `format`.
const SHARD_FORMAT: &str = "genrec-assign/1";

/// Learned codebooks with what they were learned from (safetensors: one F32
/// tensor `level_L` of `[k, dim]` per level; the fields below as metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct CodebooksFile {
    pub codebooks: Codebooks,
    /// Rows of the embeddings they were learned from (every shard and the
    /// merge must read the same number).
    pub rows: usize,
    /// The seed of the sample and of k-means; the merged catalog's seed.
    pub seed: u64,
}

impl CodebooksFile {
    /// Fingerprint of the codebooks' values, which shards and the merge must share.
    pub fn fingerprint(&self) -> String {
        let mut h = crate::util::Fnv64::default();
        for b in &self.codebooks.books {
            h.update(bytemuck::cast_slice(b));
        }
        h.update(&(self.rows as u64).to_le_bytes());
        h.hex()
    }

    /// Whether `rows` are the embeddings these codebooks were learned from,
    /// by shape (row count and dimension).
    pub fn check_shape(&self, rows: &dyn Rows) -> Result<(), CatalogError> {
        if rows.len() != self.rows || rows.dim() != self.codebooks.dim {
            return Err(CatalogError::Format(format!(
                "embeddings are {} x {}, the codebooks were learned on {} x {}",
                rows.len(),
                rows.dim(),
                self.rows,
                self.codebooks.dim
            )));
        }
        Ok(())
    }

    /// Writes the file atomically (temporary name, sync, rename, sync the folder).
    pub fn write(&self, path: &Path) -> Result<(), CatalogError> {
        let cb = &self.codebooks;
        let shape = vec![cb.k, cb.dim];
        let names: Vec<String> = (0..cb.books.len()).map(|l| format!("level_{l}")).collect();
        let views = names
            .iter()
            .zip(&cb.books)
            .map(|(n, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytemuck::cast_slice(b))
                    .map(|v| (n.as_str(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CatalogError::Format(e.to_string()))?;
        let meta = HashMap::from([
            ("format".to_string(), CODEBOOKS_FORMAT.to_string()),
            ("rows".to_string(), self.rows.to_string()),
            ("seed".to_string(), self.seed.to_string()),
            ("fingerprint".to_string(), self.fingerprint()),
        ]);
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| CatalogError::Format(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir_synced(dir)?;
        }
        crate::util::write_atomic(path, &bytes).map_err(|e| CatalogError::io(path, e))
    }

    /// Reads a codebooks file (written by [`Self::write`], or by anyone who
    /// writes the same tensors and metadata: codebooks learned in PyTorch).
    pub fn read(path: &Path) -> Result<Self, CatalogError> {
        let bytes = std::fs::read(path).map_err(|e| CatalogError::io(path, e))?;
        let bad = |m: String| CatalogError::Format(format!("{}: {m}", path.display()));
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let info = meta.metadata().clone().unwrap_or_default();
        let field = |name: &str| info.get(name).ok_or_else(|| bad(format!("metadata has no {name:?}")));
        if field("format")? != CODEBOOKS_FORMAT {
            return Err(bad(format!("format {:?}, expected {CODEBOOKS_FORMAT:?}", field("format")?)));
        }
        let number = |name: &str| -> Result<u64, CatalogError> {
            field(name)?.parse().map_err(|_| bad(format!("metadata {name:?} is not a whole number")))
        };
        let (rows, seed) = (number("rows")? as usize, number("seed")?);
        let mut books = Vec::new();
        let mut shape = None;
        for l in 0.. {
            let t = match st.tensor(&format!("level_{l}")) {
                Ok(t) => t,
                Err(_) => break,
            };
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!("level_{l} is {:?}, expected F32", t.dtype())));
            }
            let s = match t.shape() {
                [k, d] if *k > 0 && *d > 0 => (*k, *d),
                other => return Err(bad(format!("level_{l} has shape {other:?}, expected [codes, dim]"))),
            };
            if shape.is_some_and(|first| first != s) {
                return Err(bad(format!("level_{l} has shape {s:?}, level_0 {shape:?}")));
            }
            shape = Some(s);
            let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("level_{l} holds a value that is not finite")));
            }
            books.push(v);
        }
        let (k, dim) = shape.ok_or_else(|| bad("no level_0 tensor".into()))?;
        let named = st.names().iter().filter(|n| n.starts_with("level_")).count();
        if named != books.len() {
            return Err(bad(format!(
                "{named} level_L tensors, but level_0..level_{} only are consecutive",
                books.len() - 1
            )));
        }
        if k < 2 {
            return Err(bad(format!("{k} code per level: at least 2")));
        }
        let file = CodebooksFile { codebooks: Codebooks { books, k, dim }, rows, seed };
        if let Some(f) = info.get("fingerprint") {
            if *f != file.fingerprint() {
                return Err(bad(format!("fingerprint {f} does not match the values ({})", file.fingerprint())));
            }
        }
        Ok(file)
    }
}

/// Creates `dir` (and its parents) when missing, and syncs the folder that
/// holds it so that the new name survives a crash.
fn create_dir_synced(dir: &Path) -> Result<(), CatalogError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| CatalogError::io(dir, e))?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => super::format::sync_dir(parent),
        None => Ok(()),
    }
}

/// One shard of the assignment: `index` of `count` (0-based, as a
/// Kubernetes Indexed Job numbers its pods), written `i/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for ShardSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected I/N with 0 <= I < N (say 0/3), got {s:?}");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(ShardSpec { index, count })
    }
}

impl ShardSpec {
    /// The shard's rows of `n`: contiguous, every row in exactly one shard.
    pub fn rows(&self, n: usize) -> Range<usize> {
        let at = |i: usize| ((i as u128 * n as u128) / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    fn stem(&self) -> String {
        format!("assign-{}-of-{}", self.index, self.count)
    }
}

/// What a shard wrote (its `.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ShardInfo {
    pub format: String,
    pub index: usize,
    pub count: usize,
    pub start: usize,
    pub end: usize,
    pub levels: usize,
    /// Codes kept per item and level.
    pub width: usize,
    pub codebooks: String,
    /// Fingerprint of the shard's rows of embeddings (a sample of them, see
    /// [`rows_fingerprint`]): the merge reads the same rows.
    pub embeddings: String,
}

/// Fingerprint of the rows of `range`: every row of a sample of up to 4,096
/// evenly spaced ones, as read (normalised f32), and the range itself.
pub fn rows_fingerprint(rows: &dyn Rows, range: Range<usize>) -> String {
    let mut h = crate::util::Fnv64::default();
    h.update(&(range.start as u64).to_le_bytes());
    h.update(&(range.end as u64).to_le_bytes());
    let step = (range.len() / 4096).max(1);
    let mut row = vec![0f32; rows.dim()];
    for i in range.step_by(step) {
        rows.row_into(i, &mut row);
        h.update(bytemuck::cast_slice(&row));
    }
    h.hex()
}

/// Computes shard `spec`'s nearest paths over `rows` with `books` and writes
/// `assign-I-of-N.{codes.u32,best.f32,json}` into `dir` (created if needed).
pub fn write_shard(
    dir: &Path,
    spec: ShardSpec,
    rows: &dyn Rows,
    books: &CodebooksFile,
    progress: &dyn Fn(usize, usize),
) -> Result<ShardInfo, CatalogError> {
    books.check_shape(rows)?;
    create_dir_synced(dir)?;
    let range = spec.rows(rows.len());
    let stem = spec.stem();
    // an earlier run's description goes first: from here until the new one
    // is written, the shard reads as missing, never as old data under a
    // description that does not match it
    let json = dir.join(format!("{stem}.json"));
    match std::fs::remove_file(&json) {
        Ok(()) => super::format::sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CatalogError::io(&json, e)),
    }
    // uniquely named temporaries (two runs of one shard never share one),
    // removed if this fails
    let temp = |ext: &str| {
        tempfile::Builder::new()
            .prefix(&format!(".{stem}.{ext}."))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| CatalogError::io(dir, e))
    };
    let (codes_tmp, best_tmp) = (temp("codes")?, temp("best")?);
    let mut codes = ArrayWriter::<u32>::create(codes_tmp.path())?;
    let mut best = ArrayWriter::<f32>::create(best_tmp.path())?;
    nearest_paths(
        rows,
        &books.codebooks,
        range.clone(),
        &mut |c, b| {
            codes.push_all(c)?;
            best.push_all(b)
        },
        progress,
    )?;
    codes.finish()?;
    best.finish()?;
    for (tmp, ext) in [(codes_tmp, "codes.u32"), (best_tmp, "best.f32")] {
        let to = dir.join(format!("{stem}.{ext}"));
        tmp.persist(&to).map_err(|e| CatalogError::io(&to, e.error))?;
    }
    super::format::sync_dir(dir)?;
    let info = ShardInfo {
        format: SHARD_FORMAT.into(),
        index: spec.index,
        count: spec.count,
        start: range.start,
        end: range.end,
        levels: books.codebooks.books.len(),
        width: CANDIDATES.min(books.codebooks.k),
        codebooks: books.fingerprint(),
        embeddings: rows_fingerprint(rows, range),
    };
    let bytes = serde_json::to_vec_pretty(&info).map_err(|e| CatalogError::Json { path: json.clone(), source: e })?;
    crate::util::write_atomic(&json, &bytes).map_err(|e| CatalogError::io(&json, e))?;
    Ok(info)
}

/// All shards of one assignment, mapped, as the merge reads them.
pub struct ShardSet {
    /// `(first row, codes, best)` per shard, in row order.
    shards: Vec<(usize, Array<u32>, Array<f32>)>,
    levels: usize,
    width: usize,
}

impl ShardSet {
    /// Opens the shards in `dir` made with `books` over `rows`: exactly one
    /// count N, every index below it, their rows covering every row once,
    /// each made from the same rows of embeddings.
    pub fn open(dir: &Path, books: &CodebooksFile, rows: &dyn Rows) -> Result<Self, CatalogError> {
        let bad = |m: String| CatalogError::Format(format!("{}: {m}", dir.display()));
        let mut infos: Vec<(ShardInfo, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| CatalogError::io(dir, e))? {
            let path = e.map_err(|e| CatalogError::io(dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !(name.starts_with("assign-") && name.ends_with(".json")) {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| CatalogError::io(&path, e))?;
            let info: ShardInfo =
                serde_json::from_slice(&bytes).map_err(|e| CatalogError::Json { path: path.clone(), source: e })?;
            infos.push((info, path));
        }
        let Some(count) = infos.first().map(|(i, _)| i.count) else {
            return Err(bad("no assign-I-of-N.json: run genrec assign --shard I/N for every I first".into()));
        };
        if let Some((other, p)) = infos.iter().find(|(i, _)| i.count != count) {
            return Err(bad(format!(
                "shards of different counts ({count} and {}, {}): one assignment per folder",
                other.count,
                p.display()
            )));
        }
        infos.sort_by_key(|(i, _)| i.index);
        let missing: Vec<usize> = (0..count).filter(|i| infos.iter().all(|(s, _)| s.index != *i)).collect();
        if !missing.is_empty() {
            return Err(bad(format!("shards {missing:?} of {count} are missing (not run, or not finished)")));
        }
        let (levels, width) = (books.codebooks.books.len(), CANDIDATES.min(books.codebooks.k));
        let mut shards = Vec::new();
        let mut next = 0;
        for (info, path) in &infos {
            let spec = ShardSpec { index: info.index, count };
            let want = spec.rows(books.rows);
            if info.format != SHARD_FORMAT {
                return Err(bad(format!("{}: format {:?}, expected {SHARD_FORMAT:?}", path.display(), info.format)));
            }
            if info.codebooks != books.fingerprint() {
                return Err(bad(format!(
                    "{} was made with other codebooks ({}; these are {})",
                    path.display(),
                    info.codebooks,
                    books.fingerprint()
                )));
            }
            if (info.start, info.end) != (want.start, want.end) || info.start != next {
                return Err(bad(format!(
                    "{} covers rows {}..{}, expected {want:?}",
                    path.display(),
                    info.start,
                    info.end
                )));
            }
            if (info.levels, info.width) != (levels, width) {
                return Err(bad(format!("{} has {} levels of {} codes", path.display(), info.levels, info.width)));
            }
            if info.embeddings != rows_fingerprint(rows, want.clone()) {
                return Err(bad(format!(
                    "{} was made from other embeddings (its rows {want:?} differ from these): run the shard again",
                    path.display()
                )));
            }
            let n = info.end - info.start;
            let stem = spec.stem();
            let codes = Array::<u32>::map(&dir.join(format!("{stem}.codes.u32")), n * levels * width)?;
            let best = Array::<f32>::map(&dir.join(format!("{stem}.best.f32")), n * levels)?;
            shards.push((info.start, codes, best));
            next = info.end;
        }
        if next != books.rows {
            return Err(bad(format!("shards cover {next} rows of {}", books.rows)));
        }
        Ok(ShardSet { shards, levels, width })
    }
}

impl NearestPaths for ShardSet {
    fn width(&self) -> usize {
        self.width
    }

    fn candidates(&self, level: usize, row: usize) -> (&[u32], f32) {
        // the last shard starting at or before `row` (shards may be empty)
        let s = self.shards.partition_point(|(start, _, _)| *start <= row) - 1;
        let (start, codes, best) = &self.shards[s];
        let r = row - start;
        let at = (r * self.levels + level) * self.width;
        (&codes[at..at + self.width], best[r * self.levels + level])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs_parse_and_cover_every_row_once() {
        assert_eq!("2/3".parse::<ShardSpec>(), Ok(ShardSpec { index: 2, count: 3 }));
        for bad in ["3/3", "0/0", "1", "a/2", "-1/2"] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad}");
        }
        for (n, count) in [(10, 3), (2, 5), (100_000, 7), (0, 2)] {
            let mut next = 0;
            for index in 0..count {
                let r = ShardSpec { index, count }.rows(n);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }

    /// More shards than rows (empty shards) merge to the one-pass codes;
    /// shards of other embeddings of the same shape are refused.
    #[test]
    fn empty_shards_merge_and_other_embeddings_are_refused() {
        use crate::catalog::assign::assign_all;
        use crate::catalog::rqkmeans::{learn_codebooks, RqOptions, SliceRows};
        let dim = 3;
        let x: Vec<f32> = (0..3 * dim).map(|v| ((v * 7 % 5) as f32 - 2.0) + 0.1).collect();
        let rows = SliceRows { data: &x, dim };
        let o = RqOptions { levels: 2, codebook_size: 2, iterations: 3, seed: 1, sample: 3, max_group: 1 };
        let books = CodebooksFile { codebooks: learn_codebooks(&rows, &o, &|_, _, _| {}).unwrap(), rows: 3, seed: 1 };
        let dir = tempfile::tempdir().unwrap();
        for index in 0..5 {
            write_shard(dir.path(), ShardSpec { index, count: 5 }, &rows, &books, &|_, _| {}).unwrap();
        }
        let set = ShardSet::open(dir.path(), &books, &rows).unwrap();
        let want = assign_all(&rows, &books.codebooks, 1, None, &|_, _, _| {}).unwrap();
        let got = assign_all(&rows, &books.codebooks, 1, Some(&set), &|_, _, _| {}).unwrap();
        assert_eq!(got, want);
        let mut other = x.clone();
        other[0] += 0.5;
        let e = ShardSet::open(dir.path(), &books, &SliceRows { data: &other, dim }).err().unwrap().to_string();
        assert!(e.contains("made from other embeddings"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "no temporaries left: {left:?}");
    }

    #[test]
    fn codebooks_round_trip_and_a_changed_value_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("codebooks.safetensors");
        let f = CodebooksFile {
            codebooks: Codebooks { books: vec![vec![0.5, -1.0, 2.0, 0.25], vec![1.0, 2.0, 3.0, 4.0]], k: 2, dim: 2 },
            rows: 10,
            seed: 9,
        };
        f.write(&p).unwrap();
        assert_eq!(CodebooksFile::read(&p).unwrap(), f);
        // flip one value's bytes: the fingerprint no longer matches
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes.len() - 4;
        bytes[at..].copy_from_slice(&5.0f32.to_le_bytes());
        std::fs::write(&p, bytes).unwrap();
        let e = CodebooksFile::read(&p).unwrap_err().to_string();
        assert!(e.contains("fingerprint"), "{e}");
    }
}
