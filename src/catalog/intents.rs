//! Intent vocabulary: a short human-readable label for each first-level
//! semantic-ID cluster, made of the words that most distinguish its items' text
//! from the rest of the catalog (document frequency in the cluster times
//! inverse document frequency in the catalog). Cold start ([`crate::coldstart`])
//! lets a language model choose among these labels; each label stands for the
//! sub-trie under its first code.
//!
//! `genrec index` derives the labels from the full item text (title, genres,
//! categories, ...) and writes them to `intents.json`; a catalog without that
//! file derives them from its titles when loaded. Labels may be edited by hand
//! (or written by an LLM) in `intents.json`: the file is read as it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::CatalogError;
use crate::util::write_atomic;

pub const INTENTS_FILE: &str = "intents.json";

/// Words per label.
const LABEL_WORDS: usize = 3;

/// One intent: a first-level code of the semantic IDs and its label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Intent {
    /// First semantic-ID code: the intent is the sub-trie under it.
    pub code: u32,
    pub label: String,
    /// Items under the code when the label was made.
    pub items: usize,
}

const STOPWORDS: &[&str] = &[
    "the", "and", "for", "with", "from", "this", "that", "your", "you", "are", "was", "its", "our", "not", "all",
    "new", "one", "two", "set", "pack", "size", "count", "item", "items", "use", "can", "has", "have", "will", "into",
    "out", "but", "who", "his", "her", "they", "them", "their", "what", "when", "which", "les", "der", "die", "das",
    "des", "una", "del", "per", "inch", "ounce", "ounces", "made", "more",
];

/// Lower-case words of a text worth a label: alphabetic, three letters or more,
/// no stop words, a trailing possessive dropped; each word once.
fn words(text: &str) -> HashSet<String> {
    let stop: HashSet<&str> = STOPWORDS.iter().copied().collect();
    text.split(|c: char| !(c.is_alphabetic() || c == '\''))
        .map(|w| w.trim_matches('\'').trim_end_matches("'s").to_lowercase())
        .filter(|w| w.chars().count() >= 3 && !stop.contains(w.as_str()) && !w.contains('\''))
        .collect()
}

/// The first code of each item, from flat semantic IDs of `levels` codes.
pub fn first_codes(sids: &[u32], levels: usize) -> Vec<u32> {
    sids.iter().step_by(levels.max(1)).copied().collect()
}

/// Labels for the first-level clusters of `first_codes[i]` (item `i`'s first
/// code) from the items' texts. Codes without items get no intent.
pub fn derive(texts: &[String], first_codes: &[u32]) -> Vec<Intent> {
    let n = texts.len().max(1) as f64;
    let mut df: HashMap<String, usize> = HashMap::new();
    let mut clusters: BTreeMap<u32, (usize, HashMap<String, usize>)> = BTreeMap::new();
    for (text, &code) in texts.iter().zip(first_codes) {
        let c = clusters.entry(code).or_default();
        c.0 += 1;
        for w in words(text) {
            *df.entry(w.clone()).or_default() += 1;
            *c.1.entry(w).or_default() += 1;
        }
    }
    clusters
        .into_iter()
        .map(|(code, (size, counts))| {
            let min_count = if size >= 2 { 2 } else { 1 };
            let mut scored: Vec<(f64, &String)> = counts
                .iter()
                .filter(|(_, &c)| c >= min_count)
                .map(|(w, &c)| (c as f64 / size as f64 * (n / df[w] as f64).ln(), w))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
            let words: Vec<&str> = scored.iter().take(LABEL_WORDS).map(|(_, w)| w.as_str()).collect();
            let label = if words.is_empty() { format!("group {code}") } else { words.join(", ") };
            Intent { code, label, items: size }
        })
        .collect()
}

/// Writes the labels as `intents.json` in `dir`.
pub fn save(intents: &[Intent], dir: &Path) -> Result<(), CatalogError> {
    let p = dir.join(INTENTS_FILE);
    let bytes = serde_json::to_vec_pretty(intents).map_err(|e| CatalogError::Json { path: p.clone(), source: e })?;
    write_atomic(&p, &bytes).map_err(|e| CatalogError::io(&p, e))
}

/// Reads `intents.json` from `dir` if it is there; every code must be a
/// first-level code of the catalog and appear once.
pub fn load(dir: &Path, first_level_codes: u32) -> Result<Option<Vec<Intent>>, CatalogError> {
    let p = dir.join(INTENTS_FILE);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CatalogError::io(&p, e)),
    };
    let intents: Vec<Intent> =
        serde_json::from_slice(&bytes).map_err(|e| CatalogError::Json { path: p.clone(), source: e })?;
    let mut seen = HashSet::new();
    for i in &intents {
        if i.code >= first_level_codes || !seen.insert(i.code) {
            return Err(CatalogError::Format(format!(
                "{}: intent code {} is out of range (0..{first_level_codes}) or repeated",
                p.display(),
                i.code
            )));
        }
        if i.label.trim().is_empty() {
            return Err(CatalogError::Format(format!("{}: intent {} has an empty label", p.display(), i.code)));
        }
    }
    Ok(Some(intents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_what_sets_a_cluster_apart() {
        let texts: Vec<String> = [
            "Alien (1979) Horror Sci-Fi",
            "Scream (1996) Horror Thriller",
            "Halloween Horror",
            "Toy Story (1995) Animation Children's Comedy",
            "Aladdin (1992) Animation Children's Musical",
            "The Lion King Animation Children's Musical",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let intents = derive(&texts, &[0, 0, 0, 1, 1, 1]);
        assert_eq!(intents.len(), 2);
        assert!(intents[0].label.starts_with("horror"), "{:?}", intents[0]);
        assert_eq!(intents[0].items, 3);
        let l1 = &intents[1].label;
        assert!(l1.contains("animation") && l1.contains("children"), "{l1}");
        assert!(!l1.contains("the") && !l1.contains("1995"), "{l1}");
    }

    #[test]
    fn intents_file_roundtrip_and_checks() {
        let dir = std::env::temp_dir().join(format!("genrec-intents-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir, 4).unwrap().is_none());
        let v = vec![Intent { code: 1, label: "horror".into(), items: 3 }];
        save(&v, &dir).unwrap();
        assert_eq!(load(&dir, 4).unwrap(), Some(v));
        assert!(load(&dir, 1).is_err(), "code out of range");
        std::fs::write(dir.join(INTENTS_FILE), br#"[{"code": 0, "label": " ", "items": 1}]"#).unwrap();
        assert!(load(&dir, 4).unwrap_err().to_string().contains("empty label"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
