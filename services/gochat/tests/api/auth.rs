//! Register, login, guests, refresh, logout, profile and search.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn register_login_refresh_logout() {
    let app = spawn_app().await;
    let (s, v) = app.post("/api/auth/register", None, json!({"username": "alice", "password": PASSWORD})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["data"]["user"]["username"], "alice");
    assert_eq!(v["data"]["user"]["isGuest"], false);
    assert!(v["data"]["user"]["id"].is_string());
    assert!(v["data"]["user"].get("passwordHash").is_none());

    let (s, v) = app.post("/api/auth/register", None, json!({"username": "alice", "password": PASSWORD})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::CONFLICT, Some("USER_EXISTS")));
    for (name, pw) in [("al", PASSWORD), ("bad name", PASSWORD), ("guest_x", PASSWORD), ("bob", "12345")] {
        let (s, v) = app.post("/api/auth/register", None, json!({"username": name, "password": pw})).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR")), "{name}/{pw}");
    }

    let (s, v) = app.post("/api/auth/login", None, json!({"username": "alice", "password": "wrong-password"})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("AUTH_FAILED")));
    let (s, v) = app.post("/api/auth/login", None, json!({"username": "nobody", "password": PASSWORD})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("AUTH_FAILED")));

    let (s, v) = app.post("/api/auth/login", None, json!({"username": "alice", "password": PASSWORD})).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["data"]["expiresIn"].as_i64().expect("expiresIn") > 1_600_000_000, "Unix timestamp");
    let alice = tokens_user(&v);
    let (s, v) = app.get("/api/users/profile", &alice.token).await;
    assert_eq!((s, v["data"]["username"].as_str()), (StatusCode::OK, Some("alice")));

    // Refresh rotates: the new pair works, the old refresh token does not.
    let (s, v) = app.post("/api/auth/refresh", None, json!({"refreshToken": alice.refresh})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let renewed = tokens_user(&v);
    assert_ne!(renewed.token, alice.token);
    let (s, v) = app.post("/api/auth/refresh", None, json!({"refreshToken": alice.refresh})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")));
    let (s, _) = app.post("/api/auth/refresh", None, json!({"refreshToken": renewed.token})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "an access token is not a refresh token");

    // Logout: that access token and its refresh token stop working at once.
    let (s, v) = app.post("/api/auth/logout", Some(&renewed.token), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app.get("/api/users/profile", &renewed.token).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")));
    let (s, _) = app.post("/api/auth/refresh", None, json!({"refreshToken": renewed.refresh})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Other sessions of the same user are unaffected.
    let (s, _) = app.get("/api/users/profile", &alice.token).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn missing_or_bad_tokens_are_unauthorized() {
    let app = spawn_app().await;
    let (s, v) = app.request(reqwest::Method::GET, "/api/users/profile", None, None).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")));
    assert_eq!(v["success"], false);
    for bad in ["garbage", "a.b.c", ""] {
        let (s, v) = app.get("/api/users/profile", bad).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")), "{bad:?}");
    }
}

#[tokio::test]
async fn logout_closes_the_sockets_opened_with_that_token() {
    let app = spawn_app().await;
    let a1 = app.user("alice").await;
    let a2 = app.login("alice").await;
    let mut s1 = app.ws(&a1).await;
    let mut s1b = app.ws(&a1).await;
    let mut s2 = app.ws(&a2).await;
    let (s, _) = app.post("/api/auth/logout", Some(&a1.token), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(s1.closed_code().await, Some(4003));
    assert_eq!(s1b.closed_code().await, Some(4003));
    s2.assert_alive().await;
    // And the token can no longer open a socket.
    let url = format!("ws://{}/ws?token={}", app.ws, a1.token);
    assert!(async_tungstenite::tokio::connect_async(url).await.is_err());
}

#[tokio::test]
async fn guests_join_the_world_room_and_have_limits() {
    let app = spawn_app().await;
    let g1 = app.guest().await;
    let g2 = app.guest().await;
    assert!(g1.name.starts_with("guest_"));
    let (_, v) = app.get("/api/users/profile", &g1.token).await;
    assert_eq!(v["data"]["isGuest"], true);
    let (s, v) = app.get("/api/conversations", &g1.token).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["data"]["conversations"].as_array().expect("list").iter().any(|c| c["id"] == "world" && c["type"] == 3), "{v}");

    for (method, path, body) in [
        (reqwest::Method::PUT, "/api/users/profile", Some(json!({"avatarUrl": "http://x/a.png"}))),
        (reqwest::Method::GET, "/api/users/search?q=gu", None),
        (reqwest::Method::POST, "/api/conversations", Some(json!({"type": 2, "name": "g", "members": []}))),
        (reqwest::Method::POST, "/api/friends/requests", Some(json!({"targetUserId": g2.id}))),
    ] {
        let (s, v) = app.request(method.clone(), path, Some(&g1.token), body).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("FORBIDDEN")), "{method} {path}");
    }

    // Guests chat in the world room over WebSocket.
    let mut w1 = app.ws(&g1).await;
    let mut w2 = app.ws(&g2).await;
    w1.send_message("world", "hello world", "g-1").await;
    let ack = w1.next_of("message-ack").await;
    assert_eq!(ack["data"]["client_msg_id"], "g-1");
    let got = w2.next_of("new-message").await;
    assert_eq!(got["data"]["content"], "hello world");
    assert_eq!(got["data"]["conversationId"], "world");
    assert_eq!(got["data"]["sender"]["id"], g1.id.as_str());
}

#[tokio::test]
async fn registered_users_may_join_the_world_room() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let b = app.user("bob").await;
    let (s, v) = app.post("/api/conversations/world/members", Some(&a.token), json!({"members": [b.id]})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("FORBIDDEN")), "only yourself");
    let (s, v) = app.get("/api/conversations/world", &a.token).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not a member yet: {v}");
    let (s, v) = app.post("/api/conversations/world/members", Some(&a.token), json!({"members": [a.id]})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app.get("/api/conversations/world", &a.token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["myMembership"]["role"], 1);
}

#[tokio::test]
async fn profile_update_and_search() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    app.user("alina").await;
    app.user("bob").await;
    let (s, v) = app.put("/api/users/profile", &a.token, json!({"avatarUrl": "https://cdn.example/a.png"})).await;
    assert_eq!((s, v["data"]["avatarUrl"].as_str()), (StatusCode::OK, Some("https://cdn.example/a.png")));
    let (_, v) = app.get("/api/users/profile", &a.token).await;
    assert_eq!(v["data"]["avatarUrl"], "https://cdn.example/a.png", "cache was invalidated");

    let (s, v) = app.get("/api/users/search?q=ali", &a.token).await;
    assert_eq!(s, StatusCode::OK);
    let mut names: Vec<String> =
        v["data"]["users"].as_array().expect("users").iter().map(|u| u["username"].as_str().unwrap_or("").to_string()).collect();
    names.sort();
    assert_eq!(names, ["alice", "alina"]);
    let (_, v) = app.get("/api/users/search?q=li&limit=1", &a.token).await;
    assert_eq!(v["data"]["users"].as_array().map(Vec::len), Some(1));
    let (_, v) = app.get("/api/users/search?q=%25", &a.token).await;
    assert_eq!(v["data"]["users"].as_array().map(Vec::len), Some(0), "% is literal");
    let (s, v) = app.get("/api/users/search?q=a&limit=50", &a.token).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR")));
    let (s, _) = app.get("/api/users/search?q=a&limit=abc", &a.token).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_yield_one_new_pair() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let body = json!({"refreshToken": a.refresh});
    let (r1, r2, r3) = tokio::join!(
        app.post("/api/auth/refresh", None, body.clone()),
        app.post("/api/auth/refresh", None, body.clone()),
        app.post("/api/auth/refresh", None, body.clone()),
    );
    let ok = [r1.0, r2.0, r3.0].iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 1, "exactly one rotation wins: {:?}", [r1.0, r2.0, r3.0]);
}

#[tokio::test]
async fn account_creation_is_rate_limited_per_ip() {
    let app = spawn_app_with(|c| {
        c.http.signup_rate_per_ip = 1;
        c.http.signup_burst_per_ip = 2;
    })
    .await;
    let (s1, _) = app.post("/api/auth/guest", None, json!({})).await;
    let (s2, _) = app.post("/api/auth/register", None, json!({"username": "alice", "password": PASSWORD})).await;
    let (s3, v) = app.post("/api/auth/guest", None, json!({})).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!((s3, v["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("RATE_LIMITED")));
    // Logging in is not account creation.
    let (s, _) = app.post("/api/auth/login", None, json!({"username": "alice", "password": PASSWORD})).await;
    assert_eq!(s, StatusCode::OK);
}
