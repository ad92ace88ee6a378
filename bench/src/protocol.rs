//! The frames of API.md §3 the bench servers use. A server frame is encoded
//! once into [`Bytes`]; both servers hand the same bytes to every target.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::auth::unix_secs;

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: T,
    timestamp: i64,
}

fn encode<T: Serialize>(kind: &str, data: T) -> Bytes {
    // Plain structs of strings and numbers always serialize.
    Bytes::from(serde_json::to_vec(&Envelope { kind, data, timestamp: unix_secs() }).unwrap_or_default())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Connected<'a> {
    user_id: String,
    conn_id: String,
    gateway_id: &'a str,
    heartbeat_seconds: u64,
}

/// `connected`, the first frame of every connection.
pub fn connected(user_id: u64, conn_id: u64, gateway_id: &str, heartbeat_seconds: u64) -> Bytes {
    encode("connected", Connected { user_id: user_id.to_string(), conn_id: conn_id.to_string(), gateway_id, heartbeat_seconds })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Sender<'a> {
    id: String,
    username: &'a str,
    avatar_url: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NewMessage<'a> {
    id: String,
    conversation_id: &'a str,
    sender: Sender<'a>,
    content: &'a str,
    message_type: i32,
    seq_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
    created_at: i64,
}

/// What a stored message needs to be announced.
#[derive(Debug, Clone, Copy)]
pub struct Posted<'a> {
    pub id: i64,
    pub seq_id: i64,
    pub sender_id: u64,
    pub sender_name: &'a str,
    pub conversation_id: &'a str,
    pub content: &'a str,
    pub message_type: i32,
    pub client_msg_id: Option<&'a str>,
}

/// `new-message`, encoded once and sent to every other member.
pub fn new_message(m: &Posted<'_>) -> Bytes {
    encode(
        "new-message",
        NewMessage {
            id: m.id.to_string(),
            conversation_id: m.conversation_id,
            sender: Sender { id: m.sender_id.to_string(), username: m.sender_name, avatar_url: None },
            content: m.content,
            message_type: m.message_type,
            seq_id: m.seq_id,
            client_msg_id: m.client_msg_id,
            created_at: unix_secs(),
        },
    )
}

/// `message-ack` to the sending connection (API.md spells `client_msg_id` in snake case).
pub fn ack(client_msg_id: Option<&str>, message_id: i64, seq_id: i64) -> Bytes {
    #[derive(Serialize)]
    struct Ack<'a> {
        client_msg_id: Option<&'a str>,
        #[serde(rename = "messageId")]
        message_id: String,
        #[serde(rename = "seqId")]
        seq_id: i64,
        status: &'a str,
    }
    encode("message-ack", Ack { client_msg_id, message_id: message_id.to_string(), seq_id, status: "success" })
}

/// `pong`.
pub fn pong() -> Bytes {
    encode("pong", serde_json::json!({}))
}

/// `error` with an API.md code.
pub fn error(code: &str, message: &str, client_msg_id: Option<&str>) -> Bytes {
    #[derive(Serialize)]
    struct Error<'a> {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<&'a str>,
    }
    encode("error", Error { code, message, client_msg_id })
}

/// A client frame, borrowing from the text when it has no escapes.
#[derive(Debug, PartialEq)]
pub enum ClientFrame<'a> {
    Send { conversation_id: Cow<'a, str>, content: Cow<'a, str>, message_type: i32, client_msg_id: Option<Cow<'a, str>> },
    MarkRead,
    Ping,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<RawData<'a>>,
}

#[derive(Deserialize, Default)]
struct RawData<'a> {
    #[serde(rename = "conversationId", borrow, default)]
    conversation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(rename = "messageType", default)]
    message_type: Option<i32>,
    #[serde(borrow, default)]
    client_msg_id: Option<Cow<'a, str>>,
}

/// Why a client frame was refused: (API.md code, message, client_msg_id).
#[derive(Debug, PartialEq)]
pub struct FrameError<'a> {
    pub code: &'static str,
    pub message: &'static str,
    pub client_msg_id: Option<Cow<'a, str>>,
}

/// Parses a client text frame.
pub fn parse(text: &str) -> Result<ClientFrame<'_>, FrameError<'_>> {
    let invalid = |message| FrameError { code: "INVALID_MESSAGE", message, client_msg_id: None };
    let raw: Raw<'_> = serde_json::from_str(text).map_err(|_| invalid("frame is not JSON of the form {type, data}"))?;
    match raw.kind.as_ref() {
        "ping" => Ok(ClientFrame::Ping),
        "mark-read" => Ok(ClientFrame::MarkRead),
        "send-message" => {
            let d = raw.data.unwrap_or_default();
            match (d.conversation_id, d.content) {
                (Some(conversation_id), Some(content)) => Ok(ClientFrame::Send {
                    conversation_id,
                    content,
                    message_type: d.message_type.unwrap_or(1),
                    client_msg_id: d.client_msg_id,
                }),
                _ => Err(FrameError {
                    code: "VALIDATION_ERROR",
                    message: "send-message needs conversationId and content",
                    client_msg_id: d.client_msg_id,
                }),
            }
        }
        _ => Err(invalid("unknown frame type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_send_and_ping() {
        let f = parse(r#"{"type":"send-message","data":{"conversationId":"world","content":"hi","messageType":1,"client_msg_id":"c1"}}"#);
        assert_eq!(
            f,
            Ok(ClientFrame::Send {
                conversation_id: "world".into(),
                content: "hi".into(),
                message_type: 1,
                client_msg_id: Some("c1".into())
            })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(parse("nope").map_err(|e| e.code), Err("INVALID_MESSAGE"));
    }

    #[test]
    fn encodes_api_shapes() {
        let m = Posted {
            id: 5,
            seq_id: 3,
            sender_id: 9,
            sender_name: "u9",
            conversation_id: "world",
            content: "hi",
            message_type: 1,
            client_msg_id: Some("c1"),
        };
        let v: serde_json::Value = serde_json::from_slice(&new_message(&m)).unwrap();
        assert_eq!(v["type"], "new-message");
        assert_eq!(v["data"]["sender"]["id"], "9");
        assert_eq!(v["data"]["seqId"], 3);
        assert_eq!(v["data"]["clientMsgId"], "c1");
        let v: serde_json::Value = serde_json::from_slice(&ack(Some("c1"), 5, 3)).unwrap();
        assert_eq!(v["data"]["client_msg_id"], "c1");
        assert_eq!(v["data"]["messageId"], "5");
        assert_eq!(v["data"]["status"], "success");
    }
}
