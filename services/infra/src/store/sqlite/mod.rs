//! The embedded [`Store`]: SQLite through sqlx.
//!
//! # Layout
//! - this file: opening the database (pragmas, pool, migrations), the
//!   [`Store`] impl (a thin delegation table) and the helpers every query
//!   uses (error mapping, paging, write transactions);
//! - [`rows`]: column lists and row decoders, shared by all queries;
//! - `users`, `conversations` (conversations and members), `messages`
//!   (messages and read pointers) and `friends`: the queries, one file per
//!   area of the trait.
//!
//! # Why it looks like this
//! - Every write transaction starts with `BEGIN IMMEDIATE`. A deferred SQLite
//!   transaction that reads and then writes can fail with `SQLITE_BUSY`
//!   without waiting on the busy timeout (the lock upgrade would deadlock);
//!   taking the write lock up front makes writers queue on `busy_timeout`
//!   instead, and makes read-then-write sequences (pair-key dedupe, friend
//!   request rules) race-free.
//! - All SQL is literal (`&'static str`) with bound parameters, so user input
//!   never becomes SQL text. The only dynamic input lists (`get_users`) are
//!   passed as one JSON array and expanded with `json_each`.
//! - Times are INTEGER Unix milliseconds, exactly the proto's `*_ms` fields.

mod conversations;
mod friends;
mod messages;
mod rows;
mod tokens;
mod users;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use gochat_proto::common::{Conversation, Friend, FriendRequest, Member, Message, User};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{HistoryDirection, Page, SaveOutcome, Store, StoreError, StoreResult};

/// Upper bound of every page size; larger requests are clamped.
pub const MAX_PAGE: u32 = 1000;

/// How long a statement waits for the write lock before `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reading connections of a file-backed store (plus one writer): under WAL
/// readers run beside the writer.
const POOL_SIZE: u32 = 4;

/// The writer's page cache, in KiB (SQLite's default is 2 MiB). Each stored
/// message updates two indexes at a position per conversation and per
/// sender; with 10k active users that working set is tens of MiB, and a
/// page that is not cached is read back from the OS on every batch. Only
/// pages in use take memory.
const WRITER_CACHE_KIB: u32 = 128 * 1024;
/// A reader's page cache: SQLite empties it whenever the writer committed
/// since the reader's last transaction, so a large one buys little.
const READER_CACHE_KIB: u32 = 8 * 1024;

/// The SQLite implementation of [`Store`]. Cheap to clone (the pool is an `Arc`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Readers.
    pool: SqlitePool,
    /// The one connection every write goes through. SQLite has one writer
    /// anyway, and a connection drops its whole page cache whenever another
    /// connection has written since its last transaction: writing from one
    /// connection keeps the writer's cache (the index pages inserts touch)
    /// warm.
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database file at `path`, with WAL,
    /// `synchronous=NORMAL`, foreign keys, a 5 s busy timeout, one writing
    /// connection with a 128 MiB page cache and four readers, and runs the
    /// migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        // `data/gochat.db` on a fresh machine: SQLite creates the file, not
        // the directory.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let cache = |kib: u32| options.clone().pragma("cache_size", format!("-{kib}"));
        // Kept open for good: a new connection would start with a cold cache.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(cache(WRITER_CACHE_KIB))
            .await?;
        let pool = SqlitePoolOptions::new().max_connections(POOL_SIZE).connect_with(cache(READER_CACHE_KIB)).await?;
        Self::migrated(pool, writer).await
    }

    /// A private in-memory database, for tests.
    ///
    /// Every in-memory SQLite connection is its own database, so the pool has
    /// exactly one connection that never expires (an expired connection would
    /// take the data with it). Nothing in this module holds one connection
    /// while acquiring another, so one connection cannot deadlock.
    pub async fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new().filename(":memory:").in_memory(true).foreign_keys(true).busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Self::migrated(pool.clone(), pool).await
    }

    async fn migrated(pool: SqlitePool, writer: SqlitePool) -> Result<SqliteStore, StoreError> {
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        Ok(SqliteStore { pool, writer })
    }

    /// The underlying pool (health checks, ad-hoc maintenance).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction holding SQLite's write lock from the start.
    async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// A JSON array for a `json_each` parameter.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// Maps a sqlx error that no caller-specific rule claimed: constraint
