//! Cold-start requests: a profile with no (or a short) history. The profile's
//! intents ([`crate::coldstart`]) split the `k` items by weight; each intent's
//! share is generated inside its sub-trie (`GenRequest::within`), all shares
//! queued at once so that the scheduler batches them. With a short history the
//! history keeps a share that shrinks as the history grows, and the history is
//! the context of every share. ANN recall stands in per share (query: the
//! intent's first-level centroid) when there is no model, past the deadline, or
//! to fill a share that came back short.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::generation::{items_of, mark_sources, wait, Generation, Share};
use super::request::{Resolved, SHORT_HISTORY};
use super::serving::Serving;
use super::{
    EngineError, FallbackReason, ItemSource, LoadedModel, RecAnswer, RecItem, RecRequest, ServedCatalog, Steering,
    Strategy,
};
use crate::coldstart::flight::{follow, Ticket};
use crate::coldstart::{split_quota, ColdStart, Inferred, Profile};
use crate::generate::GenRequest;
use crate::model::Sidecar;

/// Share of a request's deadline that intent inference may take; past it the
/// sentence encoder's intents answer (the LLM's land in the cache).
const INTENT_BUDGET: f64 = 0.6;

impl Serving {
    pub(super) fn coldstart(&self) -> Option<Arc<ColdStart>> {
        self.coldstart.load_full()
    }

    /// The profile's intents within `budget` (or `deadline` when no encoder
    /// can stand in), and a note when they are not what the configuration
    /// promises (LLM failed, too slow or busy). At most
    /// `MAX_LLM_INFLIGHT` LLM inferences run, the permit taken before one
    /// starts, and one per distinct profile: a request for a profile being
    /// inferred waits for that answer.
    async fn intents_for(
        &self,
        cs: &Arc<ColdStart>,
        profile: &Profile,
        budget: Instant,
        deadline: Instant,
    ) -> Result<(Arc<Inferred>, Option<String>), EngineError> {
        if let Some(hit) = cs.cached(profile) {
            return Ok((hit, None));
        }
        if !cs.has_llm() {
            let (cs, p) = (cs.clone(), profile.clone());
            let inferred = tokio::task::spawn_blocking(move || cs.infer(&p)) // cached
                .await
                .map_err(|e| EngineError::ColdStart(e.into()))?
                .map_err(|e| EngineError::ColdStart(e.into()))?;
            let note = "no intent model is configured: intents matched to the profile with the sentence encoder";
            return Ok((inferred, Some(note.into())));
        }
        let ticket = match cs.flights().begin(profile) {
            Ticket::Busy if cs.has_encoder() => {
                let note = "intent model busy with other profiles: intents from the sentence encoder";
                return self.encoder_intents(cs, profile, note.into()).await;
            }
            // no stand-in: wait for a permit
            Ticket::Busy => cs.flights().begin_waiting(profile, deadline).await.ok_or_else(|| {
                EngineError::ColdStart("the intent model stayed busy with other profiles until the deadline".into())
            })?,
            t => t,
        };
        // without an encoder to stand in, the LLM may take the whole deadline
        let budget = if cs.has_encoder() { budget } else { deadline };
        let outcome = match ticket {
            Ticket::Lead(lead) => {
                let (cs, p) = (cs.clone(), profile.clone());
                let task = tokio::task::spawn_blocking(move || {
                    // the answer lands in the cache and reaches every follower,
                    // also when this request has stopped waiting
                    let r = cs.infer(&p).map_err(|e| e.to_string());
                    lead.finish(r.clone());
                    r
                });
                match tokio::time::timeout_at(budget.into(), task).await {
                    Ok(Ok(r)) => Some(r),
                    Ok(Err(e)) => Some(Err(format!("stopped: {e}"))),
                    Err(_) => None,
                }
            }
            Ticket::Follow(rx) => follow(rx, budget).await,
            Ticket::Busy => Some(Err("busy".into())),
        };
        let note = match outcome {
            Some(Ok(inferred)) => return Ok((inferred, None)),
            Some(Err(e)) => format!("intent model failed ({e}): intents from the sentence encoder"),
            None => "intent model over its time budget (its answer is cached for the next request): intents from the sentence encoder".to_string(),
        };
        self.encoder_intents(cs, profile, note).await
    }

