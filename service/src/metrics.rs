//! Prometheus metrics through the `metrics` facade and `metrics-exporter-prometheus`: this
//! module installs the process's recorder, names the histogram buckets and describes every
//! series; the model thread (mrl-core) and the HTTP guard record into it.
//!
//! Series: `mrl_requests_total{route,status}`, `mrl_request_duration_seconds` (histogram),
//! `mrl_batch_texts` (histogram, texts per model batch), `mrl_queue_depth` and
//! `mrl_queue_tokens` (gauges), `mrl_tokens_total`, `mrl_requests_abandoned_total`, and for
//! adaptive collections `mrl_renests_total`, `mrl_renest_failures_total`, `mrl_renest_seconds`.
//! The `mrl` binary adds the heap gauges `mrl_heap_in_use_bytes` and `mrl_heap_free_bytes`
//! (src/cli/heap.rs).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const RENEST_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process's recorder, installed on first use. The `metrics` facade has one recorder per
/// process, so servers started in one process (tests) share their series.
///
/// Errors: another recorder was installed first.
pub fn handle() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("mrl_request_duration_seconds".into()),
                    &LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("mrl_batch_texts".into()),
                        &BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("mrl_renest_seconds".into()),
                        &RENEST_BUCKETS,
                    )
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            // Histograms hold their samples until upkeep folds them into buckets; without a
            // scrape they would grow with every request.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("mrl-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
}

/// Help texts, and every series registered at zero so a scrape shows it before it moves.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("mrl_requests_total", "HTTP requests by route and status.");
    describe_histogram!(
        "mrl_request_duration_seconds",
        Unit::Seconds,
        "Request latency in seconds."
    );
    describe_histogram!("mrl_batch_texts", "Texts per model batch.");
    describe_gauge!("mrl_queue_depth", "Requests waiting for the model.");
    describe_gauge!("mrl_queue_tokens", "Token ids waiting for the model.");
    describe_gauge!(
        "mrl_store_up",
        "1 while the vector store answers (a Qdrant server is probed every 2 s), else 0."
    );
    describe_counter!("mrl_tokens_total", "Tokens embedded.");
    describe_counter!(
        "mrl_renests_total",
        "Re-nests of adaptive collections completed (a new rotation in force)."
    );
    describe_counter!(
        "mrl_renest_failures_total",
        "Re-nests that failed (the previous rotation stayed in force)."
    );
    describe_histogram!(
        "mrl_renest_seconds",
        Unit::Seconds,
        "Time of a re-nest: fit plus rewriting every point's rotated sizes."
    );
    describe_counter!(
        "mrl_requests_abandoned_total",
        "Requests dropped before their forward pass because the client had gone away."
    );
    metrics::counter!("mrl_tokens_total").absolute(0);
    metrics::counter!("mrl_renests_total").absolute(0);
    metrics::counter!("mrl_renest_failures_total").absolute(0);
    metrics::counter!("mrl_requests_abandoned_total").absolute(0);
    metrics::gauge!("mrl_queue_depth").set(0.0);
    metrics::gauge!("mrl_queue_tokens").set(0.0);
}

/// Records one answered request.
pub fn request(route: &str, status: u16, seconds: f64) {
    metrics::counter!("mrl_requests_total", "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("mrl_request_duration_seconds").record(seconds);
}
