//! Revoked token ids.

use sqlx::Row;

use super::rows::{at_ms, ms};
use super::{MySqlStore, check_len, db_err, is_unique_violation, retrying};
use crate::store::StoreResult;

/// `VARCHAR(64)`.
const MAX_JTI: usize = 64;

impl MySqlStore {
    pub(super) async fn revoke_token_impl(&self, jti: &str, expires_at_ms: i64, now_ms: i64) -> StoreResult<bool> {
        check_len("token id", jti, MAX_JTI)?;
        retrying("revoke_token", move || async move {
            let mut tx = self.begin_write().await?;
            // A plain INSERT so the primary key decides who was first: a
            // concurrent revoker of the same id waits on this row and gets
            // 1062 once it commits. (A duplicate-key error rolls back only
            // the statement; the transaction goes on.)
            let inserted = sqlx::query(concat!("INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, ", at_ms!(), ")"))
                .bind(jti)
                .bind(expires_at_ms)
                .execute(&mut *tx)
                .await;
            let first = match inserted {
                Ok(_) => true,
                Err(e) if is_unique_violation(&e) => {
                    sqlx::query(concat!("UPDATE revoked_tokens SET expires_at = GREATEST(expires_at, ", at_ms!(), ") WHERE jti = ?"))
                        .bind(expires_at_ms)
                        .bind(jti)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    false
                }
                Err(e) => return Err(db_err(e)),
            };
            // Expired revocations protect nothing: the token itself is dead.
            sqlx::query(concat!("DELETE FROM revoked_tokens WHERE expires_at <= ", at_ms!()))
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await?;
            Ok(first)
        })
        .await
    }

    pub(super) async fn revoked_tokens_impl(&self, now_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query(concat!(
            "SELECT jti, ",
            ms!("expires_at"),
            " AS expires_at FROM revoked_tokens WHERE expires_at > ",
            at_ms!(),
            " ORDER BY jti"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(|r| Ok((r.try_get("jti")?, r.try_get("expires_at")?))).collect()
    }
}
