//! What a generation is asked and what it answers: the request (history,
//! `k`, exclusions, steering, allowed items, caps), the items generated with
//! their scores, and how scores are normalised. Shared by the CPU beam search
//! ([`super::beam`]) and the GPU one ([`super::kernel`]).

use std::collections::HashSet;

use crate::catalog::trie::NONE;
use crate::catalog::Catalog;

/// One request to generate for.
#[derive(Debug, Clone, Default)]
pub struct GenRequest {
    /// History as item indices, oldest first (only the last `max_history_items` are read).
    pub history: Vec<u32>,
    /// How many items to return.
    pub k: usize,
    /// Items that must not be returned (e.g. the history).
    pub exclude: HashSet<u32>,
    /// First-level codes the items must start with (cold-start intents: the
    /// sub-tries under them); empty = the whole trie.
    pub within: Vec<u32>,
    /// Added to the log-probability of each first-level code (one value per
    /// code; soft cold-start steering): the beams, and the items' scores,
    /// follow `log p(code | history) + prior[code]`. Empty = none; all zeros is
    /// the model's own search.
    pub first_level_prior: Vec<f32>,
    /// Profile tokens read after `bos`, before the history (a new user's
    /// sign-up profile, [`crate::model::profile_vocab`]); empty: none.
    pub profile_tokens: Vec<u32>,
    /// The only items that may be returned (a personalized search's matches):
    /// every level keeps only the prefixes of these items. `None`: all items.
    pub allowed: Option<std::sync::Arc<[u32]>>,
    /// At most this many items per first-level code in the answer, enforced
    /// in every beam step (see [`crate::generate::diversity`]); `None`: no cap.
    pub max_per_intent: Option<usize>,
    /// The trending prior at every level ([`super::trending`]); `None`: off.
    pub trending: Option<super::trending::Trending>,
    /// Items added since the catalog was indexed are scored at the last
    /// level like their best trained sibling ([`super::new_items`]).
    pub new_items_as_siblings: bool,
    /// The profile and query texts an LLM-layout model's prompt reads (see
    /// [`crate::model::llm`]); ignored by genrec's own layout.
    pub prompt: crate::model::PromptText,
}

/// A generated item.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub item: u32,
    /// Sum over levels of the log-probability of the code given the prefix
    /// (see [`Scoring`]).
    pub score: f32,
}

/// How a code's log-probability is normalised (`serve --scoring`, `eval
/// --scoring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scoring {
    /// The model's own probability (softmax over the whole vocabulary, invalid
    /// codes masked out afterwards): the item's likelihood under the model, and
    /// the scores transformers' `generate(prefix_allowed_tokens_fn=...)` gives.
    #[default]
    Model,
    /// Softmax over the trie's valid children only: the probabilities of all
    /// items sum to one.
    Trie,
}

/// Result of a batch, with the work it took.
#[derive(Debug, Clone)]
pub struct Generated {
    pub hits: Vec<Vec<Hit>>,
    /// Tokens decoded (beams × levels over all requests).
    pub tokens: usize,
}

/// The items of the final beams (`beam` slots per request, best first), at
/// most `k` per request.
pub(crate) fn collect_hits(
    catalog: &Catalog,
    reqs: &[GenRequest],
    beam: usize,
    nodes: &[u32],
    scores: &[f32],
) -> Vec<Vec<Hit>> {
    (0..reqs.len())
        .map(|q| {
            let trie = catalog.trie();
            (0..beam)
                .map(|j| q * beam + j)
                .filter(|&s| nodes[s] != NONE)
                .take(reqs[q].k)
                .filter_map(|s| trie.item(nodes[s]).map(|item| Hit { item, score: scores[s] }))
                .collect()
        })
        .collect()
}
