//! Personalized search: a request's `query` chooses the items that may be
//! returned, and the generative model ranks inside them.
//!
//! The matches are the `search_candidates` items nearest to the query's text
//! embedding (the catalog's sentence encoder; ANN over the item embeddings,
//! whose text part it compares with) plus the items whose titles contain every
//! word of the query. With a history they become the request's allowed set:
//! the trie search keeps only their prefixes at every level and returns the
//! model's best of them for this user (up to `2 x` [`RERANK_DEPTH`]` x k`:
//! all of them with the default candidates); each is scored
//! `text score + search_model_weight x log p(item | history)` and the best
//! `k` are the answer (text relevance first, the user's taste among the
//! relevant). Without a history (or without a model) the answer is the text
//! ranking itself: plain search.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::generation::{items_of, wait, Generation};
use super::request::Resolved;
use super::serving::Serving;
use super::state::ServedCatalog;
use super::{EngineError, FallbackReason, ItemSource, RecAnswer, RecItem, RecRequest, Strategy};
use crate::catalog::Catalog;
use crate::generate::{diversity, GenRequest, Hit};
use crate::recall::{Ann, RecallError};

/// Longest query, in characters.
pub use super::request::MAX_QUERY_CHARS;
/// Default number of items the query's embedding contributes to a search's
/// allowed set (`genrec serve --search-candidates`): [`RERANK_DEPTH`] times
/// the default `k`, so that the model scores every candidate. Chosen on
/// Beauty validation users (`benches/results/search.md`): 30 and 50 tie, 100
/// and 1,000 fall below text-only search, because the model's best few of
/// many text matches miss the one the query describes.
pub const DEFAULT_SEARCH_CANDIDATES: usize = 50;
/// Added to the text score of an item whose title has every query word, so
/// that exact matches lead a text-only ranking.
const TITLE_MATCH_BONUS: f32 = 1.0;
/// The model generates this many times `k` of the matches for the fused
/// ranking to choose from.
pub const RERANK_DEPTH: usize = 5;
/// Default weight of the model's log-probability in a personalized search's
/// ranking (`genrec serve --search-model-weight`): of 0, 0.01, 0.02 and 0.05,
/// the best worst case over Beauty and Scientific validation users
/// (`benches/results/search.md`; 0.05 is best on Beauty alone and below text
/// search on Scientific).
pub const DEFAULT_SEARCH_MODEL_WEIGHT: f32 = 0.01;

/// Least cosine similarity between the query's and an item's text embeddings
/// for the item to match by embedding (MiniLM scores unrelated short texts
/// near 0 and paraphrases above 0.5): below it, a query about something the
/// catalog lacks matches nothing instead of its least bad neighbours.
pub const MIN_QUERY_SIMILARITY: f32 = 0.3;

/// A query's text embedding, zero-padded to the catalog's dimension: the
/// catalog's vectors start with the item text's embedding (unit length, or
/// scaled when collaborative dimensions follow; see
/// [`crate::catalog::collab::mix`]).
pub struct QueryVector {
    pub padded: Vec<f32>,
    /// How many leading dimensions are the text encoder's.
    pub text_dim: usize,
}

impl QueryVector {
    /// Cosine similarity between the query and the text part of `item`'s vector.
    fn cosine(&self, catalog: &Catalog, item: u32) -> f32 {
        let e = catalog.embedding(item);
        let t = self.text_dim.min(e.len());
        let dot: f32 = self.padded[..t].iter().zip(&e[..t]).map(|(a, b)| a * b).sum();
        let norm = e[..t].iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            dot / norm
        } else {
            0.0
        }
    }
}

/// The query's words: lower-case runs of letters and digits.
pub fn query_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> =
        text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    words.sort();
    words.dedup();
    words
}

/// Whether `title` contains every one of `words` (sorted, lower-case) as a word.
fn title_has_all(title: &str, words: &[String]) -> bool {
    let have = query_words(title);
    words.iter().all(|w| have.binary_search(w).is_ok())
}

