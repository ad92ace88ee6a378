//! The relational store: users, conversations, members, messages, read
//! pointers and friendships (DATA.md). `im-repo` is its only user.
//!
//! The trait is the seam between the embedded mode ([`sqlite::SqliteStore`])
//! and the distributed mode (MySQL). Both run the versioned migrations under
//! `migrations/{sqlite,mysql}` and behave identically; the shared behaviour
//! tests in `store::tests` run against every implementation.
//!
//! Rows travel as the protobuf domain types of `gochat_proto::common`, so the
//! repo service hands them out without another mapping layer. All times are
//! Unix milliseconds.

#[cfg(feature = "mysql")]
pub mod mysql;
pub mod sqlite;
/// The shared behaviour suite, run by each implementation's tests.
#[cfg(test)]
pub(crate) mod tests;

use async_trait::async_trait;
use gochat_proto::common::{Conversation, Friend, FriendRequest, Member, Message, User};

/// Store failures, classified by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint the caller should report (username taken, ...).
    #[error("conflict: {0}")]
    Conflict(Conflict),
    /// The input breaks a rule of the store (unknown row referenced, ...).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database failed or is unreachable; retrying may help.
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    /// Running the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Which uniqueness rule a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    UsernameTaken,
    AlreadyRequested,
    AlreadyFriends,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conflict::UsernameTaken => "username taken",
            Conflict::AlreadyRequested => "friend request already pending",
            Conflict::AlreadyFriends => "already friends",
        })
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One page of rows and whether more follow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

/// Result of [`Store::save_messages`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveOutcome {
    pub inserted: u32,
    /// Rows skipped because `(conversation_id, seq_id)` was already stored.
    pub duplicates: u32,
}

/// Which way [`Store::history`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryDirection {
    /// Newest first, `seq_id < before` (no bound: from the newest).
    Before(Option<i64>),
    /// Oldest first, `seq_id > after`.
    After(i64),
}

