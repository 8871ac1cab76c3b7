//! The item maps LLM-based recommenders publish beside their checkpoints,
//! read as they are: each item's semantic ID as token strings.
//!
//! - `index` (LC-Rec's `<dataset>.index.json`, and the general form): a JSON
//!   object from item id to its token strings, one per level,
//!   `{"0": ["<a_12>", "<b_200>", "<c_5>"], ...}`.
//! - `sid2pid` (OpenOneRec's `sid2pid.json`): a JSON object from an encoded
//!   three-level semantic ID to the products that carry it, most frequent
//!   first, `{"8454660": [{"pid": 17, "count": 40}, ...], ...}`. The key is
//!   `c1 * 8192^2 + c2 * 8192 + c3`, or `"c1.c2.c3"`. One semantic ID is one
//!   generated item: its most frequent product names it; the others are
//!   counted in [`ItemMap::aliases_dropped`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::ModelError;

/// Which published format an item map file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ItemMapFormat {
    /// Item id → token strings (LC-Rec's `index.json`).
    #[default]
    Index,
    /// Encoded semantic ID → products (OpenOneRec's `sid2pid.json`).
    Sid2pid,
}

/// OpenOneRec's code base: each of the three codes is below it.
pub const SID2PID_BASE: u64 = 8192;

/// Where an item's semantic ID is written: token strings (`index`) or codes
/// (`sid2pid`, whose tokens the level templates name).
#[derive(Debug, Clone, PartialEq)]
pub enum ItemSid {
    Tokens(Vec<String>),
    Codes(Vec<u32>),
}

/// The items of a map, in the file's order (`index`) or by encoded key
/// (`sid2pid`), each with its semantic ID.
#[derive(Debug, Clone, Default)]
pub struct ItemMap {
    pub items: Vec<(String, ItemSid)>,
    /// Products of a `sid2pid` map beyond the first of their semantic ID.
    pub aliases_dropped: usize,
}

fn bad(msg: String) -> ModelError {
    ModelError::Sidecar(format!("item map: {msg}"))
}

impl ItemMap {
    /// Parses an item map file's bytes.
    pub fn parse(bytes: &[u8], format: ItemMapFormat) -> Result<Self, ModelError> {
        match format {
            ItemMapFormat::Index => Self::parse_index(bytes),
            ItemMapFormat::Sid2pid => Self::parse_sid2pid(bytes),
        }
    }

    fn parse_index(bytes: &[u8]) -> Result<Self, ModelError> {
        // (serde_json keeps an object's order only with its preserve_order
        // feature: the entries are sorted by id instead, which every reader
        // reproduces)
        let map: HashMap<String, Vec<String>> =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("expected {{\"item id\": [token, ...]}}: {e}")))?;
        let mut items: Vec<(String, ItemSid)> = map.into_iter().map(|(id, t)| (id, ItemSid::Tokens(t))).collect();
        items.sort_by(|a, b| natural_order(&a.0, &b.0));
        Self::check_levels(&items)?;
        Ok(ItemMap { items, aliases_dropped: 0 })
    }

    fn parse_sid2pid(bytes: &[u8]) -> Result<Self, ModelError> {
        #[derive(Deserialize)]
        struct Product {
            pid: serde_json::Value,
        }
        let map: HashMap<String, Vec<Product>> = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("expected {{\"encoded sid\": [{{\"pid\": ...}}, ...]}}: {e}")))?;
        let mut items = Vec::with_capacity(map.len());
        let mut dropped = 0;
        for (key, products) in map {
            let codes = decode_sid2pid_key(&key)?;
            let first = products.first().ok_or_else(|| bad(format!("semantic ID {key} lists no product")))?;
            let pid = match &first.pid {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                other => return Err(bad(format!("semantic ID {key}: pid {other} is not a string or number"))),
            };
            dropped += products.len() - 1;
            items.push((codes, pid));
        }
        items.sort();
        let items = items.into_iter().map(|(codes, pid)| (pid, ItemSid::Codes(codes))).collect();
        Ok(ItemMap { items, aliases_dropped: dropped })
    }

    fn check_levels(items: &[(String, ItemSid)]) -> Result<(), ModelError> {
        let len = |s: &ItemSid| match s {
            ItemSid::Tokens(t) => t.len(),
            ItemSid::Codes(c) => c.len(),
        };
        let Some((first_id, first)) = items.first() else {
            return Err(bad("no items".into()));
        };
        let levels = len(first);
        if levels == 0 {
            return Err(bad(format!("item {first_id:?} has an empty semantic ID")));
        }
        if let Some((id, s)) = items.iter().find(|(_, s)| len(s) != levels) {
            return Err(bad(format!("item {id:?} has {} levels, item {first_id:?} has {levels}", len(s))));
        }
        Ok(())
    }
}

