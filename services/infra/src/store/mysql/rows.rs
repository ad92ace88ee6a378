//! Column lists and row decoders shared by the queries of this module.
//!
//! The same shape as `sqlite::rows`: joined tables are aliased with a prefix
//! (`u_id`, `m_seq_id`, ...) so one decoder per type serves every query, and
//! the lists are macros so queries stay `&'static str` through `concat!`.
//! The one difference is time: columns are DATETIME(3) and leave the
//! database as Unix milliseconds through [`ms!`], parameters enter through
//! [`at_ms!`].
//!
//! Decoders never unwrap: a NULL in a NOT NULL column or an out-of-range
//! integer surfaces as `StoreError::Backend(ColumnDecode)`.

use gochat_proto::common::{Conversation, FriendRequest, Member, Message, User};
use sqlx::Row;
use sqlx::mysql::MySqlRow;

/// A DATETIME(3) expression as Unix milliseconds (BIGINT).
///
/// Epoch arithmetic rather than `UNIX_TIMESTAMP`: it does not depend on the
/// session time zone, and it covers times before 1970 and after 2038, which
/// `UNIX_TIMESTAMP` / `FROM_UNIXTIME` return as NULL on MariaDB 10.11.
macro_rules! ms {
    ($($part:expr),+) => {
        concat!("(TIMESTAMPDIFF(MICROSECOND, TIMESTAMP'1970-01-01 00:00:00', ", $($part),+, ") DIV 1000)")
    };
}

/// A bound Unix-milliseconds parameter as DATETIME, the inverse of [`ms!`].
/// Out of DATETIME's range (years 1000..=9999) the statement fails.
macro_rules! at_ms {
    () => {
        "TIMESTAMPADD(MICROSECOND, ? * 1000, TIMESTAMP'1970-01-01 00:00:00')"
    };
}

/// `users` columns of table alias `$t`, aliased `{$p}col`. No password hash:
/// only `get_user_by_name` selects it, for login.
macro_rules! user_cols {
    ($t:literal, $p:literal) => {
        concat!(
            $t,
            ".id AS ",
            $p,
            "id, ",
            $t,
            ".username AS ",
            $p,
            "username, ",
            $t,
            ".avatar_url AS ",
            $p,
            "avatar_url, ",
            $t,
            ".is_guest AS ",
            $p,
            "is_guest, ",
            $t,
            ".status AS ",
            $p,
            "status, ",
            ms!($t, ".created_at"),
            " AS ",
            $p,
            "created_at, ",
            ms!($t, ".updated_at"),
            " AS ",
            $p,
            "updated_at"
        )
    };
}

/// `conversations` columns of alias `$t`, unprefixed (always the main table).
macro_rules! conv_cols {
    ($t:literal) => {
        concat!(
            $t,
            ".id, ",
            $t,
            ".type, ",
            $t,
            ".name, ",
            $t,
            ".avatar_url, ",
            $t,
            ".description, ",
            $t,
            ".owner_id, ",
            $t,
            ".member_count, ",
            $t,
            ".settings, ",
            $t,
            ".last_message_id, ",
            $t,
            ".last_seq_id, ",
            $t,
            ".pair_key, ",
            ms!($t, ".created_at"),
            " AS created_at, ",
            ms!($t, ".updated_at"),
            " AS updated_at"
        )
    };
}

/// `conversation_members` columns of alias `$t`, aliased `{$p}col`.
macro_rules! member_cols {
    ($t:literal, $p:literal) => {
        concat!(
            $t,
            ".conversation_id AS ",
            $p,
            "conversation_id, ",
            $t,
            ".user_id AS ",
            $p,
            "user_id, ",
            $t,
            ".role AS ",
            $p,
            "role, ",
            $t,
            ".muted AS ",
            $p,
            "muted, ",
            ms!($t, ".joined_at"),
            " AS ",
            $p,
            "joined_at"
        )
    };
}

/// `messages` columns of alias `$t`, aliased `{$p}col`.
macro_rules! message_cols {
    ($t:literal, $p:literal) => {
        concat!(
            $t,
            ".id AS ",
            $p,
            "id, ",
            $t,
            ".conversation_id AS ",
            $p,
            "conversation_id, ",
            $t,
            ".sender_id AS ",
            $p,
            "sender_id, ",
            $t,
            ".message_type AS ",
            $p,
            "message_type, ",
            $t,
            ".content AS ",
            $p,
            "content, ",
            $t,
            ".seq_id AS ",
            $p,
            "seq_id, ",
            $t,
            ".client_msg_id AS ",
            $p,
            "client_msg_id, ",
            $t,
            ".deleted AS ",
            $p,
            "deleted, ",
            $t,
            ".extra AS ",
            $p,
            "extra, ",
            ms!($t, ".created_at"),
            " AS ",
            $p,
            "created_at"
        )
    };
}

