//! The distributed-mode [`Store`]: MariaDB (InnoDB) through sqlx.
//!
//! # Layout
//! - this file: the pool, migrations, the [`Store`] impl (a thin delegation
//!   table) and the helpers every query uses (error mapping, paging, the
//!   retry loop of write transactions, multi-row INSERT statements);
//! - [`rows`]: column lists (with the DATETIME <-> milliseconds conversion)
//!   and row decoders;
//! - `users`, `conversations` (conversations and members), `messages`
//!   (messages and read pointers), `friends` and `tokens`: the queries, one
//!   file per area of the trait, each the counterpart of the SQLite file of
//!   the same name.
//!
//! # Why it looks like this
//! SQLite serialises writers with `BEGIN IMMEDIATE`; InnoDB locks rows, so
//! the same rules need explicit locking:
//!
//! | write                                   | serialised on (locked first)              |
//! |-----------------------------------------|-------------------------------------------|
//! | members added/removed, messages saved   | the conversation row, `FOR UPDATE`        |
//! | friend request created / answered       | the lower user id of the pair, `FOR UPDATE` |
//! | single chat created                     | `uk_conversations_pair_key` (loser re-reads) |
//! | read pointer moved                      | its own row (upsert, then a guarded UPDATE) |
//! | token revoked                           | `revoked_tokens` primary key              |
//!
//! - Parents are locked before children, several rows of one table in
//!   ascending key order, so writers queue instead of deadlocking. A deadlock
//!   (1213) or lock wait timeout (1205) that still happens reruns the whole
//!   transaction ([`WRITE_ATTEMPTS`] times at most).
//! - Sessions run READ COMMITTED: every statement sees what committed before
//!   it (the check after taking a lock reads the latest rows, not a snapshot
//!   from before the wait), and range deletes take no gap locks. This needs
//!   `binlog_format` ROW or MIXED when the binlog is on (MariaDB's default).
//! - No `INSERT IGNORE`: it demotes foreign-key and data errors to warnings.
//!   Duplicates are found by reading under the lock (messages, members) or
//!   by catching 1062 on a plain INSERT. No `ON DUPLICATE KEY UPDATE` where
//!   the caller needs to know whether a row was inserted either: sqlx sets
//!   CLIENT_FOUND_ROWS, so "inserted" and "already there, unchanged" both
//!   report one affected row. (The same flag makes UPDATE report matched
//!   rows, exactly like SQLite's `changes()`.)
//! - All SQL is `&'static str` with bound parameters. Variable-length id
//!   lists travel as one JSON array bound to a single parameter and are
//!   expanded with `JSON_TABLE` (the counterpart of SQLite's `json_each`;
//!   the server plans it as index lookups). Multi-row INSERTs use
//!   [`BulkInsert`]: `(?, ..)` groups repeated for a row *count* of at most
//!   [`BULK_ROWS`], never text from the input.
//! - Times are DATETIME(3) in UTC, converted in SQL (see [`rows::ms`]).

mod conversations;
mod friends;
mod messages;
mod rows;
mod tokens;
mod users;

use std::future::Future;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use gochat_proto::common::{Conversation, Friend, FriendRequest, Member, Message, User};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{Executor, MySql, MySqlPool, Transaction};

use super::{HistoryDirection, Page, SaveOutcome, Store, StoreError, StoreResult};

/// Upper bound of every page size; larger requests are clamped (as SQLite's).
pub const MAX_PAGE: u32 = 1000;

/// How long a caller waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections are closed after this (the server's `wait_timeout` is longer).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections are recycled after this, so a failover or config change reaches all of them.
const MAX_LIFETIME: Duration = Duration::from_secs(1800);

/// Prepared statements kept per connection (sqlx's default is 100): about
/// 60 fixed ones plus one per batch size used of the multi-row INSERTs.
const STATEMENT_CACHE: usize = 256;