    async fn encoder_intents(
        &self,
        cs: &Arc<ColdStart>,
        profile: &Profile,
        note: String,
    ) -> Result<(Arc<Inferred>, Option<String>), EngineError> {
        let (cs, p) = (cs.clone(), profile.clone());
        let inferred = tokio::task::spawn_blocking(move || cs.infer_embedding(&p))
            .await
            .map_err(|e| EngineError::ColdStart(e.into()))?
            .map_err(|e| EngineError::ColdStart(e.into()))?;
        Ok((Arc::new(inferred), Some(note)))
    }

    pub(super) async fn recommend_coldstart(
        &self,
        req: &RecRequest,
        profile: &Profile,
        cat: &Arc<ServedCatalog>,
        r: &Resolved,
        arrived: Instant,
    ) -> Result<RecAnswer, EngineError> {
        let cs = self.coldstart().ok_or_else(|| {
            EngineError::ColdStart(
                "start the server with an intent model (--intent-model) or a sentence encoder".into(),
            )
        })?;
        let timeout_ms = self.timeout_ms(req);
        let deadline = arrived + Duration::from_millis(timeout_ms);
        let budget = arrived + Duration::from_millis((timeout_ms as f64 * INTENT_BUDGET) as u64);
        let (inferred, note) = self.intents_for(&cs, profile, budget, deadline).await?;
        let model = self.model();
        let mut answer = RecAnswer::new(model.as_ref().map(|m| m.label()), r.ignored.clone());
        answer.inferred_intents = Some(inferred.intents.clone());
        answer.intent_method = Some(inferred.method);
        answer.intent_note = note;

        // the profile's share shrinks as the history grows
        let h = r.history.len().min(SHORT_HISTORY);
        let k_profile = (req.k * (SHORT_HISTORY - h)).div_ceil(SHORT_HISTORY);
        let weights: Vec<f32> = inferred.intents.iter().map(|i| i.weight).collect();
        let mut shares: Vec<Share> = inferred
            .intents
            .iter()
            .zip(split_quota(&weights, k_profile))
            .filter(|(_, k)| *k > 0)
            .map(|(i, k)| Share { intent: Some(i), k })
            .collect();
        if req.k > k_profile {
            shares.push(Share { intent: None, k: req.k - k_profile });
        }
        let model = match (req.strategy, model) {
            (Strategy::Generative, None) => return Err(EngineError::NotReady),
            (Strategy::Ann, _) => return self.ann_shares(answer, cat, r, &shares, FallbackReason::Requested),
            (Strategy::Auto, None) => return self.ann_shares(answer, cat, r, &shares, FallbackReason::NoModel),
            (_, Some(m)) => m,
        };
        let (profile_tokens, profile_note) = profile_tokens(model.model.sidecar(), profile);
        answer.profile_note = profile_note;
        let call = Steered { req, cat, r, model, deadline, profile_tokens };
        match req.steering {
            Steering::Hard => self.hard_steered(call, answer, &shares, k_profile).await,
            Steering::Soft => {
                let weight = self.opts.steering_weight * (SHORT_HISTORY - h) as f32 / SHORT_HISTORY as f32;
                self.soft_steered(call, answer, &inferred, weight).await
            }
        }
    }

