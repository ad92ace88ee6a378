//! The final report, and the per-process [`Part`] it is computed from.
//!
//! Every process (the only one, or each child of `--procs`) turns its
//! [`Stats`] into a `Part`; the report is computed from all parts at once so
//! one process and N processes use the same arithmetic:
//!
//! - `expected` = Σ over conversations of `acked × (established members − 1)`:
//!   every acked message should reach every other member's connection (the
//!   server never echoes a message to the connection that sent it);
//! - `lost` = `expected − delivered` (not below 0), counted after the drain;
//! - `unanswered` = measured messages that got neither an ack nor an error.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::{Stats, new_histogram};

/// One process's raw counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Part {
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Errors answering measured sends (part of `errors`), for `unanswered`.
    pub send_errors: u64,
    pub errors: BTreeMap<String, u64>,
    /// Seconds from the first handshake started to the last one finished.
    pub connect_seconds: f64,
    /// (value µs, count) pairs of the send→deliver latency histogram.
    pub latency: Vec<(u64, u64)>,
    pub handshake: Vec<(u64, u64)>,
    pub conv_acked: Vec<u64>,
    pub conv_established: Vec<u64>,
}

impl Part {
    pub fn from_stats(s: &Stats, connect_seconds: f64) -> Part {
        Part {
            sent: s.sent.load(Relaxed),
            acked: s.acked.load(Relaxed),
            delivered: s.delivered.load(Relaxed),
            duplicated: s.duplicated.load(Relaxed),
            out_of_order: s.out_of_order.load(Relaxed),
            attempted: s.attempted.load(Relaxed),
            established: s.established.load(Relaxed),
            failed: s.failed.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
            send_errors: s.send_errors.load(Relaxed),
            errors: s.errors(),
            connect_seconds,
            latency: buckets(&s.latency_histogram()),
            handshake: buckets(&s.handshake_histogram()),
            conv_acked: s.convs.iter().map(|c| c.acked.load(Relaxed)).collect(),
            conv_established: s.convs.iter().map(|c| c.established.load(Relaxed)).collect(),
        }
    }
}

fn buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

fn histogram(parts: impl Iterator<Item = (u64, u64)>) -> Histogram<u64> {
    let mut h = new_histogram();
    for (v, n) in parts {
        h.saturating_record_n(v.max(1), n);
    }
    h
}

/// Connection figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    /// Established, then closed before the run ended.
    pub dropped: u64,
    pub connect_seconds: f64,
    pub handshakes_per_s: f64,
    pub handshake_p50_us: u64,
    pub handshake_p99_us: u64,
}

/// Send→deliver latency percentiles, microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// The report printed at the end and written by `--json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub procs: usize,
    /// Measured sending time, seconds.
    pub duration_s: f64,
    pub connections: Connections,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unanswered: u64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Latency,
}

impl Report {
    /// Combines the parts of all processes.
    pub fn from_parts(scenario: &str, duration_s: f64, parts: &[Part]) -> Report {
        let sum = |f: fn(&Part) -> u64| parts.iter().map(f).sum::<u64>();
        let convs = parts.iter().map(|p| p.conv_acked.len().max(p.conv_established.len())).max().unwrap_or(0);
        let mut acked = vec![0u64; convs];
        let mut est = vec![0u64; convs];
        for p in parts {
            for (i, a) in p.conv_acked.iter().enumerate() {
                acked[i] += a;
            }
            for (i, e) in p.conv_established.iter().enumerate() {
                est[i] += e;
            }
        }
        let expected: u64 = acked.iter().zip(&est).map(|(a, e)| a * e.saturating_sub(1)).sum();
        let delivered = sum(|p| p.delivered);
        let mut errors = BTreeMap::new();
        for p in parts {
            for (k, v) in &p.errors {
                *errors.entry(k.clone()).or_insert(0) += v;
            }
        }
        let latency = histogram(parts.iter().flat_map(|p| p.latency.iter().copied()));
        let handshake = histogram(parts.iter().flat_map(|p| p.handshake.iter().copied()));
        let established = sum(|p| p.established);
        let connect_seconds = parts.iter().map(|p| p.connect_seconds).fold(0.0, f64::max);
        let (sent, acked_total) = (sum(|p| p.sent), sum(|p| p.acked));
        let per_s = |n: u64| if duration_s > 0.0 { n as f64 / duration_s } else { 0.0 };
        Report {
            scenario: scenario.to_string(),
            procs: parts.len(),
            duration_s,
            connections: Connections {
                attempted: sum(|p| p.attempted),
                established,
                failed: sum(|p| p.failed),
                dropped: sum(|p| p.dropped),
                connect_seconds,
                handshakes_per_s: if connect_seconds > 0.0 { established as f64 / connect_seconds } else { 0.0 },
                handshake_p50_us: if handshake.is_empty() { 0 } else { handshake.value_at_quantile(0.5) },
                handshake_p99_us: if handshake.is_empty() { 0 } else { handshake.value_at_quantile(0.99) },
            },
            sent,
            acked: acked_total,
            delivered,
            expected,
            lost: expected.saturating_sub(delivered),
            duplicated: sum(|p| p.duplicated),
            out_of_order: sum(|p| p.out_of_order),
            unanswered: sent.saturating_sub(acked_total + sum(|p| p.send_errors)),
            sent_per_s: per_s(sent),
            delivered_per_s: per_s(delivered),
            errors,
            latency_us: Latency::of(&latency),
        }
    }

