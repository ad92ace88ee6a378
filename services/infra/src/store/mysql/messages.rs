//! Messages (idempotent batch persistence, history) and read pointers.

use std::collections::{BTreeSet, HashSet};

use gochat_proto::common::Message;
use sqlx::Row;

use super::conversations::lock_conv;
use super::rows::{self, at_ms, message_cols, ms, user_cols};
use super::{BULK_ROWS, BulkInsert, MySqlStore, check_len, db_err, into_page, json, page_limit, retrying};
use crate::store::{HistoryDirection, Page, SaveOutcome, StoreError, StoreResult};

/// `VARCHAR(64)`.
const MAX_CLIENT_MSG_ID: usize = 64;

static INSERT_MESSAGES: BulkInsert = BulkInsert::new(
    "INSERT INTO messages (id, conversation_id, sender_id, message_type, content, seq_id,
         client_msg_id, deleted, extra, created_at, updated_at) VALUES",
    concat!("(?, ?, ?, ?, ?, ?, ?, ?, ?, ", at_ms!(), ", ", at_ms!(), ")"),
    "",
);

/// Moves read pointers forward, never back (binds per row: user,
/// conversation, seq, now). `updated_at` is assigned first: MySQL evaluates
/// the assignments left to right, so it still sees the old pointer.
static ADVANCE_POINTERS: BulkInsert = BulkInsert::new(
    "INSERT INTO user_read_pointers (user_id, conversation_id, last_read_seq_id, updated_at) VALUES",
    concat!("(?, ?, ?, ", at_ms!(), ")"),
    "ON DUPLICATE KEY UPDATE
         updated_at = IF(VALUES(last_read_seq_id) > last_read_seq_id, VALUES(updated_at), updated_at),
         last_read_seq_id = GREATEST(last_read_seq_id, VALUES(last_read_seq_id))",
);

/// A message with its sender, from `message_cols!(_, "")` + `user_cols!(_, "u_")`.
fn message_with_sender(row: &sqlx::mysql::MySqlRow) -> Result<Message, sqlx::Error> {
    let mut m = rows::message(row, "")?;
    m.sender = rows::opt_user(row, "u_")?;
    Ok(m)
}

impl MySqlStore {
    pub(super) async fn save_messages_impl(&self, messages: &[Message]) -> StoreResult<SaveOutcome> {
        for m in messages {
            if let Some(id) = &m.client_msg_id {
                check_len("client_msg_id", id, MAX_CLIENT_MSG_ID)?;
            }
        }
        if messages.is_empty() {
            return Ok(SaveOutcome::default());
        }
        retrying("save_messages", || self.save_messages_once(messages)).await
    }

