//! Conversations and their members.
//!
//! `conversations.member_count` is only ever changed in the transaction that
//! inserts or deletes `conversation_members` rows, by the number of rows
//! actually inserted or deleted, so it stays in step without a `COUNT(*)`
//! (which would scan the whole world room on every join).

use std::collections::BTreeSet;

use gochat_proto::common::{Conversation, Member};
use sqlx::{Row, SqliteConnection};

use super::rows::{self, conv_cols, member_cols, message_cols, user_cols};
use super::{SqliteStore, check_len, db_err, into_page, is_unique_violation, json, page_limit};
use crate::store::{Page, StoreError, StoreResult};

/// `VARCHAR(64)` in MySQL, for both the id and the pair key.
const MAX_CONV_ID: usize = 64;

const SELECT_CONV: &str = concat!("SELECT ", conv_cols!("c"), " FROM conversations c WHERE c.id = ?");
const SELECT_CONV_BY_PAIR: &str = concat!("SELECT ", conv_cols!("c"), " FROM conversations c WHERE c.pair_key = ?");
const SELECT_MEMBER: &str = concat!(
    "SELECT ",
    member_cols!("cm", ""),
    ", ",
    user_cols!("u", "u_"),
    " FROM conversation_members cm LEFT JOIN users u ON u.id = cm.user_id
     WHERE cm.conversation_id = ? AND cm.user_id = ?"
);

async fn conv_by(conn: &mut SqliteConnection, sql: &'static str, key: &str) -> StoreResult<Option<Conversation>> {
    let row = sqlx::query(sql).bind(key).fetch_optional(conn).await.map_err(db_err)?;
    row.map(|r| rows::conversation(&r)).transpose().map_err(db_err)
}

/// Inserts the members that are not in `conversation_id` yet (whatever their
/// own `conversation_id` says) and returns the ids inserted, in input order.
async fn insert_members(conn: &mut SqliteConnection, conversation_id: &str, members: &[Member]) -> StoreResult<Vec<i64>> {
    let mut added = Vec::with_capacity(members.len());
    for m in members {
        let done = sqlx::query(
            "INSERT INTO conversation_members (conversation_id, user_id, role, muted, joined_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (user_id, conversation_id) DO NOTHING",
        )
        .bind(conversation_id)
        .bind(m.user_id)
        .bind(m.role)
        .bind(m.muted)
        .bind(m.joined_at_ms)
        .bind(m.joined_at_ms)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 1 {
            added.push(m.user_id);
        }
    }
    Ok(added)
}

/// Adds `delta` to `member_count` and returns the new count.
async fn bump_member_count(conn: &mut SqliteConnection, conversation_id: &str, delta: i64) -> StoreResult<i64> {
    let row = sqlx::query("UPDATE conversations SET member_count = max(member_count + ?, 0) WHERE id = ? RETURNING member_count")
        .bind(delta)
        .bind(conversation_id)
        .fetch_optional(conn)
        .await
        .map_err(db_err)?;
    match row {
        Some(r) => r.try_get("member_count").map_err(db_err),
        None => Err(StoreError::Invalid(format!("unknown conversation {conversation_id}"))),
    }
}

/// A member row from `SELECT_MEMBER`-shaped columns, with `user` filled.
fn member_with_user(row: &sqlx::sqlite::SqliteRow) -> Result<Member, sqlx::Error> {
    let mut m = rows::member(row, "")?;
    m.user = rows::opt_user(row, "u_")?;
    Ok(m)
}

impl SqliteStore {
    pub(super) async fn create_conversation_impl(&self, conv: &Conversation, members: &[Member]) -> StoreResult<(Conversation, bool)> {
        check_len("conversation id", &conv.id, MAX_CONV_ID)?;
        if let Some(pk) = &conv.pair_key {
            check_len("pair key", pk, MAX_CONV_ID)?;
        }
        let mut tx = self.begin_write().await?;
        // Fast path for an existing single chat. Under BEGIN IMMEDIATE no
        // other writer can slip in between this read and the insert; the
        // unique-violation branch below covers engines without that lock.
        if let Some(pk) = &conv.pair_key
            && let Some(existing) = conv_by(&mut tx, SELECT_CONV_BY_PAIR, pk).await?
        {
            return Ok((existing, false));
        }
        let inserted = sqlx::query(
            "INSERT INTO conversations (id, type, name, avatar_url, description, owner_id, member_count,
                 settings, last_message_id, last_seq_id, pair_key, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
        )
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
        let mut tx = self.begin_write().await?;
        // updated_at orders the conversation list; max() keeps a late or
        // skewed clock from moving it backwards past the last message.
        let done = sqlx::query(
            "UPDATE conversations SET name = coalesce(?, name), avatar_url = coalesce(?, avatar_url),
                 description = coalesce(?, description), updated_at = max(updated_at, ?)
             WHERE id = ?",
        )
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
            ", coalesce(rp.last_read_seq_id, 0) AS last_read_seq_id, ",
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
        let ids: BTreeSet<&String> = ids.iter().collect(); // each row once
        let rows = sqlx::query(concat!("SELECT ", conv_cols!("c"), " FROM conversations c WHERE c.id IN (SELECT value FROM json_each(?))"))
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
        let keys: BTreeSet<&(String, i64)> = keys.iter().collect(); // each row once
        // One JSON array of [conversation_id, user_id] pairs, each looked up
        // through uk_members_user_conv.
        let rows = sqlx::query(concat!(
            "SELECT ",
            member_cols!("cm", ""),
            ", ",
            user_cols!("u", "u_"),
            " FROM json_each(?) k
             JOIN conversation_members cm
               ON cm.user_id = json_extract(k.value, '$[1]') AND cm.conversation_id = json_extract(k.value, '$[0]')
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
        let ids: BTreeSet<&String> = ids.iter().collect();
        let rows = sqlx::query(
            "SELECT cm.conversation_id, cm.user_id FROM conversations c
             JOIN conversation_members cm ON cm.conversation_id = c.id
             WHERE c.id IN (SELECT value FROM json_each(?)) AND c.member_count <= ?
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
        let mut tx = self.begin_write().await?;
        if conv_by(&mut tx, SELECT_CONV, conversation_id).await?.is_none() {
            return Err(StoreError::Invalid(format!("unknown conversation {conversation_id}")));
        }
        let added = insert_members(&mut tx, conversation_id, members).await?;
        let count = bump_member_count(&mut tx, conversation_id, added.len() as i64).await?;
        tx.commit().await?;
        Ok((added, count))
    }

    pub(super) async fn remove_member_impl(&self, conversation_id: &str, user_id: i64) -> StoreResult<(bool, i64)> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM conversation_members WHERE conversation_id = ? AND user_id = ?")
            .bind(conversation_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let removed = done.rows_affected() == 1;
        let count = if removed {
            bump_member_count(&mut tx, conversation_id, -1).await?
        } else {
            // Nothing changed; report the current count (0 for an unknown conversation).
            conv_by(&mut tx, SELECT_CONV, conversation_id).await?.map_or(0, |c| c.member_count)
        };
        tx.commit().await?;
        Ok((removed, count))
    }

    pub(super) async fn update_member_role_impl(
        &self,
        conversation_id: &str,
        user_id: i64,
        role: i32,
        now_ms: i64,
    ) -> StoreResult<Option<Member>> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE conversation_members SET role = ?, updated_at = ? WHERE conversation_id = ? AND user_id = ?")
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
    }
}
