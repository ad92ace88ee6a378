//! Errors of the engine's control surface (start-up); per-connection failures are
//! handled inside the shard and never surface here.

/// Why [`crate::Engine::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The machine cannot run io_uring executors (memlock limit, kernel, executor creation).
    #[error("{0}")]
    Platform(String),
    /// A shard could not bind its listener.
    #[error("cannot bind the WebSocket listener: {0}")]
    Bind(#[source] std::io::Error),
    /// The configuration is unusable.
    #[error("invalid engine config: {0}")]
    Config(String),
    /// A shard thread could not be started or died during start-up.
    #[error("shard {shard} failed to start: {reason}")]
    Shard { shard: usize, reason: String },
}