    /// One attempt of [`MySqlStore::save_messages_impl`].
    ///
    /// Every conversation of the batch is locked first, in ascending id
    /// order; concurrent batches sharing conversations queue on those locks
    /// in the same order instead of deadlocking on the messages' unique
    /// index. Under the locks nobody else inserts into these conversations,
    /// so "which (conversation, seq) pairs exist" read once stays true until
    /// the commit, and the insert is a plain one: a message id reused for a
    /// different (conversation, seq) still fails loudly on the primary key,
    /// as on SQLite, instead of being skipped as a duplicate.
    async fn save_messages_once(&self, messages: &[Message]) -> StoreResult<SaveOutcome> {
        let mut tx = self.begin_write().await?;
        let conversations: BTreeSet<&str> = messages.iter().map(|m| m.conversation_id.as_str()).collect();
        for conv in &conversations {
            if lock_conv(&mut tx, conv).await?.is_none() {
                // What the foreign key would say; the whole batch is refused.
                return Err(StoreError::Invalid(format!("referenced conversation {conv} does not exist")));
            }
        }
        let pairs: Vec<(&str, i64)> = messages.iter().map(|m| (m.conversation_id.as_str(), m.seq_id)).collect();
        let mut seen: HashSet<(String, i64)> = sqlx::query(
            "SELECT m.conversation_id, m.seq_id
             FROM JSON_TABLE(?, '$[*]' COLUMNS (
                     conversation_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$[0]',
                     seq_id BIGINT PATH '$[1]')) AS j
             JOIN messages m ON m.conversation_id = j.conversation_id AND m.seq_id = j.seq_id",
        )
        .bind(json(&pairs)?)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| Ok((r.try_get("conversation_id")?, r.try_get("seq_id")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_err)?;
        // Stored already, or repeated inside this batch (the first one wins).
        let fresh: Vec<&Message> = messages.iter().filter(|m| seen.insert((m.conversation_id.clone(), m.seq_id))).collect();
        for chunk in fresh.chunks(BULK_ROWS) {
            let mut insert = sqlx::query(INSERT_MESSAGES.sql(chunk.len()));
            for m in chunk {
                insert = insert
                    .bind(m.id)
                    .bind(&m.conversation_id)
                    .bind(m.sender_id)
                    .bind(m.message_type)
                    .bind(&m.content)
                    .bind(m.seq_id)
                    .bind(m.client_msg_id.as_deref())
                    .bind(m.deleted)
                    .bind(m.extra.as_deref())
                    .bind(m.created_at_ms)
                    .bind(m.created_at_ms);
            }
            insert.execute(&mut *tx).await.map_err(db_err)?;
        }
        // Move each conversation to its highest *stored* message. Reading it
        // back from the table (not from the batch) makes batches arriving
        // out of order harmless: the guard only ever moves it forward, so
        // this is `last_seq_id = GREATEST(last_seq_id, max stored seq)` with
        // the matching message id and time.
        for conv in &conversations {
            sqlx::query(
                "UPDATE conversations c
                 JOIN (SELECT id, seq_id, created_at FROM messages
                       WHERE conversation_id = ? ORDER BY seq_id DESC LIMIT 1) AS m
                 SET c.last_seq_id = m.seq_id, c.last_message_id = m.id,
                     c.updated_at = GREATEST(c.updated_at, m.created_at)
                 WHERE c.id = ? AND m.seq_id > c.last_seq_id",
            )
            .bind(conv)
            .bind(conv)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await?;
        let inserted = u32::try_from(fresh.len()).unwrap_or(u32::MAX);
        let duplicates = u32::try_from(messages.len() - fresh.len()).unwrap_or(u32::MAX);
        Ok(SaveOutcome { inserted, duplicates })
    }

    pub(super) async fn history_impl(&self, conversation_id: &str, direction: HistoryDirection, limit: u32) -> StoreResult<Page<Message>> {
        let limit = page_limit(limit);
        // Both directions walk uk_messages_conv_seq; the bound defaults to
        // i64::MAX so "from the newest" needs no separate statement.
        let query = match direction {
            HistoryDirection::Before(before) => sqlx::query(concat!(
                "SELECT ",
                message_cols!("m", ""),
                ", ",
                user_cols!("u", "u_"),
                " FROM messages m LEFT JOIN users u ON u.id = m.sender_id
                 WHERE m.conversation_id = ? AND m.seq_id < ?
                 ORDER BY m.seq_id DESC LIMIT ?"
            ))
            .bind(conversation_id)
            .bind(before.unwrap_or(i64::MAX)),
            HistoryDirection::After(after) => sqlx::query(concat!(
                "SELECT ",
                message_cols!("m", ""),
                ", ",
                user_cols!("u", "u_"),
                " FROM messages m LEFT JOIN users u ON u.id = m.sender_id
                 WHERE m.conversation_id = ? AND m.seq_id > ?
                 ORDER BY m.seq_id ASC LIMIT ?"
            ))
            .bind(conversation_id)
            .bind(after),
        };
        let rows = query.bind(limit + 1).fetch_all(&self.pool).await.map_err(db_err)?;
        let items = rows.iter().map(message_with_sender).collect::<Result<Vec<_>, _>>().map_err(db_err)?;
        Ok(into_page(items, limit))
    }

    pub(super) async fn find_message_by_client_id_impl(&self, sender_id: i64, client_msg_id: &str) -> StoreResult<Option<Message>> {
        // A client id is unique per sender in practice; should a client reuse
        // one, the first stored message wins, as in the idempotency cache.
        let row = sqlx::query(concat!(
            "SELECT ",
            message_cols!("m", ""),
            ", ",
            user_cols!("u", "u_"),
            " FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.sender_id = ? AND m.client_msg_id = ?
             ORDER BY m.created_at, m.id LIMIT 1"
        ))
        .bind(sender_id)
        .bind(client_msg_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| message_with_sender(&r)).transpose().map_err(db_err)
    }

    pub(super) async fn find_messages_by_client_ids_impl(&self, keys: &[(i64, String)]) -> StoreResult<Vec<Message>> {
        // A client id longer than the column cannot be stored, so it cannot
        // match; dropping it here also keeps JSON_TABLE from truncating it
        // into a prefix that might.
        let keys: Vec<&(i64, String)> = keys.iter().filter(|(_, id)| id.chars().count() <= MAX_CLIENT_MSG_ID).collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // The pairs travel as one JSON array; each is looked up through the
        // (sender_id, client_msg_id) index.
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_cols!("m", ""),
            " FROM JSON_TABLE(?, '$[*]' COLUMNS (
                   sender_id BIGINT PATH '$[0]',
                   client_msg_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$[1]')) AS k
             JOIN messages m ON m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id
             ORDER BY m.created_at, m.id"
        ))
        .bind(json(&keys)?)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let m = rows::message(r, "").map_err(db_err)?;
            // As for one id: should a client have reused one, the first stored message wins.
            if seen.insert((m.sender_id, m.client_msg_id.clone())) {
                out.push(m);
            }
        }
        Ok(out)
    }

    pub(super) async fn advance_read_pointers_impl(&self, pointers: &[(i64, String, i64)], now_ms: i64) -> StoreResult<()> {
        if pointers.is_empty() {
            return Ok(());
        }
        // Rows in (conversation, user) order: two batches touching the same
        // pointers lock them in the same order. The upsert also takes a
        // shared lock on each new pointer's conversation (foreign key),
        // ascending like save_messages' exclusive ones.
        let mut sorted: Vec<&(i64, String, i64)> = pointers.iter().collect();
        sorted.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
        retrying("advance_read_pointers", || async {
            let mut tx = self.begin_write().await?;
            for chunk in sorted.chunks(BULK_ROWS) {
                let mut upsert = sqlx::query(ADVANCE_POINTERS.sql(chunk.len()));
                for (user_id, conversation_id, seq_id) in chunk.iter().copied() {
                    upsert = upsert.bind(user_id).bind(conversation_id).bind(seq_id).bind(now_ms);
                }
                upsert.execute(&mut *tx).await.map_err(db_err)?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub(super) async fn update_read_pointer_impl(
        &self,
        user_id: i64,
        conversation_id: &str,
        seq_id: i64,
        now_ms: i64,
    ) -> StoreResult<(i64, bool)> {
        retrying("update_read_pointer", move || async move {
            let mut tx = self.begin_write().await?;
            // A missing pointer reads as 0, so a non-positive seq can never
            // move it; skipping the writes then also avoids a pointless row.
            if seq_id > 0 {
                // Make sure the row exists and hold its lock, then move it
                // with a guarded UPDATE whose matched-row count says whether
                // it moved. (One upsert cannot tell: with CLIENT_FOUND_ROWS
                // "inserted" and "unchanged" both count 1.)
                sqlx::query(concat!(
                    "INSERT INTO user_read_pointers (user_id, conversation_id, last_read_seq_id, updated_at)
                     VALUES (?, ?, 0, ",
                    at_ms!(),
                    ") ON DUPLICATE KEY UPDATE id = id"
                ))
                .bind(user_id)
                .bind(conversation_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                let moved = sqlx::query(concat!(
                    "UPDATE user_read_pointers SET last_read_seq_id = ?, updated_at = ",
                    at_ms!(),
                    " WHERE user_id = ? AND conversation_id = ? AND last_read_seq_id < ?"
                ))
                .bind(seq_id)
                .bind(now_ms)
                .bind(user_id)
                .bind(conversation_id)
                .bind(seq_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if moved.rows_affected() == 1 {
                    tx.commit().await?;
                    return Ok((seq_id, true));
                }
            }
            let current = sqlx::query("SELECT last_read_seq_id FROM user_read_pointers WHERE user_id = ? AND conversation_id = ?")
                .bind(user_id)
                .bind(conversation_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .map(|r| r.try_get::<i64, _>("last_read_seq_id"))
                .transpose()
                .map_err(db_err)?
                .unwrap_or(0);
            tx.commit().await?;
            Ok((current, false))
        })
        .await
    }

    pub(super) async fn read_pointer_impl(&self, user_id: i64, conversation_id: &str) -> StoreResult<i64> {
        let row = sqlx::query("SELECT last_read_seq_id FROM user_read_pointers WHERE user_id = ? AND conversation_id = ?")
            .bind(user_id)
            .bind(conversation_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(match row {
            Some(r) => r.try_get("last_read_seq_id").map_err(db_err)?,
            None => 0,
        })
    }
}
