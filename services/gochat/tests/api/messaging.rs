//! Sending over WebSocket: acks, delivery, idempotency, ordering, receipts,
//! presence, large groups through task.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn send_acks_the_sender_and_reaches_every_other_connection() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.user("carol").await;
    let g = app.group(&a, "trio", &[&b, &c]).await;
    let mut a1 = app.ws(&a).await;
    let mut a2 = app.ws(&a).await;
    let mut b1 = app.ws(&b).await;
    let mut c1 = app.ws(&c).await;

    a1.send_message(&g, "hello", "cm-1").await;
    let ack = a1.next_of("message-ack").await;
    assert_eq!(ack["data"]["client_msg_id"], "cm-1");
    assert_eq!(ack["data"]["status"], "success");
    assert_eq!(ack["data"]["seqId"], 1);
    let id = ack["data"]["messageId"].as_str().expect("messageId").to_string();
    for (who, ws) in [("a2", &mut a2), ("b1", &mut b1), ("c1", &mut c1)] {
        let m = ws.next_of("new-message").await;
        assert_eq!(m["data"]["id"], id.as_str(), "{who}");
        assert_eq!(m["data"]["content"], "hello", "{who}");
        assert_eq!(m["data"]["seqId"], 1, "{who}");
        assert_eq!(m["data"]["conversationId"], g.as_str(), "{who}");
        assert_eq!(m["data"]["sender"]["username"], "alice", "{who}");
        assert_eq!(m["data"]["clientMsgId"], "cm-1", "{who}");
    }
    a1.none_of("new-message", Duration::from_millis(300)).await;

    // REST sends reach every connection, including all of the sender's.
    let m = app.send_rest(&b, &g, "via rest").await;
    assert_eq!(m["seqId"], 2);
    for ws in [&mut a1, &mut a2, &mut b1, &mut c1] {
        assert_eq!(ws.next_of("new-message").await["data"]["content"], "via rest");
    }
}

#[tokio::test]
async fn a_repeated_client_msg_id_gets_the_same_ack_and_is_stored_once() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    let mut wa = app.ws(&a).await;
    let mut wb = app.ws(&b).await;
    wa.send_message(&c, "once", "dup-1").await;
    let first = wa.next_of("message-ack").await;
    wa.send_message(&c, "once", "dup-1").await;
    let second = wa.next_of("message-ack").await;
    assert_eq!(first["data"], second["data"]);
    assert_eq!(wb.next_of("new-message").await["data"]["content"], "once");
    wb.none_of("new-message", Duration::from_millis(400)).await;
    // Also over REST, with the same id from the same user.
    let (s, v) =
        app.post(&format!("/api/conversations/{c}/messages"), Some(&a.token), json!({"content": "once", "client_msg_id": "dup-1"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["data"]["id"], first["data"]["messageId"]);
    assert_eq!(v["data"]["seqId"], first["data"]["seqId"]);
    let stored = app.stored(&a, &c, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = app.stored(&a, &c, 1).await;
    assert_eq!((stored.len(), again.len()), (1, 1));
}

#[tokio::test]
async fn concurrent_senders_get_gap_free_sequence_ids() {
    const SENDERS: usize = 3;
    const EACH: usize = 30;
    let app = spawn_app().await;
    let mut users = Vec::new();
    for i in 0..SENDERS {
        users.push(app.user(&format!("sender{i}")).await);
    }
    let others: Vec<&User> = users[1..].iter().collect();
    let g = app.group(&users[0], "busy", &others).await;
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mut ws = app.ws(u).await;
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                ws.send_message(&g, &format!("{i}-{n}"), &format!("c{i}-{n}")).await;
            }
            let mut seqs = Vec::new();
            while seqs.len() < EACH {
                let ack = ws.next_of("message-ack").await;
                seqs.push(ack["data"]["seqId"].as_i64().expect("seq"));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.expect("sender");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one sender's messages keep their order: {seqs:?}");
        all.extend(seqs);
    }
    let total = (SENDERS * EACH) as i64;
    let set: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), set.len(), "no seqId twice");
    assert_eq!(set, (1..=total).collect::<BTreeSet<_>>(), "exactly 1..=N");
    let stored = app.stored(&users[0], &g, total as usize).await;
    let seqs: Vec<i64> = stored.iter().map(|m| m["seqId"].as_i64().unwrap_or(-1)).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "stored gap-free, each once");
}

