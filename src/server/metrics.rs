//! Prometheus metrics through the `metrics` facade: one process-wide recorder,
//! rendered by `GET /metrics`. Names follow serving engines: queue depth,
//! batch sizes, queue wait, end-to-end latency, requests by outcome, tokens.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::BatchObserver;

pub const REQUESTS: &str = "genrec_requests_total";
pub const LATENCY: &str = "genrec_request_duration_seconds";
pub const QUEUE_WAIT: &str = "genrec_queue_wait_seconds";
pub const QUEUE_DEPTH: &str = "genrec_queue_depth";
pub const BATCH_SIZE: &str = "genrec_batch_size";
pub const TOKENS: &str = "genrec_generated_tokens_total";
pub const ITEMS: &str = "genrec_recommended_items_total";
pub const MODEL_INFO: &str = "genrec_model_info";
pub const CATALOG_ITEMS: &str = "genrec_catalog_items";
/// Live catalog edits applied (upserts and deletes).
pub const CATALOG_EDITS: &str = "genrec_catalog_edits_total";
/// Engagement events accepted by `POST /v1/events`.
pub const EVENTS: &str = "genrec_events_total";
/// Panics caught in batched generation (each failed one batch).
pub const WORKER_PANICS: &str = "genrec_worker_panics_total";
/// Cold-start answers by how their intents were found (`llm`, `embedding`).
pub const COLDSTART: &str = "genrec_coldstart_requests_total";
/// Replica feed (`--feed`): the position applied (its ms part), how far
/// behind the feed's newest entry, whether connected, records skipped,
/// model changes refused here.
pub const FEED_POSITION: &str = "genrec_feed_position";
pub const FEED_LAG: &str = "genrec_feed_lag_seconds";
pub const FEED_UP: &str = "genrec_feed_up";
pub const FEED_SKIPPED: &str = "genrec_feed_skipped_total";
pub const FEED_MODEL_REFUSED: &str = "genrec_feed_model_refused";
pub const FEED_MODEL_REFUSALS: &str = "genrec_feed_model_refusals_total";
/// LLM intent inferences run (one per distinct uncached profile).
pub const COLDSTART_LLM_RUNS: &str = "genrec_coldstart_llm_inferences_total";

const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often the recorder's upkeep folds recorded histogram samples into
/// their buckets. Until it runs, every sample is kept (8 bytes each, three per
/// request): without upkeep a server that nobody scrapes grew by 4 MB a minute
/// at 1,200 requests/s.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the recorder once per process, starts its upkeep thread, and
/// returns its handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_BUCKETS))
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            start_upkeep(handle.clone());
            // another recorder may already be installed (e.g. by an embedding
            // program): then our handle renders nothing, which is harmless
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_counter!(
                REQUESTS,
                "Recommendation requests by outcome (ok, fallback, rejected, invalid, unavailable, error)"
            );
            metrics::describe_histogram!(LATENCY, "End-to-end latency of recommendation requests");
            metrics::describe_histogram!(QUEUE_WAIT, "Time requests waited in the queue before their batch ran");
            metrics::describe_gauge!(QUEUE_DEPTH, "Requests waiting for generation");
            metrics::describe_histogram!(BATCH_SIZE, "Requests per batched generation");
            metrics::describe_counter!(TOKENS, "Semantic-ID tokens decoded by beam search");
            metrics::describe_counter!(ITEMS, "Items returned in answers");
            metrics::describe_gauge!(MODEL_INFO, "The model in service (value 1; labels name, version)");
            metrics::describe_gauge!(CATALOG_ITEMS, "Items the catalog serves");
            metrics::describe_counter!(
                COLDSTART_LLM_RUNS,
                "LLM intent inferences run (one per distinct uncached profile, at most two at once)"
            );
            metrics::describe_counter!(
                WORKER_PANICS,
                "Panics caught in batched generation; each failed one batch, the worker went on"
            );
            metrics::describe_counter!(CATALOG_EDITS, "Live catalog edits applied (upserts and deletes)");
            metrics::describe_counter!(EVENTS, "Engagement events accepted (POST /v1/events)");
            metrics::describe_gauge!(
                FEED_POSITION,
                "Replica feed: milliseconds part of the last applied position (a stream id)"
            );
            metrics::describe_gauge!(
                FEED_LAG,
                "Replica feed: seconds between a record's append and its application here (0 when idle)"
            );
            metrics::describe_gauge!(
                FEED_UP,
                "Replica feed: 1 while connected, 0 while down (serving the last applied state)"
            );
            metrics::describe_counter!(FEED_SKIPPED, "Replica feed: records skipped because they do not parse");
            metrics::describe_gauge!(
                FEED_MODEL_REFUSED,
                "Replica feed: 1 while the last model change from the feed was refused here"
            );
            metrics::describe_counter!(
                FEED_MODEL_REFUSALS,
                "Replica feed: model changes this replica refused (it kept its model)"
            );
            handle
        })
        .clone()
}