/// Runs on every new connection; see the module docs for why each is set.
/// `innodb_lock_wait_timeout` (server default 50 s) is cut to 5 s so a stuck
/// lock surfaces as a retryable 1205 within the callers' deadlines. Strict
/// mode is forced so no server setting can turn an over-long value into a
/// silent truncation.
const SESSION_SETUP: [&str; 2] = [
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION innodb_lock_wait_timeout = 5, SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
];

/// How many times a write transaction runs when it keeps hitting deadlocks
/// or lock wait timeouts.
const WRITE_ATTEMPTS: u32 = 5;

/// Most rows in one multi-row INSERT (11 parameters each for messages, far
/// below the 65 535 placeholders of a prepared statement).
const BULK_ROWS: usize = 64;

/// The MySQL implementation of [`Store`]. Cheap to clone (the pool is an `Arc`).
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
}

impl MySqlStore {
    /// Connects a pool of at most `max_connections` to `url`
    /// (`mysql://user:pass@host:port/db`). Does not migrate: see [`MySqlStore::migrate`].
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<MySqlStore> {
        let options = MySqlConnectOptions::from_str(url)?.charset("utf8mb4").statement_cache_capacity(STATEMENT_CACHE);
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Some(IDLE_TIMEOUT))
            .max_lifetime(Some(MAX_LIFETIME))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    for sql in SESSION_SETUP {
                        conn.execute(sql).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(MySqlStore { pool })
    }

    /// Applies the versioned migrations under `migrations/mysql` that are not
    /// applied yet (a no-op when all are). Concurrent callers are serialised
    /// by sqlx's advisory lock.
    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/mysql").run(&self.pool).await?;
        Ok(())
    }

    /// Creates the database named in `url` unless it exists (`gochat migrate`).
    pub async fn create_database_if_missing(url: &str) -> StoreResult<()> {
        use sqlx::migrate::MigrateDatabase;
        if MySql::database_exists(url).await? {
            return Ok(());
        }
        match MySql::create_database(url).await {
            Ok(()) => Ok(()),
            // Another process created it between the check and the CREATE.
            Err(_) if MySql::database_exists(url).await? => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The underlying pool (health checks, ad-hoc maintenance).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// A write transaction (READ COMMITTED, from the session setup).
    async fn begin_write(&self) -> StoreResult<Transaction<'static, MySql>> {
        Ok(self.pool.begin().await?)
    }
}

/// The server's error number, if `e` is a MySQL error.
fn error_number(e: &sqlx::Error) -> Option<u16> {
    e.as_database_error()?.try_downcast_ref::<MySqlDatabaseError>().map(|db| db.number())
}

/// Maps a sqlx error that no caller-specific rule claimed, with the same
/// classes as SQLite: constraint violations and values the schema rejects
/// are the input's fault (`Invalid`), everything else is the database's.
pub(super) fn db_err(e: sqlx::Error) -> StoreError {
    use sqlx::error::ErrorKind;
    if let Some(db) = e.as_database_error() {
        match db.kind() {
            ErrorKind::ForeignKeyViolation => return StoreError::Invalid("referenced user or conversation does not exist".into()),
            ErrorKind::UniqueViolation | ErrorKind::NotNullViolation | ErrorKind::CheckViolation => {
                return StoreError::Invalid(format!("row rejected by the schema: {}", db.message()));
            }
            _ => {}
        }
    }
    // Strict mode rejects what SQLite would store: too long (1406), out of
    // range (1264, 1690: e.g. a time past year 9999), wrong value (1292, 1366).
    if let Some(1406 | 1264 | 1690 | 1292 | 1366) = error_number(&e) {
        let message = e.as_database_error().map(|db| db.message().to_owned()).unwrap_or_default();
        return StoreError::Invalid(format!("value rejected by the schema: {message}"));
    }
    StoreError::Backend(e)
}

/// Whether `e` is a duplicate key (1062) on any unique index.
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    error_number(e) == Some(1062)
}

/// Deadlock victim (1213) or lock wait timeout (1205): running the whole
/// transaction again is expected to succeed.
fn is_transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(e) if matches!(error_number(e), Some(1213 | 1205)))
}

