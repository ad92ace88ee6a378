//! Live counters shared by every connection task of one process.
//!
//! Counters are atomics; latencies go to a few mutex-guarded HdrHistograms
//! (a connection always uses the same shard, so contention stays low) that
//! are merged when a progress line or the report needs them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

/// Highest latency recorded exactly (one hour, in µs); larger values saturate.
const MAX_US: u64 = 3_600_000_000;
const SHARDS: usize = 16;

/// A histogram of microseconds with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that satisfy hdrhistogram's preconditions.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Per-conversation counts needed to compute `expected` (see [`crate::report`]).
#[derive(Default)]
pub struct ConvCounters {
    /// Measured messages acked in this conversation.
    pub acked: AtomicU64,
    /// Members of this conversation with an established connection.
    pub established: AtomicU64,
}

/// Everything one process counts.
pub struct Stats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicated: AtomicU64,
    pub out_of_order: AtomicU64,
    pub attempted: AtomicU64,
    pub established: AtomicU64,
    pub failed: AtomicU64,
    /// Established connections that closed before the run ended.
    pub dropped: AtomicU64,
    /// `error` frames answering measured sends.
    pub send_errors: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    latency: Vec<Mutex<Histogram<u64>>>,
    handshake: Mutex<Histogram<u64>>,
    pub convs: Vec<ConvCounters>,
}

impl Stats {
    pub fn new(conversations: usize) -> Self {
        Stats {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            attempted: AtomicU64::new(0),
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            latency: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            handshake: Mutex::new(new_histogram()),
            convs: (0..conversations).map(|_| ConvCounters::default()).collect(),
        }
    }

    pub fn error(&self, code: &str) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(code.to_string()).or_insert(0) += 1;
    }

    /// Adds another counter set's errors (provisioning) to these.
    pub fn absorb_errors(&self, other: &Stats) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in other.errors() {
            *e.entry(k).or_insert(0) += v;
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn error_total(&self) -> u64 {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    /// Records a send→deliver latency from connection `conn`.
    pub fn latency(&self, conn: usize, micros: u64) {
        let mut h = self.latency[conn % SHARDS].lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(micros.max(1));
    }

    pub fn handshake(&self, micros: u64) {
        self.handshake.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(micros.max(1));
    }

    /// All latency shards merged.
    pub fn latency_histogram(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.latency {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&*h);
        }
        all
    }

    pub fn handshake_histogram(&self) -> Histogram<u64> {
        self.handshake.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts for one progress line.
    pub fn snapshot(&self) -> Snapshot {
        let lat = self.latency_histogram();
        Snapshot {
            sent: self.sent.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            errors: self.error_total(),
            established: self.established.load(Relaxed),
            p99_us: if lat.is_empty() { 0 } else { lat.value_at_quantile(0.99) },
        }
    }
}

/// Cumulative counts at one moment (progress lines, child → parent).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub sent: u64,
    pub delivered: u64,
    pub errors: u64,
    pub established: u64,
    pub p99_us: u64,
}

impl Snapshot {
    /// Sums counts; p99 is the worst of the parts (an upper bound, for progress only).
    pub fn merge(self, o: Snapshot) -> Snapshot {
        Snapshot {
            sent: self.sent + o.sent,
            delivered: self.delivered + o.delivered,
            errors: self.errors + o.errors,
            established: self.established + o.established,
            p99_us: self.p99_us.max(o.p99_us),
        }
    }

    /// The progress line for `elapsed` seconds, with rates since `prev` one second ago.
    pub fn progress_line(&self, prev: &Snapshot, elapsed: f64, dt: f64) -> String {
        let dt = dt.max(1e-3);
        format!(
            "[{elapsed:6.1}s] conns {} | sent/s {:.0} | delivered/s {:.0} | p99 {} | errors {}",
            self.established,
            self.sent.saturating_sub(prev.sent) as f64 / dt,
            self.delivered.saturating_sub(prev.delivered) as f64 / dt,
            crate::report::fmt_us(self.p99_us),
            self.errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles() {
        let s = Stats::new(0);
        for v in 1..=1000u64 {
            s.latency(v as usize, v);
        }
        let h = s.latency_histogram();
        assert_eq!(h.len(), 1000);
        let p50 = h.value_at_quantile(0.5);
        let p99 = h.value_at_quantile(0.99);
        assert!((499..=501).contains(&p50), "{p50}");
        assert!((989..=991).contains(&p99), "{p99}");
        assert_eq!(h.max(), 1000);
        // Absurd values saturate instead of failing.
        s.latency(0, u64::MAX);
        assert_eq!(s.latency_histogram().len(), 1001);
    }

    #[test]
    fn errors_by_code_and_snapshots() {
        let s = Stats::new(1);
        s.error("RATE_LIMITED");
        s.error("RATE_LIMITED");
        s.error("FORBIDDEN");
        assert_eq!(s.errors().get("RATE_LIMITED"), Some(&2));
        assert_eq!(s.error_total(), 3);
        let a = Snapshot { sent: 10, delivered: 5, errors: 1, established: 2, p99_us: 300 };
        let b = Snapshot { sent: 1, delivered: 1, errors: 0, established: 1, p99_us: 900 };
        let m = a.merge(b);
        assert_eq!((m.sent, m.delivered, m.errors, m.established, m.p99_us), (11, 6, 1, 3, 900));
        let line = m.progress_line(&Snapshot::default(), 2.0, 1.0);
        assert!(line.contains("sent/s 11") && line.contains("delivered/s 6"), "{line}");
    }
}
