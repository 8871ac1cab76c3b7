//! Sign-up profiles as the data sets hold them (`NAME.user.json` rows), for
//! training with profile tokens ([`super::profile_prefix`]) and cold-start
//! evaluation ([`super::coldstart_eval`]): a row's [`Profile`], and the
//! genres a user's items show most (declared interests, where a data set has
//! none).

use std::collections::HashMap;

use crate::coldstart::Profile;

/// Profile fields from a `NAME.user.json` row: the fields [`Profile`] knows
/// (gender codes `M`/`F` spelled out), others (e.g. a zip code) dropped.
pub fn profile_of(row: &serde_json::Value) -> Profile {
    let s = |k: &str| row.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let gender = s("gender").map(|g| match g.as_str() {
        "M" | "m" => "male".to_string(),
        "F" | "f" => "female".to_string(),
        _ => g,
    });
    Profile {
        age: row.get("age").and_then(|v| v.as_u64()).map(|a| a as u32),
        gender,
        country: s("country"),
        language: s("language"),
        occupation: s("occupation"),
        interests: row
            .get("interests")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        channel: s("channel"),
    }
}

/// The `n` most frequent genres over `genres` (one list per item), ties by name.
pub fn top_genres<'a>(genres: impl IntoIterator<Item = &'a [String]>, n: usize) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for list in genres {
        for g in list {
            *counts.entry(g.as_str()).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked.into_iter().take(n).map(|(g, _)| g.to_string()).collect()
}