/// `friendship_requests` columns of alias `$t`, unprefixed.
macro_rules! request_cols {
    ($t:literal) => {
        concat!(
            $t,
            ".id, ",
            $t,
            ".requester_id, ",
            $t,
            ".target_id, ",
            $t,
            ".status, ",
            $t,
            ".message, ",
            ms!($t, ".created_at"),
            " AS created_at, ",
            ms!($t, ".updated_at"),
            " AS updated_at"
        )
    };
}

pub(super) use {at_ms, conv_cols, member_cols, message_cols, ms, request_cols, user_cols};

/// `{prefix}{name}` without allocating for the common unprefixed case.
fn col(prefix: &str, name: &'static str) -> std::borrow::Cow<'static, str> {
    if prefix.is_empty() { name.into() } else { format!("{prefix}{name}").into() }
}

fn get<'r, T>(row: &'r MySqlRow, prefix: &str, name: &'static str) -> Result<T, sqlx::Error>
where
    T: sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql>,
{
    row.try_get(col(prefix, name).as_ref())
}

/// A user from `user_cols!(_, prefix)`; `password_hash` stays empty.
pub(super) fn user(row: &MySqlRow, p: &str) -> Result<User, sqlx::Error> {
    Ok(User {
        id: get(row, p, "id")?,
        username: get(row, p, "username")?,
        avatar_url: get(row, p, "avatar_url")?,
        is_guest: get(row, p, "is_guest")?,
        status: get(row, p, "status")?,
        created_at_ms: get(row, p, "created_at")?,
        updated_at_ms: get(row, p, "updated_at")?,
        password_hash: String::new(),
    })
}

/// The user of a LEFT JOIN: `None` when the joined row is missing.
pub(super) fn opt_user(row: &MySqlRow, p: &str) -> Result<Option<User>, sqlx::Error> {
    match get::<Option<i64>>(row, p, "id")? {
        Some(_) => user(row, p).map(Some),
        None => Ok(None),
    }
}

/// A conversation from `conv_cols!`; the per-caller fields stay default.
pub(super) fn conversation(row: &MySqlRow) -> Result<Conversation, sqlx::Error> {
    Ok(Conversation {
        id: get(row, "", "id")?,
        r#type: get(row, "", "type")?,
        name: get(row, "", "name")?,
        avatar_url: get(row, "", "avatar_url")?,
        description: get(row, "", "description")?,
        owner_id: get(row, "", "owner_id")?,
        member_count: get(row, "", "member_count")?,
        settings: get(row, "", "settings")?,
        last_message_id: get(row, "", "last_message_id")?,
        last_seq_id: get(row, "", "last_seq_id")?,
        created_at_ms: get(row, "", "created_at")?,
        updated_at_ms: get(row, "", "updated_at")?,
        pair_key: get(row, "", "pair_key")?,
        last_message: None,
        unread_count: 0,
        my_membership: None,
    })
}

/// A member from `member_cols!(_, prefix)`, `user` left to the caller.
pub(super) fn member(row: &MySqlRow, p: &str) -> Result<Member, sqlx::Error> {
    Ok(Member {
        conversation_id: get(row, p, "conversation_id")?,
        user_id: get(row, p, "user_id")?,
        role: get(row, p, "role")?,
        muted: get(row, p, "muted")?,
        joined_at_ms: get(row, p, "joined_at")?,
        user: None,
    })
}

/// A message from `message_cols!(_, prefix)`, `sender` left to the caller.
pub(super) fn message(row: &MySqlRow, p: &str) -> Result<Message, sqlx::Error> {
    Ok(Message {
        id: get(row, p, "id")?,
        conversation_id: get(row, p, "conversation_id")?,
        sender_id: get(row, p, "sender_id")?,
        message_type: get(row, p, "message_type")?,
        content: get(row, p, "content")?,
        seq_id: get(row, p, "seq_id")?,
        client_msg_id: get(row, p, "client_msg_id")?,
        deleted: get(row, p, "deleted")?,
        extra: get(row, p, "extra")?,
        created_at_ms: get(row, p, "created_at")?,
        sender: None,
    })
}

/// A friend request from `request_cols!`, users left to the caller.
pub(super) fn request(row: &MySqlRow) -> Result<FriendRequest, sqlx::Error> {
    Ok(FriendRequest {
        id: get(row, "", "id")?,
        requester_id: get(row, "", "requester_id")?,
        target_id: get(row, "", "target_id")?,
        status: get(row, "", "status")?,
        message: get(row, "", "message")?,
        created_at_ms: get(row, "", "created_at")?,
        updated_at_ms: get(row, "", "updated_at")?,
        requester: None,
        target: None,
    })
}
