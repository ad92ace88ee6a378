//! Command-line flags. [`Args`] is also the library's run configuration:
//! tests build it with [`Args::try_parse_from`](clap::Parser::try_parse_from).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Load generator for GoChat gateways (embedded `gochat up`, distributed, or the bench servers).
#[derive(Parser, Debug, Clone)]
#[command(name = "gochat-loadgen", version, about, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub common: Common,
}

/// What to run.
#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Hold N idle authenticated connections; reports handshake rate, established, failed.
    Connect {
        /// Connections to open and hold (one user each).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them once all handshakes are done.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
    },
    /// 1:1 chats: P pairs, both users of a pair send; R messages/s in total.
    Chat {
        /// Number of 1:1 pairs (2×P users, one connection each).
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        /// Total messages per second over all senders (each sender gets rate / (2×pairs)).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
    /// Groups: K groups of G members, S senders per group; R messages/s in total.
    Group {
        /// Number of groups.
        #[arg(long, default_value_t = 10)]
        groups: usize,
        /// Members per group (the owner included).
        #[arg(long, default_value_t = 10)]
        size: usize,
        /// Sending members per group.
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Total messages per second over all senders.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// One room of N members; R broadcasts/s in total spread over S senders.
    Room {
        /// Members of the room (one connection each).
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Broadcasts per second in total.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Room (conversation) id.
        #[arg(long, default_value = "world")]
        room: String,
        /// Sending members; default: enough that each sends at most 10 msg/s.
        #[arg(long)]
        senders: Option<usize>,
    },
}

/// How connections get their access tokens.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Provision users through the HTTP API (register + login, or guests).
    Http,
    /// Mint HS256 access tokens locally with the server's secret.
    Secret,
}

/// Flags every scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// WebSocket address, e.g. 127.0.0.1:8082 (path /ws, token in ?token=).
    #[arg(long, global = true, default_value = "127.0.0.1:8082")]
    pub ws: String,
    /// HTTP API base, e.g. http://127.0.0.1:8081 (needed for --auth http).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8081")]
    pub http: String,
    /// http: provision users through the API; secret: mint tokens with --jwt-secret-file.
    #[arg(long, global = true, value_enum, default_value_t = AuthMode::Http)]
    pub auth: AuthMode,
    /// The server's JWT secret (`gochat up` keeps it in <data-dir>/jwt.secret).
    #[arg(long, global = true)]
    pub jwt_secret_file: Option<PathBuf>,
    /// Users and conversations written by `gochat seed`.
    #[arg(long, global = true)]
    pub users_file: Option<PathBuf>,
    /// Seconds to send (measured).
    #[arg(long, global = true, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to send before measuring (not counted).
    #[arg(long, global = true, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds to keep reading after sending stops before counting losses.
    #[arg(long, global = true, default_value_t = 3.0)]
    pub drain: f64,
    /// Write the final report as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Spread connections over N child processes of this program.
    #[arg(long, global = true, default_value_t = 1)]
    pub procs: usize,
    /// Bind client sockets round-robin over 127.0.0.A..127.0.0.B (e.g. 2-200).
    #[arg(long, global = true)]
    pub source_ips: Option<String>,
    /// Handshakes per second while connecting (0 = as fast as possible).
    #[arg(long, global = true, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Concurrent HTTP requests while provisioning.
    #[arg(long, global = true, default_value_t = 16)]
    pub http_concurrency: usize,
    /// No progress lines on stderr.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Internal: this process is child I of --procs (set by the parent).
    #[arg(long, global = true, hide = true)]
    pub child_index: Option<usize>,
    /// Internal: number of children (set by the parent).
    #[arg(long, global = true, hide = true, default_value_t = 1)]
    pub child_count: usize,
}

impl Scenario {
    /// The subcommand name.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Connect { .. } => "connect",
            Scenario::Chat { .. } => "chat",
            Scenario::Group { .. } => "group",
            Scenario::Room { .. } => "room",
        }
    }

    /// The subcommand and its own flags, as argv (for child processes).
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![self.name().to_string()];
        let mut push = |k: &str, val: String| {
            v.push(format!("--{k}"));
            v.push(val);
        };
        match self {
            Scenario::Connect { connections, hold } => {
                push("connections", connections.to_string());
                push("hold", hold.to_string());
            }
            Scenario::Chat { pairs, rate } => {
                push("pairs", pairs.to_string());
                push("rate", rate.to_string());
            }
            Scenario::Group { groups, size, senders, rate } => {
                push("groups", groups.to_string());
                push("size", size.to_string());
                push("senders", senders.to_string());
                push("rate", rate.to_string());
            }
            Scenario::Room { members, rate, room, senders } => {
                push("members", members.to_string());
                push("rate", rate.to_string());
                push("room", room.clone());
                if let Some(s) = senders {
                    push("senders", s.to_string());
                }
            }
        }
        v
    }
}

/// Parses `A-B` into an inclusive range of the last octet of 127.0.0.x.
pub fn parse_source_ips(s: &str) -> Result<(u8, u8), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u8 = a.trim().parse().map_err(|_| format!("--source-ips: bad start {a:?}"))?;
    let b: u8 = b.trim().parse().map_err(|_| format!("--source-ips: bad end {b:?}"))?;
    if a == 0 || b < a || b == 255 {
        return Err(format!("--source-ips: want 1 <= A <= B <= 254, got {a}-{b}"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_after_the_subcommand() {
        let a = Args::try_parse_from(["gochat-loadgen", "chat", "--pairs", "5", "--rate", "20", "--duration", "2", "--auth", "secret"])
            .expect("parses");
        assert!(matches!(a.scenario, Scenario::Chat { pairs: 5, .. }));
        assert_eq!(a.common.auth, AuthMode::Secret);
        assert_eq!(a.common.duration, 2.0);
        let back = Args::try_parse_from(std::iter::once("x".to_string()).chain(a.scenario.argv())).expect("round trip");
        assert!(matches!(back.scenario, Scenario::Chat { pairs: 5, .. }));
    }

    #[test]
    fn source_ip_ranges() {
        assert_eq!(parse_source_ips("2-200"), Ok((2, 200)));
        assert_eq!(parse_source_ips("7"), Ok((7, 7)));
        assert!(parse_source_ips("0-3").is_err());
        assert!(parse_source_ips("9-3").is_err());
        assert!(parse_source_ips("x").is_err());
    }
}
