//! Logging (`tracing`) and Prometheus metrics.
//!
//! Metric names are stable and carry their unit (`..._total`,
//! `..._seconds`). Each app builds its own [`Metrics`] (no process-global
//! registry), so tests can run several apps in one process.

use std::io::IsTerminal;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber. Safe to call more than once (later calls
/// are ignored), so tests and binaries can both call it.
pub fn init_tracing(cfg: &LogConfig) {
    let _ = init_tracing_reloadable(cfg);
}

/// Changes the log filter of a running process (`log.level` is live).
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// [`init_tracing`], returning a setter for the filter; `None` when a
/// subscriber was already installed or `GOCHAT_LOG` pins the filter.
pub fn init_tracing_reloadable(cfg: &LogConfig) -> Option<LogLevelSetter> {
    let pinned = std::env::var_os("GOCHAT_LOG").is_some();
    let filter = EnvFilter::try_from_env("GOCHAT_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let json = match cfg.format.as_str() {
        "json" => true,
        "pretty" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let setter: LogLevelSetter = if json {
        let builder = tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).with_filter_reloading();
        let handle = builder.reload_handle();
        builder.try_init().ok()?;
        Box::new(move |level| handle.reload(EnvFilter::try_new(level).map_err(|e| e.to_string())?).map_err(|e| e.to_string()))
    } else {
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_filter_reloading();
        let handle = builder.reload_handle();
        builder.try_init().ok()?;
        Box::new(move |level| handle.reload(EnvFilter::try_new(level).map_err(|e| e.to_string())?).map_err(|e| e.to_string()))
    };
    (!pinned).then_some(setter)
}

/// All metrics of one process.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub messages_sent: IntCounterVec,
    pub messages_persisted: IntCounterVec,
    pub fanout_deliveries: IntCounterVec,
    pub bus_records: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub gateway_connections: IntGaugeVec,
    pub gateway_counters: IntCounterVec,
    pub gateway_queue_bytes: IntGaugeVec,
    pub gateway_loop_lag: prometheus::GaugeVec,
}

fn must<T>(r: prometheus::Result<T>, what: &str) -> T {
    // Metric definitions are constants in this file: a failure is a programming error.
    r.unwrap_or_else(|e| panic!("metric {what} is malformed: {e}"))
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels), name);
            must(registry.register(Box::new(c.clone())), name);
            c
        };
        let http_requests = counter("gochat_http_requests_total", "HTTP requests by route and status", &["method", "route", "status"]);
        let messages_sent = counter("gochat_logic_messages_sent_total", "Messages accepted by logic, by path", &["path"]);
        let messages_persisted = counter("gochat_task_messages_persisted_total", "Messages written by task", &["result"]);
        let fanout_deliveries = counter("gochat_task_fanout_records_total", "Downstream records produced by fan-out", &["kind"]);
        let bus_records = counter("gochat_bus_records_consumed_total", "Bus records consumed, by group and result", &["group", "result"]);
        let dead_letters = counter("gochat_dlq_records_total", "Records sent to the dead-letter topic, by source topic", &["source"]);
        let gateway_counters = counter(
            "gochat_gateway_events_total",
            "Gateway events by shard and kind (frames_in, frames_out, bytes_in, bytes_out, accepts, accepts_refused, slow_closes, handshake_rejects)",
            &["shard", "kind"],
        );
        let http_duration = must(
            HistogramVec::new(
                HistogramOpts::new("gochat_http_request_duration_seconds", "HTTP request latency")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["route"],
            ),
            "http_duration",
        );
        must(registry.register(Box::new(http_duration.clone())), "http_duration");
        let gateway_connections = must(
            IntGaugeVec::new(Opts::new("gochat_gateway_connections", "Open WebSocket connections by shard"), &["shard"]),
            "gateway_connections",
        );
        must(registry.register(Box::new(gateway_connections.clone())), "gateway_connections");
        let gateway_queue_bytes = must(
            IntGaugeVec::new(Opts::new("gochat_gateway_outbound_queue_bytes", "Bytes queued for slow sockets, by shard"), &["shard"]),
            "gateway_queue_bytes",
        );
        must(registry.register(Box::new(gateway_queue_bytes.clone())), "gateway_queue_bytes");
        let gateway_loop_lag = must(
            prometheus::GaugeVec::new(Opts::new("gochat_gateway_loop_lag_seconds", "Recent worst event-loop lag, by shard"), &["shard"]),
            "gateway_loop_lag",
        );
        must(registry.register(Box::new(gateway_loop_lag.clone())), "gateway_loop_lag");
        Self {
            registry,
            http_requests,
            http_duration,
            messages_sent,
            messages_persisted,
            fanout_deliveries,
            bus_records,
            dead_letters,
            gateway_connections,
            gateway_counters,
            gateway_queue_bytes,
            gateway_loop_lag,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_registered_metrics() {
        let m = Metrics::new();
        m.messages_sent.with_label_values(&["ws"]).inc();
        m.gateway_connections.with_label_values(&["0"]).set(3);
        let text = m.render();
        assert!(text.contains("gochat_logic_messages_sent_total{path=\"ws\"} 1"), "{text}");
        assert!(text.contains("gochat_gateway_connections{shard=\"0\"} 3"), "{text}");
    }
}
