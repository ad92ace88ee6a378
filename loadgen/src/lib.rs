//! `gochat-loadgen`: drives many WebSocket clients against a GoChat gateway
//! (embedded `gochat up`, the distributed deployment, or the bench servers)
//! and reports what arrived, what was lost and how long it took.
//!
//! Scenarios: `connect` (idle authenticated connections), `chat` (1:1 pairs),
//! `group` and `room` (fan-out). Users come from the HTTP API, from a users
//! file written by `gochat seed`, or are synthetic with locally minted tokens.
//!
//! # Layout
//! - [`cli`]: the flags; [`cli::Args`] is also the run configuration.
//! - [`plan`]: users, conversations and senders of a run; the users file format.
//! - [`provision`]: users and conversations through the HTTP API.
//! - [`token`]: HS256 access tokens minted with the server's secret.
//! - [`conn`]: one client connection (handshake, send, receive, check).
//! - [`track`]: message content with send timestamps; duplicate and order checks.
//! - [`stats`]: live counters and latency histograms of one process.
//! - [`report`]: the final report and its arithmetic (expected, lost, percentiles).
//! - [`runner`]: one process's run; [`procs`]: spreading a run over child processes.
//!
//! ```no_run
//! # async fn f() -> Result<(), gochat_loadgen::Error> {
//! use clap::Parser;
//! let args = gochat_loadgen::Args::parse_from(["gochat-loadgen", "chat", "--pairs", "5", "--rate", "20"]);
//! let report = gochat_loadgen::run(args).await?;
//! assert_eq!(report.lost, 0);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod cli;
pub mod conn;
pub mod plan;
pub mod procs;
pub mod provision;
pub mod report;
pub mod runner;
pub mod stats;
pub mod token;
pub mod track;

pub use cli::{Args, AuthMode, Scenario};
pub use report::Report;
pub use runner::{run, run_child};

/// Why a run could not be carried out (as opposed to a run that measured failures).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// Provisioning, files or processes failed.
    #[error("{0}")]
    Setup(String),
}

/// A short random tag that keeps usernames and temp files of concurrent runs apart.
pub fn run_tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}
