//! Hostile and broken WebSocket input: every case gets a clear answer and
//! the connection (or at least the shard) keeps serving.

use std::time::Duration;

use async_tungstenite::tungstenite::Message as WsMessage;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn invalid_tokens_are_refused_at_the_handshake() {
    let app = spawn_app().await;
    for url in [format!("ws://{}/ws", app.ws), format!("ws://{}/ws?token=nope", app.ws)] {
        match async_tungstenite::tokio::connect_async(url.clone()).await {
            Err(async_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "{url}");
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default();
                assert!(body.contains("UNAUTHORIZED"), "{body}");
            }
            other => panic!("expected a 401 without upgrade for {url}, got {other:?}"),
        }
    }
    // The Authorization header works as well as ?token=.
    let a = app.user("alice").await;
    let mut req =
        async_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{}/ws", app.ws)).expect("request");
    req.headers_mut().insert("Authorization", format!("Bearer {}", a.token).parse().expect("header"));
    let (mut ws, _) = async_tungstenite::tokio::connect_async(req).await.expect("header auth");
    use futures::StreamExt;
    let first = ws.next().await.expect("frame").expect("ok");
    assert!(first.to_text().expect("text").contains("\"connected\""));
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays_open() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    let mut ws = app.ws(&a).await;

    ws.send_raw(WsMessage::text("{not json")).await;
    assert_eq!(ws.next_of("error").await["data"]["code"], "INVALID_MESSAGE");
    ws.send(json!({"type": "teleport", "data": {}})).await;
    assert_eq!(ws.next_of("error").await["data"]["code"], "INVALID_MESSAGE");
    ws.send(json!({"type": "send-message", "data": {"conversationId": 12, "content": true, "client_msg_id": "t-1"}})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["data"]["code"].as_str(), e["data"]["client_msg_id"].as_str()), (Some("VALIDATION_ERROR"), Some("t-1")));
    ws.send_raw(WsMessage::binary(vec![1u8, 2, 3])).await;
    assert_eq!(ws.next_of("error").await["data"]["code"], "INVALID_MESSAGE");
    ws.send_message(&c, &"x".repeat(5000), "big-1").await;
    let e = ws.next_of("error").await;
    assert_eq!((e["data"]["code"].as_str(), e["data"]["client_msg_id"].as_str()), (Some("MESSAGE_TOO_LARGE"), Some("big-1")));
    ws.send_message(&c, "   ", "empty-1").await;
    let e = ws.next_of("error").await;
    assert_eq!((e["data"]["code"].as_str(), e["data"]["client_msg_id"].as_str()), (Some("VALIDATION_ERROR"), Some("empty-1")));
    ws.assert_alive().await;
    ws.send_message(&c, "still works", "ok-1").await;
    assert_eq!(ws.next_of("message-ack").await["data"]["seqId"], 1);
}

#[tokio::test]
async fn a_removed_member_can_no_longer_send_over_the_socket() {
    // WebSocket sends read memberships per batch from the cache: removing a
    // member must still take effect on the very next send.
    let app = spawn_app().await;
    let owner = app.user("owner").await;
    let m = app.user("member").await;
    let g = app.group(&owner, "team", &[&m]).await;
    let mut ws = app.ws(&m).await;
    ws.send_message(&g, "hello", "rm-1").await;
    assert_eq!(ws.next_of("message-ack").await["data"]["seqId"], 1);
    let (s, v) = app.delete(&format!("/api/conversations/{g}/members/{}", m.id), &owner.token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    ws.send_message(&g, "still here?", "rm-2").await;
    let e = ws.next_of("error").await;
    assert_eq!((e["data"]["code"].as_str(), e["data"]["client_msg_id"].as_str()), (Some("FORBIDDEN"), Some("rm-2")));
}

#[tokio::test]
async fn sends_the_user_may_not_make_are_refused_with_the_client_msg_id() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let outsider = app.user("eve").await;
    let c = app.single(&a, &b).await;
    let mut ws = app.ws(&outsider).await;
    ws.send_message(&c, "let me in", "nm-1").await;
    let e = ws.next_of("error").await;
    assert_eq!((e["data"]["code"].as_str(), e["data"]["client_msg_id"].as_str()), (Some("FORBIDDEN"), Some("nm-1")));
    ws.send_message("g_unknown", "anyone?", "nf-1").await;
    let e = ws.next_of("error").await;
    assert_eq!((e["data"]["code"].as_str(), e["data"]["client_msg_id"].as_str()), (Some("CONVERSATION_NOT_FOUND"), Some("nf-1")));
    ws.assert_alive().await;
    let stored = app.get(&format!("/api/conversations/{c}/messages"), &a.token).await;
    assert_eq!(stored.1["data"]["messages"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn oversize_frames_close_with_1009_and_the_gateway_keeps_serving() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let mut ws = app.ws(&a).await;
    ws.send_raw(WsMessage::text("y".repeat(70 * 1024))).await;
    assert_eq!(ws.closed_code().await, Some(1009));
    let mut again = app.ws(&a).await;
    again.assert_alive().await;
}

#[tokio::test]
async fn over_the_rate_limit_gets_rate_limited_and_stays_open() {
    let app = spawn_app_with(|c| {
        c.ws.rate_per_sec = 2;
        c.ws.burst = 5;
    })
    .await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    let mut ws = app.ws(&a).await;
    for i in 0..15 {
        ws.send_message(&c, &format!("m{i}"), &format!("rl-{i}")).await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 15 {
        let f = ws.next().await;
        match f["type"].as_str() {
            Some("message-ack") => acks += 1,
            Some("error") => {
                assert_eq!(f["data"]["code"], "RATE_LIMITED", "{f}");
                assert!(f["data"]["client_msg_id"].as_str().is_some_and(|s| s.starts_with("rl-")));
                limited += 1;
            }
            _ => {}
        }
    }
    assert!((5..=7).contains(&acks), "about the burst got through: {acks}");
    assert!(limited >= 8, "{limited}");
    ws.assert_alive().await;
}

#[tokio::test]
async fn too_many_connections_close_the_oldest_with_4001() {
    let app = spawn_app_with(|c| c.ws.max_connections_per_user = 2).await;
    let a = app.user("alice").await;
    // The limit is per gateway: all three on the first one.
    let mut first = app.ws_at(0, &a.token).await;
    let mut second = app.ws_at(0, &a.token).await;
    let mut third = app.ws_at(0, &a.token).await;
    assert_eq!(first.closed_code().await, Some(4001));
    second.assert_alive().await;
    third.assert_alive().await;
}

#[tokio::test]
async fn closing_a_socket_does_not_disturb_others() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    let mut wb = app.ws(&b).await;
    for _ in 0..20 {
        let w = app.ws(&a).await;
        drop(w);
    }
    let (s, _) = app.post(&format!("/api/conversations/{c}/messages"), Some(&a.token), json!({"content": "after churn"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(wb.next_of("new-message").await["data"]["content"], "after churn");
    wb.none_of("error", Duration::from_millis(100)).await;
}
