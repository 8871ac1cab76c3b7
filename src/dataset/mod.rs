//! Data sets in the LC-Rec / TIGER file convention used by `../shared/data`:
//! `NAME.item.json` (`{"item id": {"title": ..., ...}}`) and `NAME.inter.json`
//! (`{"user id": [item id, ...]}` in time order), plus the leave-one-out split.

pub mod demo;
pub mod synth;

use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// Something wrong at one line (or row) of a file.
    #[error("{path}: line {line}: {msg}")]
    Line { path: PathBuf, line: usize, msg: String },
}

fn read_json(path: &Path) -> Result<Value, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io { path: path.into(), source: e })?;
    serde_json::from_slice(&bytes).map_err(|e| DataError::Json { path: path.into(), source: e })
}

/// One catalog item as read from `NAME.item.json`.
#[derive(Debug, Clone)]
pub struct ItemRecord {
    pub id: String,
    pub title: String,
    /// The text that is embedded: title, then brand, categories, genres, description.
    pub text: String,
}

/// Fields appended to the title to form the embedded text, in this order.
const TEXT_FIELDS: [&str; 4] = ["brand", "categories", "genres", "description"];

fn field_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().filter_map(field_text).collect();
            (!parts.is_empty()).then(|| parts.join(", "))
        }
        _ => None,
    }
}

/// Sort key that puts numeric ids in numeric order ("2" before "10").
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        _ => a.cmp(b),
    }
}

/// The record of one item from its attributes (`title` required, a string).
fn item_record(id: String, attrs: &Value) -> Result<ItemRecord, String> {
    // a title must be present; an empty one is allowed (it happens in real
    // data) and the text then falls back to the other fields or the id
    let title = match attrs.get("title") {
        Some(Value::String(s)) => s.trim().to_string(),
        _ => return Err(format!("item {id:?} has no \"title\" string")),
    };
    let mut parts: Vec<String> = vec![title.clone()];
    parts.extend(TEXT_FIELDS.iter().filter_map(|f| attrs.get(*f).and_then(field_text)));
    parts.retain(|p| !p.is_empty());
    let text = if parts.is_empty() { format!("item {id}") } else { parts.join(". ") };
    Ok(ItemRecord { id, title, text })
}

/// Reads `NAME.item.json`; items come back in id order (numeric where possible).
pub fn load_items(path: &Path) -> Result<Vec<ItemRecord>, DataError> {
    let v = read_json(path)?;
    let obj = v.as_object().ok_or_else(|| DataError::Format {
        path: path.into(),
        msg: "expected an object of item id -> attributes".into(),
    })?;
    let mut items = Vec::with_capacity(obj.len());
    for (id, attrs) in obj {
        items.push(item_record(id.clone(), attrs).map_err(|msg| DataError::Format { path: path.into(), msg })?);
    }
    items.sort_by(|a, b| id_order(&a.id, &b.id));
    Ok(items)
}

/// Longest line of a JSON Lines items file.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Counts the items of a JSON Lines items file without reading them (its
/// lines that are not blank); `None` for any other kind of file.
pub fn count_jsonl_items(path: &Path) -> Result<Option<usize>, DataError> {
    if !path.extension().is_some_and(|e| e == "jsonl" || e == "ndjson") {
        return Ok(None);
    }
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| DataError::Io { path: path.into(), source: e })?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut n, mut blank) = (0usize, true);
    loop {
        let got = file.read(&mut buf).map_err(|e| DataError::Io { path: path.into(), source: e })?;
        if got == 0 {
            break;
        }
        for &b in &buf[..got] {
            if b == b'\n' {
                n += usize::from(!blank);
                blank = true;
            } else if !b.is_ascii_whitespace() {
                blank = false;
            }
        }
    }
    Ok(Some(n + usize::from(!blank)))
}

