//! Revoked token ids.

use sqlx::Row;

use super::{SqliteStore, check_len, db_err};
use crate::store::StoreResult;

const MAX_JTI: usize = 64;

impl SqliteStore {
    pub(super) async fn revoke_token_impl(&self, jti: &str, expires_at_ms: i64, now_ms: i64) -> StoreResult<bool> {
        check_len("token id", jti, MAX_JTI)?;
        let mut tx = self.begin_write().await?;
        // Under the write lock, so exactly one concurrent caller sees `inserted`.
        let inserted = sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, ?) ON CONFLICT(jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
            == 1;
        if !inserted {
            sqlx::query("UPDATE revoked_tokens SET expires_at = MAX(expires_at, ?) WHERE jti = ?")
                .bind(expires_at_ms)
                .bind(jti)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        // Expired revocations protect nothing: the token itself is dead.
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at <= ?").bind(now_ms).execute(&mut *tx).await.map_err(db_err)?;
        tx.commit().await?;
        Ok(inserted)
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

    pub(super) async fn revoked_tokens_impl(&self, now_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > ? ORDER BY jti")
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| Ok((r.try_get("jti")?, r.try_get("expires_at")?))).collect()
    }
}