    /// Soft steering: one search over the whole trie with the intents'
    /// log-prior (times `weight`) on the first level.
    async fn soft_steered(
        &self,
        call: Steered<'_>,
        mut answer: RecAnswer,
        inferred: &Inferred,
        weight: f32,
    ) -> Result<RecAnswer, EngineError> {
        let Steered { req, cat, r, model, deadline, profile_tokens } = call;
        let codes = model.model.sidecar().codebook_sizes.first().copied().unwrap_or(0) as usize;
        let gen = GenRequest {
            history: r.history.clone(),
            k: req.k,
            exclude: r.exclude.clone(),
            within: Vec::new(),
            first_level_prior: intent_prior(inferred, codes, weight),
            profile_tokens,
            max_per_intent: req.max_per_intent,
            trending: self.trending(req, r),
            ..Default::default()
        };
        // the profile shaped the answer through the prior or the profile tokens
        let source =
            if weight > 0.0 || !gen.profile_tokens.is_empty() { ItemSource::Coldstart } else { ItemSource::Generative };
        // exploration's twin search keeps the intents' prior: the new
        // intents it shows are the profile's as well as the model's choice
        let (outcome, marks) = self.generate_with_slots(gen, self.slots(req), model, cat, deadline).await?;
        let reason = match outcome {
            Generation::Done(hits, tokens) => {
                answer.tokens += tokens;
                answer.items = items_of(cat, hits, source, r.now_ms);
                mark_sources(&mut answer.items, &cat.catalog, &marks);
                FallbackReason::Fill
            }
            Generation::Stopped if req.strategy == Strategy::Generative => return Err(EngineError::Stopped),
            Generation::Failed(e) if req.strategy == Strategy::Generative => return Err(EngineError::Batch(e)),
            Generation::Late if req.strategy == Strategy::Generative => {
                return Err(EngineError::Deadline(self.timeout_ms(req)))
            }
            Generation::Late => FallbackReason::Deadline,
            Generation::Failed(_) | Generation::Stopped if Instant::now() >= deadline => FallbackReason::Deadline,
            Generation::Failed(_) | Generation::Stopped => FallbackReason::Error,
        };
        let missing = req.k.saturating_sub(answer.items.len());
        if missing == 0 || req.strategy == Strategy::Generative {
            return Ok(answer);
        }
        // ANN fills inside the profile's intents, by weight
        let weights: Vec<f32> = inferred.intents.iter().map(|i| i.weight).collect();
        let shares: Vec<Share> = inferred
            .intents
            .iter()
            .zip(split_quota(&weights, missing))
            .map(|(i, k)| Share { intent: Some(i), k })
            .collect();
        self.ann_shares(answer, cat, r, &shares, reason)
    }

