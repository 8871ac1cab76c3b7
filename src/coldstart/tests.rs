//! Tests of intent inference: the embedding path, the LLM path, the cache
//! and single-flight of identical profiles.

use std::sync::Arc;

use super::*;
use crate::catalog::embed::DEFAULT_ENCODER_DIR;
use crate::catalog::tests::tiny_catalog;

#[test]
fn quotas_follow_weights_and_sum_to_k() {
    assert_eq!(split_quota(&[0.5, 0.3, 0.2], 10), vec![5, 3, 2]);
    assert_eq!(split_quota(&[0.6, 0.4], 3), vec![2, 1]);
    assert_eq!(split_quota(&[1.0, 1.0, 1.0], 2).iter().sum::<usize>(), 2);
    assert_eq!(split_quota(&[0.9, 0.05, 0.05], 1), vec![1, 0, 0]);
    assert_eq!(split_quota(&[], 4), Vec::<usize>::new());
}

#[test]
fn profile_fields_render_and_check() {
    let p: Profile = serde_json::from_str(r#"{"age": 30, "interests": ["a", "b"], "country": " "}"#).unwrap();
    assert_eq!(p.describe(), "age: 30\ninterests: a, b");
    assert!(p.check().is_ok());
    assert!(Profile::default().is_empty());
    let old = Profile { age: Some(200), ..Default::default() };
    assert_eq!(old.check().unwrap_err().0, "profile.age");
    assert!(serde_json::from_str::<Profile>(r#"{"agee": 3}"#).is_err(), "unknown fields are refused");
}

#[test]
fn profiles_become_model_features() {
    let p: Profile = serde_json::from_str(
        r#"{"age": 30, "gender": "Female", "occupation": " engineer ", "country": " ", "interests": ["Film-Noir", "  "]}"#,
    )
    .unwrap();
    assert_eq!(p.features(), ["age:25-34", "gender:female", "occupation:engineer", "interest:film-noir"]);
    assert_eq!(Profile { age: Some(17), ..Default::default() }.features(), ["age:under-18"]);
    assert_eq!(Profile { age: Some(56), ..Default::default() }.features(), ["age:56-plus"]);
    assert!(Profile::default().features().is_empty());
}

/// A catalog whose two first-level clusters are labelled as given.
fn labelled_catalog(labels: &[&str]) -> Catalog {
    let mut cat = tiny_catalog();
    let codes: std::collections::BTreeSet<u32> = (0..cat.len() as u32).map(|i| cat.sid(i)[0]).collect();
    let intents =
        codes.into_iter().zip(labels).map(|(code, l)| Intent { code, label: l.to_string(), items: 1 }).collect();
    cat.set_intents(intents).unwrap();
    cat
}

#[test]
fn embedding_fallback_matches_profile_text_to_labels() {
    let Some(dir) = crate::fetched_model(DEFAULT_ENCODER_DIR) else { return };
    let enc = Arc::new(TextEncoder::load(&dir).unwrap());
    let cat = labelled_catalog(&["horror, thriller, slasher", "lipstick, mascara, makeup"]);
    let cs = ColdStart::new(&cat, None, Some(enc), ColdStartOptions { top: 2, ..Default::default() }).unwrap();
    assert_eq!(cs.method(), IntentMethod::Embedding);
    let p = Profile { interests: vec!["scary movies".into()], ..Default::default() };
    let got = cs.infer(&p).unwrap();
    assert_eq!(got.method, IntentMethod::Embedding);
    assert_eq!(got.intents[0].label, "horror, thriller, slasher");
    assert!(got.intents[0].weight > got.intents[1].weight);
    assert!((got.intents.iter().map(|i| i.weight).sum::<f32>() - 1.0).abs() < 1e-5);
    let p2 = Profile { interests: vec!["beauty products and cosmetics".into()], ..Default::default() };
    assert_eq!(cs.infer(&p2).unwrap().intents[0].label, "lipstick, mascara, makeup");
    // the second ask is served from the cache
    assert!(Arc::ptr_eq(&got, &cs.infer(&p).unwrap()));
}

#[test]
fn cold_start_needs_an_llm_or_an_encoder() {
    let cat = tiny_catalog();
    assert!(matches!(ColdStart::new(&cat, None, None, Default::default()), Err(ColdStartError::Unavailable)));
}

fn smollm() -> Option<IntentLm> {
    crate::fetched_model(DEFAULT_INTENT_MODEL).map(|p| IntentLm::load(&p).unwrap())
}

/// Cached scoring (prompt prefilled once, labels decoded as beams) equals the
/// sum of log-probabilities from plain full forwards over prompt + label.
#[test]
fn smollm_label_scores_equal_full_forward_reference() {
    // f32 weights: the quantized products round activations to 8 bits, and
    // two orders of the same sums then differ by rounding, not by logic
    let Some(lm) = crate::fetched_model(DEFAULT_INTENT_MODEL).map(|p| IntentLm::load_dequantized(&p).unwrap()) else {
        return;
    };
    assert!(lm.chatml());
    let ids = lm.encode("<|im_start|>user\nhello<|im_end|>").unwrap();
    assert_eq!(ids[0], 1, "control tokens are single tokens: {ids:?}");
    assert_eq!(lm.encode("2024").unwrap().len(), 4, "digits split one by one");
    let fixed = lm.encode("<|im_start|>system\nYou answer in a few words.<|im_end|>\n").unwrap();
    let rest = lm
        .encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital is")
        .unwrap();
    let prompt = [fixed.clone(), rest.clone()].concat();
    // candidates sharing their first tokens share decode steps: still each
    // its own sum
    let cands: Vec<Vec<u32>> =
        [" Paris", " a large city in Europe", " Berlin", " a large city in Asia", " a large town", " Paris, France"]
            .iter()
            .map(|c| lm.encode(c).unwrap())
            .collect();
    assert_eq!(cands[1][..4], cands[3][..4]);
    let got = lm.score_ids(&fixed, &rest, &cands).unwrap();
    // the fixed part's cached keys/values give the same scores again, and
    // the same as scoring without a fixed part
    assert_eq!(lm.score_ids(&fixed, &rest, &cands).unwrap(), got);
    let whole = lm.score_ids(&[], &prompt, &cands).unwrap();
    assert!(got.iter().zip(&whole).all(|(a, b)| (a - b).abs() < 1e-4), "{got:?} vs {whole:?}");
    for (c, g) in cands.iter().zip(&got) {
        let mut seq = prompt.clone();
        let mut sum = 0.0;
        for &t in c {
            sum += lm.next_token_log_probs(&seq).unwrap()[t as usize];
            seq.push(t);
        }
        let want = sum / c.len() as f32;
        assert!((g - want).abs() < 1e-3, "{g} vs {want}");
    }
    assert!(got[0] > got[2], "Paris {} vs Berlin {}", got[0], got[2]);
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// genrec's decoder on the quantized GGUF gives the log-probabilities of
/// candle's own quantized llama, and stays as close to the f32 (dequantised)
/// model as candle's does. The reference (`testdata/smollm_candle_reference.json`)
/// was recorded with candle-transformers 0.11.1's `quantized_llama`, both
/// ways, before that dependency was dropped: the 1,000 tokens the f32 model
/// finds likeliest, and the largest quantized-vs-f32 difference over the
/// whole vocabulary.
#[test]
fn smollm_matches_candle_quantized_llama() {
    let Some(lm) = smollm() else { return };
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("testdata/smollm_candle_reference.json")).unwrap();
    let numbers =
        |k: &str| -> Vec<f32> { reference[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    let ids = lm.encode("<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n").unwrap();
    assert_eq!(serde_json::json!(ids), reference["prompt_ids"], "the tokenizer reads the prompt as before");
    let got = lm.next_token_log_probs(&ids).unwrap();
    assert_eq!(serde_json::json!(got.len()), reference["vocab"]);
    let top: Vec<usize> =
        reference["top_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let (f32_, quant) = (numbers("f32"), numbers("quantized"));
    let ours: Vec<f32> = top.iter().map(|&t| got[t]).collect();
    let (d_quant, d_ours, d_candle) = (max_diff(&ours, &quant), max_diff(&ours, &f32_), max_diff(&quant, &f32_));
    // where it matters most, the f32 model's 20 likeliest tokens
    let (t_ours, t_candle) = (max_diff(&ours[..20], &f32_[..20]), max_diff(&quant[..20], &f32_[..20]));
    let whole = reference["max_diff_quantized_vs_f32"].as_f64().unwrap() as f32;
    eprintln!(
        "max |Δ log p| over f32's top 1,000: genrec vs candle quantized {d_quant}, genrec vs f32 {d_ours}, candle quantized vs f32 {d_candle} \
         ({whole} over the vocabulary); over f32's top 20: genrec {t_ours}, candle quantized {t_candle}"
    );
    // genrec's Q4_1 path keeps activations in f32, so it lands closer to the
    // f32 model than candle's quantized one (measured: 0.19 vs 0.41 over the
    // top 1,000, 0.14 vs 0.24 over the top 20; logits scaled by 1.02 give
    // 0.34 and 0.18)
    assert!(d_ours < d_candle * 0.6, "genrec {d_ours} vs candle {d_candle} from f32");
    assert!(t_ours < t_candle * 0.7, "top 20: genrec {t_ours} vs candle {t_candle} from f32");
    assert!(d_quant < whole, "genrec {d_quant} from candle's quantized model");
    assert_eq!(top[0], (0..got.len()).max_by(|&a, &b| got[a].total_cmp(&got[b])).unwrap(), "same likeliest token");
}

#[test]
fn llm_intents_are_weighted_cached_and_calibrated() {
    let Some(lm) = smollm() else { return };
    let cat = labelled_catalog(&["horror, thriller, slasher", "animation, children, musical"]);
    let tpl = PromptTemplate::parse("movies", include_str!("../../prompts/movies.prompt")).unwrap();
    let cs = ColdStart::new(&cat, Some((lm, tpl)), None, ColdStartOptions { top: 2, ..Default::default() }).unwrap();
    assert_eq!(cs.method(), IntentMethod::Llm);
    let kid = Profile { age: Some(7), interests: vec!["cartoons".into()], ..Default::default() };
    let got = cs.infer(&kid).unwrap();
    assert_eq!(got.method, IntentMethod::Llm);
    assert_eq!(got.intents.len(), 2);
    assert!((got.intents.iter().map(|i| i.weight).sum::<f32>() - 1.0).abs() < 1e-5);
    assert_eq!(got.intents[0].label, "animation, children, musical", "{got:?}");
    assert!(Arc::ptr_eq(&got, &cs.infer(&kid).unwrap()), "cached");
}

/// With an encoder, the LLM scores only the shortlisted labels (the closest
/// to the profile's text): the others are never chosen.
#[test]
fn the_llm_scores_only_the_encoders_shortlist() {
    let Some(lm) = smollm() else { return };
    let Some(dir) = crate::fetched_model(DEFAULT_ENCODER_DIR) else { return };
    let enc = Arc::new(TextEncoder::load(&dir).unwrap());
    let cat = labelled_catalog(&["horror, thriller, slasher", "animation, children, musical"]);
    let tpl = PromptTemplate::parse("movies", include_str!("../../prompts/movies.prompt")).unwrap();
    let opts = ColdStartOptions { top: 2, shortlist: 1, ..Default::default() };
    let cs = ColdStart::new(&cat, Some((lm, tpl)), Some(enc), opts).unwrap();
    // the encoder puts horror first for this text; the LLM alone prefers animation for a 7-year-old
    let p = Profile { age: Some(7), interests: vec!["scary slasher movies".into()], ..Default::default() };
    assert_eq!(cs.infer_embedding(&p).unwrap().intents[0].label, "horror, thriller, slasher");
    let got = cs.infer_llm(&p).unwrap();
    assert_eq!(got.method, IntentMethod::Llm);
    assert_eq!(
        got.intents.iter().map(|i| i.label.as_str()).collect::<Vec<_>>(),
        ["horror, thriller, slasher"],
        "{got:?}"
    );
    assert!((got.intents[0].weight - 1.0).abs() < 1e-6);
}

/// `--intent-model` also takes a Hugging Face folder (config.json,
/// model.safetensors, tokenizer.json), e.g. a Llama written by transformers.
#[test]
fn a_hugging_face_folder_loads_as_intent_model() {
    use crate::model::{config::ModelConfig, init::init_weights};
    let dir = std::env::temp_dir().join(format!("genrec-hf-lm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let words = ["[UNK]", "likes", "horror", "comedy", "user", ":", "age"];
    let vocab: serde_json::Map<String, serde_json::Value> =
        words.iter().enumerate().map(|(i, w)| (w.to_string(), serde_json::json!(i))).collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = ModelConfig::llama(words.len(), 16, 1, 2, 1, 32);
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let w = init_weights(&cfg, 0.2, 1, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    let lm = IntentLm::load(&dir).unwrap();
    assert!(!lm.chatml());
    let got = lm.score("user likes", ": age", &[" horror".into(), " comedy likes".into()]).unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|s| s.is_finite() && *s < 0.0), "{got:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    let missing = IntentLm::load(&dir).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(missing.contains("fetch-models"), "{missing}");
}