/// `build_recorder` leaves the upkeep to its caller (`install` would spawn it
/// on a tokio runtime, which the CLI's benches and tests may not have).
fn start_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(UPKEEP_EVERY);
        handle.run_upkeep();
    });
    if let Err(e) = spawned {
        tracing::warn!(
            "metrics upkeep thread not started ({e}): histogram samples will accumulate until /metrics is scraped"
        );
    }
}

/// Counts one finished request.
pub fn request(outcome: &'static str, seconds: f64) {
    metrics::counter!(REQUESTS, "outcome" => outcome).increment(1);
    metrics::histogram!(LATENCY, "outcome" => outcome).record(seconds);
}

/// Marks `current` as the model in service (and `old`, if any, as not).
pub fn model_swapped(old: Option<&crate::engine::ModelInfo>, current: &crate::engine::ModelInfo) {
    if let Some(o) = old {
        metrics::gauge!(MODEL_INFO, "name" => o.name.clone(), "version" => o.version.clone()).set(0.0);
    }
    metrics::gauge!(MODEL_INFO, "name" => current.name.clone(), "version" => current.version.clone()).set(1.0);
}

/// The replica feed's observer.
pub struct FeedMetrics;

impl crate::engine::replica::FeedObserver for FeedMetrics {
    fn applied(&self, position: crate::feed::Position, lag: Duration, edits: usize, served_items: usize) {
        metrics::gauge!(FEED_POSITION).set(position.ms as f64);
        metrics::gauge!(FEED_LAG).set(lag.as_secs_f64());
        metrics::gauge!(CATALOG_ITEMS).set(served_items as f64);
        if edits > 0 {
            metrics::counter!(CATALOG_EDITS).increment(edits as u64);
        }
    }

    fn connected(&self, up: bool) {
        metrics::gauge!(FEED_UP).set(if up { 1.0 } else { 0.0 });
    }

    fn skipped(&self) {
        metrics::counter!(FEED_SKIPPED).increment(1);
    }

    fn model_change(&self, old: Option<&crate::engine::ModelInfo>, new: Result<&crate::engine::ModelInfo, &str>) {
        match new {
            Ok(info) => {
                model_swapped(old, info);
                metrics::gauge!(FEED_MODEL_REFUSED).set(0.0);
            }
            Err(_) => {
                metrics::gauge!(FEED_MODEL_REFUSED).set(1.0);
                metrics::counter!(FEED_MODEL_REFUSALS).increment(1);
            }
        }
    }
}

/// The scheduler's observer.
pub struct SchedulerMetrics;

impl BatchObserver for SchedulerMetrics {
    fn queue_depth(&self, depth: usize) {
        metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
    }

    fn batch(&self, size: usize, queue_waits: &[Duration]) {
        metrics::histogram!(BATCH_SIZE).record(size as f64);
        for w in queue_waits {
            metrics::histogram!(QUEUE_WAIT).record(w.as_secs_f64());
        }
    }

    fn worker_panic(&self) {
        metrics::counter!(WORKER_PANICS).increment(1);
    }
}
