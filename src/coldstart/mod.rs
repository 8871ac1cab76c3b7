//! Cold start: a new user's intents from registration data alone.
//!
//! The catalog's first-level semantic-ID clusters carry labels
//! ([`crate::catalog::intents`]). A small instruction-tuned LLM reads a prompt
//! built from the user's profile ([`prompt`]) and scores every label by its
//! log-likelihood as the answer ([`llm`]); the best few, with softmax weights,
//! are the user's intents. Generation is then constrained to the sub-tries of
//! those intents, k items spread over them by weight (the pattern of Google's
//! LLM-driven interest exploration: the LLM picks clusters, the recommender
//! picks items inside them). Without an LLM, the profile text is matched against
//! the labels with the sentence encoder instead. Answers are cached by profile.

pub mod flight;
pub mod gguf;
pub mod llm;
pub mod prompt;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::catalog::embed::TextEncoder;
use crate::catalog::{Catalog, Intent};
use flight::Flights;
pub use llm::IntentLm;
pub use prompt::PromptTemplate;

/// Where `scripts/fetch-models.sh` puts SmolLM2, relative to the repo root.
pub const DEFAULT_INTENT_MODEL: &str = ".models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Profiles whose intents are kept.
const CACHE_SIZE: usize = 10_000;
/// LLM inferences run at once; more profiles meanwhile get the encoder's
/// intents (each inference takes seconds of CPU: an unbounded pile-up would
/// slow every request).
const MAX_LLM_INFLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ColdStartError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("prompt template {0}")]
    Template(String),
    #[error("intent model: {0}")]
    Model(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("cold start needs an intent model or a sentence encoder; neither is loaded")]
    Unavailable,
    #[error("the catalog has no intents")]
    NoIntents,
}

impl From<crate::model::ModelError> for ColdStartError {
    fn from(e: crate::model::ModelError) -> Self {
        ColdStartError::Model(e.to_string())
    }
}

/// What a user gave at sign-up. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupation: Option<String>,
    /// Declared interests, free text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interests: Vec<String>,
    /// Sign-up channel (e.g. "search ad", "friend referral").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl Profile {
    /// The field names, in the order [`Profile::describe`] lists them.
    pub const FIELDS: [&'static str; 7] =
        ["age", "gender", "country", "language", "occupation", "interests", "channel"];

    /// One profile field as text, if given.
    pub fn field(&self, name: &str) -> Option<String> {
        let s = |v: &Option<String>| v.as_ref().map(|x| x.trim().to_string()).filter(|x| !x.is_empty());
        match name {
            "age" => self.age.map(|a| a.to_string()),
            "gender" => s(&self.gender),
            "country" => s(&self.country),
            "language" => s(&self.language),
            "occupation" => s(&self.occupation),
            "interests" => Some(self.interests.join(", ")).filter(|x| !x.trim().is_empty()),
            "channel" => s(&self.channel),
            _ => None,
        }
    }

    /// The given fields as `name: value` lines.
    pub fn describe(&self) -> String {
        let lines: Vec<String> =
            Self::FIELDS.iter().filter_map(|f| self.field(f).map(|v| format!("{f}: {v}"))).collect();
        if lines.is_empty() {
            "nothing given".into()
        } else {
            lines.join("\n")
        }
    }

    /// The given fields on one line, `name: value; ...` (an LLM-layout
    /// model's `{profile}` slot).
    pub fn describe_inline(&self) -> String {
        let fields: Vec<String> =
            Self::FIELDS.iter().filter_map(|f| self.field(f).map(|v| format!("{f}: {v}"))).collect();
        fields.join("; ")
    }

    pub fn is_empty(&self) -> bool {
        Self::FIELDS.iter().all(|f| self.field(f).is_none())
    }

    /// The profile as the generative model's features (its profile tokens,
    /// [`crate::model::profile_vocab`]): `age:<bracket>`, `gender:<value>`,
    /// ..., one `interest:<value>` per interest; values trimmed and lower-cased.
    pub fn features(&self) -> Vec<String> {
        let norm = |v: &str| v.trim().to_lowercase();
        let mut out = Vec::new();
        if let Some(a) = self.age {
            out.push(format!("age:{}", AGE_BRACKETS[age_bracket(a)]));
        }
        for (name, v) in [
            ("gender", &self.gender),
            ("country", &self.country),
            ("language", &self.language),
            ("occupation", &self.occupation),
            ("channel", &self.channel),
        ] {
            if let Some(v) = v.as_deref().map(norm).filter(|v| !v.is_empty()) {
                out.push(format!("{name}:{v}"));
            }
        }
        out.extend(self.interests.iter().map(|i| norm(i)).filter(|i| !i.is_empty()).map(|i| format!("interest:{i}")));
        out
    }

    /// Field problems, as `(field, message)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.age.is_some_and(|a| a > 130) {
            return Err(("profile.age", "age must be between 0 and 130".into()));
        }
        let long = |v: &str| v.chars().count() > 200;
        if [&self.gender, &self.country, &self.language, &self.occupation, &self.channel]
            .iter()
            .any(|v| v.as_deref().is_some_and(long))
            || self.interests.iter().any(|i| long(i))
        {
            return Err(("profile", "profile values are limited to 200 characters".into()));
        }
        if self.interests.len() > 20 {
            return Err(("profile.interests", "at most 20 interests".into()));
        }
        Ok(())
    }
}