    /// Hard steering: each intent's share generated inside its sub-trie, the
    /// history's share over the whole trie.
    async fn hard_steered(
        &self,
        call: Steered<'_>,
        mut answer: RecAnswer,
        shares: &[Share<'_>],
        k_profile: usize,
    ) -> Result<RecAnswer, EngineError> {
        let Steered { req, cat, r, model, deadline, profile_tokens } = call;
        let timeout_ms = self.timeout_ms(req);
        // intent shares ask for more, so that items the history's share also
        // found can be skipped without leaving the share short
        let overlap = req.k - k_profile;
        let mut pending = Vec::with_capacity(shares.len());
        for s in shares {
            let (within, extra) = match s.intent {
                Some(i) => (vec![i.code], overlap),
                None => (Vec::new(), 0),
            };
            let gen = GenRequest {
                history: r.history.clone(),
                k: s.k + extra,
                exclude: r.exclude.clone(),
                within,
                first_level_prior: Vec::new(),
                profile_tokens: profile_tokens.clone(),
                trending: self.trending(req, r),
                ..Default::default()
            };
            pending.push(self.submit(gen, model.clone(), cat, deadline)?);
        }
        let mut results = Vec::with_capacity(shares.len());
        for rx in pending {
            results.push(wait(rx, deadline).await);
        }
        // the history's share first (it is last in `shares`), then each intent's
        let mut seen = HashSet::new();
        let mut short = Vec::new();
        let mut generated: Vec<RecItem> = Vec::new();
        for (s, result) in shares.iter().zip(results).rev() {
            match result {
                Generation::Done(hits, tokens) => {
                    answer.tokens += tokens;
                    let (source, bonus) = match s.intent {
                        Some(i) => (ItemSource::Coldstart, i.weight.max(1e-6).ln()),
                        None => (ItemSource::Generative, 0.0),
                    };
                    let items: Vec<RecItem> = items_of(cat, hits, source, r.now_ms)
                        .into_iter()
                        .filter(|it| seen.insert(it.item_id.clone()))
                        .take(s.k)
                        .map(|mut it| {
                            it.score += bonus;
                            it
                        })
                        .collect();
                    if items.len() < s.k {
                        short.push(Share { intent: s.intent, k: s.k - items.len() });
                    }
                    generated.extend(items);
                }
                Generation::Stopped if req.strategy == Strategy::Generative => return Err(EngineError::Stopped),
                Generation::Failed(e) if req.strategy == Strategy::Generative => return Err(EngineError::Batch(e)),
                Generation::Late if req.strategy == Strategy::Generative => {
                    return Err(EngineError::Deadline(timeout_ms))
                }
                Generation::Failed(_) | Generation::Late | Generation::Stopped => {
                    answer.fallback =
                        Some(if Instant::now() >= deadline { FallbackReason::Deadline } else { FallbackReason::Error });
                    short.push(Share { intent: s.intent, k: s.k });
                }
            }
        }
        // best (weighted) score first
        generated.sort_by(|a, b| b.score.total_cmp(&a.score));
        answer.items = generated;
        if short.is_empty() || req.strategy == Strategy::Generative {
            return Ok(answer);
        }
        let reason = answer.fallback.unwrap_or(FallbackReason::Fill);
        self.ann_shares(answer, cat, r, &short, reason)
    }
}

/// What both steering paths generate from: the request resolved against one
/// catalog, the model, the deadline.
struct Steered<'a> {
    req: &'a RecRequest,
    cat: &'a Arc<ServedCatalog>,
    r: &'a Resolved,
    model: Arc<LoadedModel>,
    deadline: Instant,
    /// The profile as the model reads it (empty: the model has no profile vocabulary).
    profile_tokens: Vec<u32>,
}

/// The profile's tokens for a model, and a note when the model reads none
/// or only part of it.
pub(super) fn profile_tokens(sidecar: &Sidecar, profile: &Profile) -> (Vec<u32>, Option<String>) {
    match sidecar.profile_prefix(&profile.features()) {
        None => (Vec::new(), Some("the model was trained without profiles (genrec train --users): the profile steers only through intents".into())),
        Some(p) if p.unknown.is_empty() => (p.tokens, None),
        Some(p) => {
            let note = format!("profile values the model was not trained on are not read: {}", p.unknown.join(", "));
            (p.tokens, Some(note))
        }
    }
}

/// Share of the uniform distribution mixed into the intents' weights before
/// their log is taken: codes outside the intents keep a finite prior.
const PRIOR_FLOOR: f32 = 0.1;

/// Soft steering's log-prior over first-level codes: `weight * ln p(code)`,
/// where `p` mixes the intents' normalised weights with `PRIOR_FLOOR` of the
/// uniform distribution. Weight 0 is all zeros (the model's own search).
pub(super) fn intent_prior(inferred: &Inferred, codes: usize, weight: f32) -> Vec<f32> {
    if codes == 0 {
        return Vec::new();
    }
    let total: f32 = inferred.intents.iter().map(|i| i.weight.max(0.0)).sum();
    let mut p = vec![PRIOR_FLOOR / codes as f32; codes];
    for i in &inferred.intents {
        if let (Some(slot), true) = (p.get_mut(i.code as usize), total > 0.0) {
            *slot += (1.0 - PRIOR_FLOOR) * i.weight.max(0.0) / total;
        }
    }
    p.into_iter().map(|x| weight * x.ln()).collect()
}
