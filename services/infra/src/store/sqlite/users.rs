//! Users: registration, lookup and search.

use gochat_proto::common::User;
use sqlx::Row;

use super::rows::{self, user_cols};
use super::{SqliteStore, check_len, db_err, is_unique_violation, json};
use crate::store::{Conflict, StoreError, StoreResult};

/// `VARCHAR(50)` in MySQL.
const MAX_USERNAME: usize = 50;

/// Escapes the LIKE wildcards (`%`, `_`) and the escape character itself, so
/// a search for `50%_off` matches those characters literally.
pub(super) fn like_escape(input: &str) -> String {
    let mut out = String::with_capacity(input.len() + 2);
    for c in input.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl SqliteStore {
    pub(super) async fn create_user_impl(&self, user: &User) -> StoreResult<User> {
        check_len("username", &user.username, MAX_USERNAME)?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, username, password_hash, avatar_url, is_guest, status, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(user.id)
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.avatar_url.as_deref())
        .bind(user.is_guest)
        .bind(user.status)
        .bind(user.created_at_ms)
        .bind(user.updated_at_ms)
        .execute(&self.writer)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                // Either the name or the id collided; only the name is the
                // caller's (user-facing) problem, a reused id is a bug upstream.
                return Err(if self.get_user_by_name_impl(&user.username).await?.is_some() {
                    StoreError::Conflict(Conflict::UsernameTaken)
                } else {
                    StoreError::Invalid(format!("user id {} already exists", user.id))
                });
            }
            Err(e) => return Err(db_err(e)),
        }
        // Re-read so the caller sees exactly what was stored.
        self.get_users_impl(&[user.id]).await?.pop().ok_or_else(|| StoreError::Invalid(format!("user {} vanished after insert", user.id)))
    }

    pub(super) async fn get_users_impl(&self, ids: &[i64]) -> StoreResult<Vec<User>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for any number of ids: the list travels as a JSON
        // array, not as SQL text (and never hits the bound-parameter limit).
        let ids_json = json(ids)?;
        let rows = sqlx::query(concat!("SELECT ", user_cols!("u", ""), " FROM users u WHERE u.id IN (SELECT value FROM json_each(?))"))
            .bind(ids_json)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| rows::user(r, "").map_err(db_err)).collect()
    }

    pub(super) async fn get_user_by_name_impl(&self, username: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", user_cols!("u", ""), ", u.password_hash FROM users u WHERE u.username = ?"))
            .bind(username)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| {
            let mut user = rows::user(&r, "")?;
            user.password_hash = r.try_get("password_hash")?;
            Ok(user)
        })
        .transpose()
        .map_err(db_err)
    }

    pub(super) async fn update_user_avatar_impl(&self, id: i64, avatar_url: Option<&str>, now_ms: i64) -> StoreResult<Option<User>> {
        // SQLite's RETURNING cannot alias columns of an aliased table, so
        // update then re-read rather than duplicate the column list.
        let updated = sqlx::query("UPDATE users SET avatar_url = ?, updated_at = ? WHERE id = ?")
            .bind(avatar_url)
            .bind(now_ms)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_err)?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(self.get_users_impl(&[id]).await?.pop())
    }

    pub(super) async fn search_users_impl(&self, query: &str, limit: u32) -> StoreResult<Vec<User>> {
        let pattern = format!("%{}%", like_escape(query));
        // lower() on both sides rather than SQLite's ASCII-insensitive LIKE,
        // so the query reads the same on MySQL with a binary collation.
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_cols!("u", ""),
            " FROM users u WHERE lower(u.username) LIKE lower(?) ESCAPE '\\'
             ORDER BY u.is_guest, u.username LIMIT ?"
        ))
        .bind(pattern)
        .bind(super::page_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(|r| rows::user(r, "").map_err(db_err)).collect()
    }
}
