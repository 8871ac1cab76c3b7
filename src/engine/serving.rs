//! The serving side of the engine: what requests read and nothing else. The
//! model and the catalog in service sit behind atomic pointers that the
//! changing side ([`super::changes`]) swaps; a request takes both once at its
//! start and keeps them to its end. Here: resolving a request against the
//! catalog, generation through the batching scheduler, per-request deadlines,
//! and ANN recall where the strategy allows it (no model, deadline passed,
//! or too few items after exclusions). Cold start, personalized search and
//! exploration are in [`super::coldstart`], [`super::search`] and
//! [`super::explore`].

use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::generation::{items_of, mark_sources, Generation, Share};
use super::request::{Resolved, ValidRequest, SHORT_HISTORY};
use super::scheduler::{self, Job, Scheduler, SubmitError};
use super::state::{LoadedModel, ServedCatalog};
use super::NewItemScoring;
use super::{EngineError, EngineOptions, FallbackReason, ItemSource, RecAnswer, RecItem, RecRequest, Strategy};
use crate::catalog::embed::TextEncoder;
use crate::catalog::Catalog;
use crate::coldstart::ColdStart;
use crate::generate::GenRequest;
use crate::model::PromptText;

/// What requests read: the model and catalog in service, cold start, the
/// sentence encoder (loaded on first use), and the batching scheduler.
pub struct Serving {
    /// The model in service (none until one is installed).
    pub(super) model: ArcSwapOption<LoadedModel>,
    /// The catalog view requests take (published once its edits are durable).
    pub(super) catalog: ArcSwap<ServedCatalog>,
    pub(super) coldstart: ArcSwapOption<ColdStart>,
    /// The sentence encoder (queries, texts of new items), loaded on first use.
    encoder: Mutex<Option<Arc<TextEncoder>>>,
    pub(super) scheduler: Scheduler,
    pub(super) opts: EngineOptions,
    /// Decayed engagement counts per item and prefix (`POST /v1/events`).
    pub(super) engagement: Arc<crate::catalog::engagement::Engagement>,
}

impl Serving {
    pub(super) fn new(catalog: Arc<ServedCatalog>, scheduler: Scheduler, opts: EngineOptions) -> Self {
        let engagement = Arc::new(
            crate::catalog::engagement::Engagement::new(
                &catalog.catalog.manifest().codebook_sizes,
                opts.events_half_life_ms,
                opts.clock.now_ms(),
            )
            .with_exposure(opts.trending_exposure),
        );
        Serving {
            engagement,
            model: ArcSwapOption::empty(),
            catalog: ArcSwap::new(catalog),
            coldstart: ArcSwapOption::empty(),
            encoder: Mutex::new(None),
            scheduler,
            opts,
        }
    }

