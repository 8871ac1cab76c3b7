//! Cold-start evaluation (`genrec coldstart-eval`): users held out of training
//! entirely ([`crate::dataset::cold_group`]) are recommended from their sign-up
//! profile alone, and the list is scored against their first `first` items:
//! Recall@k = hits / min(first, k), NDCG@k with every one of those items
//! relevant. Methods: the popularity baselines of
//! [`super::coldstart_baselines`], intents from the sentence encoder, intents
//! from the LLM. The two intent paths run through the serving engine, as a
//! request would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::eval::to_indices;
pub use super::profiles::profile_of;
use super::TrainError;
use crate::coldstart::{ColdStart, Profile};
use crate::dataset::{cold_group, ColdGroup, Interactions};
use crate::engine::{Engine, EngineOptions, NoObserver, RecRequest, Steering, Strategy};
use crate::model::Model;
use crate::util::percentile;

/// What the evaluation measured for one method.
#[derive(Debug, Clone, Serialize)]
pub struct ColdMetrics {
    pub method: String,
    pub users: usize,
    pub recall: f64,
    pub ndcg: f64,
    /// Median and 90th percentile of the request time, ms (intent paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<f64>,
    /// Median over requests whose profile was not cached yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncached_p50_ms: Option<f64>,
    /// How often each intent led the list (label → users), for inspection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_intents: Vec<(String, usize)>,
}

/// Recall and NDCG of one ranked list against a set of relevant items.
pub fn score_list(ranked: &[u32], relevant: &[u32], k: usize) -> (f64, f64) {
    let rel: std::collections::HashSet<u32> = relevant.iter().copied().collect();
    let mut hits = 0usize;
    let mut dcg = 0.0;
    for (i, item) in ranked.iter().take(k).enumerate() {
        if rel.contains(item) {
            hits += 1;
            dcg += 1.0 / ((i + 2) as f64).log2();
        }
    }
    let ideal: f64 = (0..rel.len().min(k)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
    let n = rel.len().min(k).max(1);
    (hits as f64 / n as f64, if ideal > 0.0 { dcg / ideal } else { 0.0 })
}

/// A held-out user: profile, first items (the truth) and the items after them.
pub struct ColdUser {
    pub profile: Profile,
    pub first: Vec<u32>,
    pub later: Vec<u32>,
}

/// The held-out users of `group` with a profile and at least one known item.
pub fn cold_users(
    catalog: &crate::catalog::Catalog,
    inter: &Interactions,
    users: &serde_json::Map<String, serde_json::Value>,
    fraction: f64,
    group: ColdGroup,
    first: usize,
) -> Vec<ColdUser> {
    inter
        .users
        .iter()
        .zip(&inter.sequences)
        .filter(|(u, _)| cold_group(u, fraction) == group)
        .filter_map(|(u, seq)| {
            let row = users.get(u)?;
            let mut items = to_indices(catalog, seq);
            let later = items.split_off(first.min(items.len()));
            (!items.is_empty()).then(|| ColdUser { profile: profile_of(row), first: items, later })
        })
        .collect()
}

/// The onboarding stand-in (a sign-up interest picker): each user declares
/// the `n` most frequent genres of their items after the first ones (never
/// the items being predicted), ties broken by name. Users with no later items
/// declare nothing.
pub fn declare_interests<'a>(users: &mut [ColdUser], genres_of: impl Fn(u32) -> &'a [String], n: usize) {
    for u in users {
        u.profile.interests = super::profiles::top_genres(u.later.iter().map(|&i| genres_of(i)), n);
    }
}