#[tokio::test]
async fn read_receipts_reach_the_other_members() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    let mut wa = app.ws(&a).await;
    let mut wb = app.ws(&b).await;
    wa.send_message(&c, "read me", "r-1").await;
    wa.next_of("message-ack").await;
    let seq = wb.next_of("new-message").await["data"]["seqId"].as_i64().expect("seq");
    wb.send(json!({"type": "mark-read", "data": {"conversationId": c, "seqId": seq}})).await;
    let r = wa.next_of("read-receipt").await;
    assert_eq!(r["data"]["conversationId"], c.as_str());
    assert_eq!(r["data"]["userId"], b.id.as_str());
    assert_eq!(r["data"]["seqId"], seq);
    // Marking the same seq again moves nothing and sends nothing.
    wb.send(json!({"type": "mark-read", "data": {"conversationId": c, "seqId": seq}})).await;
    wa.none_of("read-receipt", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn friends_see_each_other_come_online_and_go_offline() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let (s, v) = app.post("/api/friends/requests", Some(&a.token), json!({"targetUserId": b.id})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["data"]["id"].as_str().expect("id").to_string();
    let (s, _) = app.put(&format!("/api/friends/requests/{id}"), &b.token, json!({"action": "accept"})).await;
    assert_eq!(s, StatusCode::OK);
    let mut wa = app.ws(&a).await;
    let wb = app.ws(&b).await;
    let on = wa.next_of("online-status").await;
    assert_eq!((on["data"]["userId"].as_str(), on["data"]["status"].as_str()), (Some(b.id.as_str()), Some("online")));
    let (_, v) = app.get("/api/friends", &a.token).await;
    assert_eq!(v["data"]["friends"][0]["friend"]["online"], true, "{v}");
    drop(wb);
    let off = wa.next_of("online-status").await;
    assert_eq!((off["data"]["userId"].as_str(), off["data"]["status"].as_str()), (Some(b.id.as_str()), Some("offline")));
}

#[tokio::test]
async fn large_groups_are_fanned_out_by_task() {
    let app = spawn_app_with(|c| c.chat.large_group_threshold = 2).await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.user("carol").await;
    let d = app.user("dave").await;
    let g = app.group(&a, "big", &[&b, &c, &d]).await;
    let before = fanout_records(&app.metrics().await);
    let mut wa = app.ws(&a).await;
    let mut wa2 = app.ws(&a).await;
    let mut ws = [app.ws(&b).await, app.ws(&c).await, app.ws(&d).await];
    wa.send_message(&g, "to many", "big-1").await;
    assert_eq!(wa.next_of("message-ack").await["data"]["seqId"], 1);
    for w in ws.iter_mut() {
        assert_eq!(w.next_of("new-message").await["data"]["content"], "to many");
    }
    assert_eq!(wa2.next_of("new-message").await["data"]["content"], "to many", "sender's other device");
    wa.none_of("new-message", Duration::from_millis(300)).await;
    let after = fanout_records(&app.metrics().await);
    assert!(after > before, "delivered through task's fan-out ({before} -> {after})");
}

fn fanout_records(metrics: &str) -> f64 {
    metric_sum(metrics, "gochat_task_fanout_records_total")
}

#[tokio::test]
async fn a_client_msg_id_cannot_be_reused_in_another_conversation() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.user("carol").await;
    let ab = app.single(&a, &b).await;
    let ac = app.single(&a, &c).await;
    let (s, _) =
        app.post(&format!("/api/conversations/{ab}/messages"), Some(&a.token), json!({"content": "to bob", "client_msg_id": "same"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = app
        .post(&format!("/api/conversations/{ac}/messages"), Some(&a.token), json!({"content": "to carol", "client_msg_id": "same"}))
        .await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR")), "{v}");
    let mut ws = app.ws(&a).await;
    ws.send_message(&ac, "to carol", "same").await;
    let e = ws.next_of("error").await;
    assert_eq!((e["data"]["code"].as_str(), e["data"]["client_msg_id"].as_str()), (Some("VALIDATION_ERROR"), Some("same")));
    let (_, v) = app.get(&format!("/api/conversations/{ac}/messages"), &c.token).await;
    assert_eq!(v["data"]["messages"].as_array().map(Vec::len), Some(0), "nothing stored for carol");
}

#[tokio::test]
async fn back_to_back_repeats_in_one_batch_are_stored_once() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    let mut wa = app.ws(&a).await;
    let mut wb = app.ws(&b).await;
    // Without waiting for acks, so the repeats land in the same upstream batch.
    for _ in 0..3 {
        wa.send_message(&c, "hello", "burst-1").await;
    }
    wa.send_message(&c, "second", "burst-2").await;
    // Each send gets exactly one answer: an ack, or "still in progress".
    let (mut acks, mut answers) = (Vec::new(), 0);
    while answers < 4 {
        let f = wa.next().await;
        match f["type"].as_str() {
            Some("message-ack") => acks.push(f["data"].clone()),
            Some("error") => assert_eq!(f["data"]["code"], "RATE_LIMITED", "only 'in progress' may be refused: {f}"),
            _ => continue,
        }
        answers += 1;
    }
    assert!(acks.iter().any(|x| x["client_msg_id"] == "burst-2"), "{acks:?}");
    let first: Vec<_> = acks.iter().filter(|x| x["client_msg_id"] == "burst-1").collect();
    assert!(first.windows(2).all(|w| w[0] == w[1]), "every ack of burst-1 is the same: {acks:?}");
    assert_eq!(wb.next_of("new-message").await["data"]["content"], "hello");
    assert_eq!(wb.next_of("new-message").await["data"]["content"], "second");
    wb.none_of("new-message", Duration::from_millis(300)).await;
    let stored = app.stored(&a, &c, 2).await;
    let seqs: Vec<i64> = stored.iter().map(|m| m["seqId"].as_i64().unwrap_or(-1)).collect();
    assert_eq!(seqs, [1, 2]);
}