/// Numeric ids first, by value (`"2"` before `"10"`), then the others as
/// strings; equal values by their text (`"1"` before `"01"`): a total order,
/// so the catalog (and its fingerprint) is the same at every start whatever
/// order the JSON object is read in.
fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| {
        let n = s.parse::<u64>().ok();
        (n.is_none(), n.unwrap_or(0), s.to_string())
    };
    key(a).cmp(&key(b))
}

/// The three codes of a `sid2pid` key: `c1 * 8192^2 + c2 * 8192 + c3`, or
/// `"c1.c2.c3"`.
pub fn decode_sid2pid_key(key: &str) -> Result<Vec<u32>, ModelError> {
    let base = SID2PID_BASE;
    let codes: Vec<u64> = if key.contains('.') {
        key.split('.')
            .map(|c| c.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("key {key:?}: {e}")))?
    } else {
        let v: u64 = key.trim().parse().map_err(|e| bad(format!("key {key:?}: {e}")))?;
        vec![v / (base * base), v / base % base, v % base]
    };
    if codes.len() != 3 || codes.iter().any(|&c| c >= base) {
        return Err(bad(format!("key {key:?} is not three codes below {base}")));
    }
    Ok(codes.into_iter().map(|c| c as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lcrec_index_in_id_order_and_names_a_ragged_item() {
        let m = ItemMap::parse(
            br#"{"10": ["<a_1>", "<b_2>"], "2": ["<a_0>", "<b_1>"], "x": ["<a_3>", "<b_0>"]}"#,
            ItemMapFormat::Index,
        )
        .unwrap();
        let ids: Vec<&str> = m.items.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(ids, ["2", "10", "x"]);
        assert_eq!(m.items[0].1, ItemSid::Tokens(vec!["<a_0>".into(), "<b_1>".into()]));
        let e = ItemMap::parse(br#"{"1": ["<a_1>", "<b_2>"], "2": ["<a_0>"]}"#, ItemMapFormat::Index).unwrap_err();
        assert!(e.to_string().contains("item \"2\" has 1 levels"), "{e}");
        assert!(ItemMap::parse(b"[1, 2]", ItemMapFormat::Index).is_err());
        // a total order: numbers by value, then text, whatever the file's order
        let mut ids = vec!["1a", "10", "9", "01", "1", "b"];
        ids.sort_by(|a, b| natural_order(a, b));
        assert_eq!(ids, ["01", "1", "9", "10", "1a", "b"]);
    }

    #[test]
    fn reads_onerec_sid2pid_both_key_encodings_and_keeps_the_most_frequent_product() {
        let key = 3 * 8192 * 8192 + 17 * 8192 + 5;
        let text = format!(
            r#"{{"{key}": [{{"pid": 90, "count": 7}}, {{"pid": 91, "count": 2}}], "0.1.2": [{{"pid": "p-1", "count": 1}}]}}"#
        );
        let m = ItemMap::parse(text.as_bytes(), ItemMapFormat::Sid2pid).unwrap();
        assert_eq!(
            m.items,
            vec![
                ("p-1".to_string(), ItemSid::Codes(vec![0, 1, 2])),
                ("90".to_string(), ItemSid::Codes(vec![3, 17, 5]))
            ]
        );
        assert_eq!(m.aliases_dropped, 1);
        assert!(decode_sid2pid_key("1.2").is_err());
        assert!(decode_sid2pid_key("1.2.8192").is_err());
        assert!(ItemMap::parse(br#"{"5": []}"#, ItemMapFormat::Sid2pid).is_err());
    }
}
