//! WebSocket frames of API.md §3: `{"type", "data", "timestamp"}` JSON text.
//!
//! Server frames are encoded once into a [`TextFrame`] and the same bytes go
//! to every target connection. Client frames are parsed into [`ClientFrame`];
//! anything else becomes an error the connection is told about.

use gateway_core::TextFrame;
use gochat_infra::error::ErrorCode;
use gochat_infra::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dto::NewMessage;

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: T,
    timestamp: i64,
}

/// Encodes a server frame.
pub fn encode<T: Serialize>(kind: &str, data: T) -> TextFrame {
    let env = Envelope { kind, data, timestamp: now_ms() / 1000 };
    // Serializing these plain structs cannot fail; an empty frame would be a bug, so log it.
    match serde_json::to_string(&env) {
        Ok(s) => TextFrame::from(s),
        Err(e) => {
            tracing::error!(kind, error = %e, "frame encoding failed");
            TextFrame::from(format!(
                "{{\"type\":\"error\",\"data\":{{\"code\":\"INTERNAL\",\"message\":\"encoding failed\"}},\"timestamp\":{}}}",
                now_ms() / 1000
            ))
        }
    }
}

pub fn new_message(m: &gochat_proto::common::Message) -> TextFrame {
    encode("new-message", NewMessage::new(m))
}

pub fn ack(client_msg_id: Option<&str>, message_id: i64, seq_id: i64) -> TextFrame {
    encode(
        "message-ack",
        serde_json::json!({"client_msg_id": client_msg_id, "messageId": message_id.to_string(), "seqId": seq_id, "status": "success"}),
    )
}

pub fn error(code: &str, message: &str, client_msg_id: Option<&str>) -> TextFrame {
    let mut data = serde_json::json!({"code": code, "message": message});
    if let Some(id) = client_msg_id {
        data["client_msg_id"] = Value::String(id.to_string());
    }
    encode("error", data)
}

pub fn error_code(code: ErrorCode, message: &str, client_msg_id: Option<&str>) -> TextFrame {
    error(code.as_str(), message, client_msg_id)
}

pub fn pong() -> TextFrame {
    encode("pong", serde_json::json!({}))
}

pub fn online_status(user_id: i64, online: bool) -> TextFrame {
    encode("online-status", serde_json::json!({"userId": user_id.to_string(), "status": if online { "online" } else { "offline" }}))
}

pub fn read_receipt(conversation_id: &str, user_id: i64, seq_id: i64) -> TextFrame {
    encode("read-receipt", serde_json::json!({"conversationId": conversation_id, "userId": user_id.to_string(), "seqId": seq_id}))
}

pub fn connected(user_id: i64, conn_id: &str, gateway_id: &str, heartbeat_secs: u64) -> TextFrame {
    encode(
        "connected",
        serde_json::json!({"userId": user_id.to_string(), "connId": conn_id, "gatewayId": gateway_id, "heartbeatSeconds": heartbeat_secs}),
    )
}

/// A parsed client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Send { conversation_id: String, content: String, message_type: i32, client_msg_id: Option<String> },
    MarkRead { conversation_id: String, seq_id: i64 },
    Ping,
}

/// Why a client frame was refused; `client_msg_id` is echoed when known.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub client_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct RawSend {
    #[serde(rename = "conversationId")]
    conversation_id: String,
    content: String,
    #[serde(rename = "messageType", default = "text_type")]
    message_type: i32,
    #[serde(default)]
    client_msg_id: Option<String>,
}

fn text_type() -> i32 {
    1
}

#[derive(Deserialize)]
struct RawRead {
    #[serde(rename = "conversationId")]
    conversation_id: String,
    #[serde(rename = "seqId")]
    seq_id: i64,
}

/// Parses a client text frame. `max_content` is checked here so an
/// oversize message never reaches the bus.
pub fn parse(text: &str, max_content: usize) -> Result<ClientFrame, FrameError> {
    let invalid = |m: String| FrameError { code: ErrorCode::InvalidMessage, message: m, client_msg_id: None };
    let raw: RawFrame =
        serde_json::from_str(text).map_err(|e| invalid(format!("frame is not valid JSON of the form {{type, data}}: {e}")))?;
    match raw.kind.as_str() {
        "ping" => Ok(ClientFrame::Ping),
        "send-message" => {
            let client_msg_id = raw.data.get("client_msg_id").and_then(Value::as_str).map(str::to_string);
            let s: RawSend = serde_json::from_value(raw.data).map_err(|e| FrameError {
                code: ErrorCode::ValidationError,
                message: format!("send-message data is invalid: {e}"),
                client_msg_id: client_msg_id.clone(),
            })?;
            if s.content.len() > max_content {
                return Err(FrameError {
                    code: ErrorCode::MessageTooLarge,
                    message: format!("content is {} bytes; the limit is {max_content}", s.content.len()),
                    client_msg_id,
                });
            }
            Ok(ClientFrame::Send {
                conversation_id: s.conversation_id,
                content: s.content,
                message_type: s.message_type,
                client_msg_id: s.client_msg_id,
            })
        }
        "mark-read" => {
            let r: RawRead = serde_json::from_value(raw.data).map_err(|e| FrameError {
                code: ErrorCode::ValidationError,
                message: format!("mark-read data is invalid: {e}"),
                client_msg_id: None,
            })?;
            Ok(ClientFrame::MarkRead { conversation_id: r.conversation_id, seq_id: r.seq_id })
        }
        other => Err(invalid(format!("unknown frame type {:?}", truncate(other, 32)))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_client_frames() {
        let f = parse(
            r#"{"type":"send-message","data":{"conversationId":"c1","content":"hi","messageType":1,"client_msg_id":"m1"},"x":1}"#,
            10,
        );
        assert_eq!(
            f,
            Ok(ClientFrame::Send { conversation_id: "c1".into(), content: "hi".into(), message_type: 1, client_msg_id: Some("m1".into()) })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#, 10), Ok(ClientFrame::Ping));
        assert_eq!(
            parse(r#"{"type":"mark-read","data":{"conversationId":"c","seqId":4}}"#, 10),
            Ok(ClientFrame::MarkRead { conversation_id: "c".into(), seq_id: 4 })
        );
    }

    #[test]
    fn bad_frames_get_the_right_codes() {
        assert_eq!(parse("not json", 10).map_err(|e| e.code), Err(ErrorCode::InvalidMessage));
        assert_eq!(parse(r#"{"type":"fly"}"#, 10).map_err(|e| e.code), Err(ErrorCode::InvalidMessage));
        let e =
            parse(r#"{"type":"send-message","data":{"conversationId":5,"content":"x","client_msg_id":"m9"}}"#, 10).expect_err("wrong type");
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert_eq!(e.client_msg_id.as_deref(), Some("m9"));
        let e = parse(r#"{"type":"send-message","data":{"conversationId":"c","content":"01234567890","client_msg_id":"m"}}"#, 10)
            .expect_err("too big");
        assert_eq!(e.code, ErrorCode::MessageTooLarge);
        assert_eq!(e.client_msg_id.as_deref(), Some("m"));
    }

    #[test]
    fn server_frames_have_type_data_timestamp() {
        let v: Value = serde_json::from_str(ack(Some("m1"), 5, 2).as_str()).expect("json");
        assert_eq!(v["type"], "message-ack");
        assert_eq!(v["data"]["client_msg_id"], "m1");
        assert_eq!(v["data"]["messageId"], "5");
        assert_eq!(v["data"]["seqId"], 2);
        assert!(v["timestamp"].as_i64().is_some_and(|t| t > 1_600_000_000));
    }
}
