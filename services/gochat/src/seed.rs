//! `gochat seed`: bulk-provisions load-test users straight into the SQLite
//! database of a **stopped** embedded server, through the store (not the
//! API), and writes the users file `gochat-loadgen --users-file` reads.
//!
//! Every seeded user is registered (not a guest) with one known password,
//! hashed once. Layout of the conversations, all over the same users
//! `lg_<tag>_<i>` (tag random per seed, so seeds can be repeated):
//! - pair `p` = users `2p`, `2p+1` (single chat);
//! - group `g` = users `g·G .. (g+1)·G`, owned by its first member;
//! - the `world` room gets users `0 .. M`.
//!
//! The file format is documented in the loadgen (`plan.rs`):
//! `{"version", "password", "users": [{id, username, guest}], "chat": [{id, members}],
//!   "group": [...], "room": {id, members}}`, members being indices into `users`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use gochat_infra::ids::Snowflake;
use gochat_infra::kv::memory::MemoryKv;
use gochat_infra::store::sqlite::SqliteStore;
use gochat_infra::store::{Store, StoreError};
use gochat_proto::common::{Conversation, Member, User};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// Password of every seeded user.
pub const PASSWORD: &str = "loadgen-secret-1";
/// Snowflake node reserved for seeding, so seeded ids never collide with a server's.
const SEED_NODE: u16 = 1023;
/// Store calls in flight (SQLite has one writer; a few overlap the reads).
const IN_FLIGHT: usize = 8;
/// Users per transaction.
const USER_BATCH: usize = 5000;
/// Members per `add_members` call for the world room.
const MEMBER_BATCH: usize = 2000;

/// What to create.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spec {
    pub users: usize,
    pub pairs: usize,
    pub groups: usize,
    pub group_size: usize,
    pub room_members: usize,
}

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{0}")]
    Spec(String),
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("password hash: {0}")]
    Hash(String),
}

impl Spec {
    fn check(&self) -> Result<(), SeedError> {
        let bad = |m: String| Err(SeedError::Spec(m));
        if self.users == 0 {
            return bad("--users must be > 0".into());
        }
        if 2 * self.pairs > self.users {
            return bad(format!("{} pairs need {} users, have {}", self.pairs, 2 * self.pairs, self.users));
        }
        if self.groups > 0 && self.group_size < 2 {
            return bad("--group-size must be >= 2".into());
        }
        if self.groups * self.group_size > self.users {
            return bad(format!(
                "{} groups of {} need {} users, have {}",
                self.groups,
                self.group_size,
                self.groups * self.group_size,
                self.users
            ));
        }
        if self.room_members > self.users {
            return bad(format!("--room-members {} exceeds --users {}", self.room_members, self.users));
        }
        Ok(())
    }
}

