//! Conversations and their members.
//!
//! `conversations.member_count` is only ever changed in the transaction that
//! inserts or deletes `conversation_members` rows, by the number of rows
//! actually inserted or deleted, while that transaction holds the
//! conversation row locked: it stays in step without a `COUNT(*)`.

use std::collections::{BTreeSet, HashSet};

use gochat_proto::common::{Conversation, Member};
use sqlx::{MySqlConnection, Row};

use super::rows::{self, at_ms, conv_cols, member_cols, message_cols, ms, user_cols};
use super::{BULK_ROWS, BulkInsert, MySqlStore, check_len, db_err, into_page, is_unique_violation, json, page_limit, retrying};
use crate::store::{Page, StoreError, StoreResult};

/// `VARCHAR(64)`, for both the id and the pair key.
const MAX_CONV_ID: usize = 64;

const SELECT_CONV: &str = concat!("SELECT ", conv_cols!("c"), " FROM conversations c WHERE c.id = ?");
const SELECT_CONV_BY_PAIR: &str = concat!("SELECT ", conv_cols!("c"), " FROM conversations c WHERE c.pair_key = ?");
/// Takes the conversation's row lock, which every transaction changing its
/// members or messages takes first; returns the current member count.
const LOCK_CONV: &str = "SELECT member_count FROM conversations WHERE id = ? FOR UPDATE";
const SELECT_MEMBER: &str = concat!(
    "SELECT ",
    member_cols!("cm", ""),
    ", ",
    user_cols!("u", "u_"),
    " FROM conversation_members cm LEFT JOIN users u ON u.id = cm.user_id
     WHERE cm.conversation_id = ? AND cm.user_id = ?"
);

static INSERT_MEMBERS: BulkInsert = BulkInsert::new(
    "INSERT INTO conversation_members (conversation_id, user_id, role, muted, joined_at, updated_at) VALUES",
    concat!("(?, ?, ?, ?, ", at_ms!(), ", ", at_ms!(), ")"),
    "",
);

async fn conv_by(conn: &mut MySqlConnection, sql: &'static str, key: &str) -> StoreResult<Option<Conversation>> {
    let row = sqlx::query(sql).bind(key).fetch_optional(conn).await.map_err(db_err)?;
    row.map(|r| rows::conversation(&r)).transpose().map_err(db_err)
}

/// Locks the conversation row; `None` if there is no such conversation.
pub(super) async fn lock_conv(conn: &mut MySqlConnection, conversation_id: &str) -> StoreResult<Option<i64>> {
    let row = sqlx::query(LOCK_CONV).bind(conversation_id).fetch_optional(conn).await.map_err(db_err)?;
    row.map(|r| r.try_get::<i64, _>("member_count")).transpose().map_err(db_err)
}

/// Inserts the members that are not in `conversation_id` yet (whatever their
/// own `conversation_id` says) and returns the ids inserted, in input order;
/// a user listed twice is inserted once, as listed first.
///
/// The caller holds the conversation row (locked, or inserted by the same
/// transaction), so nobody adds members between the read and the insert.
async fn insert_members(conn: &mut MySqlConnection, conversation_id: &str, members: &[Member]) -> StoreResult<Vec<i64>> {
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = members.iter().map(|m| m.user_id).collect();
    let mut skip: HashSet<i64> = sqlx::query(
        "SELECT cm.user_id FROM conversation_members cm
         WHERE cm.conversation_id = ?
           AND cm.user_id IN (SELECT j.id FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j)",
    )
    .bind(conversation_id)
    .bind(json(&ids)?)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?
    .iter()
    .map(|r| r.try_get::<i64, _>("user_id"))
    .collect::<Result<_, _>>()
    .map_err(db_err)?;
    // `insert` is false for existing members and for repeats in the input.
    let fresh: Vec<&Member> = members.iter().filter(|m| skip.insert(m.user_id)).collect();
    for chunk in fresh.chunks(BULK_ROWS) {
        let mut insert = sqlx::query(INSERT_MEMBERS.sql(chunk.len()));
        for m in chunk {
            insert = insert.bind(conversation_id).bind(m.user_id).bind(m.role).bind(m.muted).bind(m.joined_at_ms).bind(m.joined_at_ms);
        }
        // An unknown user fails the whole statement (foreign key): `Invalid`,
        // and the caller's transaction rolls back, as on SQLite.
        insert.execute(&mut *conn).await.map_err(db_err)?;
    }
    Ok(fresh.iter().map(|m| m.user_id).collect())
}