/// Reads the items of `path` one at a time and hands each to `f(line, item)`:
/// a `.jsonl` file (one `{"id": ..., "title": ..., ...}` per line) is streamed
/// in file order and `line` is its 1-based line; any other file is read as
/// `NAME.item.json` (id order) and `line` is the item's position. Lines that
/// are not UTF-8, not an object, lack an id or a title, or exceed 1 MiB stop
/// the read with an error naming the line. Returns the number of items.
pub fn for_each_item(
    path: &Path,
    mut f: impl FnMut(usize, ItemRecord) -> Result<(), DataError>,
) -> Result<usize, DataError> {
    let is_jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "ndjson");
    if !is_jsonl {
        let items = load_items(path)?;
        let n = items.len();
        for (i, it) in items.into_iter().enumerate() {
            f(i + 1, it)?;
        }
        return Ok(n);
    }
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| DataError::Io { path: path.into(), source: e })?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let (mut line, mut n) = (0usize, 0usize);
    let bad = |line: usize, msg: String| DataError::Line { path: path.into(), line, msg };
    loop {
        buf.clear();
        let got = r.read_until(b'\n', &mut buf).map_err(|e| DataError::Io { path: path.into(), source: e })?;
        if got == 0 {
            break;
        }
        line += 1;
        if buf.len() > MAX_LINE_BYTES {
            return Err(bad(line, format!("{} bytes: lines are at most {MAX_LINE_BYTES}", buf.len())));
        }
        let text = std::str::from_utf8(&buf).map_err(|e| bad(line, format!("not UTF-8 ({e})")))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(text).map_err(|e| bad(line, format!("invalid JSON: {e}")))?;
        let id = match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(x)) => x.to_string(),
            _ => return Err(bad(line, "expected an object with an \"id\" string or number".into())),
        };
        let rec = item_record(id, &v).map_err(|m| bad(line, m))?;
        f(line, rec)?;
        n += 1;
    }
    Ok(n)
}

/// User sequences from `NAME.inter.json`, item ids as strings, users in id order.
#[derive(Debug, Clone, Default)]
pub struct Interactions {
    pub users: Vec<String>,
    pub sequences: Vec<Vec<String>>,
}

pub fn load_interactions(path: &Path) -> Result<Interactions, DataError> {
    let v = read_json(path)?;
    let obj = v.as_object().ok_or_else(|| DataError::Format {
        path: path.into(),
        msg: "expected an object of user id -> [item id, ...]".into(),
    })?;
    let mut rows: Vec<(String, Vec<String>)> = Vec::with_capacity(obj.len());
    for (user, seq) in obj {
        let arr = seq.as_array().ok_or_else(|| DataError::Format {
            path: path.into(),
            msg: format!("user {user:?}: expected a list of item ids"),
        })?;
        let mut items = Vec::with_capacity(arr.len());
        for it in arr {
            match it {
                Value::String(s) => items.push(s.clone()),
                Value::Number(n) => items.push(n.to_string()),
                other => {
                    return Err(DataError::Format {
                        path: path.into(),
                        msg: format!("user {user:?}: item id {other} is neither a string nor a number"),
                    })
                }
            }
        }
        rows.push((user.clone(), items));
    }
    rows.sort_by(|a, b| id_order(&a.0, &b.0));
    let (users, sequences) = rows.into_iter().unzip();
    Ok(Interactions { users, sequences })
}

/// Which part of the leave-one-out split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Everything but the last two items.
    Train,
    /// Target = second-to-last item, history before it.
    Valid,
    /// Target = last item, history before it.
    Test,
}

/// `m` elements of `all` at even spacing (all of them when `m` is 0 or not
/// smaller): the users a benchmark samples, chosen the same way everywhere so
/// that the in-process and HTTP benchmarks send the same histories.
pub fn evenly_spaced<T: Clone>(all: Vec<T>, m: usize) -> Vec<T> {
    if m == 0 || m >= all.len() {
        return all;
    }
    let step = all.len() as f64 / m as f64;
    (0..m).map(|i| all[(i as f64 * step) as usize].clone()).collect()
}

/// History (truncated to the last `max_history` items) and target of one user
/// for the valid or test split; `None` when the sequence is too short.
pub fn heldout<T: Clone>(seq: &[T], split: Split, max_history: usize) -> Option<(Vec<T>, T)> {
    let cut = match split {
        Split::Test => 1,
        Split::Valid => 2,
        Split::Train => return None,
    };
    if seq.len() < cut + 1 {
        return None;
    }
    let t = seq.len() - cut;
    let start = t.saturating_sub(max_history);
    Some((seq[start..t].to_vec(), seq[t].clone()))
}

/// The training part of a sequence (all but the last two items).
pub fn train_part<T>(seq: &[T]) -> &[T] {
    &seq[..seq.len().saturating_sub(2)]
}

/// Which part of the cold-start split a user falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdGroup {
    /// Trained on.
    Train,
    /// Held out, used to pick settings.
    Valid,
    /// Held out, reported.
    Test,
}

/// Cold-start split by user id: a user is held out (never trained on) when a
/// hash of the id falls under `fraction`; held-out users alternate between
/// validation and test by the hash's lowest bit. Stable across runs and
/// commands (`genrec train --holdout-users`, `genrec coldstart-eval`).
pub fn cold_group(user: &str, fraction: f64) -> ColdGroup {
    let mut h = crate::util::Fnv64::default();
    h.update(b"genrec-cold-start:");
    h.update(user.as_bytes());
    let x = h.value();
    if ((x >> 1) % 1_000_000) as f64 >= fraction * 1_000_000.0 {
        ColdGroup::Train
    } else if x & 1 == 0 {
        ColdGroup::Valid
    } else {
        ColdGroup::Test
    }
}