/// Inserts users in one transaction. The store's `create_user` commits (and
/// re-reads) each row on its own, which caps seeding at a few thousand users/s;
/// this writes the same columns as `create_user` in one commit per batch.
async fn insert_users(store: &SqliteStore, users: &[User]) -> Result<(), StoreError> {
    let mut tx = store.pool().begin().await?;
    for u in users {
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, avatar_url, is_guest, status, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(u.id)
        .bind(&u.username)
        .bind(&u.password_hash)
        .bind(u.avatar_url.as_deref())
        .bind(u.is_guest)
        .bind(u.status)
        .bind(u.created_at_ms)
        .bind(u.updated_at_ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs `f` over `items` with [`IN_FLIGHT`] calls at once, in order of completion.
async fn each<T, F, Fut>(items: Vec<T>, f: F) -> Result<(), StoreError>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for item in items {
        if set.len() >= IN_FLIGHT
            && let Some(r) = set.join_next().await
        {
            r.map_err(|e| StoreError::Invalid(format!("seed task failed: {e}")))??;
        }
        set.spawn(f(item));
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| StoreError::Invalid(format!("seed task failed: {e}")))??;
    }
    Ok(())
}

/// Seeds `dir` (creating the database and the JWT secret if missing) and
/// returns the users file as JSON. Progress goes to stderr.
pub async fn seed(dir: &Path, spec: Spec) -> Result<Value, SeedError> {
    spec.check()?;
    std::fs::create_dir_all(dir).map_err(|source| SeedError::DataDir { path: dir.to_path_buf(), source })?;
    crate::secret::load_or_create(dir).map_err(|source| SeedError::DataDir { path: dir.to_path_buf(), source })?;
    let store = SqliteStore::open(&dir.join("gochat.db")).await?;
    im_repo::RepoService::new(Arc::new(store.clone()), Arc::new(MemoryKv::new())).ensure_world().await?;

    let hash = tokio::task::spawn_blocking(|| {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        argon2::Argon2::default().hash_password(PASSWORD.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .map_err(|e| SeedError::Hash(e.to_string()))?
    .map_err(|e| SeedError::Hash(e.to_string()))?;

    let ids = Snowflake::new(SEED_NODE);
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let now = now_ms();
    let users: Vec<User> = (0..spec.users)
        .map(|i| User {
            id: ids.next_id(),
            username: format!("lg_{tag}_{i}"),
            password_hash: hash.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            ..Default::default()
        })
        .collect();

    let t = Instant::now();
    for chunk in users.chunks(USER_BATCH) {
        insert_users(&store, chunk).await?;
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("seed: {} users in {secs:.2}s ({:.0}/s)", users.len(), users.len() as f64 / secs.max(1e-9));

    let member = |conv: &str, user_id: i64, role: i32| Member {
        conversation_id: conv.to_string(),
        user_id,
        role,
        joined_at_ms: now,
        ..Default::default()
    };
    let t = Instant::now();
    let mut pairs = Vec::new();
    let mut jobs = Vec::new();
    for p in 0..spec.pairs {
        let (a, b) = (users[2 * p].id, users[2 * p + 1].id);
        let id = format!("s_{}", ids.next_id());
        let conv = Conversation {
            id: id.clone(),
            r#type: 1,
            pair_key: Some(format!("s:{}:{}", a.min(b), a.max(b))),
            created_at_ms: now,
            updated_at_ms: now,
            ..Default::default()
        };
        jobs.push((conv, vec![member(&id, a, 1), member(&id, b, 1)]));
        pairs.push(json!({"id": id, "members": [2 * p, 2 * p + 1]}));
    }
    let mut groups = Vec::new();
    for g in 0..spec.groups {
        let range = g * spec.group_size..(g + 1) * spec.group_size;
        let id = format!("g_{}", ids.next_id());
        let owner = users[range.start].id;
        let conv = Conversation {
            id: id.clone(),
            r#type: 2,
            name: Some(format!("lg group {g}")),
            owner_id: Some(owner),
            created_at_ms: now,
            updated_at_ms: now,
            ..Default::default()
        };
        let members = range.clone().map(|i| member(&id, users[i].id, if i == range.start { 3 } else { 1 })).collect();
        jobs.push((conv, members));
        groups.push(json!({"id": id, "members": range.collect::<Vec<_>>()}));
    }
    let conversations = jobs.len();
    let s = store.clone();
    each(jobs, move |(conv, members)| {
        let s = s.clone();
        async move { s.create_conversation(&conv, &members).await.map(|_| ()) }
    })
    .await?;
    if conversations > 0 {
        eprintln!("seed: {conversations} conversations in {:.2}s", t.elapsed().as_secs_f64());
    }

    let t = Instant::now();
    for chunk in users[..spec.room_members].chunks(MEMBER_BATCH) {
        let members: Vec<Member> = chunk.iter().map(|u| member("world", u.id, 1)).collect();
        store.add_members("world", &members).await?;
    }
    if spec.room_members > 0 {
        eprintln!("seed: {} world-room members in {:.2}s", spec.room_members, t.elapsed().as_secs_f64());
    }

    let file_users: Vec<Value> = users.iter().map(|u| json!({"id": u.id.to_string(), "username": u.username, "guest": false})).collect();
    let mut out = json!({"version": 1, "password": PASSWORD, "users": file_users, "chat": pairs, "group": groups});
    if spec.room_members > 0 {
        out["room"] = json!({"id": "world", "members": (0..spec.room_members).collect::<Vec<_>>()});
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seeds_users_conversations_and_room() {
        let dir = tempfile::tempdir().expect("tmp");
        let spec = Spec { users: 10, pairs: 2, groups: 2, group_size: 3, room_members: 4 };
        let out = seed(dir.path(), spec).await.expect("seeds");
        assert_eq!(out["users"].as_array().map(Vec::len), Some(10));
        assert_eq!(out["chat"][1]["members"], json!([2, 3]));
        assert_eq!(out["group"][1]["members"], json!([3, 4, 5]));
        assert_eq!(out["room"]["members"].as_array().map(Vec::len), Some(4));
        assert!(dir.path().join("jwt.secret").exists());
        let store = SqliteStore::open(&dir.path().join("gochat.db")).await.expect("open");
        let name = out["users"][0]["username"].as_str().expect("name");
        let u = store.get_user_by_name(name).await.expect("get").expect("exists");
        assert!(!u.is_guest && u.password_hash.starts_with("$argon2"));
        let world = store.get_conversation("world").await.expect("get").expect("world");
        assert_eq!(world.member_count, 4);
        let g = store.get_conversation(out["group"][0]["id"].as_str().expect("id")).await.expect("get").expect("group");
        assert_eq!(g.member_count, 3);
        // A second seed into the same directory adds users under a new tag.
        let again = seed(dir.path(), Spec { users: 2, ..Spec::default() }).await.expect("again");
        assert_ne!(again["users"][0]["username"], out["users"][0]["username"]);
        assert!(seed(dir.path(), Spec { users: 3, pairs: 2, ..Spec::default() }).await.is_err());
    }
}
