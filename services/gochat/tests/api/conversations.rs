//! Single chats, groups with roles, members, history, unread counts.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_single_chat_is_created_once_per_pair() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let (s1, v1) = app.post("/api/conversations", Some(&a.token), json!({"type": 1, "members": [b.id]})).await;
    assert_eq!(s1, StatusCode::CREATED, "{v1}");
    let (s2, v2) = app.post("/api/conversations", Some(&b.token), json!({"type": 1, "members": [a.id]})).await;
    assert_eq!(s2, StatusCode::OK, "{v2}");
    assert_eq!(v1["data"]["id"], v2["data"]["id"]);
    assert_eq!(v1["data"]["type"], 1);
    assert_eq!(v1["data"]["memberCount"], 2);
    let (s, v) = app.post("/api/conversations", Some(&a.token), json!({"type": 1, "members": [a.id]})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR")));
    let (s, v) = app.post("/api/conversations", Some(&a.token), json!({"type": 1, "members": ["999999"]})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
}

#[tokio::test]
async fn groups_roles_and_permission_errors() {
    let app = spawn_app().await;
    let owner = app.user("owner").await;
    let m1 = app.user("member1").await;
    let m2 = app.user("member2").await;
    let m3 = app.user("member3").await;
    let outsider = app.user("outsider").await;
    let (s, v) = app
        .post("/api/conversations", Some(&owner.token), json!({"type": 2, "name": "team", "members": [m1.id], "description": "d"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let g = v["data"]["id"].as_str().expect("id").to_string();
    assert_eq!(v["data"]["ownerId"], owner.id.as_str());
    assert_eq!(v["data"]["myMembership"]["role"], 3);
    let members = format!("/api/conversations/{g}/members");

    // A plain member cannot add; the owner can.
    let (s, v) = app.post(&members, Some(&m1.token), json!({"members": [m2.id]})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("FORBIDDEN")));
    let (s, v) = app.post(&members, Some(&owner.token), json!({"members": [m2.id, m3.id]})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["data"]["members"].as_array().map(Vec::len), Some(2));

    // Roles: only the owner changes them.
    let (s, _) = app.put(&format!("{members}/{}", m2.id), &m1.token, json!({"role": 2})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = app.put(&format!("{members}/{}", m1.id), &owner.token, json!({"role": 2})).await;
    assert_eq!((s, v["data"]["role"].as_i64()), (StatusCode::OK, Some(2)), "{v}");
    let (s, _) = app.put(&format!("{members}/{}", m2.id), &owner.token, json!({"role": 3})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "no second owner");
    let (s, _) = app.put(&format!("{members}/{}", outsider.id), &owner.token, json!({"role": 2})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The admin edits the group and removes members, but not other admins or the owner.
    let (s, v) = app.put(&format!("/api/conversations/{g}"), &m1.token, json!({"name": "renamed"})).await;
    assert_eq!((s, v["data"]["name"].as_str()), (StatusCode::OK, Some("renamed")), "{v}");
    let (s, _) = app.put(&format!("/api/conversations/{g}"), &m2.token, json!({"name": "nope"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.delete(&format!("{members}/{}", owner.id), &m1.token).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = app.delete(&format!("{members}/{}", m3.id), &m1.token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A member leaves; the owner cannot.
    let (s, _) = app.delete(&format!("{members}/{}", m2.id), &m2.token).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.delete(&format!("{members}/{}", owner.id), &owner.token).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, v) = app.get(&members, &owner.token).await;
    assert_eq!(s, StatusCode::OK);
    let list = v["data"]["members"].as_array().expect("members");
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0]["role"], 3, "owner first");
    assert_eq!(list[0]["user"]["username"], "owner");
    let (_, v) = app.get(&format!("{members}?role=2"), &owner.token).await;
    assert_eq!(v["data"]["members"].as_array().map(Vec::len), Some(1));
    let (_, v) = app.get(&format!("/api/conversations/{g}"), &owner.token).await;
    assert_eq!(v["data"]["memberCount"], 2);
    assert_eq!(v["data"]["members"].as_array().map(Vec::len), Some(2));

    // Outsiders and unknown conversations.
    let (s, v) = app.get(&format!("/api/conversations/{g}"), &outsider.token).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("FORBIDDEN")));
    let (s, v) = app.get(&format!("/api/conversations/{g}/messages"), &m3.token).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "removed members lose access: {v}");
    let (s, v) = app.get("/api/conversations/g_nope", &owner.token).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("CONVERSATION_NOT_FOUND")));
    let (s, v) = app.post("/api/conversations/g_nope/messages", Some(&owner.token), json!({"content": "x"})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("CONVERSATION_NOT_FOUND")));
    let (s, v) = app.post(&format!("/api/conversations/{g}/messages"), Some(&outsider.token), json!({"content": "x"})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("FORBIDDEN")));
}