/// Age brackets of MovieLens-1M's sign-up form, as profile features name them.
pub const AGE_BRACKETS: [&str; 7] = ["under-18", "18-24", "25-34", "35-44", "45-49", "50-55", "56-plus"];

/// Index in [`AGE_BRACKETS`] of an age.
pub fn age_bracket(age: u32) -> usize {
    match age {
        0..=17 => 0,
        18..=24 => 1,
        25..=34 => 2,
        35..=44 => 3,
        45..=49 => 4,
        50..=55 => 5,
        _ => 6,
    }
}

/// One inferred intent.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct IntentWeight {
    /// First semantic-ID code.
    pub code: u32,
    pub label: String,
    pub weight: f32,
}

/// The intents of a profile and how they were found.
#[derive(Debug, Clone, Serialize)]
pub struct Inferred {
    pub intents: Vec<IntentWeight>,
    pub method: IntentMethod,
}

/// How a profile's intents are inferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntentMethod {
    /// The intent LLM scores the catalog's intent labels given the profile.
    Llm,
    /// The profile's text embedding is matched to the intents' centroids.
    Embedding,
}

impl IntentMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentMethod::Llm => "llm",
            IntentMethod::Embedding => "embedding",
        }
    }
}

/// Tuning of intent inference.
#[derive(Debug, Clone)]
pub struct ColdStartOptions {
    /// Intents kept per profile.
    pub top: usize,
    /// Softmax temperature over LLM scores (mean log-probability per token).
    pub temperature: f32,
    /// Softmax temperature over embedding cosines.
    pub embedding_temperature: f32,
    /// Subtract this share of each label's score under an empty profile
    /// (contextual calibration: removes the model's prior for a label).
    pub calibration: f32,
    /// With a sentence encoder, the LLM scores only the labels closest to the
    /// profile's text, this many (0: every label). The LLM's cost grows with
    /// the labels it decodes; the encoder's cosine is a cheap first cut.
    pub shortlist: usize,
}

/// Default of [`ColdStartOptions::shortlist`].
pub const DEFAULT_SHORTLIST: usize = 8;

impl Default for ColdStartOptions {
    fn default() -> Self {
        ColdStartOptions {
            top: 3,
            temperature: 0.5,
            embedding_temperature: 0.05,
            calibration: 1.0,
            shortlist: DEFAULT_SHORTLIST,
        }
    }
}

struct LmScorer {
    lm: IntentLm,
    template: PromptTemplate,
    /// Label scores under the empty profile (computed on first use).
    prior: OnceLock<Vec<f32>>,
}

/// Intent inference for one catalog.
pub struct ColdStart {
    intents: Vec<Intent>,
    catalog_name: String,
    lm: Option<LmScorer>,
    encoder: Option<(Arc<TextEncoder>, Vec<f32>)>,
    opts: ColdStartOptions,
    cache: Mutex<lru::LruCache<Profile, Arc<Inferred>>>,
    /// LLM inferences running: at most [`MAX_LLM_INFLIGHT`], one per profile.
    flights: Arc<Flights<Profile, Arc<Inferred>>>,
    /// LLM inferences run so far (the calibration prior aside).
    llm_runs: AtomicU64,
}

