//! Holds idle WebSocket connections for an RSS-per-connection measurement.
//!
//! `cargo run --release -p gateway-core --example idle_server -- [ADDR] [SHARDS]`
//! prints `pid=<pid> addr=<addr>`, then every 2 s the connection count and
//! VmRSS; exits when stdin closes. Pair with `examples/idle_clients.rs`.

use std::future::Future;
use std::io::BufRead;
use std::time::Duration;

use gateway_core::{Accept, ConnInfo, Engine, EngineConfig, Handler, HandshakeRequest, Reject, Reply, TextFrame};

/// Accepts everyone as a distinct user (so the user index is exercised as in
/// production), sends nothing: the connection stays fully idle.
struct Idle {
    next_user: std::cell::Cell<u64>,
}

impl Handler for Idle {
    type Session = ();
    fn on_handshake(&self, _req: &HandshakeRequest<'_>) -> Result<Accept<()>, Reject> {
        let user_id = self.next_user.get();
        self.next_user.set(user_id + 1);
        Ok(Accept { user_id, tag: 0, session: () })
    }
    #[allow(clippy::manual_async_fn)]
    fn on_open(&self, _conn: ConnInfo, _session: &()) -> impl Future<Output = Result<Vec<TextFrame>, (u16, String)>> + 'static {
        async { Ok(Vec::new()) }
    }
    fn on_text(&self, _conn: ConnInfo, _session: &mut (), text: &str, reply: &dyn Reply) {
        reply.send(text.to_owned().into());
    }
    fn on_close(&self, _conn: ConnInfo, _session: ()) {}
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()).unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into()).parse()?;
    let shards = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let config = EngineConfig { addr, shards, heartbeat: Duration::from_secs(3600), ..Default::default() };
    let engine = Engine::start(config, |shard| Idle { next_user: std::cell::Cell::new((shard as u64) << 40) })?;
    println!("pid={} addr={} rss_kib={}", std::process::id(), engine.local_addr(), vm_rss_kib());
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(2));
            let conns: u64 = engine.stats().iter().map(|s| s.connections).sum();
            println!("connections={conns} rss_kib={}", vm_rss_kib());
        }
    });
    // Run until stdin closes (or the process is killed).
    let _ = std::io::stdin().lock().lines().count();
    Ok(())
}
