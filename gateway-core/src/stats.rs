//! Per-shard counters. Each counter is written only by its shard thread and read
//! by [`crate::EngineHandle::stats`]; relaxed atomics are enough for a snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of one shard's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: usize,
    /// Open (upgraded) connections right now.
    pub connections: u64,
    /// TCP connections accepted since start.
    pub accepted_total: u64,
    /// Client messages (text + binary) received.
    pub frames_in: u64,
    /// Text frames written to clients.
    pub frames_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes written.
    pub bytes_out: u64,
    /// Connections closed with 1013 because their outbound queue passed the limit.
    pub slow_closes: u64,
    /// Upgrades refused (handler reject, wrong path, bad request, timeout).
    pub handshake_rejects: u64,
    /// Bytes queued for sending on this shard right now (all connections).
    pub outbound_queue_bytes: u64,
    /// Recent maximum event-loop lag in microseconds (a periodic timer's
    /// overshoot, max over about one second).
    pub loop_lag_us: u64,
    /// Connections refused because the process was out of descriptors (EMFILE/ENFILE).
    pub accepts_refused: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    pub connections: AtomicU64,
    pub accepted_total: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub slow_closes: AtomicU64,
    pub handshake_rejects: AtomicU64,
    pub outbound_queue_bytes: AtomicU64,
    pub loop_lag_us: AtomicU64,
    pub accepts_refused: AtomicU64,
}

impl ShardCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    pub fn snapshot(&self, shard: usize) -> ShardStats {
        ShardStats {
            shard,
            connections: self.connections.load(Relaxed),
            accepted_total: self.accepted_total.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            slow_closes: self.slow_closes.load(Relaxed),
            handshake_rejects: self.handshake_rejects.load(Relaxed),
            outbound_queue_bytes: self.outbound_queue_bytes.load(Relaxed),
            loop_lag_us: self.loop_lag_us.load(Relaxed),
            accepts_refused: self.accepts_refused.load(Relaxed),
        }
    }
}
