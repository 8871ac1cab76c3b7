//! `genrec.json`, the sidecar beside a Hugging Face checkpoint: how semantic-ID
//! codes map to token ids and which catalog the model was trained on.
//!
//! Vocabulary layout: special tokens first (`pad`, `bos`, `eos`), then the codes
//! of level 0, level 1, ... each level in its own contiguous token range
//! `code_offsets[l] .. code_offsets[l] + codebook_sizes[l]`, so a decode step at
//! level `l` reads only that slice of the logits; then, for a model trained
//! with profiles, its profile tokens ([`super::profile_vocab`]).
//!
//! A request reads `[bos, profile tokens, codes of the history's items]`.
//!
//! An LLM with semantic-ID tokens in its text vocabulary has an `llm` section
//! instead ([`super::llm`]); the fields the codes layout writes (sizes,
//! offsets, special tokens, catalog fingerprint) are then derived at load
//! from its tokenizer and item map, and `code_offsets` stays empty.

use serde::{Deserialize, Serialize};

use super::profile_vocab::{ProfilePrefix, ProfileVocab, MAX_PROFILE_TOKENS};
use super::{ModelConfig, ModelError};
use crate::catalog::Manifest;

/// Semantic-ID levels a model may have.
pub const MAX_LEVELS: usize = 16;

pub const SIDECAR_FILE: &str = "genrec.json";
pub const SIDECAR_FORMAT: &str = "genrec-sidecar/1";
/// Tokens before the first code.
pub const NUM_SPECIAL: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sidecar {
    pub format: String,
    /// Model name shown in answers.
    pub name: String,
    /// Catalog folder, relative to the model folder (or absolute).
    #[serde(default)]
    pub catalog: String,
    /// The catalog's fingerprint (its `catalog.json`); checked at load.
    #[serde(default)]
    pub catalog_fingerprint: String,
    #[serde(default)]
    pub codebook_sizes: Vec<u32>,
    #[serde(default)]
    pub code_offsets: Vec<u32>,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default)]
    pub bos_token_id: u32,
    #[serde(default)]
    pub eos_token_id: u32,
    /// Items of history the model was trained to read (older ones are dropped).
    pub max_history_items: usize,
    /// Profile features the model reads after `bos` (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileVocab>,
    /// Further models searched together with this one (an ensemble, see
    /// [`super::ensemble`]): model folders under this one, by relative path
    /// (`members/1`, ...). Empty: this model alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// An LLM layout: its tokenizer, item map and prompt ([`super::llm`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<super::llm::LlmSection>,
}

/// The fields genrec's own layout must write (an `llm` section derives
/// them; see the module comment).
const CODES_LAYOUT_FIELDS: [&str; 7] = [
    "catalog",
    "catalog_fingerprint",
    "codebook_sizes",
    "code_offsets",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
];

