//! Friend requests: send, accept, reject, list.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn request_accept_reject_and_list() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let c = app.user("carol").await;

    let (s, v) = app.post("/api/friends/requests", Some(&a.token), json!({"targetUserId": b.id, "message": "hi bob"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["data"]["status"], 0);
    assert_eq!(v["data"]["requester"]["username"], "alice");
    let req_ab = v["data"]["id"].as_str().expect("id").to_string();
    let (s, v) = app.post("/api/friends/requests", Some(&a.token), json!({"targetUserId": b.id})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::CONFLICT, Some("ALREADY_REQUESTED")));
    let (s, v) = app.post("/api/friends/requests", Some(&b.token), json!({"targetUserId": a.id})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::CONFLICT, Some("ALREADY_REQUESTED")), "pending the other way");
    let (s, _) = app.post("/api/friends/requests", Some(&a.token), json!({"targetUserId": a.id})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app.post("/api/friends/requests", Some(&a.token), json!({"targetUserId": "12345"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (_, v) = app.get("/api/friends/requests?type=received", &b.token).await;
    assert_eq!(v["data"]["requests"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["data"]["requests"][0]["message"], "hi bob");
    let (_, v) = app.get("/api/friends/requests?type=sent", &a.token).await;
    assert_eq!(v["data"]["requests"].as_array().map(Vec::len), Some(1));
    let (s, _) = app.get("/api/friends/requests?type=sideways", &a.token).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Only the target answers.
    let (s, _) = app.put(&format!("/api/friends/requests/{req_ab}"), &a.token, json!({"action": "accept"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.put(&format!("/api/friends/requests/{req_ab}"), &b.token, json!({"action": "maybe"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = app.put(&format!("/api/friends/requests/{req_ab}"), &b.token, json!({"action": "accept"})).await;
    assert_eq!((s, v["data"]["status"].as_i64()), (StatusCode::OK, Some(1)), "{v}");
    let (s, v) = app.post("/api/friends/requests", Some(&b.token), json!({"targetUserId": a.id})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::CONFLICT, Some("ALREADY_FRIENDS")));

    // Friends both ways, and a single chat between them exists.
    for (me, other) in [(&a, &b), (&b, &a)] {
        let (_, v) = app.get("/api/friends", &me.token).await;
        let friends = v["data"]["friends"].as_array().expect("friends");
        assert_eq!(friends.len(), 1, "{v}");
        assert_eq!(friends[0]["friendId"], other.id.as_str());
        assert_eq!(friends[0]["friend"]["username"], other.name.as_str());
    }
    let (_, v) = app.get("/api/conversations?type=1", &a.token).await;
    assert_eq!(v["data"]["conversations"].as_array().map(Vec::len), Some(1), "{v}");

    // Reject, then ask again.
    let (_, v) = app.post("/api/friends/requests", Some(&c.token), json!({"targetUserId": a.id})).await;
    let req_ca = v["data"]["id"].as_str().expect("id").to_string();
    let (s, v) = app.put(&format!("/api/friends/requests/{req_ca}"), &a.token, json!({"action": "reject"})).await;
    assert_eq!((s, v["data"]["status"].as_i64()), (StatusCode::OK, Some(2)));
    let (s, _) = app.put(&format!("/api/friends/requests/{req_ca}"), &a.token, json!({"action": "accept"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "already answered");
    let (_, v) = app.get("/api/friends", &c.token).await;
    assert_eq!(v["data"]["friends"].as_array().map(Vec::len), Some(0));
    let (s, _) = app.post("/api/friends/requests", Some(&c.token), json!({"targetUserId": a.id})).await;
    assert_eq!(s, StatusCode::CREATED, "a rejected request can be sent again");
    let (_, v) = app.get("/api/friends/requests?type=received&status=0", &a.token).await;
    assert_eq!(v["data"]["requests"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn concurrent_answers_to_one_request_have_one_winner() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let (_, v) = app.post("/api/friends/requests", Some(&a.token), json!({"targetUserId": b.id})).await;
    let id = v["data"]["id"].as_str().expect("id").to_string();
    let path = format!("/api/friends/requests/{id}");
    let (accept, reject) =
        tokio::join!(app.put(&path, &b.token, json!({"action": "accept"})), app.put(&path, &b.token, json!({"action": "reject"})));
    let wins = [accept.0, reject.0].iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(wins, 1, "{accept:?} {reject:?}");
    let friends = app.get("/api/friends", &a.token).await.1["data"]["friends"].as_array().map(Vec::len);
    assert_eq!(friends, Some(usize::from(accept.0 == StatusCode::OK)), "friendship only if the accept won");
}