    /// The model in service, if any.
    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        self.model.load_full()
    }

    /// The catalog in service.
    pub fn catalog(&self) -> Arc<ServedCatalog> {
        self.catalog.load_full()
    }

    /// The sentence encoder (`--encoder`), loaded on first use; an error
    /// names the `text` field (the only input that needs it).
    pub(super) fn encoder(&self) -> Result<Arc<TextEncoder>, EngineError> {
        let mut slot = self.encoder.lock();
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let dir = self.opts.encoder.as_ref().ok_or_else(|| EngineError::InvalidField {
            field: "text",
            message: "no sentence encoder is configured: send an embedding".into(),
        })?;
        let enc = TextEncoder::load(dir).map_err(|e| EngineError::InvalidField {
            field: "text",
            message: format!(
                "the sentence encoder is not available ({e}): run scripts/fetch-models.sh or send an embedding"
            ),
        })?;
        let enc = Arc::new(enc);
        *slot = Some(enc.clone());
        Ok(enc)
    }

    /// Uses `enc` as the sentence encoder (one copy in memory with cold start's).
    pub(super) fn share_encoder(&self, enc: Arc<TextEncoder>) {
        *self.encoder.lock() = Some(enc);
    }

    /// The request's history against `cat`: ids the catalog lacks are set
    /// aside (all of them: a 422, unless a profile or query carries it).
    pub(super) fn resolve(&self, cat: &Catalog, req: &RecRequest) -> Result<Resolved, EngineError> {
        let mut history = Vec::with_capacity(req.history.len());
        let mut ignored = Vec::new();
        for id in &req.history {
            match cat.index_of(id) {
                Some(i) => history.push(i),
                None => ignored.push(id.clone()),
            }
        }
        if history.is_empty() && req.profile.is_none() && req.query.is_none() {
            return Err(EngineError::InvalidField {
                field: "history",
                message: format!("none of the {} history item ids is in the catalog", req.history.len()),
            });
        }
        let mut exclude: HashSet<u32> =
            if req.exclude_history { history.iter().copied().collect() } else { HashSet::new() };
        // items past their expiry that the trie still holds (until the next
        // edit record) are excluded from every path: generation, ANN, search
        let now_ms = self.opts.clock.now_ms();
        exclude.extend(cat.expired_in_trie(now_ms));
        Ok(Resolved { history, exclude, ignored, now_ms })
    }

    /// Serves one request: generation through the batching queue, ANN recall
    /// where the strategy allows it; a profile with no or a short history goes
    /// through cold start.
    pub async fn recommend(&self, req: ValidRequest<'_>) -> Result<RecAnswer, EngineError> {
        let req = req.get();
        let arrived = Instant::now();
        let cat = self.catalog();
        let r = self.resolve(&cat.catalog, req)?;
        let model = self.model();
        // an LLM-layout model whose prompt has a slot for the query (the
        // profile) reads it itself, instead of search (cold start)
        let reads = model.as_ref().map(|m| PromptReads::of(m.model.lead())).unwrap_or_default();
        if let Some(query) = req.query.as_ref().filter(|_| !reads.query) {
            return self.recommend_search(req, query, &cat, &r, arrived).await;
        }
        let short = r.history.len() < SHORT_HISTORY;
        if let Some(profile) = req.profile.as_ref().filter(|_| short && !reads.profile) {
            return self.recommend_coldstart(req, profile, &cat, &r, arrived).await;
        }
        let mut answer = RecAnswer::new(model.as_ref().map(|m| m.label()), r.ignored.clone());
        let model = match (req.strategy, model) {
            (Strategy::Ann, _) => return self.fill(answer, &cat, &r, req.k, FallbackReason::Requested),
            (Strategy::Generative, None) => return Err(EngineError::NotReady),
            (Strategy::Auto, None) => return self.fill(answer, &cat, &r, req.k, FallbackReason::NoModel),
            (_, Some(m)) => m,
        };
        let timeout_ms = self.timeout_ms(req);
        let deadline = arrived + Duration::from_millis(timeout_ms);
        let gen = GenRequest {
            history: r.history.clone(),
            k: req.k,
            exclude: r.exclude.clone(),
            max_per_intent: req.max_per_intent,
            trending: self.trending(req, &r),
            prompt: PromptText {
                profile: req.profile.as_ref().filter(|_| reads.profile).map(|p| p.describe_inline()),
                query: req.query.clone().filter(|_| reads.query),
            },
            ..Default::default()
        };
        if model.model.lead().vocab.text_layout().is_some() {
            // a prompt the model has no room for fails here, alone (the batch
            // renders it again against its own catalog view: microseconds
            // beside the model, and never a stale history)
            let field = if gen.prompt.query.is_some() { "query" } else { "history" };
            crate::generate::request_input(model.model.lead(), &cat.catalog, &gen)
                .map_err(|e| EngineError::InvalidField { field, message: e.to_string() })?;
        }
        let (outcome, marks) = self.generate_with_slots(gen, self.slots(req), model, &cat, deadline).await?;
        let hits = match outcome {
            Generation::Done(hits, tokens) => {
                answer.tokens = tokens;
                hits
            }
            Generation::Failed(e) if req.strategy == Strategy::Auto => {
                tracing::warn!(error = %e, "generation failed; answering from ANN recall");
                return self.fill(answer, &cat, &r, req.k, FallbackReason::Error);
            }
            Generation::Failed(e) => return Err(EngineError::Batch(e)),
            Generation::Stopped if req.strategy == Strategy::Auto => {
                tracing::warn!("the batching worker dropped the request; answering from ANN recall");
                return self.fill(answer, &cat, &r, req.k, FallbackReason::Error);
            }
            Generation::Stopped => return Err(EngineError::Stopped),
            Generation::Late if req.strategy == Strategy::Auto => {
                return self.fill(answer, &cat, &r, req.k, FallbackReason::Deadline)
            }
            Generation::Late => return Err(EngineError::Deadline(timeout_ms)),
        };
        answer.items = items_of(&cat, hits, ItemSource::Generative, r.now_ms);
        mark_sources(&mut answer.items, &cat.catalog, &marks);
        if answer.items.len() < req.k {
            // ANN would not keep to the cap: a capped answer says why it is short
            if let Some(cap) = req.max_per_intent {
                answer.note = Some(format!("{} items within max_per_intent {cap}", answer.items.len()));
            } else if req.strategy == Strategy::Auto {
                return self.fill(answer, &cat, &r, req.k, FallbackReason::Fill);
            }
        }
        Ok(answer)
    }

    /// The request's trending prior (its weight, else the server's), at
    /// the request's time; `None` when the weight is 0.
    pub(super) fn trending(&self, req: &RecRequest, r: &Resolved) -> Option<crate::generate::trending::Trending> {
        let weight = req.trending.unwrap_or(self.opts.trending_weight);
        (weight != 0.0).then(|| crate::generate::trending::Trending {
            weight,
            rates: self.engagement.clone(),
            now_ms: r.now_ms,
        })
    }

    pub(super) fn timeout_ms(&self, req: &RecRequest) -> u64 {
        req.timeout_ms.unwrap_or(self.opts.timeout.as_millis() as u64)
    }

    /// Queues one generation; the receiver gets its result.
    pub(super) fn submit(
        &self,
        mut req: GenRequest,
        model: Arc<LoadedModel>,
        cat: &Arc<ServedCatalog>,
        deadline: Instant,
    ) -> Result<tokio::sync::oneshot::Receiver<scheduler::JobResult>, EngineError> {
        // the server's rule for items added since the catalog was indexed
        req.new_items_as_siblings = self.opts.new_items == NewItemScoring::Sibling;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job { req, model, catalog: cat.clone(), deadline, enqueued: Instant::now(), reply: tx };
        match self.scheduler.submit(job) {
            Ok(()) => Ok(rx),
            Err(SubmitError::Full) => Err(EngineError::Overloaded),
            Err(SubmitError::Stopped) => Err(EngineError::Stopped),
        }
    }

    /// Completes `answer` to `k` items from ANN recall by the history, never
    /// repeating an item already in it or excluded.
    pub(super) fn fill(
        &self,
        answer: RecAnswer,
        cat: &ServedCatalog,
        r: &Resolved,
        k: usize,
        reason: FallbackReason,
    ) -> Result<RecAnswer, EngineError> {
        let want = k.saturating_sub(answer.items.len());
        self.ann_shares(answer, cat, r, &[Share { intent: None, k: want }], reason)
    }

    /// Answers shares from ANN recall: an intent's share by its first-level
    /// centroid, among the items under its code; the history's share by the
    /// history. Never repeats an item already in `answer` or excluded; sets
    /// `fallback` to `reason` (for `fill`, only when it added something).
    pub(super) fn ann_shares(
        &self,
        mut answer: RecAnswer,
        cat: &ServedCatalog,
        r: &Resolved,
        shares: &[Share],
        reason: FallbackReason,
    ) -> Result<RecAnswer, EngineError> {
        let c = &cat.catalog;
        let mut taken: HashSet<u32> = r.exclude.clone();
        taken.extend(answer.items.iter().filter_map(|it| c.index_of(&it.item_id)));
        let mut added = 0;
        for s in shares {
            let hits = match s.intent {
                Some(i) => {
                    let q = c.intent_centroid(i.code);
                    cat.ann.nearest(c, &q, s.k, |x| !taken.contains(&x) && c.sid(x)[0] == i.code)?
                }
                None if !r.history.is_empty() => cat.ann.recall(c, &r.history, s.k, &taken)?,
                None => Vec::new(),
            };
            for (item, score) in hits {
                taken.insert(item);
                added += 1;
                answer.items.push(RecItem::new(c, item, score, ItemSource::Ann));
            }
        }
        if added > 0 || reason != FallbackReason::Fill {
            answer.fallback = Some(reason);
        }
        Ok(answer)
    }
}

/// Which of a request's texts the model's prompt reads (an LLM layout with
/// `{profile}` or `{query}` slots; genrec's own layout reads neither).
#[derive(Debug, Clone, Copy, Default)]
struct PromptReads {
    profile: bool,
    query: bool,
}

impl PromptReads {
    fn of(model: &crate::model::Model) -> Self {
        use crate::model::llm::Slot;
        match model.vocab.text_layout() {
            Some(t) => PromptReads { profile: t.template.has(Slot::Profile), query: t.template.has(Slot::Query) },
            None => PromptReads::default(),
        }
    }
}
