//! The API server's Prometheus metrics (`/metrics`, text format 0.0.4): requests by verb,
//! resource and code with latency histograms, open watches, and store latency by operation.
//!
//! A deliberately small registry: counters and histograms behind one mutex, rendered on
//! demand. It only records; it never decides anything.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Histogram buckets in seconds (kube-apiserver's request buckets, shortened).
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Registry {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    watches: BTreeMap<String, i64>,
    store: BTreeMap<String, Histogram>,
}

/// Shared metrics; clone freely.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Registry>>,
}

/// Counts a watch as open until dropped.
#[derive(Debug)]
pub struct WatchGuard {
    metrics: Metrics,
    resource: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut r = self.metrics.lock();
        *r.watches.entry(self.resource.clone()).or_default() -= 1;
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn observe_request(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        let mut r = self.lock();
        *r.requests
            .entry((verb.to_string(), resource.to_string(), code))
            .or_default() += 1;
        r.latency
            .entry((verb.to_string(), resource.to_string()))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_store(&self, operation: &str, elapsed: Duration) {
        self.lock()
            .store
            .entry(operation.to_string())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    pub fn watch_started(&self, resource: &str) -> WatchGuard {
        *self.lock().watches.entry(resource.to_string()).or_default() += 1;
        WatchGuard {
            metrics: self.clone(),
            resource: resource.to_string(),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let r = self.lock();
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, resource and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for ((verb, resource, code), n) in &r.requests {
            let _ = writeln!(out, "apiserver_request_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb and resource.\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, resource), h) in &r.latency {
            h.render(
                &mut out,
                "apiserver_request_duration_seconds",
                &format!("verb=\"{verb}\",resource=\"{resource}\""),
            );
        }
        out.push_str("# HELP apiserver_registered_watchers Number of currently open watches for a given resource.\n");
        out.push_str("# TYPE apiserver_registered_watchers gauge\n");
        for (resource, n) in &r.watches {
            let _ = writeln!(
                out,
                "apiserver_registered_watchers{{resource=\"{resource}\"}} {n}"
            );
        }
        out.push_str("# HELP store_request_duration_seconds Store request latency in seconds for each operation.\n");
        out.push_str("# TYPE store_request_duration_seconds histogram\n");
        for (operation, h) in &r.store {
            h.render(
                &mut out,
                "store_request_duration_seconds",
                &format!("operation=\"{operation}\""),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe_request("LIST", "pods", 200, Duration::from_millis(3));
        m.observe_request("LIST", "pods", 200, Duration::from_millis(30));
        m.observe_store("get", Duration::from_micros(50));
        let guard = m.watch_started("pods");
        let text = m.render();
        assert!(text
            .contains("apiserver_request_total{verb=\"LIST\",resource=\"pods\",code=\"200\"} 2"));
        assert!(text.contains("apiserver_request_duration_seconds_bucket{verb=\"LIST\",resource=\"pods\",le=\"0.005\"} 1"));
        assert!(text.contains("apiserver_registered_watchers{resource=\"pods\"} 1"));
        assert!(text.contains("store_request_duration_seconds_count{operation=\"get\"} 1"));
        drop(guard);
        assert!(m
            .render()
            .contains("apiserver_registered_watchers{resource=\"pods\"} 0"));
    }
}