/// The items matching a query that `keep` accepts, best text match first
/// (ties by item), with their text score: the `candidates` nearest to
/// `query` by ANN whose text cosine similarity reaches
/// [`MIN_QUERY_SIMILARITY`] (scored by it), and the best `candidates` of the
/// items whose titles contain every one of `words` (that similarity plus a
/// bonus). The ANN ranks by the inner product with the whole vector, which
/// for the zero-padded query is the text similarity times a constant.
pub fn match_items(
    catalog: &Catalog,
    ann: &Ann,
    query: Option<&QueryVector>,
    words: &[String],
    candidates: usize,
    keep: impl Fn(u32) -> bool + Sync,
) -> Result<Vec<(u32, f32)>, RecallError> {
    let mut best: HashMap<u32, f32> = HashMap::new();
    if let Some(q) = query {
        for (item, _) in ann.nearest(catalog, &q.padded, candidates, &keep)? {
            let cos = q.cosine(catalog, item);
            if cos >= MIN_QUERY_SIMILARITY {
                best.insert(item, cos);
            }
        }
    }
    if !words.is_empty() {
        let cos = |item: u32| query.map_or(0.0, |q| q.cosine(catalog, item));
        let mut titled: Vec<(u32, f32)> = (0..catalog.len() as u32)
            .filter(|&i| catalog.is_served(i) && keep(i) && title_has_all(catalog.title(i), words))
            .map(|i| (i, cos(i) + TITLE_MATCH_BONUS))
            .collect();
        titled.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        titled.truncate(candidates);
        best.extend(titled);
    }
    let mut out: Vec<(u32, f32)> = best.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(out)
}

impl Serving {
    /// The query's embedding, zero-padded to the catalog's dimension, when the
    /// catalog's embeddings come from the server's sentence encoder; otherwise
    /// why not (the search then matches title words only).
    async fn query_vector(&self, catalog: &Catalog, query: &str) -> Result<QueryVector, String> {
        let enc = self.encoder().map_err(|e| e.to_string())?;
        let m = catalog.manifest();
        if m.embedder.split('+').next() != Some(enc.name()) || enc.dim() > m.embedding_dim {
            return Err(format!(
                "the catalog's embeddings ({}) are not the sentence encoder's ({})",
                m.embedder,
                enc.name()
            ));
        }
        let text = vec![query.to_string()];
        let text_dim = enc.dim();
        let mut padded = tokio::task::spawn_blocking(move || enc.embed(&text, 1, |_, _| {}))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        padded.resize(m.embedding_dim, 0.0);
        Ok(QueryVector { padded, text_dim })
    }

    /// Serves a request with a `query` (see the module's comment).
    pub(super) async fn recommend_search(
        &self,
        req: &RecRequest,
        query: &str,
        cat: &Arc<ServedCatalog>,
        r: &Resolved,
        arrived: Instant,
    ) -> Result<RecAnswer, EngineError> {
        let model = self.model();
        let mut answer = RecAnswer::new(model.as_ref().map(|m| m.label()), r.ignored.clone());
        let words = query_words(query);
        let query_vec = match self.query_vector(&cat.catalog, query).await {
            Ok(v) => Some(v),
            Err(why) => {
                answer.note = Some(format!("title words only: {why}"));
                None
            }
        };
        let c = &cat.catalog;
        let matches = match_items(c, &cat.ann, query_vec.as_ref(), &words, self.opts.search_candidates, |i| {
            !r.exclude.contains(&i)
        })?;
        if matches.is_empty() {
            answer.note = Some("nothing in the catalog matches the query".into());
            return Ok(answer);
        }
        let model = match (req.strategy, model, r.history.is_empty()) {
            (_, _, true) => return Ok(text_ranking(answer, c, &matches, req, None)),
            (Strategy::Ann, _, _) => {
                return Ok(text_ranking(answer, c, &matches, req, Some(FallbackReason::Requested)))
            }
            (Strategy::Generative, None, _) => return Err(EngineError::NotReady),
            (Strategy::Auto, None, _) => {
                return Ok(text_ranking(answer, c, &matches, req, Some(FallbackReason::NoModel)))
            }
            (_, Some(m), _) => m,
        };
        let timeout_ms = self.timeout_ms(req);
        let deadline = arrived + Duration::from_millis(timeout_ms);
        let mut allowed: Vec<u32> = matches.iter().map(|m| m.0).collect();
        allowed.sort_unstable();
        // the model scores every match (up to twice the default candidates:
        // the embedding's and the title words')
        let depth = allowed.len().min(2 * RERANK_DEPTH * req.k).max(req.k);
        let gen = GenRequest {
            history: r.history.clone(),
            k: depth,
            exclude: r.exclude.clone(),
            allowed: Some(allowed.into()),
            trending: self.trending(req, r),
            ..Default::default()
        };
        let rx = self.submit(gen, model, cat, deadline)?;
        let reason = match wait(rx, deadline).await {
            Generation::Done(hits, tokens) => {
                answer.tokens = tokens;
                let text: HashMap<u32, f32> = matches.iter().copied().collect();
                let w = self.opts.search_model_weight;
                let mut fused: Vec<Hit> = hits
                    .into_iter()
                    .map(|h| Hit { item: h.item, score: text.get(&h.item).copied().unwrap_or(0.0) + w * h.score })
                    .collect();
                fused.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
                let cap = req.max_per_intent.map_or(u32::MAX, |m| m as u32);
                let top = diversity::take_capped(fused, req.k, cap, |h| c.sid(h.item).first().copied().unwrap_or(0));
                answer.items = items_of(cat, top, ItemSource::Search, r.now_ms);
                if answer.items.len() < req.k {
                    answer.note = Some(format!(
                        "{} items match the query{}; the answer has {}",
                        matches.len(),
                        if req.max_per_intent.is_some() { " (before the diversity cap)" } else { "" },
                        answer.items.len()
                    ));
                }
                return Ok(answer);
            }
            Generation::Failed(e) if req.strategy == Strategy::Auto => {
                tracing::warn!(error = %e, "generation failed; answering with the query's text ranking");
                FallbackReason::Error
            }
            Generation::Failed(e) => return Err(EngineError::Batch(e)),
            Generation::Stopped if req.strategy == Strategy::Auto => FallbackReason::Error,
            Generation::Stopped => return Err(EngineError::Stopped),
            Generation::Late if req.strategy == Strategy::Auto => FallbackReason::Deadline,
            Generation::Late => return Err(EngineError::Deadline(timeout_ms)),
        };
        Ok(text_ranking(answer, c, &matches, req, Some(reason)))
    }
}

