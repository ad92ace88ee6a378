//! The contract between the engine and the service that plugs into it.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;

/// Identifies a connection across the whole engine. The shard index lives in
/// the top 16 bits so a command for one connection goes straight to its shard.
pub type ConnId = u64;

/// Shard index encoded in a [`ConnId`].
pub fn shard_of(conn: ConnId) -> usize {
    (conn >> 48) as usize
}

/// A WebSocket text payload that is known to be UTF-8. Cloning shares the bytes:
/// one encoded frame is written to many sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextFrame(Bytes);

impl TextFrame {
    pub fn as_str(&self) -> &str {
        // The constructor only accepts UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for TextFrame {
    fn from(s: String) -> Self {
        TextFrame(Bytes::from(s))
    }
}

impl From<&'static str> for TextFrame {
    fn from(s: &'static str) -> Self {
        TextFrame(Bytes::from_static(s.as_bytes()))
    }
}

impl TryFrom<Bytes> for TextFrame {
    type Error = std::str::Utf8Error;
    fn try_from(b: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&b)?;
        Ok(TextFrame(b))
    }
}

/// What the handler sees of the HTTP upgrade request.
pub struct HandshakeRequest<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub peer: SocketAddr,
}

/// Refuses the upgrade with an HTTP status and a body (sent as JSON).
#[derive(Debug, Clone)]
pub struct Reject {
    pub status: u16,
    pub body: String,
}

/// Accepts the upgrade for `user_id`. `tag` groups connections for
/// [`crate::Pusher::close_user`] (e.g. a hash of the token they were opened with).
pub struct Accept<S> {
    pub user_id: u64,
    pub tag: u64,
    pub session: S,
}

/// Facts about an open connection, for callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    pub id: ConnId,
    pub user_id: u64,
    pub tag: u64,
    pub shard: usize,
    pub peer: SocketAddr,
}

/// Sends to the connection a callback is running for.
pub trait Reply {
    /// Queues a frame. Returns false when the connection is closing (e.g. its
    /// outbound queue passed the byte limit).
    fn send(&self, frame: TextFrame) -> bool;
    /// Closes the connection with a WebSocket close code.
    fn close(&self, code: u16, reason: &str);
}

/// Callbacks of the service that uses the engine, one instance per shard
/// (built by the factory given to [`crate::Engine::start`] on the shard's
/// thread, so it may hold `Rc`/`RefCell`). Callbacks run on the shard: they
/// must not block.
pub trait Handler: 'static {
    /// Per-connection state kept by the engine for the handler.
    type Session: 'static;

    /// Validates the upgrade request (token, path); runs inside the shard.
    fn on_handshake(&self, req: &HandshakeRequest<'_>) -> Result<Accept<Self::Session>, Reject>;

    /// Runs after the upgrade, before any client frame is read. The frames it
    /// returns are sent first; `Err((code, reason))` closes the connection.
    fn on_open(&self, conn: ConnInfo, session: &Self::Session) -> impl Future<Output = Result<Vec<TextFrame>, (u16, String)>> + 'static;

    /// A complete text message from the client (already valid UTF-8, within the size limit).
    fn on_text(&self, conn: ConnInfo, session: &mut Self::Session, text: &str, reply: &dyn Reply);

    /// A complete binary message from the client.
    fn on_binary(&self, conn: ConnInfo, session: &mut Self::Session, data: &[u8], reply: &dyn Reply) {
        let _ = (conn, session, data, reply);
    }

    /// The connection is gone (any reason); called exactly once per opened connection.
    fn on_close(&self, conn: ConnInfo, session: Self::Session);
}
