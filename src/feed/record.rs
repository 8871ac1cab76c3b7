//! What one feed entry holds: a JSON record of catalog edits or of a model
//! change, as the admin request that made it asked for it (not its result).
//!
//! Item edits carry the item's data, not the semantic ID it got: every replica
//! computes that itself, in stream order, from the same catalog state, so all
//! of them give the same item the same ID even when two replicas accepted
//! edits under the same prefix at the same moment. `origin` lets the replica
//! that published a record find its own outcome when it applies it.
//!
//! A payload that does not parse as a [`Record`] (a newer release's kind, a
//! damaged entry) is skipped by every replica alike.

use serde::{Deserialize, Serialize};

/// One feed record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Catalog edits, applied in order (one catalog edit id each).
    Items {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
        edits: Vec<ItemEdit>,
    },
    /// Load the checkpoint at `path` under each replica's `--model-root`.
    ModelLoad {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
        path: String,
    },
    /// Engagement events, applied to each replica's decayed counts (order
    /// free; nothing waits for them).
    Events { events: Vec<FeedEvent> },
    /// Roll back to the model that served `to` (the publisher's previous
    /// model's folder): each replica swaps back when its previous model is
    /// that one, keeps its model when it already serves it, and loads it
    /// otherwise, so that replicas whose histories differ still converge.
    ModelRollback {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
        to: String,
    },
}

/// One catalog edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ItemEdit {
    /// Serve the item with this data (insert, or replace).
    Upsert {
        id: String,
        title: String,
        /// The catalog's dimension (normalised when applied).
        embedding: Vec<f32>,
        /// A semantic ID given by the client; none: from the codebooks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        semantic_id: Option<Vec<u32>>,
        /// When the item stops being served, ms since the epoch (a lifetime
        /// is sent as this absolute time, so every replica expires it alike).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// Stop serving the item.
    Delete { id: String },
}

/// One engagement event as the feed carries it (item by id: each replica
/// resolves it against its own catalog).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEvent {
    pub item_id: String,
    pub kind: crate::catalog::engagement::EventKind,
    /// ms since the Unix epoch.
    pub ts_ms: u64,
    #[serde(default = "one")]
    pub value: f32,
}

fn one() -> f32 {
    1.0
}

/// The sticky name under which the newest model record is kept (a replica
/// that joins after the stream was trimmed still learns which model to serve).
pub const MODEL_STICKY: &str = "model";

impl Record {
    pub fn origin(&self) -> Option<&str> {
        match self {
            Record::Items { origin, .. } | Record::ModelLoad { origin, .. } | Record::ModelRollback { origin, .. } => {
                origin.as_deref()
            }
            Record::Events { .. } => None,
        }
    }

    /// What the record does, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Items { .. } => "items",
            Record::Events { .. } => "events",
            Record::ModelLoad { .. } => "model_load",
            Record::ModelRollback { .. } => "model_rollback",
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn parse(payload: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_unknown_kinds_fail_to_parse() {
        let r = Record::Items {
            origin: Some("a#1".into()),
            edits: vec![
                ItemEdit::Upsert {
                    id: "x".into(),
                    title: "X".into(),
                    embedding: vec![1.0, 0.5],
                    semantic_id: None,
                    expires_at_ms: Some(5),
                },
                ItemEdit::Delete { id: "y".into() },
            ],
        };
        let b = r.to_bytes().unwrap();
        assert_eq!(Record::parse(&b).unwrap(), r);
        assert_eq!(r.origin(), Some("a#1"));
        let m = Record::ModelLoad { origin: None, path: "m2".into() };
        assert_eq!(String::from_utf8(m.to_bytes().unwrap()).unwrap(), r#"{"kind":"model_load","path":"m2"}"#);
        assert!(Record::parse(br#"{"kind":"resize","to":3}"#).is_err());
        assert!(Record::parse(b"not json").is_err());
        assert!(Record::parse(br#"{"kind":"items","edits":[{"op":"upsert","id":"x"}]}"#).is_err());
    }
}