/// The answer from the text ranking of the matches (the first `k`, under the
/// request's diversity cap), with `fallback` set when the model was to rank.
fn text_ranking(
    mut answer: RecAnswer,
    c: &Catalog,
    matches: &[(u32, f32)],
    req: &RecRequest,
    fallback: Option<FallbackReason>,
) -> RecAnswer {
    let cap = req.max_per_intent.map_or(u32::MAX, |m| m as u32);
    let top = diversity::take_capped(matches.to_vec(), req.k, cap, |&(i, _)| c.sid(i).first().copied().unwrap_or(0));
    answer.items = top.into_iter().map(|(i, s)| RecItem::new(c, i, s, ItemSource::Search)).collect();
    answer.fallback = fallback;
    if answer.items.len() < req.k && answer.note.is_none() {
        answer.note = Some(format!("{} items match the query; the answer has {}", matches.len(), answer.items.len()));
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_words_are_lower_case_alphanumeric_runs() {
        assert_eq!(query_words("Red  matte-Lipstick, red!"), vec!["lipstick", "matte", "red"]);
        assert!(query_words(" ,; ").is_empty());
        assert!(title_has_all("Matte lipstick (red)", &query_words("red lipstick")));
        assert!(!title_has_all("Matte lipstick", &query_words("red lipstick")));
    }

    /// Title matches join the ANN's candidates and lead the text ranking; the
    /// filter and the candidate count hold.
    #[test]
    fn matches_join_ann_candidates_and_title_words() {
        let (_, cat) = crate::model::demo::load(&candle_core::Device::Cpu).expect("embedded model");
        let ann = Ann::open(&cat).unwrap();
        let dim = cat.manifest().embedding_dim;
        let q = QueryVector { padded: cat.embedding(5), text_dim: dim };
        let words = query_words(cat.title(40));
        let got = match_items(&cat, &ann, Some(&q), &words, 20, |i| i != 7).unwrap();
        assert!(got.iter().all(|m| m.0 != 7));
        assert!(got.iter().any(|m| m.0 == 40), "the item whose title is the query");
        assert!(got.iter().any(|m| m.0 == 5), "the item whose embedding is the query");
        assert!(got.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(got[0].1 > TITLE_MATCH_BONUS);
        assert!(got.len() <= 40);
        // no vector: title words only
        let titled = match_items(&cat, &ann, None, &words, 20, |_| true).unwrap();
        assert!(titled.iter().all(|m| title_has_all(cat.title(m.0), &words)));
        assert!(match_items(&cat, &ann, None, &query_words("zzqx"), 20, |_| true).unwrap().is_empty());
    }
}
