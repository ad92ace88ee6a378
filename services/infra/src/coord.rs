//! Coordination on etcd (distributed mode): configuration documents,
//! lease-based registration and discovery, and snowflake node-id claims.
//!
//! # Keys
//! - `/gochat/config/{env}/{doc}`: a JSON configuration document; `doc` is
//!   `common` (every service) or a service name (`gateway`, `logic`, `repo`,
//!   `task`). A service's configuration is defaults → `common` → its own
//!   document → `GOCHAT_*` variables → flags ([`Config::from_documents`]).
//! - `/gochat/services/{env}/{service}/{instance}`: `{"addr": ...}` under the
//!   instance's lease; it disappears when the instance stops renewing it.
//! - `/gochat/nodes/{env}/{n}`: snowflake node id `n` (0..=1023) claimed
//!   under a lease, so no two running processes mint the same ids.
//!
//! Watches re-read the whole prefix on every event: documents and instance
//! lists are small, and a re-read can never miss an update the way applying
//! single events after a reconnect or a compaction can.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Config, ConfigError, FlagOverrides, LiveConfig};
use crate::shutdown::Shutdown;

/// The documents a configuration directory may hold, besides `common`.
pub const SERVICES: [&str; 4] = ["gateway", "logic", "repo", "task"];

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd at {endpoints}: {source}")]
    Connect { endpoints: String, source: etcd_client::Error },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("configuration document {key} is not valid JSON: {reason}")]
    BadDocument { key: String, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no free snowflake node id in /gochat/nodes/{0}/ (1024 processes hold one)")]
    NoNodeId(String),
    #[error("instance id {0} is already registered by a running process; give each instance its own --instance-id")]
    DuplicateInstance(String),
}

pub type CoordResult<T> = Result<T, CoordError>;

/// A connection to etcd for one environment.
#[derive(Clone)]
pub struct Coord {
    client: Client,
    env: String,
}

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub addr: String,
}

impl Coord {
    /// Connects (5 s connect timeout, keep-alives so a dead etcd is noticed).
    pub async fn connect(endpoints: &[String], env: &str) -> CoordResult<Coord> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let client = tokio::time::timeout(Duration::from_secs(8), Client::connect(endpoints, Some(opts)))
            .await
            .map_err(|_| CoordError::Connect {
                endpoints: endpoints.join(","),
                source: etcd_client::Error::InvalidArgs("no answer within 8 s".into()),
            })?
            .map_err(|source| CoordError::Connect { endpoints: endpoints.join(","), source })?;
        let mut c = Coord { client, env: env.to_string() };
        // `connect` is lazy about the first request; make a bad endpoint fail here.
        c.client.status().await.map_err(|source| CoordError::Connect { endpoints: endpoints.join(","), source })?;
        Ok(c)
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    pub fn config_prefix(&self) -> String {
        format!("/gochat/config/{}/", self.env)
    }

    fn services_prefix(&self, service: &str) -> String {
        format!("/gochat/services/{}/{service}/", self.env)
    }

    // ---- configuration ---------------------------------------------------------