/// violations mean the input is wrong (a missing row referenced, a duplicate
/// id), everything else is the database's problem.
pub(super) fn db_err(e: sqlx::Error) -> StoreError {
    use sqlx::error::ErrorKind;
    if let Some(db) = e.as_database_error() {
        // Constraint violations are the input's fault and fail the same way on
        // every retry: report them as invalid, never as an outage to wait out.
        match db.kind() {
            ErrorKind::ForeignKeyViolation => return StoreError::Invalid("referenced user or conversation does not exist".into()),
            ErrorKind::UniqueViolation | ErrorKind::NotNullViolation | ErrorKind::CheckViolation => {
                return StoreError::Invalid(format!("row rejected by the schema: {}", db.message()));
            }
            _ => {}
        }
    }
    StoreError::Backend(e)
}

/// Whether `e` is a unique or primary-key violation.
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|db| db.is_unique_violation())
}

/// `limit` clamped to `1..=MAX_PAGE`, as bound to SQL.
fn page_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, MAX_PAGE))
}

/// Turns `limit + 1` fetched rows into a page: the extra row only says that
/// more follow.
fn into_page<T>(mut items: Vec<T>, limit: i64) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = items.len() > limit;
    items.truncate(limit);
    Page { items, has_more }
}

/// Rejects strings longer than their MySQL column so both engines agree
/// (SQLite would store them, strict MySQL would not).
fn check_len(what: &str, value: &str, max: usize) -> StoreResult<()> {
    if value.chars().count() > max {
        return Err(StoreError::Invalid(format!("{what} longer than {max} characters")));
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: &User) -> StoreResult<User> {
        self.create_user_impl(user).await
    }
    async fn get_users(&self, ids: &[i64]) -> StoreResult<Vec<User>> {
        self.get_users_impl(ids).await
    }
    async fn get_user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        self.get_user_by_name_impl(username).await
    }
    async fn update_user_avatar(&self, id: i64, avatar_url: Option<&str>, now_ms: i64) -> StoreResult<Option<User>> {
        self.update_user_avatar_impl(id, avatar_url, now_ms).await
    }
    async fn search_users(&self, query: &str, limit: u32) -> StoreResult<Vec<User>> {
        self.search_users_impl(query, limit).await
    }

    async fn create_conversation(&self, conv: &Conversation, members: &[Member]) -> StoreResult<(Conversation, bool)> {
        self.create_conversation_impl(conv, members).await
    }
    async fn get_conversation(&self, id: &str) -> StoreResult<Option<Conversation>> {
        self.get_conversation_impl(id).await
    }
    async fn update_conversation(
        &self,
        id: &str,
        name: Option<&str>,
        avatar_url: Option<&str>,
        description: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<Conversation>> {
        self.update_conversation_impl(id, name, avatar_url, description, now_ms).await
    }
    async fn list_user_conversations(
        &self,
        user_id: i64,
        offset: u32,
        limit: u32,
        conv_type: Option<i32>,
    ) -> StoreResult<Page<Conversation>> {
        self.list_user_conversations_impl(user_id, offset, limit, conv_type).await
    }
    async fn get_member(&self, conversation_id: &str, user_id: i64) -> StoreResult<Option<Member>> {
        self.get_member_impl(conversation_id, user_id).await
    }
    async fn get_conversations(&self, ids: &[String]) -> StoreResult<Vec<Conversation>> {
        self.get_conversations_impl(ids).await
    }
    async fn get_members(&self, keys: &[(String, i64)]) -> StoreResult<Vec<Member>> {
        self.get_members_impl(keys).await
    }
    async fn member_id_lists(&self, ids: &[String], max_members: u32) -> StoreResult<Vec<(String, Vec<i64>)>> {
        self.member_id_lists_impl(ids, max_members).await
    }
    async fn list_members(&self, conversation_id: &str, offset: u32, limit: u32, role: Option<i32>) -> StoreResult<Page<Member>> {
        self.list_members_impl(conversation_id, offset, limit, role).await
    }
    async fn list_member_ids(&self, conversation_id: &str, after_user_id: i64, limit: u32) -> StoreResult<Page<i64>> {
        self.list_member_ids_impl(conversation_id, after_user_id, limit).await
    }
    async fn add_members(&self, conversation_id: &str, members: &[Member]) -> StoreResult<(Vec<i64>, i64)> {
        self.add_members_impl(conversation_id, members).await
    }
    async fn remove_member(&self, conversation_id: &str, user_id: i64) -> StoreResult<(bool, i64)> {
        self.remove_member_impl(conversation_id, user_id).await
    }
    async fn update_member_role(&self, conversation_id: &str, user_id: i64, role: i32, now_ms: i64) -> StoreResult<Option<Member>> {
        self.update_member_role_impl(conversation_id, user_id, role, now_ms).await
    }

    async fn save_messages(&self, messages: &[Message]) -> StoreResult<SaveOutcome> {
        self.save_messages_impl(messages).await
    }
    async fn history(&self, conversation_id: &str, direction: HistoryDirection, limit: u32) -> StoreResult<Page<Message>> {
        self.history_impl(conversation_id, direction, limit).await
    }
    async fn find_message_by_client_id(&self, sender_id: i64, client_msg_id: &str) -> StoreResult<Option<Message>> {
        self.find_message_by_client_id_impl(sender_id, client_msg_id).await
    }
    async fn update_read_pointer(&self, user_id: i64, conversation_id: &str, seq_id: i64, now_ms: i64) -> StoreResult<(i64, bool)> {
        self.update_read_pointer_impl(user_id, conversation_id, seq_id, now_ms).await
    }

    async fn create_friend_request(&self, req: &FriendRequest) -> StoreResult<FriendRequest> {
        self.create_friend_request_impl(req).await
    }
    async fn get_friend_request(&self, id: i64) -> StoreResult<Option<FriendRequest>> {
        self.get_friend_request_impl(id).await
    }
    async fn list_friend_requests(&self, user_id: i64, received: bool, status: Option<i32>) -> StoreResult<Vec<FriendRequest>> {
        self.list_friend_requests_impl(user_id, received, status).await
    }
    async fn set_friend_request_status(
        &self,
        id: i64,
        status: i32,
        only_if: Option<i32>,
        now_ms: i64,
    ) -> StoreResult<Option<FriendRequest>> {
        self.set_friend_request_status_impl(id, status, only_if, now_ms).await
    }
    async fn list_friends(&self, user_id: i64) -> StoreResult<Vec<Friend>> {
        self.list_friends_impl(user_id).await
    }
    async fn are_friends(&self, a: i64, b: i64) -> StoreResult<bool> {
        self.are_friends_impl(a, b).await
    }
    async fn friend_ids(&self, user_id: i64) -> StoreResult<Vec<i64>> {
        self.friend_ids_impl(user_id).await
    }

    async fn find_messages_by_client_ids(&self, keys: &[(i64, String)]) -> StoreResult<Vec<Message>> {
        self.find_messages_by_client_ids_impl(keys).await
    }

    async fn advance_read_pointers(&self, pointers: &[(i64, String, i64)], now_ms: i64) -> StoreResult<()> {
        self.advance_read_pointers_impl(pointers, now_ms).await
    }

    async fn read_pointer(&self, user_id: i64, conversation_id: &str) -> StoreResult<i64> {
        self.read_pointer_impl(user_id, conversation_id).await
    }

    async fn revoke_token(&self, jti: &str, expires_at_ms: i64, now_ms: i64) -> StoreResult<bool> {
        self.revoke_token_impl(jti, expires_at_ms, now_ms).await
    }

    async fn revoked_tokens(&self, now_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        self.revoked_tokens_impl(now_ms).await
    }
}

#[cfg(test)]
mod tests;
