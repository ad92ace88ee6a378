//! The HTTP contract itself: envelope, bad input, operations endpoints, and
//! the OpenAPI document matching the real routes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn bad_bodies_are_validation_errors_never_500() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let url = format!("{}/api/auth/register", app.base);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{\"username\": ".to_vec()),
        ("wrong types", br#"{"username": 5, "password": []}"#.to_vec()),
        ("missing field", br#"{"username": "zed"}"#.to_vec()),
        ("not an object", b"[1,2,3]".to_vec()),
        ("oversize", format!("{{\"username\":\"{}\",\"password\":\"x\"}}", "z".repeat(200 * 1024)).into_bytes()),
    ];
    // Its own client: the server may close a connection after refusing an
    // oversize body unread, and the shared pool must not reuse that one.
    let client = reqwest::Client::new();
    for (what, body) in cases {
        let r = client.post(&url).header("content-type", "application/json").body(body).send().await.expect("sent");
        let status = r.status();
        let v: Value = r.json().await.expect("JSON error body");
        assert_eq!(
            (status, v["code"].as_str(), v["success"].as_bool()),
            (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR"), Some(false)),
            "{what}: {v}"
        );
    }
    // Unknown fields are ignored.
    let (s, _) = app.post("/api/auth/register", None, json!({"username": "zed", "password": PASSWORD, "extra": 1})).await;
    assert_eq!(s, StatusCode::CREATED);
    // Content over the limit over REST is 413.
    let g = app.group(&a, "g", &[]).await;
    let (s, v) = app.post(&format!("/api/conversations/{g}/messages"), Some(&a.token), json!({"content": "é".repeat(2049)})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("MESSAGE_TOO_LARGE")));
    let (s, v) = app.post(&format!("/api/conversations/{g}/messages"), Some(&a.token), json!({"content": "x", "messageType": 9})).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR")));
    let (s, v) = app.get("/api/nothing/here", &a.token).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    let (s, _) = app.delete("/api/users/profile", &a.token).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = app.delete(&format!("/api/conversations/{g}/members/not-a-number"), &a.token).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_metrics_and_cors() {
    let app = spawn_app().await;
    let r = app.client.get(format!("{}/healthz", app.base)).send().await.expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    // Embedded: store and gateway; distributed: gateway, logic and redis.
    assert_eq!(v["checks"]["gateway"], "ok");
    let checks = v["checks"].as_object().expect("checks");
    assert!(checks.len() >= 2 && checks.values().all(|c| c == "ok"), "{v}");
    app.user("alice").await;
    let m = app.metrics().await;
    assert!(m.contains("gochat_http_requests_total{method=\"POST\",route=\"/api/auth/register\",status=\"201\"} 1"), "{m}");
    assert!(m.contains("gochat_gateway_connections{shard=\"0\"}"), "{m}");
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/api/auth/login", app.base))
        .header("Origin", "http://example.com")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(r.status().is_success());
    assert_eq!(r.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("*"));
}

#[tokio::test]
async fn openapi_matches_routes() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let r = app.client.get(format!("{}/api/openapi.json", app.base)).send().await.expect("openapi");
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let file: Value = serde_json::from_str(include_str!("../../../im-gateway/openapi.json")).expect("repo file parses");
    assert_eq!(doc, file, "served document is the file in the repo");
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "world").replace("{userId}", "1");
        for (method, _) in ops.as_object().expect("ops") {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let r = app.client.request(m.clone(), format!("{}{}", app.base, concrete)).bearer_auth(&a.token).send().await.expect("sent");
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is documented but not routed");
            assert!(!body.contains("no such endpoint"), "{method} {path} is documented but not routed");
            checked += 1;
        }
    }
    assert!(checked >= 26, "every documented operation checked ({checked})");
    // And the other way round: every route in the router's source is documented.
    let routes = routed();
    assert!(routes.len() >= 26, "parsed the router: {routes:?}");
    for (method, path) in &routes {
        let documented = paths.get(path.as_str()).and_then(|ops| ops.get(method.as_str())).is_some();
        assert!(documented, "{method} {path} is routed but not in openapi.json");
    }
    assert_eq!(routes.len(), checked, "as many documented operations as routes");
}

/// (method, path) of every `.route(...)` in the gateway's router source.
fn routed() -> Vec<(String, String)> {
    let src = include_str!("../../../im-gateway/src/http/routes.rs");
    let mut out = Vec::new();
    for line in src.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let Some(rest) = line.strip_prefix(".route(\"") else { continue };
        let Some((path, handlers)) = rest.split_once('"') else { continue };
        for method in ["get", "post", "put", "delete"] {
            if handlers.contains(&format!("{method}(")) {
                out.push((method.to_string(), path.to_string()));
            }
        }
    }
    out
}

#[tokio::test]
async fn bad_path_encoding_is_a_validation_error() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let (s, v) = app.get("/api/conversations/%FF%FE", &a.token).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR")), "{v}");
}

#[tokio::test]
async fn admin_shards_answers_loopback_or_the_admin_token() {
    let app = spawn_app().await;
    let a = app.user("alice").await;
    let _ws = app.ws(&a).await;
    let r = app.client.get(format!("{}/admin/shards", app.base)).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    let shards = v["data"]["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0]["connections"], 1, "{v}");

    let app = spawn_app_with(|c| c.http.admin_token = "s3cret-admin-token".into()).await;
    let r = app.client.get(format!("{}/admin/shards", app.base)).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.client.get(format!("{}/admin/shards", app.base)).bearer_auth("s3cret-admin-token").send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
}
