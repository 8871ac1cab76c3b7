//! Prometheus metrics through the `metrics` facade: one process-wide recorder,
//! rendered by `GET /metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "genrec_requests_total";
pub const LATENCY: &str = "genrec_request_duration_seconds";
pub const TOKENS: &str = "genrec_generated_tokens_total";
pub const ITEMS: &str = "genrec_recommended_items_total";
pub const MODEL_INFO: &str = "genrec_model_info";

const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder once per process and returns its handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets(&LATENCY_BUCKETS) {
                Ok(b) => b,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // another recorder may already be installed (e.g. by an embedding
            // program): then our handle renders nothing, which is harmless
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_counter!(REQUESTS, "Recommendation requests by outcome");
            metrics::describe_histogram!(LATENCY, "End-to-end latency of recommendation requests");
            metrics::describe_counter!(TOKENS, "Semantic-ID tokens decoded by beam search");
            metrics::describe_counter!(ITEMS, "Items returned in answers");
            metrics::describe_gauge!(MODEL_INFO, "The model in service (value 1)");
            handle
        })
        .clone()
}

/// Counts one finished request.
pub fn request(outcome: &'static str, seconds: f64) {
    metrics::counter!(REQUESTS, "outcome" => outcome).increment(1);
    metrics::histogram!(LATENCY, "outcome" => outcome).record(seconds);
}
