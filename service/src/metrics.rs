//! Prometheus metrics: requests by route and status, latency and batch-size histograms,
//! queue depth and tokens, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A histogram with fixed upper bounds; the last bucket is +Inf.
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum: Mutex<f64>,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: Mutex::new(0.0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        *self.sum.lock().unwrap_or_else(|e| e.into_inner()) += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = *self.sum.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub latency: Histogram,
    pub batch_size: Histogram,
    pub tokens: AtomicU64,
    /// Requests waiting for the model thread.
    pub queue_depth: AtomicUsize,
    /// Token ids waiting for the model thread, summed over the waiting requests.
    pub queue_tokens: AtomicUsize,
    /// Requests discarded before their forward pass because their client had gone away.
    pub abandoned: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(&[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            batch_size: Histogram::new(&[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
            tokens: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            queue_tokens: AtomicUsize::new(0),
            abandoned: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
        self.latency.observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP mrl_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE mrl_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "mrl_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        self.latency.render(
            &mut out,
            "mrl_request_duration_seconds",
            "Request latency in seconds.",
        );
        self.batch_size
            .render(&mut out, "mrl_batch_texts", "Texts per model batch.");
        let _ = writeln!(
            out,
            "# HELP mrl_queue_depth Requests waiting for the model.\n# TYPE mrl_queue_depth gauge\nmrl_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP mrl_queue_tokens Token ids waiting for the model.\n# TYPE mrl_queue_tokens gauge\nmrl_queue_tokens {}",
            self.queue_tokens.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP mrl_requests_abandoned_total Requests dropped before their forward pass because the client had gone away.\n# TYPE mrl_requests_abandoned_total counter\nmrl_requests_abandoned_total {}",
            self.abandoned.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP mrl_tokens_total Tokens embedded.\n# TYPE mrl_tokens_total counter\nmrl_tokens_total {}",
            self.tokens.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 2.0, 3.0, 50.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"1\"} 1"), "{s}");
        assert!(s.contains("x_bucket{le=\"10\"} 3"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 4"), "{s}");
        assert!(s.contains("x_sum 55.5") && s.contains("x_count 4"), "{s}");
    }
}
