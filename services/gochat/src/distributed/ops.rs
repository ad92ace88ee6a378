//! `gochat config sync|get|watch` and `gochat migrate`.
//!
//! A configuration directory (`deploy/config/<env>/`) holds TOML files:
//! `gochat.toml` is the `common` document every service reads, and
//! `gateway.toml`, `logic.toml`, `repo.toml`, `task.toml` (optional) hold
//! what differs per service. `sync` validates every service's resulting
//! configuration before writing anything, then makes etcd match the
//! directory (documents for missing files are deleted).

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml};
use gochat_infra::config::{Config, FlagOverrides};
use gochat_infra::coord::{Coord, SERVICES, config_for};
use gochat_infra::shutdown::Shutdown;

/// Reads a configuration directory into documents (name → JSON).
pub fn read_dir(dir: &Path) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let mut docs = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let name = match stem {
            "gochat" => "common",
            s if SERVICES.contains(&s) => s,
            other => anyhow::bail!("{}: unknown file {other}.toml (expected gochat.toml or one of {SERVICES:?} .toml)", dir.display()),
        };
        let doc: serde_json::Value = Figment::from(Toml::file(&path))
            .extract()
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().replace('\n', " ")))?;
        docs.insert(name.to_string(), doc);
    }
    if docs.is_empty() {
        anyhow::bail!("{} holds no configuration files (gochat.toml, gateway.toml, ...)", dir.display());
    }
    // Every service's configuration must validate before anything is written.
    for service in SERVICES {
        config_for(service, &docs, &FlagOverrides::default()).map_err(|e| anyhow::anyhow!("{service}: {e}"))?;
    }
    Ok(docs)
}

/// Makes the environment's documents in etcd equal to `dir`; prints the plan.
pub async fn sync(coord: &Coord, dir: &Path, dry_run: bool) -> anyhow::Result<()> {
    let wanted = read_dir(dir)?;
    let current = coord.config_documents().await?;
    let mut changes = 0;
    for (name, doc) in &wanted {
        match current.get(name) {
            Some(c) if c == doc => println!("  unchanged {}{name}", coord.config_prefix()),
            Some(_) => {
                println!("  update    {}{name}", coord.config_prefix());
                changes += 1;
            }
            None => {
                println!("  create    {}{name}", coord.config_prefix());
                changes += 1;
            }
        }
    }
    let stale: Vec<&String> = current.keys().filter(|k| !wanted.contains_key(*k)).collect();
    for name in &stale {
        println!("  delete    {}{name}", coord.config_prefix());
        changes += 1;
    }
    if dry_run {
        println!("dry run: {changes} change(s) not applied");
        return Ok(());
    }
    let put: Vec<(&str, &serde_json::Value)> =
        wanted.iter().filter(|(name, doc)| current.get(*name) != Some(*doc)).map(|(name, doc)| (name.as_str(), doc)).collect();
    let delete: Vec<&str> = stale.iter().map(|s| s.as_str()).collect();
    coord.apply_documents(&put, &delete).await?;
    println!("{changes} change(s) applied to {}", coord.config_prefix());
    Ok(())
}

/// Prints the documents, or one service's resulting configuration.
pub async fn get(coord: &Coord, service: Option<&str>) -> anyhow::Result<()> {
    let docs = coord.config_documents().await?;
    match service {
        Some(s) => {
            let config = config_for(s, &docs, &FlagOverrides::default())?;
            println!("{}", serde_json::to_string_pretty(&redacted(&config))?);
        }
        None => {
            if docs.is_empty() {
                println!("(no configuration under {}; run `gochat config sync`)", coord.config_prefix());
            }
            for (name, mut doc) in docs {
                redact_document(&mut doc);
                println!("{}{name}:\n{}", coord.config_prefix(), serde_json::to_string_pretty(&doc)?);
            }
        }
    }
    Ok(())
}

