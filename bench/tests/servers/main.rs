//! Behaviour of both bench servers (engine-room and baseline-room): the same
//! suite runs against each, since compare.sh assumes they do identical work.

mod helpers;

use helpers::{Kind, Server, next_json, send_json};
use serde_json::json;
use tokio_tungstenite::tungstenite::Error as WsError;

const KINDS: [Kind; 3] = [Kind::Engine, Kind::Baseline, Kind::BaselineSmall];

#[tokio::test]
async fn handshake_accepts_valid_and_refuses_invalid_tokens() {
    for kind in KINDS {
        let s = Server::start(kind);
        s.join(1).await;
        for bad in ["", "not-a-jwt", &gochat_bench::auth::Keys::new(b"other").mint(1, 600), &s.keys.mint(1, -600)] {
            match tokio_tungstenite::connect_async(s.url(bad)).await {
                Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401, "{kind:?} token {bad:?}"),
                other => panic!("{kind:?}: expected 401 for {bad:?}, got {:?}", other.map(|(_, r)| r.status())),
            }
        }
    }
}

#[tokio::test]
async fn a_message_is_acked_to_its_sender_and_reaches_every_other_connection() {
    for kind in KINDS {
        let s = Server::start(kind);
        let mut sender = s.join(1).await;
        let mut same_user = s.join(1).await;
        let mut others = Vec::new();
        for u in 2..=6 {
            others.push(s.join(u).await);
        }
        let send = json!({"type": "send-message", "data": {"conversationId": "world", "content": "hello", "messageType": 1, "client_msg_id": "c-1"}});
        send_json(&mut sender, send).await;
        let ack = next_json(&mut sender).await;
        assert_eq!(ack["type"], "message-ack", "{kind:?}");
        assert_eq!(ack["data"]["client_msg_id"], "c-1");
        assert_eq!(ack["data"]["status"], "success");
        let seq = ack["data"]["seqId"].clone();
        for ws in others.iter_mut().chain(std::iter::once(&mut same_user)) {
            let m = next_json(ws).await;
            assert_eq!(m["type"], "new-message", "{kind:?}");
            assert_eq!(m["data"]["content"], "hello");
            assert_eq!(m["data"]["sender"]["id"], "1");
            assert_eq!(m["data"]["conversationId"], "world");
            assert_eq!(m["data"]["clientMsgId"], "c-1");
            assert_eq!(m["data"]["seqId"], seq);
        }
        // The sending connection itself gets no copy: its next frame answers the ping.
        send_json(&mut sender, json!({"type": "ping"})).await;
        assert_eq!(next_json(&mut sender).await["type"], "pong", "{kind:?}");
    }
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays_open() {
    for kind in KINDS {
        let s = Server::start(kind);
        let mut ws = s.join(1).await;
        send_json(&mut ws, json!({"type": "nope"})).await;
        assert_eq!(next_json(&mut ws).await["data"]["code"], "INVALID_MESSAGE", "{kind:?}");
        let other = json!({"type": "send-message", "data": {"conversationId": "elsewhere", "content": "x", "client_msg_id": "c-2"}});
        send_json(&mut ws, other).await;
        let err = next_json(&mut ws).await;
        assert_eq!(err["data"]["code"], "FORBIDDEN", "{kind:?}");
        assert_eq!(err["data"]["client_msg_id"], "c-2");
        send_json(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(next_json(&mut ws).await["type"], "pong");
    }
}