/// Runs `attempt` (one whole write transaction) until it succeeds, fails for
/// a reason other than lock contention, or [`WRITE_ATTEMPTS`] are spent.
/// InnoDB rolls the victim of a deadlock back entirely; after a lock wait
/// timeout the dropped transaction rolls back, so each run starts clean.
async fn retrying<T, F, Fut>(what: &'static str, mut attempt: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    let mut run = 1;
    loop {
        match attempt().await {
            Err(e) if run < WRITE_ATTEMPTS && is_transient(&e) => {
                tracing::debug!(what, run, error = %e, "write transaction lost a lock race; retrying");
                // Growing, jittered pause so the contenders do not collide again in step.
                let pause = 5 * u64::from(run) + rand::random::<u64>() % (10 * u64::from(run));
                tokio::time::sleep(Duration::from_millis(pause)).await;
                run += 1;
            }
            result => return result,
        }
    }
}

/// A multi-row `INSERT ... VALUES (..), (..) [tail]` built from a row count only.
///
/// The statement for each count `1..=BULK_ROWS` is built once, on first use,
/// and kept for the life of the process, so it is a `&'static str` like every
/// other statement here (and each count is prepared once per connection).
pub(super) struct BulkInsert {
    head: &'static str,
    row: &'static str,
    tail: &'static str,
    built: OnceLock<Vec<String>>,
}

impl BulkInsert {
    /// `head` ends with `VALUES`; `row` is one `(?, ..)` group; `tail` follows the rows.
    pub(super) const fn new(head: &'static str, row: &'static str, tail: &'static str) -> Self {
        BulkInsert { head, row, tail, built: OnceLock::new() }
    }

    /// The statement for `rows` rows; callers pass `chunks(BULK_ROWS)` lengths.
    pub(super) fn sql(&'static self, rows: usize) -> &'static str {
        let built = self.built.get_or_init(|| {
            (1..=BULK_ROWS).map(|n| format!("{} {} {}", self.head, vec![self.row; n].join(", "), self.tail)).collect::<Vec<_>>()
        });
        // Clamped rather than indexed blindly: a wrong count then fails as a
        // bind-count error from the server instead of a panic.
        &built[rows.clamp(1, BULK_ROWS) - 1]
    }
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

/// Rejects strings longer than their column with the same error SQLite
/// gives (strict mode would reject them too, as a less specific error).
fn check_len(what: &str, value: &str, max: usize) -> StoreResult<()> {
    if value.chars().count() > max {
        return Err(StoreError::Invalid(format!("{what} longer than {max} characters")));
    }
    Ok(())
}

/// A JSON array for a `JSON_TABLE` parameter.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(e.to_string()))
}

#[async_trait]
impl Store for MySqlStore {
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
    async fn find_messages_by_client_ids(&self, keys: &[(i64, String)]) -> StoreResult<Vec<Message>> {
        self.find_messages_by_client_ids_impl(keys).await
    }
    async fn update_read_pointer(&self, user_id: i64, conversation_id: &str, seq_id: i64, now_ms: i64) -> StoreResult<(i64, bool)> {
        self.update_read_pointer_impl(user_id, conversation_id, seq_id, now_ms).await
    }
    async fn read_pointer(&self, user_id: i64, conversation_id: &str) -> StoreResult<i64> {
        self.read_pointer_impl(user_id, conversation_id).await
    }
    async fn advance_read_pointers(&self, pointers: &[(i64, String, i64)], now_ms: i64) -> StoreResult<()> {
        self.advance_read_pointers_impl(pointers, now_ms).await
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

    async fn revoke_token(&self, jti: &str, expires_at_ms: i64, now_ms: i64) -> StoreResult<bool> {
        self.revoke_token_impl(jti, expires_at_ms, now_ms).await
    }
    async fn revoked_tokens(&self, now_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        self.revoked_tokens_impl(now_ms).await
    }
}

#[cfg(test)]
mod tests;
