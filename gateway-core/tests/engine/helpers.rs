//! Test handler and client helpers: a real engine on 127.0.0.1:0 driven by
//! tungstenite's blocking client from plain threads.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_core::{Accept, ConnId, ConnInfo, EngineConfig, EngineHandle, Handler, HandshakeRequest, Reject, Reply, TextFrame};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub type Client = WebSocket<TcpStream>;

/// What the handlers of all shards observed.
#[derive(Default)]
pub struct Seen {
    pub opened: Mutex<Vec<ConnInfo>>,
    pub closed: Mutex<Vec<ConnInfo>>,
}

impl Seen {
    pub fn closed_ids(&self) -> Vec<ConnId> {
        self.closed.lock().unwrap().iter().map(|c| c.id).collect()
    }
}

/// Query `?user=U&tag=T` authenticates; `text` "close" closes with 4000, anything else is echoed.
pub struct Room {
    seen: Arc<Seen>,
}

fn query_param(query: Option<&str>, key: &str) -> Option<u64> {
    query?.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok())
}

impl Handler for Room {
    type Session = u64;

    fn on_handshake(&self, req: &HandshakeRequest<'_>) -> Result<Accept<u64>, Reject> {
        match query_param(req.query, "user") {
            Some(user_id) => Ok(Accept { user_id, tag: query_param(req.query, "tag").unwrap_or(0), session: 0 }),
            None => Err(Reject { status: 401, body: r#"{"error":"unauthorized"}"#.into() }),
        }
    }

    fn on_open(&self, conn: ConnInfo, _session: &u64) -> impl Future<Output = Result<Vec<TextFrame>, (u16, String)>> + 'static {
        self.seen.opened.lock().unwrap().push(conn);
        async move { Ok(vec![format!("welcome {}", conn.id).into(), "second".into()]) }
    }

    fn on_text(&self, _conn: ConnInfo, session: &mut u64, text: &str, reply: &dyn Reply) {
        *session += 1;
        if text == "close" {
            reply.close(4000, "bye");
        } else {
            reply.send(format!("echo:{text}").into());
        }
    }

    fn on_binary(&self, _conn: ConnInfo, _session: &mut u64, data: &[u8], reply: &dyn Reply) {
        reply.send(format!("bin:{}", data.len()).into());
    }

    fn on_close(&self, conn: ConnInfo, _session: u64) {
        self.seen.closed.lock().unwrap().push(conn);
    }
}

pub fn test_config() -> EngineConfig {
    EngineConfig { addr: SocketAddr::from(([127, 0, 0, 1], 0)), shards: 1, handshake_timeout: Duration::from_secs(3), ..Default::default() }
}

pub fn start(config: EngineConfig) -> (EngineHandle, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let engine = gateway_core::Engine::start(config, move |_shard| Room { seen: s.clone() }).expect("engine starts");
    (engine, seen)
}

/// Opens a raw TCP connection with generous timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Connects as `user`/`tag`, checks the on_open frames, returns the client and its ConnId.
pub fn connect(addr: SocketAddr, user: u64, tag: u64) -> (Client, ConnId) {
    let url = format!("ws://{addr}/ws?user={user}&tag={tag}");
    let (mut ws, resp) = tungstenite::client(url, tcp(addr)).expect("handshake");
    assert_eq!(resp.status(), 101);
    let welcome = read_text(&mut ws);
    let id: ConnId = welcome
        .strip_prefix("welcome ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("first frame is the on_open welcome, got {welcome:?}"));
    assert_eq!(read_text(&mut ws), "second");
    (ws, id)
}

/// Next text message, skipping pings/pongs.
pub fn read_text(ws: &mut Client) -> String {
    loop {
        match ws.read().expect("read a frame") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads until the server's Close frame and returns its code (text frames are skipped).
pub fn expect_close(ws: &mut Client) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return u16::from(frame.code),
            Ok(Message::Close(None)) => return u16::from(CloseCode::Status),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// Polls `cond` until it holds or the generous timeout passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A masked client frame written by hand (mask key 0, so the payload is sent as is).
pub fn raw_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![first_byte, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// Reads the raw socket to its end and returns the code of the server's Close
/// frame. Used for clients that must not answer pings (tungstenite's client
/// flushes a pong before every read, which fails once the server is gone).
pub fn raw_close_code(ws: &mut Client) -> Option<u16> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let _ = ws.get_mut().read_to_end(&mut bytes);
    let mut rest = &bytes[..];
    // Server frames are unmasked; the engine only sends short control frames here.
    while rest.len() >= 2 {
        let (opcode, len) = (rest[0] & 0x0f, usize::from(rest[1] & 0x7f));
        if len >= 126 || rest.len() < 2 + len {
            return None;
        }
        if opcode == 0x8 && len >= 2 {
            return Some(u16::from_be_bytes([rest[2], rest[3]]));
        }
        rest = &rest[2 + len..];
    }
    None
}

/// A client frame with a real mask key, any payload length (our own tiny
/// client-side encoder, so tests can send what tungstenite refuses to).
pub fn masked(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0x13, 0xc4, 0x7e];
    let mut f = vec![first_byte];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// Re-runs this test binary as a child process executing only the ignored test
/// `name` (which acts only when `GW_CHILD` is set), optionally under a lower
/// descriptor limit. Used where a scenario needs its own process: its own fd
/// table, or one it can exhaust without hurting tests running in parallel.
pub fn child_test(name: &str, envs: &[(&str, String)], nofile: Option<u32>) -> std::process::Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    };
    cmd.args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"]).env("GW_CHILD", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// True inside a process started by [`child_test`].
pub fn in_child() -> bool {
    std::env::var_os("GW_CHILD").is_some()
}

/// Sum of a per-shard figure.
pub fn total(engine: &EngineHandle, f: impl Fn(&gateway_core::ShardStats) -> u64) -> u64 {
    engine.stats().iter().map(f).sum()
}
