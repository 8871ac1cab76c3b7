//! genrec: a generative-recommendation inference server.
//!
//! Items carry semantic IDs (short code tuples learned by residual k-means over
//! text embeddings); a decoder-only transformer reads a user's history as
//! semantic-ID tokens and beam-searches the next items, constrained to a trie of
//! valid IDs so that every beam is a real item.
//!
//! Layout follows the data flow:
//! - [`catalog`]: items, text embeddings, RQ-KMeans semantic IDs, the trie.
//! - [`model`]: the Llama/Qwen-family decoder with a shared-history KV cache.
//! - [`generate`]: trie-constrained beam search (the one beam-step contract).
//! - [`engine`]: the model and catalog in service, live catalog edits, batching scheduler, deadlines and fallback.
//! - [`feed`]: the replica feed (Redis Streams) that keeps many replicas on one catalog and one model.
//! - [`recall`]: ANN recall over item embeddings (the fallback).
//! - [`coldstart`]: a new user's intents from the sign-up profile (LLM or encoder).
//! - [`server`]: HTTP API, admin routes, metrics.
//! - [`loadgen`]: the HTTP load benchmark (`genrec bench`).
//! - [`dataset`]: the `NAME.inter.json` / `NAME.item.json` formats, splits, demo data.
//! - [`train`]: training and TIGER-protocol evaluation.
//! - [`runtime`]: process settings every binary applies at start (allocator, threads).

pub mod catalog;
pub mod clock;
pub mod coldstart;
pub mod dataset;
pub mod device;
pub mod engine;
pub mod error;
pub mod feed;
pub mod generate;
pub mod gpu_check;
pub mod loadgen;
pub mod model;
pub mod progress;
pub mod recall;
pub mod runtime;
pub mod server;
pub mod train;
pub mod util;

/// A model fetched by `scripts/fetch-models.sh` (path relative to the repo
/// root), or `None` to skip a test. `GENREC_REQUIRE_MODELS=1` (set by
/// scripts/test.sh and CI) turns a missing model into a failure.
#[cfg(test)]
pub(crate) fn fetched_model(rel: &str) -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if p.exists() {
        return Some(p);
    }
    assert!(std::env::var("GENREC_REQUIRE_MODELS").is_err(), "{} missing: run scripts/fetch-models.sh", p.display());
    eprintln!("skipping: {} missing (scripts/fetch-models.sh)", p.display());
    None
}