impl ColdStart {
    /// Sets up inference over `catalog`'s intents with an LLM and its prompt
    /// template, a sentence encoder, or both (the LLM is used when present).
    pub fn new(
        catalog: &Catalog,
        lm: Option<(IntentLm, PromptTemplate)>,
        encoder: Option<Arc<TextEncoder>>,
        opts: ColdStartOptions,
    ) -> Result<Self, ColdStartError> {
        if catalog.intents().is_empty() {
            return Err(ColdStartError::NoIntents);
        }
        if lm.is_none() && encoder.is_none() {
            return Err(ColdStartError::Unavailable);
        }
        let intents = catalog.intents().to_vec();
        let encoder = match encoder {
            Some(enc) => {
                let labels: Vec<String> = intents.iter().map(|i| i.label.clone()).collect();
                let vecs = enc.embed(&labels, 64, |_, _| {})?;
                Some((enc, vecs))
            }
            None => None,
        };
        let cap = NonZeroUsize::new(CACHE_SIZE).unwrap_or(NonZeroUsize::MIN);
        Ok(ColdStart {
            intents,
            catalog_name: catalog.manifest().name.clone(),
            lm: lm.map(|(lm, template)| LmScorer { lm, template, prior: OnceLock::new() }),
            encoder,
            opts,
            cache: Mutex::new(lru::LruCache::new(cap)),
            flights: Flights::new(MAX_LLM_INFLIGHT),
            llm_runs: AtomicU64::new(0),
        })
    }

    pub fn intents(&self) -> &[Intent] {
        &self.intents
    }

    /// Whether the sentence encoder can stand in for the LLM.
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// The sentence encoder, if one is loaded.
    pub fn encoder(&self) -> Option<Arc<TextEncoder>> {
        self.encoder.as_ref().map(|(e, _)| e.clone())
    }

    /// Whether an intent LLM is loaded.
    pub fn has_llm(&self) -> bool {
        self.lm.is_some()
    }

    /// LLM inferences run so far, one per profile (the calibration prior aside).
    pub fn llm_inferences(&self) -> u64 {
        self.llm_runs.load(Ordering::Relaxed)
    }

    /// The running LLM inferences: take a ticket before starting one.
    pub fn flights(&self) -> &Arc<Flights<Profile, Arc<Inferred>>> {
        &self.flights
    }

    /// The LLM when an intent model is loaded, else embeddings.
    pub fn method(&self) -> IntentMethod {
        if self.lm.is_some() {
            IntentMethod::Llm
        } else {
            IntentMethod::Embedding
        }
    }

    /// Computes what the first request would otherwise wait for (the LLM's
    /// label scores under an empty profile, used for calibration).
    pub fn warm(&self) -> Result<(), ColdStartError> {
        if let Some(s) = &self.lm {
            if self.opts.calibration != 0.0 {
                self.prior(s)?;
            }
        }
        Ok(())
    }

