//! The HTTP/1.1 upgrade (RFC 6455 section 4.2): a bounded request parse with
//! `httparse` and the three answers the engine gives.
//!
//! | request                                   | answer |
//! |-------------------------------------------|--------|
//! | path other than `ws_path`                 | 404 |
//! | not `GET`, missing/wrong `Upgrade`, `Connection`, `Sec-WebSocket-Version: 13` or key | 400 |
//! | headers larger than [`MAX_REQUEST`]        | 431 |
//! | handler rejects                           | its status + JSON body |
//! | handler accepts                           | 101 with `Sec-WebSocket-Accept` |

use http::{HeaderMap, HeaderName, HeaderValue};

/// Largest upgrade request accepted (request line + headers).
pub const MAX_REQUEST: usize = 8 * 1024;
const MAX_HEADERS: usize = 48;

/// A well-formed upgrade request for the WebSocket path.
#[derive(Debug)]
pub struct Upgrade {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept_key: String,
    /// Bytes of the input the request used; anything after is WebSocket data.
    pub consumed: usize,
}

/// Why the upgrade is refused before the handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    BadRequest(&'static str),
    TooLarge,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::NotFound => 404,
            Refusal::BadRequest(_) => 400,
            Refusal::TooLarge => 431,
        }
    }

    pub fn body(self) -> String {
        let msg = match self {
            Refusal::NotFound => "not found",
            Refusal::BadRequest(why) => why,
            Refusal::TooLarge => "request headers too large",
        };
        format!(r#"{{"error":"{msg}"}}"#)
    }
}

/// Parses the upgrade request in `buf`; `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8], ws_path: &str) -> Result<Option<Upgrade>, Refusal> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => return Err(Refusal::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::BadRequest("malformed http request")),
    };
    if consumed > MAX_REQUEST {
        return Err(Refusal::TooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if path != ws_path {
        return Err(Refusal::NotFound);
    }
    if req.method != Some("GET") {
        return Err(Refusal::BadRequest("websocket upgrade must be GET"));
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Refusal::BadRequest("bad header name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Refusal::BadRequest("bad header value"))?;
        headers.append(name, value);
    }
    let has_token = |name: http::header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(http::header::UPGRADE, "websocket") {
        return Err(Refusal::BadRequest("missing Upgrade: websocket"));
    }
    if !has_token(http::header::CONNECTION, "upgrade") {
        return Err(Refusal::BadRequest("missing Connection: upgrade"));
    }
    if headers.get(http::header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(Refusal::BadRequest("unsupported Sec-WebSocket-Version (need 13)"));
    }
    let key = headers.get(http::header::SEC_WEBSOCKET_KEY).map(|v| v.as_bytes().trim_ascii()).unwrap_or_default();
    // The key is base64 of 16 random bytes: 24 characters.
    if key.len() != 24 {
        return Err(Refusal::BadRequest("bad Sec-WebSocket-Key"));
    }
    let accept_key = tungstenite::handshake::derive_accept_key(key);
    Ok(Some(Upgrade { path: path.to_owned(), query: query.map(str::to_owned), headers, accept_key, consumed }))
}

/// The 101 answer.
pub fn switching_protocols(accept_key: &str) -> Vec<u8> {
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n\r\n")
        .into_bytes()
}

/// A refusal with a JSON body; the connection is closed after it.
pub fn error_response(status: u16, body: &str) -> Vec<u8> {
    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn parses_a_valid_upgrade_and_keeps_trailing_bytes() {
        let mut raw = request("/ws?user=1&tag=2", "Authorization: Bearer t\r\n").into_bytes();
        let len = raw.len();
        raw.extend_from_slice(&[0x81, 0x80]);
        let up = parse(&raw, "/ws").unwrap().unwrap();
        assert_eq!(up.path, "/ws");
        assert_eq!(up.query.as_deref(), Some("user=1&tag=2"));
        assert_eq!(up.headers["authorization"], "Bearer t");
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.consumed, len);
    }

    #[test]
    fn partial_request_waits_then_too_large_is_refused() {
        let raw = request("/ws", "");
        assert!(parse(&raw.as_bytes()[..raw.len() - 3], "/ws").unwrap().is_none());
        let huge = format!("GET /ws HTTP/1.1\r\nX-Pad: {}", "a".repeat(MAX_REQUEST));
        assert_eq!(parse(huge.as_bytes(), "/ws").unwrap_err(), Refusal::TooLarge);
    }

    #[test]
    fn wrong_path_is_404_and_bad_upgrades_are_400() {
        assert_eq!(parse(request("/other", "").as_bytes(), "/ws").unwrap_err(), Refusal::NotFound);
        let cases = [
            request("/ws", "").replace("GET", "POST"),
            request("/ws", "").replace("Upgrade: websocket\r\n", ""),
            request("/ws", "").replace("keep-alive, Upgrade", "keep-alive"),
            request("/ws", "").replace("Version: 13", "Version: 8"),
            request("/ws", "").replace(KEY, "short"),
            "GARBAGE\r\n\r\n".to_owned(),
        ];
        for raw in cases {
            let err = parse(raw.as_bytes(), "/ws").unwrap_err();
            assert_eq!(err.status(), 400, "{raw:?} -> {err:?}");
        }
    }

    #[test]
    fn responses_are_well_formed() {
        let ok = String::from_utf8(switching_protocols("abc")).unwrap();
        assert!(ok.starts_with("HTTP/1.1 101 ") && ok.contains("Sec-WebSocket-Accept: abc\r\n") && ok.ends_with("\r\n\r\n"));
        let err = String::from_utf8(error_response(401, "{}")).unwrap();
        assert!(err.starts_with("HTTP/1.1 401 Unauthorized\r\n") && err.contains("Content-Length: 2\r\n") && err.ends_with("{}"));
        assert!(String::from_utf8(error_response(9999, "")).unwrap().starts_with("HTTP/1.1 400 "));
    }
}
