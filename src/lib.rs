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
//! - [`engine`]: model + catalog snapshots, batching scheduler, deadlines and fallback.
//! - [`recall`]: ANN recall over item embeddings (the fallback).
//! - [`server`]: HTTP API, admin routes, metrics.
//! - [`loadgen`]: the HTTP load benchmark (`genrec bench`).
//! - [`dataset`]: the `NAME.inter.json` / `NAME.item.json` formats, splits, demo data.
//! - [`train`]: training and TIGER-protocol evaluation.
//! - [`runtime`]: process settings every binary applies at start (allocator, threads).

pub mod catalog;
pub mod dataset;
pub mod engine;
pub mod generate;
pub mod loadgen;
pub mod model;
pub mod recall;
pub mod server;
pub mod train;
pub mod runtime;
pub mod util;