/// Adds `delta` to `member_count` and returns the new count.
async fn bump_member_count(conn: &mut MySqlConnection, conversation_id: &str, delta: i64) -> StoreResult<i64> {
    let done = sqlx::query("UPDATE conversations SET member_count = GREATEST(member_count + ?, 0) WHERE id = ?")
        .bind(delta)
        .bind(conversation_id)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Invalid(format!("unknown conversation {conversation_id}")));
    }
    let row =
        sqlx::query("SELECT member_count FROM conversations WHERE id = ?").bind(conversation_id).fetch_one(conn).await.map_err(db_err)?;
    row.try_get("member_count").map_err(db_err)
}

/// A member row from `SELECT_MEMBER`-shaped columns, with `user` filled.
fn member_with_user(row: &sqlx::mysql::MySqlRow) -> Result<Member, sqlx::Error> {
    let mut m = rows::member(row, "")?;
    m.user = rows::opt_user(row, "u_")?;
    Ok(m)
}

impl MySqlStore {
    pub(super) async fn create_conversation_impl(&self, conv: &Conversation, members: &[Member]) -> StoreResult<(Conversation, bool)> {
        check_len("conversation id", &conv.id, MAX_CONV_ID)?;
        if let Some(pk) = &conv.pair_key {
            check_len("pair key", pk, MAX_CONV_ID)?;
        }
        retrying("create_conversation", || self.create_conversation_once(conv, members)).await
    }

