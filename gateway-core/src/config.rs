//! Engine configuration.

use std::net::SocketAddr;
use std::time::Duration;

use crate::EngineError;

/// Tuning knobs of the engine. Build with `EngineConfig { shards: 4, ..Default::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Listen address; with port 0 shard 0 binds first and the others bind the same concrete port.
    pub addr: SocketAddr,
    /// Number of shards (executor threads), at least 1.
    pub shards: usize,
    /// Pin shard `i` to `cpu_set[i % len]`; `None` pins to cores `0..shards` (wrapping).
    pub cpu_set: Option<Vec<usize>>,
    /// Largest client message (and frame) accepted; larger ones close the connection with 1009.
    pub max_frame_bytes: usize,
    /// Bytes a connection may have queued for sending; a push above it closes with 1013.
    pub max_outbound_bytes: usize,
    /// Send a Ping after this long without receiving anything; close after 3 such intervals.
    pub heartbeat: Duration,
    /// Bound on the HTTP upgrade, and on flushing the close handshake when a connection ends.
    pub handshake_timeout: Duration,
    /// The upgrade path, e.g. "/ws"; any other path gets 404 without upgrade.
    pub ws_path: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            shards: 1,
            cpu_set: None,
            max_frame_bytes: 64 * 1024,
            max_outbound_bytes: 1024 * 1024,
            heartbeat: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            ws_path: "/ws".to_owned(),
        }
    }
}

impl EngineConfig {
    /// Rejects values the engine cannot run with.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |what: &str| Err(EngineError::Config(what.to_owned()));
        if self.shards == 0 {
            return bad("shards must be >= 1");
        }
        if self.shards > usize::from(u16::MAX) {
            return bad("shards must fit in 16 bits");
        }
        if matches!(&self.cpu_set, Some(set) if set.is_empty()) {
            return bad("cpu_set must not be empty when given");
        }
        if self.max_frame_bytes == 0 || self.max_outbound_bytes == 0 {
            return bad("max_frame_bytes and max_outbound_bytes must be > 0");
        }
        if self.heartbeat.is_zero() || self.handshake_timeout.is_zero() {
            return bad("heartbeat and handshake_timeout must be > 0");
        }
        if !self.ws_path.starts_with('/') {
            return bad("ws_path must start with '/'");
        }
        Ok(())
    }

    /// The CPU shard `index` is pinned to; `online` is the number of usable cores.
    pub(crate) fn cpu_for(&self, index: usize, online: usize) -> usize {
        match &self.cpu_set {
            Some(set) if !set.is_empty() => set[index % set.len()],
            _ => index % online.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        let c = EngineConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.ws_path, "/ws");
    }

    #[test]
    fn rejects_zero_shards_and_bad_path() {
        let c = EngineConfig { shards: 0, ..Default::default() };
        assert!(matches!(c.validate(), Err(EngineError::Config(_))));
        let c = EngineConfig { ws_path: "ws".into(), ..Default::default() };
        assert!(c.validate().is_err());
    }

    #[test]
    fn cpu_placement_wraps() {
        let c = EngineConfig::default();
        assert_eq!(c.cpu_for(0, 2), 0);
        assert_eq!(c.cpu_for(3, 2), 1);
        let c = EngineConfig { cpu_set: Some(vec![5, 7]), ..Default::default() };
        assert_eq!(c.cpu_for(2, 8), 5);
        assert_eq!(c.cpu_for(3, 8), 7);
    }
}