/// Prints the documents now and after every change, until Ctrl-C.
pub async fn watch(coord: &Coord) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        gochat_infra::shutdown::signal().await;
        s.trigger();
    });
    let prefix = coord.config_prefix();
    coord
        .watch_documents(shutdown, move |docs| {
            println!("--- {} ({} document(s))", prefix, docs.len());
            for (name, mut doc) in docs {
                redact_document(&mut doc);
                println!("{name}: {doc}");
            }
        })
        .await;
    Ok(())
}

/// The configuration with secrets masked, for printing.
fn redacted(config: &Config) -> Config {
    let mut c = config.clone();
    if !c.auth.jwt_secret.is_empty() {
        c.auth.jwt_secret = "<set>".into();
    }
    if !c.http.admin_token.is_empty() {
        c.http.admin_token = "<set>".into();
    }
    c.store.mysql_url = mask_password(&c.store.mysql_url);
    c.redis.url = mask_password(&c.redis.url);
    c
}

/// A configuration document with its secrets masked, for printing.
fn redact_document(doc: &mut serde_json::Value) {
    for (section, key) in [("auth", "jwt_secret"), ("http", "admin_token")] {
        if let Some(v) = doc.get_mut(section).and_then(|s| s.get_mut(key))
            && v.as_str().is_some_and(|s| !s.is_empty())
        {
            *v = "<set>".into();
        }
    }
    for (section, key) in [("store", "mysql_url"), ("redis", "url")] {
        if let Some(v) = doc.get_mut(section).and_then(|s| s.get_mut(key))
            && let Some(url) = v.as_str()
        {
            *v = mask_password(url).into();
        }
    }
}

fn mask_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// `gochat migrate`: creates the database if missing, applies the
/// migrations, and creates the Kafka topics.
pub async fn migrate(coord: &Coord) -> anyhow::Result<()> {
    let config = coord.load_config("repo", &FlagOverrides::default()).await?;
    gochat_infra::store::mysql::MySqlStore::create_database_if_missing(&config.store.mysql_url).await?;
    let store = gochat_infra::store::mysql::MySqlStore::connect(&config.store.mysql_url, 2).await?;
    store.migrate().await?;
    println!("database {}: migrations applied", mask_password(&config.store.mysql_url));
    super::kafka(&config, "gochat-migrate").await?;
    println!("kafka {}: topics created ({} partitions each)", config.kafka.brokers, config.bus.partitions);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_printed_without_secrets() {
        let mut doc =
            serde_json::json!({"auth": {"jwt_secret": "s3cret-s3cret"}, "store": {"mysql_url": "mysql://u:pw@h/db"}, "chat": {"x": 1}});
        redact_document(&mut doc);
        let text = doc.to_string();
        assert!(!text.contains("s3cret") && !text.contains(":pw@") && text.contains("<set>"), "{text}");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_password("mysql://gochat:pw@127.0.0.1:3306/gochat"), "mysql://gochat:***@127.0.0.1:3306/gochat");
        assert_eq!(mask_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(mask_password("mysql://user@h/db"), "mysql://user@h/db");
    }

    #[test]
    fn the_shipped_directories_validate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config");
        for env in ["dev", "prod", "docker"] {
            let docs = read_dir(&root.join(env)).unwrap_or_else(|e| panic!("{env}: {e}"));
            assert!(docs.contains_key("common"), "{env} has gochat.toml");
        }
    }

    #[test]
    fn a_bad_directory_is_refused_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("gochat.toml"), "[chat]\nlarge_group_threshold = 9\n").expect("write");
        std::fs::write(dir.path().join("logic.toml"), "[ws]\nshards = 100000\n").expect("write");
        let err = read_dir(dir.path()).expect_err("refused").to_string();
        assert!(err.contains("logic") && err.contains("ws.shards"), "{err}");
        std::fs::write(dir.path().join("nonsense.toml"), "").expect("write");
        assert!(read_dir(dir.path()).expect_err("refused").to_string().contains("unknown file"));
    }
}
