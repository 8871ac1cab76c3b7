//! Profile tokens in training (`genrec train --users`): each training user's
//! sign-up profile becomes features ([`crate::coldstart::Profile::features`]),
//! and the sequences that start at the user's first item (the first window and
//! the first-item targets) read them after `bos`. The model so learns
//! P(first items | profile), the answer a new user gets.
//!
//! Each sequence drops each demographic feature with probability
//! [`FIELD_DROP`] and the declared interests, as a group, with
//! [`INTERESTS_DROP`]: requests give any subset of the fields, and most give
//! no interests, so the model sees partial profiles too.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::profiles::top_genres;
use crate::dataset::{train_part, Interactions};
use crate::model::profile_vocab::ProfileVocab;

/// Chance that a sequence leaves out one demographic feature.
pub const FIELD_DROP: f64 = 0.2;
/// Chance that a sequence leaves out all declared interests.
pub const INTERESTS_DROP: f64 = 0.5;
/// Prefix of interest features.
const INTEREST: &str = "interest:";

/// Profile features of every user of `inter` with a row in `users` (a
/// `NAME.user.json`). With `genres` (item id -> genres), each user also
/// declares the `interests` most frequent genres of their training items after
/// the first `first`: the same stand-in for a sign-up interest picker as
/// `genrec coldstart-eval --interests-from`.
pub fn user_features(
    inter: &Interactions,
    users: &serde_json::Map<String, serde_json::Value>,
    genres: Option<&HashMap<String, Vec<String>>>,
    first: usize,
    interests: usize,
) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    for (u, seq) in inter.users.iter().zip(&inter.sequences) {
        let Some(row) = users.get(u) else { continue };
        let mut profile = super::profiles::profile_of(row);
        if let Some(g) = genres {
            let later = train_part(seq).iter().skip(first).filter_map(|id| g.get(id).map(Vec::as_slice));
            profile.interests = top_genres(later, interests);
        }
        let f = profile.features();
        if !f.is_empty() {
            out.insert(u.clone(), f);
        }
    }
    out
}

/// Draws the profile prefix of each training sequence.
pub struct PrefixDraw {
    /// Per user (in `inter` order): demographic tokens, interest tokens.
    users: Vec<(Vec<u32>, Vec<u32>)>,
    rng: ChaCha8Rng,
}

impl PrefixDraw {
    /// Prefixes of `inter`'s users from `features` (by user id) in `vocab`'s
    /// tokens; none at all without a vocabulary.
    pub fn new(
        vocab: Option<&ProfileVocab>,
        inter: &Interactions,
        features: &HashMap<String, Vec<String>>,
        seed: u64,
    ) -> Self {
        let users = inter
            .users
            .iter()
            .map(|u| {
                let (Some(v), Some(f)) = (vocab, features.get(u)) else { return Default::default() };
                let (interests, fields): (Vec<&String>, Vec<&String>) = f.iter().partition(|x| x.starts_with(INTEREST));
                let tokens = |xs: Vec<&String>| xs.into_iter().filter_map(|x| v.token(x)).collect::<Vec<u32>>();
                (tokens(fields), tokens(interests))
            })
            .collect();
        PrefixDraw { users, rng: ChaCha8Rng::seed_from_u64(seed ^ 0x9f0f_11e5) }
    }

    /// No profile tokens for anyone.
    pub fn none() -> Self {
        PrefixDraw { users: Vec::new(), rng: ChaCha8Rng::seed_from_u64(0) }
    }

    /// The prefix of one sequence of user `u` (index in `inter`), with features dropped at random.
    pub fn draw(&mut self, u: usize) -> Vec<u32> {
        let Some((fields, interests)) = self.users.get(u) else { return Vec::new() };
        let mut out: Vec<u32> = fields.iter().copied().filter(|_| !self.rng.random_bool(FIELD_DROP)).collect();
        if !interests.is_empty() && !self.rng.random_bool(INTERESTS_DROP) {
            out.extend_from_slice(interests);
        }
        out.truncate(crate::model::profile_vocab::MAX_PROFILE_TOKENS);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn users_get_features_and_interests_from_items_after_their_first() {
        let inter = Interactions {
            users: s(&["a", "b", "nobody"]),
            sequences: vec![s(&["1", "2", "3", "3", "4", "5"]), s(&["1"]), s(&["1", "2"])],
        };
        let users: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"a": {"age": 30, "gender": "F", "occupation": "Writer", "zip": "1"}, "b": {"gender": "M"}}"#,
        )
        .unwrap();
        let genres: HashMap<String, Vec<String>> =
            [("1", &["Drama"][..]), ("2", &["Comedy"]), ("3", &["Action", "Comedy"]), ("4", &["Horror"])]
                .iter()
                .map(|(k, g)| (k.to_string(), s(g)))
                .collect();
        let f = user_features(&inter, &users, Some(&genres), 1, 2);
        // a: training part 1,2,3,3; after the first: 2,3,3 -> Comedy 3, Action 2
        assert_eq!(
            f["a"],
            s(&["age:25-34", "gender:female", "occupation:writer", "interest:comedy", "interest:action"])
        );
        assert_eq!(f["b"], s(&["gender:male"]));
        assert!(!f.contains_key("nobody"));
        assert_eq!(user_features(&inter, &users, None, 1, 2)["a"].len(), 3);
    }

    #[test]
    fn draws_drop_fields_and_interests_at_their_rates() {
        let features: HashMap<String, Vec<String>> =
            [("a".to_string(), s(&["age:18-24", "gender:male", "interest:drama"]))].into_iter().collect();
        let vocab = ProfileVocab::new(10, features["a"].clone());
        let inter = Interactions { users: s(&["a", "b"]), sequences: vec![s(&["1"]), s(&["1"])] };
        let mut d = PrefixDraw::new(Some(&vocab), &inter, &features, 7);
        let (mut age, mut interest, n) = (0, 0, 4000);
        for _ in 0..n {
            let p = d.draw(0);
            age += p.contains(&10) as usize;
            interest += p.contains(&12) as usize;
            assert!(p.windows(2).all(|w| w[0] != w[1]));
        }
        let rate = |c: usize| c as f64 / n as f64;
        assert!((rate(age) - (1.0 - FIELD_DROP)).abs() < 0.03, "{}", rate(age));
        assert!((rate(interest) - (1.0 - INTERESTS_DROP)).abs() < 0.03, "{}", rate(interest));
        assert!(d.draw(1).is_empty(), "no profile, no prefix");
        assert!(PrefixDraw::none().draw(0).is_empty());
        let again: Vec<Vec<u32>> =
            (0..20).map(|_| PrefixDraw::new(Some(&vocab), &inter, &features, 7).draw(0)).collect();
        assert!(again.windows(2).all(|w| w[0] == w[1]), "seeded");
    }
}