/// `(conversation, user)` rows ordered by conversation then user, as one
/// list per conversation (a conversation without rows is absent).
pub(crate) fn group_member_ids(rows: Vec<(String, i64)>) -> Vec<(String, Vec<i64>)> {
    let mut out: Vec<(String, Vec<i64>)> = Vec::new();
    for (conv, user) in rows {
        match out.last_mut() {
            Some((c, ids)) if *c == conv => ids.push(user),
            _ => out.push((conv, vec![user])),
        }
    }
    out
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- users -------------------------------------------------------------
    /// Inserts `user` (id and timestamps already set). `Conflict(UsernameTaken)` on a taken name.
    async fn create_user(&self, user: &User) -> StoreResult<User>;
    /// Users by id, in no particular order; unknown ids are skipped.
    async fn get_users(&self, ids: &[i64]) -> StoreResult<Vec<User>>;
    /// The user with this exact username, with `password_hash` filled.
    async fn get_user_by_name(&self, username: &str) -> StoreResult<Option<User>>;
    /// Sets `avatar_url` (None clears it); returns the updated user.
    async fn update_user_avatar(&self, id: i64, avatar_url: Option<&str>, now_ms: i64) -> StoreResult<Option<User>>;
    /// Substring match on username (case-insensitive), registered users first, by username.
    async fn search_users(&self, query: &str, limit: u32) -> StoreResult<Vec<User>>;

    // ---- conversations and members ------------------------------------------
    /// Creates a conversation with its first members in one transaction and
    /// sets `member_count`. For a single chat (`pair_key` set) an existing
    /// conversation with the same pair key is returned instead, with `false`.
    async fn create_conversation(&self, conv: &Conversation, members: &[Member]) -> StoreResult<(Conversation, bool)>;
    async fn get_conversation(&self, id: &str) -> StoreResult<Option<Conversation>>;
    /// Updates the fields given (None = unchanged); returns the row.
    async fn update_conversation(
        &self,
        id: &str,
        name: Option<&str>,
        avatar_url: Option<&str>,
        description: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<Conversation>>;
    /// The user's conversations, newest activity (`updated_at`) first, each
    /// with `last_message` (with `sender`), `unread_count`
    /// (`last_seq_id - last_read_seq_id`, never negative) and `my_membership`,
    /// in a fixed number of queries per page (no query per row).
    async fn list_user_conversations(
        &self,
        user_id: i64,
        offset: u32,
        limit: u32,
        conv_type: Option<i32>,
    ) -> StoreResult<Page<Conversation>>;
    async fn get_member(&self, conversation_id: &str, user_id: i64) -> StoreResult<Option<Member>>;
    /// The conversations among `ids` that exist, in one query (any order).
    async fn get_conversations(&self, ids: &[String]) -> StoreResult<Vec<Conversation>>;
    /// The memberships among `keys` (conversation id, user id) that exist,
    /// with `user` filled, in one query (any order).
    async fn get_members(&self, keys: &[(String, i64)]) -> StoreResult<Vec<Member>>;
    /// The whole member-id lists (ascending) of the conversations among `ids`
    /// that exist and have at most `max_members` members, in one query; the
    /// others are left out (page those with `list_member_ids`).
    async fn member_id_lists(&self, ids: &[String], max_members: u32) -> StoreResult<Vec<(String, Vec<i64>)>>;
    /// Members with `user` filled, owner first then by join time; optional role filter.
    async fn list_members(&self, conversation_id: &str, offset: u32, limit: u32, role: Option<i32>) -> StoreResult<Page<Member>>;
    /// Member ids in ascending order after `after_user_id` (keyset paging for fan-out).
    async fn list_member_ids(&self, conversation_id: &str, after_user_id: i64, limit: u32) -> StoreResult<Page<i64>>;
    /// Adds members, skipping existing ones; returns the ids actually added
    /// and the new `member_count`. `Invalid` if the conversation is unknown.
    async fn add_members(&self, conversation_id: &str, members: &[Member]) -> StoreResult<(Vec<i64>, i64)>;
    /// Removes a member; returns whether a row was removed and the new `member_count`.
    async fn remove_member(&self, conversation_id: &str, user_id: i64) -> StoreResult<(bool, i64)>;
    async fn update_member_role(&self, conversation_id: &str, user_id: i64, role: i32, now_ms: i64) -> StoreResult<Option<Member>>;

    // ---- messages -------------------------------------------------------------
    /// Stores a batch in one transaction, skipping rows whose
    /// `(conversation_id, seq_id)` exists, and moves each conversation's
    /// `last_seq_id`, `last_message_id` and `updated_at` forward (never back).
    async fn save_messages(&self, messages: &[Message]) -> StoreResult<SaveOutcome>;
    /// History page with `sender` filled.
    async fn history(&self, conversation_id: &str, direction: HistoryDirection, limit: u32) -> StoreResult<Page<Message>>;
    async fn find_message_by_client_id(&self, sender_id: i64, client_msg_id: &str) -> StoreResult<Option<Message>>;
    /// [`Store::find_message_by_client_id`] for many `(sender, client_msg_id)`
    /// pairs in one query (no `sender` filled); pairs with no message are absent.
    async fn find_messages_by_client_ids(&self, keys: &[(i64, String)]) -> StoreResult<Vec<Message>>;
    /// Moves the read pointer to `max(current, seq_id)`; returns the pointer
    /// after the call and whether it moved.
    async fn update_read_pointer(&self, user_id: i64, conversation_id: &str, seq_id: i64, now_ms: i64) -> StoreResult<(i64, bool)>;
    /// The user's read pointer in the conversation (0 when none); read-only.
    async fn read_pointer(&self, user_id: i64, conversation_id: &str) -> StoreResult<i64>;
    /// Moves many pointers forward (never back) in one transaction: after a
    /// batch is stored, its senders have read their own messages.
    async fn advance_read_pointers(&self, pointers: &[(i64, String, i64)], now_ms: i64) -> StoreResult<()>;

    // ---- friendships ----------------------------------------------------------
    /// Creates a pending request (id and times set by the caller).
    /// `Conflict(AlreadyFriends)` if accepted either way, `Conflict(AlreadyRequested)`
    /// if one is pending either way; a rejected one is reopened as pending.
    async fn create_friend_request(&self, req: &FriendRequest) -> StoreResult<FriendRequest>;
    /// With `requester` and `target` filled.
    async fn get_friend_request(&self, id: i64) -> StoreResult<Option<FriendRequest>>;
    /// Requests the user received (`received`) or sent, newest first, with users filled.
    async fn list_friend_requests(&self, user_id: i64, received: bool, status: Option<i32>) -> StoreResult<Vec<FriendRequest>>;
    /// Sets the status; on accept (1) also stores the reverse row as accepted,
    /// in one transaction. Returns the updated request.
    /// With `only_if`, nothing changes (and `None` is returned) unless the
    /// request currently has that status, checked in the same statement.
    async fn set_friend_request_status(
        &self,
        id: i64,
        status: i32,
        only_if: Option<i32>,
        now_ms: i64,
    ) -> StoreResult<Option<FriendRequest>>;
    /// Accepted friendships of the user with `friend` filled (`online` false).
    async fn list_friends(&self, user_id: i64) -> StoreResult<Vec<Friend>>;
    async fn are_friends(&self, a: i64, b: i64) -> StoreResult<bool>;
    /// Ids of the user's accepted friends.
    async fn friend_ids(&self, user_id: i64) -> StoreResult<Vec<i64>>;

    // ---- token revocation -------------------------------------------------------
    /// Records a revoked token id until `expires_at_ms` (keeps the later
    /// expiry if already there) and forgets revocations that expired by
    /// `now_ms`. True only for the call that revoked it first.
    async fn revoke_token(&self, jti: &str, expires_at_ms: i64, now_ms: i64) -> StoreResult<bool>;
    /// Revocations still in force at `now_ms`.
    async fn revoked_tokens(&self, now_ms: i64) -> StoreResult<Vec<(String, i64)>>;
}