impl Sidecar {
    /// Parses `genrec.json`: a sidecar without an `llm` section must give
    /// every field of the codes layout (a missing `bos_token_id` is not 0).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let json = |e| ModelError::Json { path: SIDECAR_FILE.into(), source: e };
        let raw: serde_json::Value = serde_json::from_slice(bytes).map_err(json)?;
        if raw.get("llm").is_none_or(serde_json::Value::is_null) {
            if let Some(f) = CODES_LAYOUT_FIELDS.iter().find(|f| raw.get(**f).is_none()) {
                return Err(ModelError::Sidecar(format!("missing field `{f}` (an `llm` section derives it)")));
            }
        }
        serde_json::from_value(raw).map_err(json)
    }

    /// The standard layout for a catalog.
    pub fn for_catalog(name: &str, catalog_path: &str, manifest: &Manifest, max_history_items: usize) -> Self {
        let mut offsets = Vec::new();
        let mut next = NUM_SPECIAL;
        for s in &manifest.codebook_sizes {
            offsets.push(next);
            next += s;
        }
        Sidecar {
            format: SIDECAR_FORMAT.into(),
            name: name.into(),
            catalog: catalog_path.into(),
            catalog_fingerprint: manifest.fingerprint.clone(),
            codebook_sizes: manifest.codebook_sizes.clone(),
            code_offsets: offsets,
            pad_token_id: 0,
            bos_token_id: 1,
            eos_token_id: 2,
            max_history_items,
            profile: None,
            members: Vec::new(),
            llm: None,
        }
    }

    /// Adds a profile vocabulary of `features` after the code tokens.
    pub fn with_profile(mut self, features: impl IntoIterator<Item = String>) -> Self {
        let offset = self.min_vocab() as u32;
        let vocab = ProfileVocab::new(offset, features);
        self.profile = (!vocab.features.is_empty()).then_some(vocab);
        self
    }

    /// The tokens of a profile's `features` (see `Profile::features`), or
    /// `None` when the model has no profile vocabulary.
    pub fn profile_prefix(&self, features: &[String]) -> Option<ProfilePrefix> {
        self.profile.as_ref().map(|v| v.encode(features))
    }

    /// Whether two sidecars read and write tokens the same way over the same
    /// catalog (names and catalog paths may differ): models that agree can
    /// share one search, as an ensemble does.
    pub fn same_layout(&self, other: &Sidecar) -> bool {
        self.catalog_fingerprint == other.catalog_fingerprint
            && self.codebook_sizes == other.codebook_sizes
            && self.code_offsets == other.code_offsets
            && (self.pad_token_id, self.bos_token_id, self.eos_token_id)
                == (other.pad_token_id, other.bos_token_id, other.eos_token_id)
            && self.max_history_items == other.max_history_items
            && self.profile == other.profile
            && self.llm == other.llm
    }

    pub fn levels(&self) -> usize {
        self.codebook_sizes.len()
    }

    /// Smallest vocabulary that holds every token of this layout.
    pub fn min_vocab(&self) -> usize {
        let codes =
            self.code_offsets.iter().zip(&self.codebook_sizes).map(|(o, s)| (o + s) as usize).max().unwrap_or(0);
        let profile = self.profile.as_ref().map_or(0, |p| p.end() as usize);
        codes.max(profile).max(self.pad_token_id.max(self.bos_token_id).max(self.eos_token_id) as usize + 1)
    }

    /// Token id of `code` at `level`.
    pub fn token(&self, level: usize, code: u32) -> u32 {
        self.code_offsets[level] + code
    }

    /// Token ids of an item's semantic ID.
    pub fn sid_tokens<'a>(&'a self, sid: &'a [u32]) -> impl Iterator<Item = u32> + 'a {
        sid.iter().enumerate().map(|(l, &c)| self.token(l, c))
    }

    /// `[bos, codes of item 1, codes of item 2, ...]` for a history of semantic IDs.
    pub fn history_tokens<'a>(&self, sids: impl IntoIterator<Item = &'a [u32]>) -> Vec<u32> {
        self.request_tokens(&[], sids)
    }

    /// `[bos, profile tokens, codes of item 1, ...]`.
    pub fn request_tokens<'a>(&self, profile: &[u32], sids: impl IntoIterator<Item = &'a [u32]>) -> Vec<u32> {
        let mut t = vec![self.bos_token_id];
        t.extend_from_slice(profile);
        for s in sids {
            t.extend(self.sid_tokens(s));
        }
        t
    }

    /// Positions of the longest sequence genrec feeds the model: BOS, profile
    /// tokens (if the model reads any), a full history, and the codes decoded
    /// before the last.
    pub fn longest_sequence(&self) -> usize {
        let profile = if self.profile.is_some() { MAX_PROFILE_TOKENS } else { 0 };
        1 + profile + self.max_history_items.saturating_mul(self.levels()) + self.levels().saturating_sub(1)
    }

    /// Refuses a layout whose longest sequence the model has no positions for.
    pub fn check_positions(&self, config: &ModelConfig) -> Result<(), ModelError> {
        if self.codebook_sizes.is_empty() || self.codebook_sizes.len() > MAX_LEVELS {
            return Err(ModelError::Sidecar(format!(
                "{} codebook levels; 1 to {MAX_LEVELS} are served",
                self.codebook_sizes.len()
            )));
        }
        let room = config.max_position_embeddings.min(super::rope::TABLE_POSITIONS);
        // (an LLM layout's prompt length is known per request only)
        let longest = if self.llm.is_some() { 0 } else { self.longest_sequence() };
        if self.max_history_items == 0 || longest > room {
            return Err(ModelError::Sidecar(format!(
                "max_history_items {} needs {} positions; the model has {room} (max_position_embeddings {}, at most {})",
                self.max_history_items,
                self.longest_sequence(),
                config.max_position_embeddings,
                super::rope::TABLE_POSITIONS
            )));
        }
        Ok(())
    }

    /// Checks the layout against the model's vocabulary and the catalog.
    pub fn validate(&self, vocab_size: usize, manifest: &Manifest) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Sidecar(m));
        let offsets = if self.llm.is_some() { self.codebook_sizes.len() } else { self.code_offsets.len() };
        if self.codebook_sizes.len() != offsets || self.codebook_sizes.is_empty() {
            return bad("codebook_sizes and code_offsets must have the same, non-zero length".into());
        }
        if self.min_vocab() > vocab_size {
            return bad(format!("layout needs {} tokens, model vocabulary has {vocab_size}", self.min_vocab()));
        }
        if self.catalog_fingerprint != manifest.fingerprint {
            return bad(format!(
                "trained on catalog {} but catalog {:?} has fingerprint {}",
                self.catalog_fingerprint, manifest.name, manifest.fingerprint
            ));
        }
        if self.codebook_sizes != manifest.codebook_sizes {
            return bad(format!(
                "codebook sizes {:?} differ from the catalog's {:?}",
                self.codebook_sizes, manifest.codebook_sizes
            ));
        }
        if self.max_history_items == 0 {
            return bad("max_history_items must be positive".into());
        }
        if let Some(p) = &self.profile {
            let codes_end = self.code_offsets.iter().zip(&self.codebook_sizes).map(|(o, s)| o + s).max().unwrap_or(0);
            if p.offset < codes_end.max(NUM_SPECIAL) || !p.is_well_formed() {
                return bad(format!(
                    "profile: tokens must start at or after {} (got {}) and features be sorted, unique `field:value` strings",
                    codes_end.max(NUM_SPECIAL),
                    p.offset
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::testutil::random_catalog;

    #[test]
    fn a_codes_sidecar_must_give_its_fields_and_an_llm_one_derives_them() {
        let cat = random_catalog(40, &[4, 4, 3], 1);
        let full = serde_json::to_value(Sidecar::for_catalog("t", ".", cat.manifest(), 20)).unwrap();
        assert_eq!(Sidecar::from_json(full.to_string().as_bytes()).unwrap().bos_token_id, 1);
        let mut partial = full.clone();
        partial.as_object_mut().unwrap().remove("bos_token_id");
        let e = Sidecar::from_json(partial.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.contains("bos_token_id"), "{e}");
        let llm = serde_json::json!({"format": SIDECAR_FORMAT, "name": "x", "max_history_items": 5,
            "llm": {"item_map": "index.json"}});
        assert!(Sidecar::from_json(llm.to_string().as_bytes()).unwrap().llm.is_some());
    }

    #[test]
    fn a_profile_vocabulary_follows_the_codes_and_old_sidecars_have_none() {
        let cat = random_catalog(40, &[4, 4, 3], 1);
        let m = cat.manifest();
        let plain = Sidecar::for_catalog("t", ".", m, 20);
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("profile"), "old readers see the old format");
        assert_eq!(serde_json::from_str::<Sidecar>(&json).unwrap(), plain);
        assert!(plain.profile_prefix(&["age:18-24".into()]).is_none());

        let s = plain.clone().with_profile(["interest:drama".to_string(), "age:18-24".to_string()]);
        let p = s.profile.as_ref().unwrap();
        assert_eq!((p.offset, s.min_vocab()), (14, 16));
        assert_eq!(s.longest_sequence(), plain.longest_sequence() + MAX_PROFILE_TOKENS);
        assert!(!s.same_layout(&plain));
        assert_eq!(serde_json::from_str::<Sidecar>(&serde_json::to_string(&s).unwrap()).unwrap(), s);
        assert!(s.validate(16, m).is_ok());
        assert!(s.validate(15, m).is_err(), "the vocabulary must hold the profile tokens");
        let mut overlapping = s.clone();
        overlapping.profile.as_mut().unwrap().offset = 10;
        assert!(overlapping.validate(16, m).is_err(), "profile tokens may not overlap codes");
        assert_eq!(s.request_tokens(&[15, 14], [&[1u32, 2, 0][..]]), vec![1, 15, 14, 3 + 1, 7 + 2, 11]);
        assert!(plain.clone().with_profile(Vec::<String>::new()).profile.is_none());
    }
}