    /// Every configuration document of the environment, by name.
    pub async fn config_documents(&self) -> CoordResult<BTreeMap<String, serde_json::Value>> {
        let prefix = self.config_prefix();
        let resp = self.client.clone().get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
        let mut docs = BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let name = key.trim_start_matches(&prefix).to_string();
            let value =
                serde_json::from_slice(kv.value()).map_err(|e| CoordError::BadDocument { key: key.clone(), reason: e.to_string() })?;
            docs.insert(name, value);
        }
        Ok(docs)
    }

    pub async fn put_document(&self, name: &str, doc: &serde_json::Value) -> CoordResult<()> {
        let key = format!("{}{name}", self.config_prefix());
        self.client.clone().put(key, doc.to_string(), None).await?;
        Ok(())
    }

    /// Writes and deletes documents in one transaction, so a watcher never
    /// sees half of a change.
    pub async fn apply_documents(&self, put: &[(&str, &serde_json::Value)], delete: &[&str]) -> CoordResult<()> {
        let prefix = self.config_prefix();
        let mut ops: Vec<TxnOp> = put.iter().map(|(name, doc)| TxnOp::put(format!("{prefix}{name}"), doc.to_string(), None)).collect();
        ops.extend(delete.iter().map(|name| TxnOp::delete(format!("{prefix}{name}"), None)));
        if !ops.is_empty() {
            self.client.clone().txn(Txn::new().and_then(ops)).await?;
        }
        Ok(())
    }

    /// The configuration of `service` now (defaults when etcd holds nothing).
    pub async fn load_config(&self, service: &str, flags: &FlagOverrides) -> CoordResult<Config> {
        let docs = self.config_documents().await?;
        Ok(config_for(service, &docs, flags)?)
    }

    /// Calls `on_change(docs)` with every configuration document after each
    /// change under the environment's prefix, until shutdown. Reconnects
    /// with backoff when the watch breaks.
    pub async fn watch_documents<F>(&self, shutdown: Shutdown, on_change: F)
    where
        F: FnMut(BTreeMap<String, serde_json::Value>) + Send,
    {
        let prefix = self.config_prefix();
        self.watch_prefix(
            &prefix,
            shutdown,
            move |c| {
                let c = c.clone();
                async move { c.config_documents().await }
            },
            on_change,
        )
        .await
    }

    /// Keeps `live` equal to the configuration of `service` in etcd until
    /// shutdown. A document that does not validate is refused (logged, the
    /// running configuration stays); keys that only apply after a restart are named.
    pub async fn follow_config(&self, service: &str, flags: FlagOverrides, live: LiveConfig, shutdown: Shutdown) {
        let service = service.to_string();
        self.watch_documents(shutdown, move |docs| match config_for(&service, &docs, &flags) {
            Ok(new) => {
                let old = live.get();
                let restart = old.restart_needed(&new);
                if !restart.is_empty() {
                    tracing::warn!(keys = ?restart, "configuration in etcd differs from the running one in keys that take effect after a restart");
                }
                let merged = old.with_live_values_of(&new);
                if merged == *old {
                    return;
                }
                match merged.validate() {
                    Ok(()) => {
                        tracing::info!("configuration changed in etcd; live values applied");
                        live.replace(merged);
                    }
                    Err(e) => tracing::error!(error = %e, "live values from etcd do not fit the running configuration; refused"),
                }
            }
            Err(e) => tracing::error!(error = %e, "configuration in etcd refused; keeping the running one"),
        })
        .await
    }

    // ---- registration and discovery ---------------------------------------------

    /// Registers `instance` of `service` under a lease of `ttl_secs`, kept
    /// alive until shutdown, then revoked (the key disappears at once).
    /// If the lease is lost (etcd unreachable for longer than the TTL), the
    /// instance registers again when etcd is back.
    pub async fn register(
        &self,
        service: &str,
        instance: Instance,
        ttl_secs: i64,
        shutdown: Shutdown,
    ) -> CoordResult<tokio::task::JoinHandle<()>> {
        let key = format!("{}{}", self.services_prefix(service), instance.id);
        let value = serde_json::to_string(&instance).map_err(|e| CoordError::BadDocument { key: key.clone(), reason: e.to_string() })?;
        let mut client = self.client.clone();
        let lease = claim_with_lease(&mut client, &key, &value, ttl_secs)
            .await?
            .ok_or_else(|| CoordError::DuplicateInstance(instance.id.clone()))?;
        tracing::info!(%key, addr = %instance.addr, "registered in etcd");
        Ok(tokio::spawn(hold_lease(client, key, value, ttl_secs, lease, shutdown)))
    }

    /// Fails with [`CoordError::DuplicateInstance`] if `id` stays registered
    /// for longer than a crashed predecessor's registration could last
    /// (`ttl_secs` + 2 s). Called before a process starts its work, so a
    /// duplicate is refused before it joins any consumer group;
    /// [`Coord::register`] checks again atomically.
    pub async fn ensure_instance_free(&self, service: &str, id: &str, ttl_secs: i64) -> CoordResult<()> {
        let key = format!("{}{id}", self.services_prefix(service));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(ttl_secs.max(1) as u64 + 2);
        loop {
            if self.client.clone().get(key.as_str(), None).await?.kvs().is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CoordError::DuplicateInstance(id.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The registered instances of `service`, kept current by a watch until shutdown.
    pub async fn discover(&self, service: &str, shutdown: Shutdown) -> CoordResult<watch::Receiver<Vec<Instance>>> {
        let prefix = self.services_prefix(service);
        let first = self.instances(&prefix).await?;
        let (tx, rx) = watch::channel(first);
        let me = self.clone();
        tokio::spawn(async move {
            let p = prefix.clone();
            me.watch_prefix(
                &prefix,
                shutdown,
                move |c| {
                    let (c, p) = (c.clone(), p.clone());
                    async move { c.instances(&p).await }
                },
                move |list| {
                    tx.send_if_modified(|cur| {
                        let changed = *cur != list;
                        *cur = list;
                        changed
                    });
                },
            )
            .await
        });
        Ok(rx)
    }

    async fn instances(&self, prefix: &str) -> CoordResult<Vec<Instance>> {
        let resp = self.client.clone().get(prefix, Some(GetOptions::new().with_prefix())).await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            match serde_json::from_slice::<Instance>(kv.value()) {
                Ok(i) => out.push(i),
                Err(e) => tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "ignoring a malformed registration"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Claims the lowest free snowflake node id under a lease held until shutdown.
    pub async fn claim_node_id(&self, owner: &str, ttl_secs: i64, shutdown: Shutdown) -> CoordResult<u16> {
        let mut client = self.client.clone();
        let prefix = format!("/gochat/nodes/{}/", self.env);
        for n in 0..=crate::ids::MAX_NODE {
            let key = format!("{prefix}{n}");
            if let Some(lease) = claim_with_lease(&mut client, &key, owner, ttl_secs).await? {
                tokio::spawn(hold_lease(client, key, owner.to_string(), ttl_secs, lease, shutdown));
                return Ok(n);
            }
        }
        Err(CoordError::NoNodeId(self.env.clone()))
    }

    /// The shared watch loop: `read` the current state, hand it to `apply`,
    /// then wait for any event under `prefix` and repeat.
    async fn watch_prefix<T, R, Fut, A>(&self, prefix: &str, shutdown: Shutdown, read: R, mut apply: A)
    where
        R: Fn(&Coord) -> Fut + Send,
        Fut: std::future::Future<Output = CoordResult<T>> + Send,
        A: FnMut(T) + Send,
    {
        let mut backoff = Duration::from_millis(200);
        loop {
            let started = async {
                let mut client = self.client.clone();
                let stream = client.watch(prefix, Some(WatchOptions::new().with_prefix())).await?;
                let state = read(self).await?;
                Ok::<_, CoordError>((client, stream, state))
            };
            let result = tokio::select! {
                r = started => r,
                _ = shutdown.wait() => return,
            };
            match result {
                Ok((_client, mut stream, state)) => {
                    backoff = Duration::from_millis(200);
                    apply(state);
                    loop {
                        let msg = tokio::select! {
                            m = stream.message() => m,
                            _ = shutdown.wait() => return,
                        };
                        match msg {
                            Ok(Some(resp)) if !resp.canceled() => match read(self).await {
                                Ok(state) => apply(state),
                                Err(e) => {
                                    tracing::warn!(%prefix, error = %e, "etcd read after a change failed; re-watching");
                                    break;
                                }
                            },
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!(%prefix, error = %e, "etcd watch broke; re-watching");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(%prefix, error = %e, "cannot watch etcd; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// The configuration of `service` from the environment's documents.
pub fn config_for(service: &str, docs: &BTreeMap<String, serde_json::Value>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
    let layers: Vec<&serde_json::Value> = ["common", service].iter().filter_map(|n| docs.get(*n)).collect();
    Config::from_documents(&layers, flags)
}

/// Puts `key` under a new lease only if no one holds it (one transaction);
/// `None` (and no lease left behind) when it is taken.
async fn claim_with_lease(client: &mut Client, key: &str, value: &str, ttl_secs: i64) -> CoordResult<Option<i64>> {
    let lease = client.lease_grant(ttl_secs, None).await?.id();
    let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key,
        value,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    if client.txn(txn).await?.succeeded() {
        Ok(Some(lease))
    } else {
        let _ = client.lease_revoke(lease).await;
        Ok(None)
    }
}

/// Renews `lease` every third of its TTL until shutdown, then revokes it.
/// A lost lease (expired while etcd was unreachable) is replaced by claiming
/// the key again; if another process took it meanwhile (a node id, an
/// instance id), this process has lost its identity and shuts down rather
/// than share it.
async fn hold_lease(mut client: Client, key: String, value: String, ttl_secs: i64, mut lease: i64, shutdown: Shutdown) {
    let every = Duration::from_millis((ttl_secs.max(1) as u64 * 1000) / 3);
    let mut keeper = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => break,
        }
        if keeper.is_none() {
            keeper = client.lease_keep_alive(lease).await.ok();
        }
        let alive = match keeper.as_mut() {
            Some((k, stream)) => match k.keep_alive().await {
                Ok(()) => matches!(stream.message().await, Ok(Some(r)) if r.ttl() > 0),
                Err(_) => false,
            },
            None => false,
        };
        if !alive {
            keeper = None;
            match claim_with_lease(&mut client, &key, &value, ttl_secs).await {
                Ok(Some(l)) => {
                    tracing::warn!(%key, "etcd lease was lost; claimed again");
                    lease = l;
                }
                Ok(None) => {
                    tracing::error!(%key, "etcd lease was lost and another process holds the key now; shutting down");
                    shutdown.trigger();
                    return;
                }
                Err(e) => tracing::warn!(%key, error = %e, "cannot renew the etcd lease; retrying"),
            }
        }
    }
    match tokio::time::timeout(Duration::from_secs(3), client.lease_revoke(lease)).await {
        Ok(Ok(_)) => tracing::info!(%key, "deregistered from etcd"),
        _ => tracing::warn!(%key, "could not revoke the etcd lease; it lapses by itself"),
    }
}
