//! Trie-constrained beam search: every beam is a prefix of a real item's
//! semantic ID, so every generated item exists in the catalog.

pub mod beam;
pub mod diversity;
pub mod kernel;
pub mod new_items;
pub mod request;
pub mod step;
pub mod trending;

pub use beam::{generate, generate_ensemble, generate_with, request_input};
pub use request::{GenRequest, Generated, Hit, Scoring};
pub use step::{beam_step, beam_step_capped, StepOutput, StepShape};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("model: {0}")]
    Model(#[from] crate::model::ModelError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("model and catalog do not match: {0}")]
    Mismatch(String),
    /// A request the search cannot run as asked (e.g. an empty ensemble).
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A small random world: random semantic IDs, a random model over them.
    use candle_core::Device;
    use candle_nn::VarBuilder;
    use rand::{Rng, SeedableRng};

    use crate::catalog::{catalog_fingerprint, Catalog, Manifest};
    use crate::model::{config::ModelConfig, init::init_weights, Model, Sidecar, Transformer};

    pub fn random_catalog(n: usize, sizes: &[u32], seed: u64) -> Catalog {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < n {
            seen.insert(sizes.iter().map(|&s| rng.random_range(0..s)).collect::<Vec<u32>>());
        }
        let sids: Vec<u32> = seen.into_iter().flatten().collect();
        let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let manifest = Manifest::new("random", n, sizes.to_vec(), 2, "none", seed, catalog_fingerprint(&ids, &sids));
        let emb = (0..n * 2).map(|i| (i as f32).sin()).collect();
        let titles = ids.clone();
        Catalog::new(manifest, ids, titles, sids, emb, Vec::new()).unwrap()
    }

    pub fn random_model(catalog: &Catalog, arch: &str, seed: u64) -> Model {
        random_model_as(catalog, arch, seed, candle_core::DType::F32)
    }

    /// [`random_model`] with weights and activations in `dtype`.
    pub fn random_model_as(catalog: &Catalog, arch: &str, seed: u64, dtype: candle_core::DType) -> Model {
        random_model_with(Sidecar::for_catalog("random", ".", catalog.manifest(), 20), arch, seed, dtype)
    }

    /// A random model that reads the profile features `features` (see
    /// [`crate::model::profile_vocab`]).
    pub fn random_profiled_model(catalog: &Catalog, features: &[&str], seed: u64) -> Model {
        let sidecar = Sidecar::for_catalog("random", ".", catalog.manifest(), 20)
            .with_profile(features.iter().map(|f| f.to_string()));
        random_model_with(sidecar, "LlamaForCausalLM", seed, candle_core::DType::F32)
    }

    fn random_model_with(sidecar: Sidecar, arch: &str, seed: u64, dtype: candle_core::DType) -> Model {
        let mut cfg = ModelConfig::llama(sidecar.min_vocab(), 32, 2, 4, 2, 64);
        cfg.architectures = vec![arch.to_string()];
        let dev = Device::Cpu;
        // std 0.3: peaked enough that beam search and enumeration disagree if wrong
        let w = init_weights(&cfg, 0.3, seed, &dev).unwrap();
        let w = w.into_iter().map(|(k, v)| (k, v.to_dtype(dtype).unwrap())).collect();
        let net = Transformer::load(VarBuilder::from_tensors(w, dtype, &dev), &cfg).unwrap();
        Model::assemble(net, cfg, sidecar, "test".into(), None).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use candle_core::Tensor;

    use super::testutil::{random_catalog, random_model, random_profiled_model};
    use super::*;
    use crate::catalog::Catalog;
    use crate::model::Model;

    /// Score of every item by full forward passes (no cache, no beams): the sum
    /// over levels of the code's log-softmax over the whole vocabulary
    /// (`Scoring::Model`) or among the prefix's valid children (`Scoring::Trie`).
    fn enumerate(model: &Model, cat: &Catalog, history: &[u32], scoring: Scoring) -> Vec<(u32, f32)> {
        enumerate_after(model, cat, &[], history, scoring)
    }

    /// [`enumerate`] with profile tokens read before the history.
    fn enumerate_after(
        model: &Model,
        cat: &Catalog,
        profile: &[u32],
        history: &[u32],
        scoring: Scoring,
    ) -> Vec<(u32, f32)> {
        let v = &model.vocab;
        let mut out = Vec::new();
        for item in 0..cat.len() as u32 {
            let sids = history.iter().map(|&i| cat.sid(i));
            let mut toks = v.request_tokens(profile, &crate::model::PromptText::default(), sids).unwrap();
            let sid = cat.sid(item).to_vec();
            let mut score = 0.0;
            let mut node = 0u32;
            for (l, &code) in sid.iter().enumerate() {
                let t = Tensor::from_vec(toks.clone(), (1, toks.len()), &candle_core::Device::Cpu).unwrap();
                let (h, _) = model.net.forward_hidden(&t, None).unwrap();
                let last = h.narrow(1, toks.len() - 1, 1).unwrap();
                let logits = model.net.logits(&last).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let codes: Vec<u32> = cat.trie().children(node).map(|c| c.0).collect();
                let vals: Vec<f32> = match scoring {
                    Scoring::Trie => codes.iter().map(|&c| logits[v.token(l, c) as usize]).collect(),
                    Scoring::Model => logits.clone(),
                };
                let max = vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let lse = max + vals.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
                score += logits[v.token(l, code) as usize] - lse;
                node = cat.trie().child(node, code).unwrap();
                toks.push(v.token(l, code));
            }
            out.push((item, score));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// `scattered`: the model's semantic-ID tokens dealt through its
    /// vocabulary (an LLM layout's gathered output rows and columns).
    fn check_against_enumeration(arch: &str, scoring: Scoring, scattered: bool) {
        let cat = random_catalog(40, &[4, 4, 3], 5);
        let scatter = |m: Model| if scattered { m.with_token_map(m.vocab.scattered_levels()).unwrap() } else { m };
        let model = scatter(random_model(&cat, arch, 9));
        let histories: Vec<Vec<u32>> = vec![vec![3, 17, 22], vec![5], vec![1, 2, 3, 4, 5, 6, 7]];
        let reqs: Vec<GenRequest> = histories
            .iter()
            .map(|h| GenRequest { history: h.clone(), k: 10, exclude: HashSet::new(), ..Default::default() })
            .collect();
        // beam = number of items: the search is exhaustive, so it must be exact;
        // the serving form (fused projections) against the trained form's enumeration
        let mut served = random_model(&cat, arch, 9);
        served.net.fuse_projections().unwrap();
        let served = scatter(served);
        let got = generate_with(&served, &cat, &reqs, 40, scoring).unwrap();
        for (h, hits) in histories.iter().zip(&got.hits) {
            let want = enumerate(&model, &cat, h, scoring);
            assert_eq!(hits.len(), 10);
            for (hit, (item, score)) in hits.iter().zip(&want) {
                assert_eq!(hit.item, *item, "{arch}: history {h:?}");
                assert!((hit.score - score).abs() < 1e-4, "{} vs {}", hit.score, score);
            }
        }
        // batched == one at a time (padding and masks are right)
        for (i, req) in reqs.iter().enumerate() {
            let single = generate_with(&model, &cat, std::slice::from_ref(req), 40, scoring).unwrap();
            for (a, b) in single.hits[0].iter().zip(&got.hits[i]) {
                assert_eq!(a.item, b.item);
                assert!((a.score - b.score).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn beam_search_equals_enumeration_llama() {
        check_against_enumeration("LlamaForCausalLM", Scoring::Model, false);
        check_against_enumeration("LlamaForCausalLM", Scoring::Trie, false);
    }

    #[test]
    fn beam_search_equals_enumeration_qwen3() {
        check_against_enumeration("Qwen3ForCausalLM", Scoring::Model, false);
        check_against_enumeration("Qwen3ForCausalLM", Scoring::Trie, false);
    }

    #[test]
    fn beam_search_equals_enumeration_with_scattered_semantic_id_tokens() {
        check_against_enumeration("Qwen2ForCausalLM", Scoring::Model, true);
        check_against_enumeration("Qwen2ForCausalLM", Scoring::Trie, true);
    }

    /// An exhaustive ensemble search ranks every item by the members' mean
    /// enumerated log-probability; a one-member ensemble is the model itself.
    #[test]
    fn ensemble_search_equals_the_mean_of_enumerations() {
        let cat = random_catalog(40, &[4, 4, 3], 5);
        let a = random_model(&cat, "LlamaForCausalLM", 9);
        let b = random_model(&cat, "Qwen3ForCausalLM", 4);
        let history = vec![3u32, 17, 22, 8];
        let req = GenRequest { history: history.clone(), k: 10, exclude: HashSet::new(), ..Default::default() };
        let got = generate_ensemble(&[&a, &b], &cat, std::slice::from_ref(&req), 40, Scoring::Model).unwrap();
        let eb: std::collections::HashMap<u32, f32> =
            enumerate(&b, &cat, &history, Scoring::Model).into_iter().collect();
        let mut want: Vec<(u32, f32)> =
            enumerate(&a, &cat, &history, Scoring::Model).into_iter().map(|(i, s)| (i, (s + eb[&i]) / 2.0)).collect();
        want.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        assert_eq!(got.hits[0].len(), 10);
        for (hit, (item, score)) in got.hits[0].iter().zip(&want) {
            assert_eq!(hit.item, *item);
            assert!((hit.score - score).abs() < 1e-4, "{} vs {}", hit.score, score);
        }
        // the ensemble is neither member alone
        let alone = generate(&a, &cat, std::slice::from_ref(&req), 40).unwrap();
        assert_ne!(alone.hits[0], got.hits[0]);
        // one member: the single model's search, bit for bit
        let one = generate_ensemble(&[&a], &cat, std::slice::from_ref(&req), 40, Scoring::Model).unwrap();
        assert_eq!(one.hits, alone.hits);
        // members must share the catalog's layout
        let other = random_catalog(40, &[4, 4, 3], 6);
        let c = random_model(&other, "LlamaForCausalLM", 9);
        assert!(matches!(
            generate_ensemble(&[&a, &c], &cat, std::slice::from_ref(&req), 40, Scoring::Model),
            Err(GenerateError::Mismatch(_))
        ));
        assert!(matches!(
            generate_ensemble(&[&a, &b], &cat, std::slice::from_ref(&req), 40, Scoring::Trie),
            Err(GenerateError::Invalid(_))
        ));
        assert!(matches!(generate_ensemble(&[], &cat, &[req], 40, Scoring::Model), Err(GenerateError::Invalid(_))));
    }

    #[test]
    fn narrow_beam_returns_valid_distinct_items_and_excludes() {
        let cat = random_catalog(60, &[5, 4, 4], 2);
        let model = random_model(&cat, "LlamaForCausalLM", 3);
        let exclude: HashSet<u32> = [0, 1, 2, 3, 4, 5].into_iter().collect();
        let req = GenRequest { history: vec![0, 1, 2], k: 8, exclude: exclude.clone(), ..Default::default() };
        let got = generate(&model, &cat, &[req], 8).unwrap();
        let hits = &got.hits[0];
        assert_eq!(hits.len(), 8);
        let items: HashSet<u32> = hits.iter().map(|h| h.item).collect();
        assert_eq!(items.len(), 8, "distinct");
        assert!(items.is_disjoint(&exclude));
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "sorted");
        // scores are log-probabilities
        assert!(hits.iter().all(|h| h.score <= 0.0));
        assert!(got.tokens > 0);
    }

    /// Restricted to intents' sub-tries, an exhaustive search returns exactly
    /// the enumeration's ranking of the items under those first codes.
    #[test]
    fn within_restricts_to_sub_tries_and_keeps_their_ranking() {
        let cat = random_catalog(40, &[4, 4, 3], 5);
        let model = random_model(&cat, "LlamaForCausalLM", 9);
        let history = vec![3, 17];
        let within = vec![1, 3];
        let req = GenRequest { history: history.clone(), k: 12, within: within.clone(), ..Default::default() };
        let got = generate(&model, &cat, &[req], 40).unwrap();
        let want: Vec<(u32, f32)> = enumerate(&model, &cat, &history, Scoring::Model)
            .into_iter()
            .filter(|(i, _)| within.contains(&cat.sid(*i)[0]))
            .take(12)
            .collect();
        assert_eq!(got.hits[0].len(), want.len());
        for (hit, (item, score)) in got.hits[0].iter().zip(&want) {
            assert_eq!(hit.item, *item);
            assert!(within.contains(&cat.sid(hit.item)[0]));
            assert!((hit.score - score).abs() < 1e-4);
        }
        // an empty history (a new user) generates too: from the start token alone
        let req = GenRequest { history: vec![], k: 5, within: vec![2], ..Default::default() };
        let got = generate(&model, &cat, &[req], 10).unwrap();
        assert_eq!(got.hits[0].len(), 5);
        assert!(got.hits[0].iter().all(|h| cat.sid(h.item)[0] == 2));
    }

    /// An allowed set (a personalized search's matches) restricts every level
    /// to its items' prefixes: an exhaustive search returns the enumeration's
    /// ranking of those items, per request of a mixed batch, under both
    /// scorings; an empty set gives nothing, a small one fewer than `k`.
    #[test]
    fn allowed_items_restrict_the_search_like_the_enumeration() {
        use rand::{Rng, SeedableRng};
        let cat = random_catalog(60, &[4, 4, 4], 3);
        let model = random_model(&cat, "LlamaForCausalLM", 11);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut allowed: Vec<u32> = (0..60).filter(|_| rng.random_bool(0.3)).collect();
        allowed.sort_unstable();
        let history = vec![7, 8, 30];
        let exclude: HashSet<u32> = allowed.iter().copied().take(2).collect();
        let reqs = [
            GenRequest {
                history: history.clone(),
                k: 10,
                exclude: exclude.clone(),
                allowed: Some(allowed.clone().into()),
                ..Default::default()
            },
            GenRequest { history: history.clone(), k: 10, ..Default::default() },
            GenRequest { history: history.clone(), k: 10, allowed: Some(Vec::new().into()), ..Default::default() },
            GenRequest {
                history: history.clone(),
                k: 10,
                allowed: Some(allowed[..3].to_vec().into()),
                ..Default::default()
            },
        ];
        for scoring in [Scoring::Model, Scoring::Trie] {
            let got = generate_with(&model, &cat, &reqs, 60, scoring).unwrap();
            let all = enumerate(&model, &cat, &history, scoring);
            let want: Vec<&(u32, f32)> =
                all.iter().filter(|(i, _)| allowed.binary_search(i).is_ok() && !exclude.contains(i)).take(10).collect();
            assert_eq!(got.hits[0].len(), 10);
            for (hit, (item, score)) in got.hits[0].iter().zip(want) {
                assert_eq!(hit.item, *item, "{scoring:?}");
                assert!((hit.score - score).abs() < 1e-4);
            }
            let free: Vec<u32> = got.hits[1].iter().map(|h| h.item).collect();
            assert_eq!(free, all.iter().take(10).map(|p| p.0).collect::<Vec<_>>());
            assert!(got.hits[2].is_empty());
            let mut few: Vec<u32> = got.hits[3].iter().map(|h| h.item).collect();
            few.sort_unstable();
            assert_eq!(few, allowed[..3].to_vec());
        }
    }

    /// On a wide trie the narrowest beam (`k`) spends no slot on a prefix
    /// without allowed items, and keeps room for enough first-level codes to
    /// fill `k` under a diversity cap.
    #[test]
    fn narrow_beams_fill_k_under_allowed_sets_and_caps() {
        let cat = random_catalog(400, &[8, 8, 8], 6);
        let model = random_model(&cat, "LlamaForCausalLM", 12);
        let allowed: std::sync::Arc<[u32]> = (0..400).step_by(33).collect::<Vec<u32>>().into();
        for h in 0..12u32 {
            let history = vec![h * 31 % 400, h * 7 % 400];
            let reqs = [
                GenRequest { history: history.clone(), k: 10, allowed: Some(allowed.clone()), ..Default::default() },
                GenRequest { history: history.clone(), k: 10, max_per_intent: Some(2), ..Default::default() },
                GenRequest { history: history.clone(), k: 10, max_per_intent: Some(3), ..Default::default() },
            ];
            let got = generate(&model, &cat, &reqs, 10).unwrap();
            for (i, hits) in got.hits.iter().enumerate() {
                assert_eq!(hits.len(), 10, "history {history:?}, request {i}");
            }
            assert!(got.hits[0].iter().all(|x| allowed.contains(&x.item)));
        }
    }

    /// The diversity cap holds inside the search: an exhaustive search returns
    /// the best `k` items with at most `cap` per first-level code (the
    /// enumeration, taken greedily under the cap); the narrowest beam (`k`)
    /// still returns `k` items, capped; an allowed set and the cap combine.
    #[test]
    fn diversity_cap_equals_the_capped_enumeration() {
        let cat = random_catalog(60, &[4, 4, 4], 3);
        let model = random_model(&cat, "LlamaForCausalLM", 11);
        let history = vec![7, 8, 30];
        let all = enumerate(&model, &cat, &history, Scoring::Model);
        let count = |hits: &[Hit]| {
            let mut per = std::collections::HashMap::new();
            for h in hits {
                *per.entry(cat.sid(h.item)[0]).or_insert(0) += 1;
            }
            per.into_values().max().unwrap_or(0)
        };
        for cap in [1usize, 2, 3, 5] {
            let req = GenRequest { history: history.clone(), k: 10, max_per_intent: Some(cap), ..Default::default() };
            let got = generate(&model, &cat, std::slice::from_ref(&req), 60).unwrap();
            let want = diversity::take_capped(all.clone(), 10, cap as u32, |&(i, _)| cat.sid(i)[0]);
            let items: Vec<u32> = got.hits[0].iter().map(|h| h.item).collect();
            assert_eq!(items, want.iter().map(|p| p.0).collect::<Vec<_>>(), "cap {cap}");
            assert!(count(&got.hits[0]) <= cap);
            // 4 first-level codes: cap 1 allows 4 items, the others all 10
            let narrow = generate(&model, &cat, &[req], 10).unwrap();
            assert_eq!(narrow.hits[0].len(), (4 * cap).min(10), "cap {cap}, beam 10");
            assert!(count(&narrow.hits[0]) <= cap);
        }
        let allowed: Vec<u32> = (0..60).step_by(2).collect();
        let req = GenRequest {
            history: history.clone(),
            k: 10,
            max_per_intent: Some(2),
            allowed: Some(allowed.clone().into()),
            ..Default::default()
        };
        let got = generate(&model, &cat, &[req], 60).unwrap();
        let inside: Vec<(u32, f32)> = all.iter().copied().filter(|(i, _)| i % 2 == 0).collect();
        let want = diversity::take_capped(inside, 10, 2, |&(i, _)| cat.sid(i)[0]);
        assert_eq!(
            got.hits[0].iter().map(|h| h.item).collect::<Vec<_>>(),
            want.iter().map(|p| p.0).collect::<Vec<_>>()
        );
    }

    /// Profile tokens are read after `bos`: an exhaustive search with them is
    /// the enumeration after them, in a batch with requests without; tokens
    /// the model does not have are refused.
    #[test]
    fn profile_tokens_condition_the_search_like_the_enumeration() {
        let cat = random_catalog(40, &[4, 4, 3], 5);
        let model = random_profiled_model(&cat, &["age:18-24", "gender:female", "interest:drama"], 9);
        let p = model.sidecar.profile.clone().unwrap();
        assert_eq!(model.config.vocab_size, p.end() as usize);
        let profile = vec![p.offset + 2, p.offset];
        let req = |history: Vec<u32>, profile_tokens: Vec<u32>| GenRequest {
            history,
            k: 10,
            exclude: HashSet::new(),
            within: Vec::new(),
            first_level_prior: Vec::new(),
            profile_tokens,
            ..Default::default()
        };
        let reqs = vec![req(vec![], profile.clone()), req(vec![], vec![]), req(vec![3, 17], profile.clone())];
        let got = generate(&model, &cat, &reqs, 40).unwrap();
        for (q, hits) in reqs.iter().zip(&got.hits) {
            let want = enumerate_after(&model, &cat, &q.profile_tokens, &q.history, Scoring::Model);
            assert_eq!(hits.len(), 10);
            for (hit, (item, score)) in hits.iter().zip(&want) {
                assert_eq!(hit.item, *item, "{q:?}");
                assert!((hit.score - score).abs() < 1e-4, "{} vs {}", hit.score, score);
            }
        }
        assert_ne!(got.hits[0], got.hits[1], "the profile changes the answer");
        for bad in [vec![p.end()], vec![p.offset - 1], vec![p.offset; 17]] {
            assert!(matches!(generate(&model, &cat, &[req(vec![], bad)], 10), Err(GenerateError::Invalid(_))));
        }
        // a model without a profile vocabulary reads none
        let plain = random_model(&cat, "LlamaForCausalLM", 9);
        assert!(matches!(generate(&plain, &cat, &[req(vec![], vec![3])], 10), Err(GenerateError::Invalid(_))));
    }

    /// A first-level prior shifts each item's score by its first code's prior:
    /// an exhaustive search returns the enumeration re-ranked by `score +
    /// prior[first code]`, and a zero prior is the search without one.
    #[test]
    fn first_level_prior_re_ranks_by_the_first_code() {
        let cat = random_catalog(40, &[4, 4, 3], 5);
        let model = random_model(&cat, "LlamaForCausalLM", 9);
        let req = |prior: Vec<f32>| GenRequest {
            history: vec![],
            k: 40,
            exclude: HashSet::new(),
            within: Vec::new(),
            first_level_prior: prior,
            profile_tokens: Vec::new(),
            ..Default::default()
        };
        let plain = generate(&model, &cat, &[req(Vec::new())], 40).unwrap();
        let zero = generate(&model, &cat, &[req(vec![0.0; 4])], 40).unwrap();
        assert_eq!(plain.hits, zero.hits);
        let prior = vec![-3.0, 0.5, -0.2, -1.0];
        let got = generate(&model, &cat, &[req(prior.clone())], 40).unwrap();
        let mut want: Vec<(u32, f32)> = enumerate(&model, &cat, &[], Scoring::Model)
            .into_iter()
            .map(|(i, s)| (i, s + prior[cat.sid(i)[0] as usize]))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(got.hits[0].len(), want.len());
        for (hit, (item, score)) in got.hits[0].iter().zip(&want) {
            assert_eq!(hit.item, *item);
            assert!((hit.score - score).abs() < 1e-4);
        }
        // a prior of the wrong length is refused
        assert!(generate(&model, &cat, &[req(vec![0.0; 3])], 40).is_err());
    }

    /// bf16 (the GPU's fast dtype) keeps the ranking of an f32 model: same
    /// leading item, nearly the same top 10, scores close.
    #[test]
    fn bf16_model_ranks_like_f32() {
        let cat = random_catalog(60, &[5, 4, 4], 2);
        let m32 = random_model(&cat, "LlamaForCausalLM", 3);
        let m16 = super::testutil::random_model_as(&cat, "LlamaForCausalLM", 3, candle_core::DType::BF16);
        let reqs: Vec<GenRequest> = [vec![0u32, 1, 2], vec![7, 9], vec![30]]
            .into_iter()
            .map(|h| GenRequest { history: h, k: 10, exclude: HashSet::new(), ..Default::default() })
            .collect();
        let a = generate(&m32, &cat, &reqs, 20).unwrap();
        let b = generate(&m16, &cat, &reqs, 20).unwrap();
        for (x, y) in a.hits.iter().zip(&b.hits) {
            assert_eq!(x[0].item, y[0].item);
            let top: HashSet<u32> = x.iter().map(|h| h.item).collect();
            assert!(y.iter().filter(|h| top.contains(&h.item)).count() >= 8);
            assert!((x[0].score - y[0].score).abs() < 0.1, "{} vs {}", x[0].score, y[0].score);
        }
    }

    #[test]
    fn probabilities_over_all_items_sum_to_one_with_trie_scoring() {
        let cat = random_catalog(30, &[3, 4, 3], 8);
        let model = random_model(&cat, "LlamaForCausalLM", 1);
        let req = GenRequest { history: vec![4, 9], k: 30, exclude: HashSet::new(), ..Default::default() };
        let got = generate_with(&model, &cat, std::slice::from_ref(&req), 30, Scoring::Trie).unwrap();
        let total: f32 = got.hits[0].iter().map(|h| h.score.exp()).sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        // the model's own probabilities leave mass on tokens that are no item
        let got = generate(&model, &cat, &[req], 30).unwrap();
        let total: f32 = got.hits[0].iter().map(|h| h.score.exp()).sum();
        assert!(total < 0.99, "{total}");
    }
}
