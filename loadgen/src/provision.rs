//! Users and conversations through the HTTP API (`--auth http`).
//!
//! Requests run with bounded concurrency; `429 RATE_LIMITED` is retried with
//! backoff (the server limits requests per client IP), any other failure is
//! counted by code and fails provisioning.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::Error;
use crate::cli::Scenario;
use crate::plan::{Plan, User};
use crate::stats::Stats;

/// Password of users registered by the loadgen.
pub const PASSWORD: &str = "loadgen-secret-1";
const RETRIES: u32 = 50;

/// An HTTP API client.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    stats: Arc<Stats>,
}

impl Api {
    /// `base` like `http://127.0.0.1:8081` (a trailing `/api` is accepted).
    pub fn new(base: &str, stats: Arc<Stats>) -> Api {
        let base = base.trim_end_matches('/').trim_end_matches("/api").to_string();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        Api { client, base, stats }
    }

    /// POSTs JSON; returns `data` of the success envelope, or the error code.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Value, String> {
        let mut attempt = 0;
        loop {
            let mut req = self.client.post(format!("{}{path}", self.base)).json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let code = match req.send().await {
                Err(e) => format!("HTTP_{}", if e.is_timeout() { "TIMEOUT" } else { "CONNECT" }),
                Ok(resp) => {
                    let status = resp.status();
                    let v: Value = resp.json().await.unwrap_or(Value::Null);
                    if status.is_success() && v["success"] == true {
                        return Ok(v["data"].clone());
                    }
                    v["code"].as_str().map(str::to_string).unwrap_or_else(|| format!("HTTP_{}", status.as_u16()))
                }
            };
            self.stats.error(&code);
            attempt += 1;
            if code != "RATE_LIMITED" || attempt >= RETRIES {
                return Err(format!("POST {path}: {code}"));
            }
            tokio::time::sleep(Duration::from_millis((50 * u64::from(attempt)).min(1000))).await;
        }
    }

    fn user_of(data: &Value) -> Result<User, String> {
        let u = &data["user"];
        match (u["id"].as_str(), u["username"].as_str(), data["accessToken"].as_str()) {
            (Some(id), Some(name), Some(token)) => {
                Ok(User { id: id.to_string(), name: name.to_string(), guest: u["isGuest"] == true, token: Some(token.to_string()) })
            }
            _ => Err("login answer without user id, username or accessToken".into()),
        }
    }

    pub async fn guest(&self) -> Result<User, String> {
        Self::user_of(&self.post("/api/auth/guest", None, json!({})).await?)
    }

    pub async fn login(&self, name: &str, password: &str) -> Result<User, String> {
        Self::user_of(&self.post("/api/auth/login", None, json!({"username": name, "password": password})).await?)
    }

    pub async fn register_and_login(&self, name: &str) -> Result<User, String> {
        self.post("/api/auth/register", None, json!({"username": name, "password": PASSWORD})).await?;
        self.login(name, PASSWORD).await
    }

    /// Creates a single chat (`members = [other]`) or a group; returns its id.
    pub async fn conversation(&self, owner: &User, others: &[&User], name: &str) -> Result<String, String> {
        let ids: Vec<&str> = others.iter().map(|u| u.id.as_str()).collect();
        let body = if others.len() == 1 && name.is_empty() {
            json!({"type": 1, "members": ids})
        } else {
            json!({"type": 2, "name": name, "members": ids})
        };
        let data = self.post("/api/conversations", owner.token.as_deref(), body).await?;
        data["id"].as_str().map(str::to_string).ok_or_else(|| "conversation answer without id".to_string())
    }
}

/// Runs `f(i)` for `0..n` with at most `concurrency` in flight, in order.
async fn bounded<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Result<Vec<T>, Error>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let results: Vec<Result<T, String>> = futures::stream::iter((0..n).map(f)).buffered(concurrency.max(1)).collect().await;
    results.into_iter().collect::<Result<Vec<T>, String>>().map_err(Error::Setup)
}

/// Creates the users and conversations of scenario `s` and returns the plan.
pub async fn provision(api: &Api, s: &Scenario, concurrency: usize) -> Result<Plan, Error> {
    let tag = crate::run_tag();
    let run = tag.as_str();
    let registered = |n: usize| bounded(n, concurrency, move |i| async move { api.register_and_login(&format!("lg_{run}_{i}")).await });
    let guests = |n: usize| bounded(n, concurrency, move |_| async move { api.guest().await });
    let (users, convs): (Vec<User>, Vec<(String, Vec<usize>)>) = match s {
        Scenario::Connect { connections, .. } => (guests(*connections).await?, vec![]),
        Scenario::Room { members, room, .. } => {
            if room != "world" {
                return Err(Error::Usage("--auth http provisions guests, who are members of the `world` room only".into()));
            }
            (guests(*members).await?, vec![(room.clone(), (0..*members).collect())])
        }
        Scenario::Chat { pairs, .. } => {
            let users = registered(2 * pairs).await?;
            let u = &users;
            let ids = bounded(*pairs, concurrency, |p| async move { api.conversation(&u[2 * p], &[&u[2 * p + 1]], "").await }).await?;
            let convs = ids.into_iter().enumerate().map(|(p, id)| (id, vec![2 * p, 2 * p + 1])).collect();
            (users, convs)
        }
        Scenario::Group { groups, size, .. } => {
            let size = (*size).max(2);
            let users = registered(groups * size).await?;
            let u = &users;
            let ids = bounded(*groups, concurrency, |g| async move {
                let others: Vec<&User> = u[g * size + 1..(g + 1) * size].iter().collect();
                api.conversation(&u[g * size], &others, &format!("lg group {g}")).await
            })
            .await?;
            let convs = ids.into_iter().enumerate().map(|(g, id)| (id, (g * size..(g + 1) * size).collect())).collect();
            (users, convs)
        }
    };
    // Re-derive senders and rates exactly as a file-based plan would.
    let file = Plan {
        users,
        convs: convs.into_iter().map(|(id, members)| crate::plan::Conv { id, members, senders: vec![] }).collect(),
        ..Plan::default()
    }
    .to_file(s);
    Plan::from_file(s, &file)
}

/// Logs in the users of a file plan that carry no token (seeded users, `--auth http`).
pub async fn login_all(api: &Api, plan: &mut Plan, concurrency: usize) -> Result<(), Error> {
    let password = plan.password.clone().unwrap_or_else(|| PASSWORD.to_string());
    let users = &plan.users;
    let pw = &password;
    let tokens = bounded(users.len(), concurrency, |i| async move {
        match &users[i].token {
            Some(t) => Ok(t.clone()),
            None => api.login(&users[i].name, pw).await.and_then(|u| u.token.ok_or_else(|| "no token".into())),
        }
    })
    .await?;
    for (u, t) in plan.users.iter_mut().zip(tokens) {
        u.token = Some(t);
    }
    Ok(())
}