/// Scores an intent path: one profile-only request per user through a
/// serving engine with `coldstart`, one at a time (latency as a lone request);
/// `steering` and `weight` as a request's `steering` and the server's
/// `--steering-weight`.
#[allow(clippy::too_many_arguments)]
pub fn eval_intents(
    model: Model,
    catalog: crate::catalog::Catalog,
    coldstart: Arc<ColdStart>,
    users: &[ColdUser],
    k: usize,
    (steering, weight): (Steering, f32),
    mut progress: impl FnMut(usize, usize),
) -> Result<ColdMetrics, TrainError> {
    let method = coldstart.method().as_str().to_string();
    let opts = EngineOptions { steering_weight: weight, ..Default::default() };
    let engine = Engine::new(catalog, opts, Arc::new(NoObserver))?;
    engine.install(model, "eval".into())?;
    engine.set_coldstart(Some(coldstart.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::Io("tokio".into(), e))?;
    let cat = engine.catalog();
    let (mut r, mut n) = (0.0, 0.0);
    let (mut times, mut uncached) = (Vec::new(), Vec::new());
    let mut leaders: HashMap<String, usize> = HashMap::new();
    for (done, u) in users.iter().enumerate() {
        let was_cached = coldstart.cached(&u.profile).is_some();
        let req = RecRequest {
            history: Vec::new(),
            k,
            exclude_history: true,
            user_id: None,
            timeout_ms: Some(60_000),
            strategy: Strategy::Auto,
            profile: Some(u.profile.clone()),
            steering,
            ..Default::default()
        };
        let t0 = Instant::now();
        let ans = rt.block_on(engine.recommend(&req))?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        times.push(ms);
        if !was_cached {
            uncached.push(ms);
        }
        if let Some(lead) = ans.inferred_intents.as_ref().and_then(|v| v.first()) {
            *leaders.entry(lead.label.clone()).or_default() += 1;
        }
        let ranked: Vec<u32> = ans.items.iter().filter_map(|it| cat.catalog.index_of(&it.item_id)).collect();
        let (a, b) = score_list(&ranked, &u.first, k);
        r += a;
        n += b;
        progress(done + 1, users.len());
    }
    times.sort_by(f64::total_cmp);
    uncached.sort_by(f64::total_cmp);
    let mut top_intents: Vec<(String, usize)> = leaders.into_iter().collect();
    top_intents.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top_intents.truncate(5);
    let m = users.len().max(1) as f64;
    Ok(ColdMetrics {
        method,
        users: users.len(),
        recall: r / m,
        ndcg: n / m,
        p50_ms: percentile(&times, 0.5),
        p90_ms: percentile(&times, 0.9),
        uncached_p50_ms: percentile(&uncached, 0.5),
        top_intents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_scores_count_every_relevant_item() {
        // 2 of 4 relevant items, at ranks 1 and 3
        let (r, n) = score_list(&[5, 9, 7, 8], &[5, 7, 1, 2], 4);
        assert!((r - 0.5).abs() < 1e-12);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let idcg: f64 = (0..4).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
        assert!((n - dcg / idcg).abs() < 1e-12);
        assert_eq!(score_list(&[1, 2], &[1, 2], 10), (1.0, 1.0));
        assert_eq!(score_list(&[3], &[1], 10).0, 0.0);
    }

    #[test]
    fn users_declare_the_most_frequent_genres_of_their_later_items() {
        let genres: Vec<Vec<String>> = [&["Drama"][..], &["Comedy", "Drama"], &["Action"], &["Comedy"]]
            .iter()
            .map(|g| g.iter().map(|s| s.to_string()).collect())
            .collect();
        let user = |later: Vec<u32>| ColdUser { profile: Profile::default(), first: vec![2], later };
        let mut users = vec![user(vec![0, 1, 3, 2]), user(vec![2]), user(vec![])];
        declare_interests(&mut users, |i| &genres[i as usize], 2);
        // Comedy 2, Drama 2 (ties by name), Action 1
        assert_eq!(users[0].profile.interests, ["Comedy", "Drama"]);
        assert_eq!(users[1].profile.interests, ["Action"]);
        assert!(users[2].profile.interests.is_empty());
    }

    #[test]
    fn ml100k_rows_become_profiles() {
        let row = serde_json::json!({"age": 24, "gender": "M", "occupation": "technician", "zip": "85711"});
        let p = profile_of(&row);
        assert_eq!(p.age, Some(24));
        assert_eq!(p.gender.as_deref(), Some("male"));
        assert_eq!(p.describe(), "age: 24\ngender: male\noccupation: technician");
    }
}