#[tokio::test]
async fn history_by_cursor_and_after() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    for i in 1..=7 {
        let m = app.send_rest(&a, &c, &format!("m{i}")).await;
        assert_eq!(m["seqId"], i);
    }
    app.stored(&a, &c, 7).await;
    let path = format!("/api/conversations/{c}/messages");
    let (s, v) = app.get(&format!("{path}?limit=3"), &b.token).await;
    assert_eq!(s, StatusCode::OK);
    let seqs = |v: &serde_json::Value| {
        v["data"]["messages"].as_array().expect("messages").iter().map(|m| m["seqId"].as_i64().unwrap_or(-1)).collect::<Vec<_>>()
    };
    assert_eq!(seqs(&v), [7, 6, 5], "newest first");
    assert_eq!(v["data"]["hasMore"], true);
    let cursor = v["data"]["nextCursor"].as_i64().expect("cursor");
    let (_, v) = app.get(&format!("{path}?limit=3&cursor={cursor}"), &b.token).await;
    assert_eq!(seqs(&v), [4, 3, 2]);
    let cursor = v["data"]["nextCursor"].as_i64().expect("cursor");
    let (_, v) = app.get(&format!("{path}?limit=3&cursor={cursor}"), &b.token).await;
    assert_eq!(seqs(&v), [1]);
    assert_eq!(v["data"]["hasMore"], false);
    assert!(v["data"]["nextCursor"].is_null());
    let (_, v) = app.get(&format!("{path}?after=2&limit=3"), &b.token).await;
    assert_eq!(seqs(&v), [3, 4, 5], "gap fill is oldest first");
    assert_eq!(v["data"]["messages"][0]["sender"]["username"], "alice");
    for bad in ["limit=0", "limit=101", "limit=x", "cursor=abc", "cursor=5&after=1"] {
        let (s, v) = app.get(&format!("{path}?{bad}"), &b.token).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR")), "{bad}");
    }
}

#[tokio::test]
async fn unread_counts_and_mark_read_never_go_back() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    for i in 0..3 {
        app.send_rest(&a, &c, &format!("hi {i}")).await;
    }
    app.stored(&b, &c, 3).await;
    let unread = |v: &serde_json::Value, who: &str| {
        v["data"]["conversations"]
            .as_array()
            .expect("list")
            .iter()
            .find(|x| x["id"] == c.as_str())
            .map(|x| x["unreadCount"].as_i64())
            .unwrap_or_else(|| panic!("{who}: {v}"))
    };
    let (_, v) = app.get("/api/conversations", &b.token).await;
    assert_eq!(unread(&v, "b"), Some(3));
    assert_eq!(v["data"]["conversations"][0]["lastMessage"]["content"], "hi 2");
    let (_, v) = app.get("/api/conversations", &a.token).await;
    assert_eq!(unread(&v, "a"), Some(0), "own messages are read");

    let read = format!("/api/conversations/{c}/read");
    let (s, v) = app.put(&read, &b.token, json!({"seqId": 2})).await;
    assert_eq!((s, v["data"]["unreadCount"].as_i64()), (StatusCode::OK, Some(1)), "{v}");
    let (s, v) = app.put(&read, &b.token, json!({"seqId": 1})).await;
    assert_eq!((s, v["data"]["unreadCount"].as_i64()), (StatusCode::OK, Some(1)), "pointer never moves back: {v}");
    let (_, v) = app.get("/api/conversations", &b.token).await;
    assert_eq!(unread(&v, "b"), Some(1));
    let (s, _) = app.put(&read, &b.token, json!({"seqId": "x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sql_looking_strings_are_stored_verbatim() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let nasty = "'; DROP TABLE users; -- \" % _ \\ \u{1F600}";
    let (s, v) = app.post("/api/conversations", Some(&a.token), json!({"type": 2, "name": nasty, "members": []})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["data"]["name"], nasty);
    let g = v["data"]["id"].as_str().expect("id").to_string();
    let m = app.send_rest(&a, &g, nasty).await;
    assert_eq!(m["content"], nasty);
    let stored = app.stored(&a, &g, 1).await;
    assert_eq!(stored[0]["content"], nasty);
    let (s, _) = app.get("/api/users/profile", &a.token).await;
    assert_eq!(s, StatusCode::OK, "users table still there");
}

#[tokio::test]
async fn the_read_pointer_cannot_pass_the_newest_message() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.single(&a, &b).await;
    app.send_rest(&a, &c, "one").await;
    app.send_rest(&a, &c, "two").await;
    app.stored(&b, &c, 2).await;
    let (s, v) = app.put(&format!("/api/conversations/{c}/read"), &b.token, json!({"seqId": 1_000_000_000_000i64})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["lastReadSeqId"], 2);
    assert_eq!(v["data"]["unreadCount"], 0);
    app.send_rest(&a, &c, "three").await;
    app.stored(&b, &c, 3).await;
    let (_, v) = app.get(&format!("/api/conversations/{c}"), &b.token).await;
    assert_eq!(v["data"]["unreadCount"], 1, "the next message is unread: {v}");
}