    async fn create_conversation_once(&self, conv: &Conversation, members: &[Member]) -> StoreResult<(Conversation, bool)> {
        let mut tx = self.begin_write().await?;
        // Fast path for an existing single chat.
        if let Some(pk) = &conv.pair_key
            && let Some(existing) = conv_by(&mut tx, SELECT_CONV_BY_PAIR, pk).await?
        {
            return Ok((existing, false));
        }
        // Concurrent creators of one pair meet on uk_conversations_pair_key:
        // the later INSERT waits for the first transaction and, once it
        // commits, fails with 1062; that caller then reads the winner's row.
        let inserted = sqlx::query(concat!(
            "INSERT INTO conversations (id, type, name, avatar_url, description, owner_id, member_count,
                 settings, last_message_id, last_seq_id, pair_key, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ",
            at_ms!(),
            ", ",
            at_ms!(),
            ")"
        ))
        .bind(&conv.id)
        .bind(conv.r#type)
        .bind(conv.name.as_deref())
        .bind(conv.avatar_url.as_deref())
        .bind(conv.description.as_deref())
        .bind(conv.owner_id)
        .bind(conv.settings.as_deref())
        .bind(conv.last_message_id)
        .bind(conv.last_seq_id)
        .bind(conv.pair_key.as_deref())
        .bind(conv.created_at_ms)
        .bind(conv.updated_at_ms)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                drop(tx); // rolls back
                if let Some(pk) = &conv.pair_key
                    && let Some(existing) = conv_by(&mut *self.pool.acquire().await?, SELECT_CONV_BY_PAIR, pk).await?
                {
                    return Ok((existing, false));
                }
                return Err(StoreError::Invalid(format!("conversation {} already exists", conv.id)));
            }
            Err(e) => return Err(db_err(e)),
        }
        let added = insert_members(&mut tx, &conv.id, members).await?;
        bump_member_count(&mut tx, &conv.id, added.len() as i64).await?;
        let created = conv_by(&mut tx, SELECT_CONV, &conv.id)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("conversation {} vanished after insert", conv.id)))?;
        tx.commit().await?;
        Ok((created, true))
    }

    pub(super) async fn get_conversation_impl(&self, id: &str) -> StoreResult<Option<Conversation>> {
        conv_by(&mut *self.pool.acquire().await?, SELECT_CONV, id).await
    }

    pub(super) async fn update_conversation_impl(
        &self,
        id: &str,
        name: Option<&str>,
        avatar_url: Option<&str>,
        description: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<Conversation>> {
        retrying("update_conversation", move || async move {
            let mut tx = self.begin_write().await?;
            // updated_at orders the conversation list; GREATEST keeps a late
            // or skewed clock from moving it backwards past the last message.
            let done = sqlx::query(concat!(
                "UPDATE conversations SET name = COALESCE(?, name), avatar_url = COALESCE(?, avatar_url),
                     description = COALESCE(?, description), updated_at = GREATEST(updated_at, ",
                at_ms!(),
                ") WHERE id = ?"
            ))
            .bind(name)
            .bind(avatar_url)
            .bind(description)
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if done.rows_affected() == 0 {
                return Ok(None);
            }
            let conv = conv_by(&mut tx, SELECT_CONV, id).await?;
            tx.commit().await?;
            Ok(conv)
        })
        .await
    }

    pub(super) async fn list_user_conversations_impl(
        &self,
        user_id: i64,
        offset: u32,
        limit: u32,
        conv_type: Option<i32>,
    ) -> StoreResult<Page<Conversation>> {
        let limit = page_limit(limit);
        // One query per page: membership drives the scan, the conversation,
        // the caller's read pointer, the last message and its sender are
        // joined on primary/unique keys.
        let rows = sqlx::query(concat!(
            "SELECT ",
            conv_cols!("c"),
            ", ",
            member_cols!("cm", "me_"),
            ", COALESCE(rp.last_read_seq_id, 0) AS last_read_seq_id, ",
            message_cols!("m", "m_"),
            ", ",
            user_cols!("u", "u_"),
            " FROM conversation_members cm
             JOIN conversations c ON c.id = cm.conversation_id
             LEFT JOIN user_read_pointers rp ON rp.user_id = cm.user_id AND rp.conversation_id = cm.conversation_id
             LEFT JOIN messages m ON m.id = c.last_message_id AND m.conversation_id = c.id
             LEFT JOIN users u ON u.id = m.sender_id
             WHERE cm.user_id = ? AND (? IS NULL OR c.type = ?)
             ORDER BY c.updated_at DESC, c.id
             LIMIT ? OFFSET ?"
        ))
        .bind(user_id)
        .bind(conv_type)
        .bind(conv_type)
        .bind(limit + 1)
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(|r| {
                let mut conv = rows::conversation(r)?;
                let last_read: i64 = r.try_get("last_read_seq_id")?;
                conv.unread_count = (conv.last_seq_id - last_read).max(0);
                conv.my_membership = Some(rows::member(r, "me_")?);
                if r.try_get::<Option<i64>, _>("m_id")?.is_some() {
                    let mut msg = rows::message(r, "m_")?;
                    msg.sender = rows::opt_user(r, "u_")?;
                    conv.last_message = Some(msg);
                }
                Ok(conv)
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err)?;
        Ok(into_page(items, limit))
    }

    pub(super) async fn get_conversations_impl(&self, ids: &[String]) -> StoreResult<Vec<Conversation>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // JSON_TABLE would cut a longer id to 64 characters and match another row.
        let ids: BTreeSet<&String> = ids.iter().filter(|id| id.chars().count() <= MAX_CONV_ID).collect(); // each row once
        let rows = sqlx::query(concat!(
            "SELECT ",
            conv_cols!("c"),
            " FROM JSON_TABLE(?, '$[*]' COLUMNS (
                   id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$')) AS k
             JOIN conversations c ON c.id = k.id"
        ))
        .bind(json(&ids)?)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(rows::conversation).collect::<Result<_, _>>().map_err(db_err)
    }

    pub(super) async fn get_members_impl(&self, keys: &[(String, i64)]) -> StoreResult<Vec<Member>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // JSON_TABLE would cut a longer id to 64 characters and match another row.
        let keys: BTreeSet<&(String, i64)> = keys.iter().filter(|(id, _)| id.chars().count() <= MAX_CONV_ID).collect(); // each row once
        let rows = sqlx::query(concat!(
            "SELECT ",
            member_cols!("cm", ""),
            ", ",
            user_cols!("u", "u_"),
            " FROM JSON_TABLE(?, '$[*]' COLUMNS (
                   conversation_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$[0]',
                   user_id BIGINT PATH '$[1]')) AS k
             JOIN conversation_members cm ON cm.conversation_id = k.conversation_id AND cm.user_id = k.user_id
             LEFT JOIN users u ON u.id = cm.user_id"
        ))
        .bind(json(&keys)?)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(member_with_user).collect::<Result<_, _>>().map_err(db_err)
    }

    pub(super) async fn member_id_lists_impl(&self, ids: &[String], max_members: u32) -> StoreResult<Vec<(String, Vec<i64>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // JSON_TABLE would cut a longer id to 64 characters and match another row.
        let ids: BTreeSet<&String> = ids.iter().filter(|id| id.chars().count() <= MAX_CONV_ID).collect();
        let rows = sqlx::query(
            "SELECT cm.conversation_id, cm.user_id
             FROM JSON_TABLE(?, '$[*]' COLUMNS (
                   id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$')) AS k
             JOIN conversations c ON c.id = k.id
             JOIN conversation_members cm ON cm.conversation_id = c.id
             WHERE c.member_count <= ?
             ORDER BY cm.conversation_id, cm.user_id",
        )
        .bind(json(&ids)?)
        .bind(i64::from(max_members))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let pairs = rows.iter().map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?))).collect::<Result<Vec<_>, sqlx::Error>>();
        Ok(crate::store::group_member_ids(pairs.map_err(db_err)?))
    }

    pub(super) async fn get_member_impl(&self, conversation_id: &str, user_id: i64) -> StoreResult<Option<Member>> {
        let row = sqlx::query(SELECT_MEMBER).bind(conversation_id).bind(user_id).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.map(|r| member_with_user(&r)).transpose().map_err(db_err)
    }

    pub(super) async fn list_members_impl(
        &self,
        conversation_id: &str,
        offset: u32,
        limit: u32,
        role: Option<i32>,
    ) -> StoreResult<Page<Member>> {
        let limit = page_limit(limit);
        let rows = sqlx::query(concat!(
            "SELECT ",
            member_cols!("cm", ""),
            ", ",
            user_cols!("u", "u_"),
            " FROM conversation_members cm LEFT JOIN users u ON u.id = cm.user_id
             WHERE cm.conversation_id = ? AND (? IS NULL OR cm.role = ?)
             ORDER BY CASE WHEN cm.role = 3 THEN 0 ELSE 1 END, cm.joined_at, cm.user_id
             LIMIT ? OFFSET ?"
        ))
        .bind(conversation_id)
        .bind(role)
        .bind(role)
        .bind(limit + 1)
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let items = rows.iter().map(member_with_user).collect::<Result<Vec<_>, _>>().map_err(db_err)?;
        Ok(into_page(items, limit))
    }

    pub(super) async fn list_member_ids_impl(&self, conversation_id: &str, after_user_id: i64, limit: u32) -> StoreResult<Page<i64>> {
        let limit = page_limit(limit);
        let rows = sqlx::query(
            "SELECT user_id FROM conversation_members WHERE conversation_id = ? AND user_id > ?
             ORDER BY user_id LIMIT ?",
        )
        .bind(conversation_id)
        .bind(after_user_id)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let ids = rows.iter().map(|r| r.try_get::<i64, _>("user_id")).collect::<Result<Vec<_>, _>>().map_err(db_err)?;
        Ok(into_page(ids, limit))
    }

    pub(super) async fn add_members_impl(&self, conversation_id: &str, members: &[Member]) -> StoreResult<(Vec<i64>, i64)> {
        retrying("add_members", move || async move {
            let mut tx = self.begin_write().await?;
            if lock_conv(&mut tx, conversation_id).await?.is_none() {
                return Err(StoreError::Invalid(format!("unknown conversation {conversation_id}")));
            }
            let added = insert_members(&mut tx, conversation_id, members).await?;
            let count = bump_member_count(&mut tx, conversation_id, added.len() as i64).await?;
            tx.commit().await?;
            Ok((added, count))
        })
        .await
    }

    pub(super) async fn remove_member_impl(&self, conversation_id: &str, user_id: i64) -> StoreResult<(bool, i64)> {
        retrying("remove_member", move || async move {
            let mut tx = self.begin_write().await?;
            // Conversation first, then the member row: the order add_members
            // and save_messages take their locks in.
            let Some(current) = lock_conv(&mut tx, conversation_id).await? else {
                // No conversation, so no member either (foreign key).
                return Ok((false, 0));
            };
            let done = sqlx::query("DELETE FROM conversation_members WHERE conversation_id = ? AND user_id = ?")
                .bind(conversation_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let removed = done.rows_affected() == 1;
            let count = if removed { bump_member_count(&mut tx, conversation_id, -1).await? } else { current };
            tx.commit().await?;
            Ok((removed, count))
        })
        .await
    }

    pub(super) async fn update_member_role_impl(
        &self,
        conversation_id: &str,
        user_id: i64,
        role: i32,
        now_ms: i64,
    ) -> StoreResult<Option<Member>> {
        retrying("update_member_role", move || async move {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query(concat!(
                "UPDATE conversation_members SET role = ?, updated_at = ",
                at_ms!(),
                " WHERE conversation_id = ? AND user_id = ?"
            ))
            .bind(role)
            .bind(now_ms)
            .bind(conversation_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if done.rows_affected() == 0 {
                return Ok(None);
            }
            let row = sqlx::query(SELECT_MEMBER).bind(conversation_id).bind(user_id).fetch_one(&mut *tx).await.map_err(db_err)?;
            let member = member_with_user(&row).map_err(db_err)?;
            tx.commit().await?;
            Ok(Some(member))
        })
        .await
    }
}