    /// Whether the run failed: something lost or duplicated.
    pub fn failed(&self) -> bool {
        self.lost > 0 || self.duplicated > 0
    }
}

/// Microseconds for humans: `850µs`, `12.3ms`, `1.20s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.connections;
        let l = &self.latency_us;
        writeln!(f, "== gochat-loadgen {} ({} process{}) ==", self.scenario, self.procs, if self.procs == 1 { "" } else { "es" })?;
        writeln!(f, "connections  attempted {}  established {}  failed {}  dropped {}", c.attempted, c.established, c.failed, c.dropped)?;
        writeln!(
            f,
            "handshakes   {:.0}/s over {:.2}s  p50 {}  p99 {}",
            c.handshakes_per_s,
            c.connect_seconds,
            fmt_us(c.handshake_p50_us),
            fmt_us(c.handshake_p99_us)
        )?;
        if self.scenario != "connect" {
            writeln!(
                f,
                "messages     sent {}  acked {}  unanswered {}  ({:.0} sent/s over {:.1}s)",
                self.sent, self.acked, self.unanswered, self.sent_per_s, self.duration_s
            )?;
            writeln!(
                f,
                "deliveries   expected {}  delivered {}  lost {}  duplicated {}  out-of-order {}  ({:.0}/s)",
                self.expected, self.delivered, self.lost, self.duplicated, self.out_of_order, self.delivered_per_s
            )?;
            writeln!(
                f,
                "latency      n {}  p50 {}  p90 {}  p99 {}  p999 {}  max {}",
                l.count,
                fmt_us(l.p50),
                fmt_us(l.p90),
                fmt_us(l.p99),
                fmt_us(l.p999),
                fmt_us(l.max)
            )?;
        }
        if self.errors.is_empty() {
            write!(f, "errors       none")?;
        } else {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, "errors       {}", list.join(" "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(delivered: u64, conv_acked: Vec<u64>, conv_established: Vec<u64>) -> Part {
        Part { sent: 10, acked: conv_acked.iter().sum(), delivered, conv_acked, conv_established, ..Part::default() }
    }

    #[test]
    fn expected_and_lost_across_processes() {
        // Conversation 0: 3 members over two processes, 4 acked messages -> 8 deliveries.
        // Conversation 1: 2 members, 6 acked -> 6 deliveries.
        let a = part(9, vec![4, 6], vec![2, 1]);
        let b = part(4, vec![0, 0], vec![1, 1]);
        let r = Report::from_parts("chat", 2.0, &[a, b]);
        assert_eq!(r.expected, 14);
        assert_eq!(r.delivered, 13);
        assert_eq!(r.lost, 1);
        assert!(r.failed());
        assert_eq!(r.sent, 20);
        assert_eq!(r.sent_per_s, 10.0);
        assert_eq!(r.unanswered, 10);
        // More delivered than expected (late acks) is not negative loss.
        let r = Report::from_parts("chat", 1.0, &[part(100, vec![1], vec![2])]);
        assert_eq!((r.expected, r.lost), (1, 0));
        assert!(!r.failed());
    }

    #[test]
    fn duplicates_fail_the_run_and_errors_add_up() {
        let mut a = part(0, vec![], vec![]);
        a.duplicated = 1;
        a.errors.insert("RATE_LIMITED".into(), 2);
        let mut b = part(0, vec![], vec![]);
        b.errors.insert("RATE_LIMITED".into(), 3);
        b.send_errors = 3;
        let r = Report::from_parts("room", 1.0, &[a, b]);
        assert!(r.failed());
        assert_eq!(r.errors.get("RATE_LIMITED"), Some(&5));
        assert_eq!(r.unanswered, 17);
    }

    #[test]
    fn histograms_merge_exactly() {
        let s1 = Stats::new(0);
        let s2 = Stats::new(0);
        for v in 1..=500u64 {
            s1.latency(0, v);
            s2.latency(0, v + 500);
        }
        s1.handshake(100);
        s2.handshake(300);
        let parts = [Part::from_stats(&s1, 0.5), Part::from_stats(&s2, 1.0)];
        let r = Report::from_parts("chat", 1.0, &parts);
        assert_eq!(r.latency_us.count, 1000);
        assert!((499..=501).contains(&r.latency_us.p50), "{:?}", r.latency_us);
        assert!((989..=991).contains(&r.latency_us.p99), "{:?}", r.latency_us);
        assert_eq!(r.latency_us.max, 1000);
        assert_eq!(r.connections.connect_seconds, 1.0);
        assert_eq!(r.connections.handshake_p99_us, 300);
        let text = r.to_string();
        assert!(text.contains("p99 990µs") || text.contains("p99 991µs") || text.contains("p99 989µs"), "{text}");
    }

    #[test]
    fn human_units() {
        assert_eq!(fmt_us(850), "850µs");
        assert_eq!(fmt_us(12_345), "12.3ms");
        assert_eq!(fmt_us(1_200_000), "1.20s");
    }
}