    /// Label scores under the empty profile, computed once.
    fn prior<'a>(&self, s: &'a LmScorer) -> Result<&'a Vec<f32>, ColdStartError> {
        if let Some(p) = s.prior.get() {
            return Ok(p);
        }
        let all: Vec<usize> = (0..self.intents.len()).collect();
        let p = self.llm_scores(s, &Profile::default(), &all)?;
        Ok(s.prior.get_or_init(|| p))
    }

    /// The cached intents of a profile, if any.
    pub fn cached(&self, profile: &Profile) -> Option<Arc<Inferred>> {
        self.cache.lock().ok()?.get(profile).cloned()
    }

    /// The intents of a profile: from the cache, else the LLM (or the encoder
    /// without one). Blocking: seconds on a CPU for an uncached profile.
    pub fn infer(&self, profile: &Profile) -> Result<Arc<Inferred>, ColdStartError> {
        if let Some(hit) = self.cached(profile) {
            return Ok(hit);
        }
        let inferred = Arc::new(match self.lm {
            Some(_) => self.infer_llm(profile)?,
            None => self.infer_embedding(profile)?,
        });
        if let Ok(mut c) = self.cache.lock() {
            c.put(profile.clone(), inferred.clone());
        }
        Ok(inferred)
    }

    /// LLM scores of the labels `which` (indices into the intents) for a
    /// profile, before calibration.
    fn llm_scores(&self, s: &LmScorer, profile: &Profile, which: &[usize]) -> Result<Vec<f32>, ColdStartError> {
        let listing: Vec<String> = self.intents.iter().map(|i| format!("- {}", i.label)).collect();
        let ctx = prompt::Context { intents: &listing.join("\n"), catalog: &self.catalog_name };
        let (fixed, rest) = s.template.render_split(profile, &ctx, s.lm.chatml());
        let cands: Vec<String> = which.iter().map(|&i| s.template.continuation(&self.intents[i].label)).collect();
        s.lm.score(&fixed, &rest, &cands)
    }

    /// The labels the LLM scores for a profile: the `shortlist` closest to its
    /// text by the encoder, or all of them.
    fn shortlist(&self, profile: &Profile) -> Result<Vec<usize>, ColdStartError> {
        let n = self.intents.len();
        if self.opts.shortlist == 0 || self.opts.shortlist >= n || self.encoder.is_none() {
            return Ok((0..n).collect());
        }
        let cos = self.embedding_scores(profile)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| cos[b].total_cmp(&cos[a]).then(a.cmp(&b)));
        order.truncate(self.opts.shortlist);
        order.sort_unstable();
        Ok(order)
    }

    /// Intents by the LLM's calibrated label scores (labels outside the
    /// shortlist score -inf and are never chosen).
    pub fn infer_llm(&self, profile: &Profile) -> Result<Inferred, ColdStartError> {
        let s = self.lm.as_ref().ok_or(ColdStartError::Unavailable)?;
        self.llm_runs.fetch_add(1, Ordering::Relaxed);
        let which = self.shortlist(profile)?;
        let got = self.llm_scores(s, profile, &which)?;
        let mut scores = vec![f32::NEG_INFINITY; self.intents.len()];
        for (&i, x) in which.iter().zip(got) {
            scores[i] = x;
        }
        if self.opts.calibration != 0.0 {
            let prior = self.prior(s)?;
            scores.iter_mut().zip(prior).for_each(|(x, p)| *x -= self.opts.calibration * p);
        }
        Ok(Inferred { intents: self.top(&scores, self.opts.temperature), method: IntentMethod::Llm })
    }

    /// Cosine of the profile's text with each label.
    fn embedding_scores(&self, profile: &Profile) -> Result<Vec<f32>, ColdStartError> {
        let (enc, vecs) = self.encoder.as_ref().ok_or(ColdStartError::Unavailable)?;
        let text = profile.describe().replace('\n', "; ");
        let v = enc.embed(&[text], 1, |_, _| {})?;
        let d = enc.dim();
        Ok(vecs.chunks(d).map(|l| l.iter().zip(&v).map(|(a, b)| a * b).sum()).collect())
    }

    /// Intents by cosine between the profile's text and the labels.
    pub fn infer_embedding(&self, profile: &Profile) -> Result<Inferred, ColdStartError> {
        let scores = self.embedding_scores(profile)?;
        Ok(Inferred { intents: self.top(&scores, self.opts.embedding_temperature), method: IntentMethod::Embedding })
    }

    /// The `top` best intents with softmax weights at `temperature`.
    fn top(&self, scores: &[f32], temperature: f32) -> Vec<IntentWeight> {
        let mut order: Vec<usize> = (0..scores.len()).filter(|&i| scores[i].is_finite()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order.truncate(self.opts.top.max(1));
        let best = order.first().map_or(0.0, |&i| scores[i]);
        let t = temperature.max(1e-6);
        let e: Vec<f32> = order.iter().map(|&i| ((scores[i] - best) / t).exp()).collect();
        let z: f32 = e.iter().sum::<f32>().max(1e-30);
        order
            .iter()
            .zip(e)
            .map(|(&i, x)| IntentWeight {
                code: self.intents[i].code,
                label: self.intents[i].label.clone(),
                weight: x / z,
            })
            .collect()
    }
}

/// Splits `k` items over weights by largest remainder (sums to `k`).
pub fn split_quota(weights: &[f32], k: usize) -> Vec<usize> {
    let total: f32 = weights.iter().sum();
    if weights.is_empty() || total <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f32> = weights.iter().map(|w| w / total * k as f32).collect();
    let mut q: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - q[b] as f32).total_cmp(&(exact[a] - q[a] as f32)).then(a.cmp(&b)));
    let mut left = k.saturating_sub(q.iter().sum());
    for &i in order.iter().cycle().take(left.max(1) * weights.len()) {
        if left == 0 {
            break;
        }
        q[i] += 1;
        left -= 1;
    }
    q
}

#[cfg(test)]
mod tests;
