//! A small synthetic world in the `../shared/data` file format, for the embedded
//! default model and for tests: items with titles in a handful of categories,
//! users with a few interests that drift over time, popularity skew (Zipf) and
//! "series" structure (after item i of a category, i+1..i+3 are likely next), so
//! that a sequential model has something real to learn.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::DataError;
use crate::util::write_atomic;

/// Options of `genrec demo-data`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub items: usize,
    pub users: usize,
    /// Mean interactions per user (each user has at least 5).
    pub mean_length: usize,
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { items: 600, users: 3000, mean_length: 12, seed: 7 }
    }
}

const CATEGORIES: [(&str, &[&str]); 8] = [
    ("nail polish", &["lacquer", "gel polish", "top coat", "base coat", "nail art kit"]),
    ("skin care", &["face serum", "moisturizer", "night cream", "eye cream", "cleanser"]),
    ("hair care", &["shampoo", "conditioner", "hair mask", "hair oil", "styling gel"]),
    ("makeup", &["lipstick", "mascara", "foundation", "eyeliner", "blush palette"]),
    ("fragrance", &["eau de parfum", "body mist", "cologne", "perfume oil", "scented lotion"]),
    ("bath", &["bath bomb", "shower gel", "bath salts", "body scrub", "bubble bath"]),
    ("tools", &["makeup brush set", "hair dryer", "nail clipper", "tweezers", "curling iron"]),
    ("men's grooming", &["beard oil", "shaving cream", "aftershave balm", "razor", "face wash for men"]),
];
const ADJECTIVES: [&str; 12] = [
    "classic", "velvet", "radiant", "pure", "midnight", "citrus", "rose", "matte", "glossy", "organic", "ocean",
    "golden",
];

/// Generates `(items json, interactions json)`.
pub fn generate(opts: &DemoOptions) -> (Value, Value) {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let ncat = CATEGORIES.len();
    // items: round-robin over categories so each category holds a contiguous-ish series
    let mut by_cat: Vec<Vec<usize>> = vec![Vec::new(); ncat];
    let mut items = BTreeMap::new();
    for i in 0..opts.items {
        let c = i % ncat;
        let (cat, nouns) = CATEGORIES[c];
        let k = by_cat[c].len();
        let noun = nouns[k % nouns.len()];
        let adj = ADJECTIVES[(k / nouns.len() + c) % ADJECTIVES.len()];
        let title = format!("{adj} {noun} no. {}", k / (nouns.len() * ADJECTIVES.len()) + 1);
        items.insert(i, json!({"title": title, "categories": format!("Beauty, {cat}")}));
        by_cat[c].push(i);
    }
    // Zipf-like popularity within each category
    let zipf: Vec<Vec<f64>> =
        by_cat.iter().map(|v| (0..v.len()).map(|r| 1.0 / (r as f64 + 1.0).powf(0.9)).collect()).collect();
    let pick = |rng: &mut ChaCha8Rng, w: &[f64]| -> usize {
        let total: f64 = w.iter().sum();
        let mut t = rng.random::<f64>() * total;
        for (i, x) in w.iter().enumerate() {
            t -= x;
            if t <= 0.0 {
                return i;
            }
        }
        w.len() - 1
    };
    let mut inter = BTreeMap::new();
    for u in 0..opts.users {
        let mut interests = vec![0.05f64; ncat];
        for _ in 0..rng.random_range(1..=3) {
            interests[rng.random_range(0..ncat)] += 1.0;
        }
        let len = 5 + (rng.random::<f64>() * 2.0 * (opts.mean_length.saturating_sub(5)) as f64) as usize;
        let mut last_in_cat: Vec<Option<usize>> = vec![None; ncat];
        let mut seq = Vec::with_capacity(len);
        while seq.len() < len {
            if rng.random::<f64>() < 0.1 {
                // interest drift: a new category gains weight, the strongest fades
                interests[rng.random_range(0..ncat)] += 1.0;
                if let Some(m) = interests.iter_mut().max_by(|a, b| a.total_cmp(b)) {
                    *m *= 0.5;
                }
            }
            let c = pick(&mut rng, &interests);
            let pos = match last_in_cat[c] {
                Some(p) if rng.random::<f64>() < 0.6 => (p + rng.random_range(1..=3)) % by_cat[c].len(),
                _ => pick(&mut rng, &zipf[c]),
            };
            let item = by_cat[c][pos];
            if seq.last() == Some(&item) {
                continue;
            }
            last_in_cat[c] = Some(pos);
            seq.push(item);
        }
        inter.insert(u, seq);
    }
    let items: serde_json::Map<String, Value> = items.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let inter: serde_json::Map<String, Value> = inter.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    (Value::Object(items), Value::Object(inter))
}

/// Writes `demo.item.json` and `demo.inter.json` into `dir`.
pub fn write(dir: &Path, opts: &DemoOptions) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::Io { path: dir.into(), source: e })?;
    let (items, inter) = generate(opts);
    for (name, v) in [("demo.item.json", items), ("demo.inter.json", inter)] {
        let p = dir.join(name);
        let bytes = serde_json::to_vec(&v).map_err(|e| DataError::Json { path: p.clone(), source: e })?;
        write_atomic(&p, &bytes).map_err(|e| DataError::Io { path: p, source: e })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_world_has_requested_shape_and_is_deterministic() {
        let o = DemoOptions { items: 80, users: 50, mean_length: 10, seed: 3 };
        let (items, inter) = generate(&o);
        assert_eq!(items.as_object().unwrap().len(), 80);
        let users = inter.as_object().unwrap();
        assert_eq!(users.len(), 50);
        for seq in users.values() {
            let s = seq.as_array().unwrap();
            assert!(s.len() >= 5);
            assert!(s.iter().all(|x| x.as_u64().unwrap() < 80));
        }
        assert_eq!(generate(&o), (items, inter));
    }
}
