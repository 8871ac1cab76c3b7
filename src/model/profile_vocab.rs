//! Profile tokens: a new user's sign-up fields (`age:25-34`, `gender:female`,
//! `occupation:engineer`, `interest:comedy`, ...) as tokens of the generative
//! model's own vocabulary, placed after `bos` and before the history's codes.
//! Trained on users' first items (`genrec train --users`), the model learns
//! P(first items | profile); with no history its answer is that distribution.
//!
//! The vocabulary is listed in the sidecar, after the code tokens. A
//! checkpoint without one reads no profile tokens (see
//! [`super::Sidecar::profile_prefix`]).

use serde::{Deserialize, Serialize};

/// Profile tokens read at most (the sequence positions reserve room for them).
pub const MAX_PROFILE_TOKENS: usize = 16;

/// The profile features a model knows, in token order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProfileVocab {
    /// Token id of the first feature.
    pub offset: u32,
    /// Features as `field:value`, sorted and unique; feature `i` is token
    /// `offset + i`.
    pub features: Vec<String>,
}

/// A profile as the model reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfilePrefix {
    pub tokens: Vec<u32>,
    /// Features the model was not trained on (not read).
    pub unknown: Vec<String>,
}

impl ProfileVocab {
    /// The vocabulary of `features` (any order, repeats allowed) from token `offset` on.
    pub fn new(offset: u32, features: impl IntoIterator<Item = String>) -> Self {
        let mut f: Vec<String> = features.into_iter().collect();
        f.sort();
        f.dedup();
        ProfileVocab { offset, features: f }
    }

    /// One past the last profile token.
    pub fn end(&self) -> u32 {
        self.offset + self.features.len() as u32
    }

    pub fn token(&self, feature: &str) -> Option<u32> {
        self.features.binary_search_by(|f| f.as_str().cmp(feature)).ok().map(|i| self.offset + i as u32)
    }

    /// Tokens of `features`, in the given order without repeats, at most
    /// [`MAX_PROFILE_TOKENS`]; unknown features are listed, not read.
    pub fn encode(&self, features: &[String]) -> ProfilePrefix {
        let mut out = ProfilePrefix::default();
        for f in features {
            match self.token(f) {
                Some(t) if !out.tokens.contains(&t) && out.tokens.len() < MAX_PROFILE_TOKENS => out.tokens.push(t),
                Some(_) => {}
                None => out.unknown.push(f.clone()),
            }
        }
        out
    }

    /// Sorted, unique features of non-empty `field:value` form.
    pub fn is_well_formed(&self) -> bool {
        self.features.windows(2).all(|w| w[0] < w[1])
            && self.features.iter().all(|f| f.split_once(':').is_some_and(|(k, v)| !k.is_empty() && !v.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn features_become_tokens_after_the_offset_in_sorted_order() {
        let v = ProfileVocab::new(100, s(&["gender:male", "age:25-34", "gender:male", "interest:comedy"]));
        assert_eq!(v.features, s(&["age:25-34", "gender:male", "interest:comedy"]));
        assert_eq!(v.end(), 103);
        assert!(v.is_well_formed());
        let p = v.encode(&s(&["interest:comedy", "occupation:astronaut", "age:25-34", "interest:comedy"]));
        assert_eq!(p.tokens, [102, 100]);
        assert_eq!(p.unknown, s(&["occupation:astronaut"]));
        let many: Vec<String> = (0..40).map(|i| format!("interest:{i:02}")).collect();
        let v = ProfileVocab::new(3, many.clone());
        assert_eq!(v.encode(&many).tokens.len(), MAX_PROFILE_TOKENS);
        assert!(!ProfileVocab { offset: 0, features: s(&["b:1", "a:1"]) }.is_well_formed());
        assert!(!ProfileVocab { offset: 0, features: s(&["novalue:"]) }.is_well_formed());
    }
}
