//! Messages (idempotent batch persistence, history) and read pointers.

use std::collections::BTreeSet;

use gochat_proto::common::Message;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::rows::{self, message_cols, user_cols};
use super::{SqliteStore, check_len, db_err, into_page, json, page_limit};
use crate::store::{HistoryDirection, Page, SaveOutcome, StoreResult};

/// `VARCHAR(64)` in MySQL.
const MAX_CLIENT_MSG_ID: usize = 64;

/// A message with its sender, from `message_cols!(_, "")` + `user_cols!(_, "u_")`.
fn message_with_sender(row: &sqlx::sqlite::SqliteRow) -> Result<Message, sqlx::Error> {
    let mut m = rows::message(row, "")?;
    m.sender = rows::opt_user(row, "u_")?;
    Ok(m)
}

/// The upsert tail that only ever moves a read pointer forward.
macro_rules! pointer_conflict {
    () => {
        " ON CONFLICT (user_id, conversation_id) DO UPDATE
          SET last_read_seq_id = excluded.last_read_seq_id, updated_at = excluded.updated_at
          WHERE excluded.last_read_seq_id > user_read_pointers.last_read_seq_id"
    };
}
/// Moves a read pointer forward, never back (binds: user, conversation, seq, now).
const ADVANCE_POINTER: &str = concat!(
    "INSERT INTO user_read_pointers (user_id, conversation_id, last_read_seq_id, updated_at) VALUES (?, ?, ?, ?)",
    pointer_conflict!()
);
const POINTER_CONFLICT: &str = pointer_conflict!();
/// Rows per multi-row statement: 11 and 4 bound values per row stay far
/// below SQLite's 32,766 variables.
const MESSAGE_ROWS: usize = 500;
const POINTER_ROWS: usize = 1000;

impl SqliteStore {
    pub(super) async fn save_messages_impl(&self, messages: &[Message]) -> StoreResult<SaveOutcome> {
        for m in messages {
            if let Some(id) = &m.client_msg_id {
                check_len("client_msg_id", id, MAX_CLIENT_MSG_ID)?;
            }
        }
        let mut outcome = SaveOutcome::default();
        if messages.is_empty() {
            return Ok(outcome);
        }
        let mut tx = self.begin_write().await?;
        // A few statements per batch, not per message: each statement is a
        // round trip to sqlx's connection thread.
        for chunk in messages.chunks(MESSAGE_ROWS) {
            // The conflict target is only (conversation_id, seq_id): a
            // redelivered message is skipped, while a different message
            // reusing an id still fails loudly on the primary key.
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO messages (id, conversation_id, sender_id, message_type, content, seq_id,
                     client_msg_id, deleted, extra, created_at, updated_at) ",
            );
            q.push_values(chunk, |mut row, m| {
                row.push_bind(m.id)
                    .push_bind(&m.conversation_id)
                    .push_bind(m.sender_id)
                    .push_bind(m.message_type)
                    .push_bind(&m.content)
                    .push_bind(m.seq_id)
                    .push_bind(m.client_msg_id.as_deref())
                    .push_bind(m.deleted)
                    .push_bind(m.extra.as_deref())
                    .push_bind(m.created_at_ms)
                    .push_bind(m.created_at_ms);
            });
            q.push(" ON CONFLICT (conversation_id, seq_id) DO NOTHING");
            let done = q.build().persistent(false).execute(&mut *tx).await.map_err(db_err)?;
            // At most MESSAGE_ROWS: fits u32.
            let rows = chunk.len() as u32;
            let inserted = u32::try_from(done.rows_affected()).unwrap_or(rows).min(rows);
            outcome.inserted += inserted;
            outcome.duplicates += rows - inserted;
        }
        // Move each touched conversation to its highest *stored* message.
        // Reading it back from the table (not from the batch) makes batches
        // arriving out of order harmless: the guard `m.seq_id > last_seq_id`
        // only ever moves the pointer forward.
        let conversations: BTreeSet<&str> = messages.iter().map(|m| m.conversation_id.as_str()).collect();
        let ids = json(&conversations)?;
        sqlx::query(
            "UPDATE conversations
             SET last_seq_id = m.seq_id, last_message_id = m.id, updated_at = max(conversations.updated_at, m.created_at)
             FROM (SELECT c.value AS cid, (SELECT max(seq_id) FROM messages WHERE conversation_id = c.value) AS top
                   FROM json_each(?) AS c) AS t
             JOIN messages AS m ON m.conversation_id = t.cid AND m.seq_id = t.top
             WHERE conversations.id = t.cid AND m.seq_id > conversations.last_seq_id",
        )
        .bind(ids)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await?;
        Ok(outcome)
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
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // The pairs travel as one JSON array; each is looked up through the
        // (sender_id, client_msg_id) index.
        let keys_json = json(keys)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            message_cols!("m", ""),
            " FROM json_each(?) k JOIN messages m
               ON m.sender_id = json_extract(k.value, '$[0]') AND m.client_msg_id = json_extract(k.value, '$[1]')
             ORDER BY m.created_at, m.id"
        ))
        .bind(keys_json)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut seen = std::collections::HashSet::new();
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
        let mut tx = self.begin_write().await?;
        for chunk in pointers.chunks(POINTER_ROWS) {
            let mut q =
                QueryBuilder::<Sqlite>::new("INSERT INTO user_read_pointers (user_id, conversation_id, last_read_seq_id, updated_at) ");
            q.push_values(chunk, |mut row, (user_id, conversation_id, seq_id)| {
                row.push_bind(user_id).push_bind(conversation_id).push_bind(seq_id).push_bind(now_ms);
            });
            q.push(POINTER_CONFLICT);
            q.build().persistent(false).execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn update_read_pointer_impl(
        &self,
        user_id: i64,
        conversation_id: &str,
        seq_id: i64,
        now_ms: i64,
    ) -> StoreResult<(i64, bool)> {
        let mut tx = self.begin_write().await?;
        // A missing pointer reads as 0, so a non-positive seq can never move
        // it; skipping the upsert then also avoids creating a pointless row.
        if seq_id > 0 {
            let moved = sqlx::query(ADVANCE_POINTER)
                .bind(user_id)
                .bind(conversation_id)
                .bind(seq_id)
                .bind(now_ms)
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
    }
}