impl Interactions {
    /// The users for which `keep` holds.
    pub fn filter_users(&self, keep: impl Fn(&str) -> bool) -> Interactions {
        let (users, sequences) = self
            .users
            .iter()
            .zip(&self.sequences)
            .filter(|(u, _)| keep(u))
            .map(|(u, s)| (u.clone(), s.clone()))
            .unzip();
        Interactions { users, sequences }
    }
}

/// Reads `NAME.user.json` (`{"user id": {"age": .., "gender": .., ...}}`).
pub fn load_users(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, DataError> {
    match read_json(path)? {
        serde_json::Value::Object(m) => Ok(m),
        _ => Err(DataError::Format { path: path.into(), msg: "expected an object of user id -> fields".into() }),
    }
}

/// The `genres` of each item of `NAME.item.json` (item id -> genres; items
/// without genres are left out).
pub fn load_item_genres(path: &Path) -> Result<std::collections::HashMap<String, Vec<String>>, DataError> {
    let Value::Object(items) = read_json(path)? else {
        return Err(DataError::Format { path: path.into(), msg: "expected an object of item id -> attributes".into() });
    };
    Ok(items
        .into_iter()
        .filter_map(|(id, attrs)| {
            let genres: Vec<String> =
                attrs.get("genres")?.as_array()?.iter().filter_map(|g| g.as_str().map(str::to_string)).collect();
            (!genres.is_empty()).then_some((id, genres))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_split_is_stable_and_near_its_fraction() {
        let users: Vec<String> = (0..4000).map(|i| i.to_string()).collect();
        let groups: Vec<ColdGroup> = users.iter().map(|u| cold_group(u, 0.3)).collect();
        let held = groups.iter().filter(|g| **g != ColdGroup::Train).count() as f64 / 4000.0;
        assert!((held - 0.3).abs() < 0.03, "{held}");
        let valid = groups.iter().filter(|g| **g == ColdGroup::Valid).count();
        let test = groups.iter().filter(|g| **g == ColdGroup::Test).count();
        assert!(valid.abs_diff(test) < 120, "{valid} vs {test}");
        assert_eq!(cold_group("17", 0.3), cold_group("17", 0.3));
        assert_eq!(cold_group("17", 0.0), ColdGroup::Train);
    }

    #[test]
    fn split_follows_leave_one_out() {
        let s: Vec<u32> = (0..30).collect();
        let (h, t) = heldout(&s, Split::Test, 20).unwrap();
        assert_eq!(t, 29);
        assert_eq!(h, (9..29).collect::<Vec<_>>());
        let (h, t) = heldout(&s, Split::Valid, 20).unwrap();
        assert_eq!(t, 28);
        assert_eq!(h.len(), 20);
        assert_eq!(h[19], 27);
        assert_eq!(train_part(&s).len(), 28);
        assert!(heldout(&[1u32, 2], Split::Valid, 20).is_none());
        assert_eq!(heldout(&[1u32, 2], Split::Test, 20), Some((vec![1], 2)));
    }

    #[test]
    fn items_read_in_numeric_order_with_text() {
        let dir = std::env::temp_dir().join(format!("genrec-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.item.json");
        std::fs::write(&p, r#"{"10": {"title": "b", "brand": "acme"}, "2": {"title": "a", "genres": ["x", "y"]}}"#)
            .unwrap();
        let genres = load_item_genres(&p).unwrap();
        assert_eq!(genres.len(), 1);
        assert_eq!(genres["2"], ["x", "y"]);
        let items = load_items(&p).unwrap();
        assert_eq!(items[0].id, "2");
        assert_eq!(items[0].text, "a. x, y");
        assert_eq!(items[1].text, "b. acme");
        std::fs::write(&p, r#"{"1": {"title": ""}}"#).unwrap();
        assert_eq!(load_items(&p).unwrap()[0].text, "item 1");
        std::fs::write(&p, r#"{"1": {"name": "no title"}}"#).unwrap();
        let err = load_items(&p).unwrap_err().to_string();
        assert!(err.contains("title"), "{err}");
        let q = dir.join("x.inter.json");
        std::fs::write(&q, r#"{"1": [3, "4"], "0": [1]}"#).unwrap();
        let inter = load_interactions(&q).unwrap();
        assert_eq!(inter.users, vec!["0", "1"]);
        assert_eq!(inter.sequences[1], vec!["3", "4"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
