//! Users: registration, lookup and search.

use gochat_proto::common::User;
use sqlx::Row;

use super::rows::{self, at_ms, ms, user_cols};
use super::{MySqlStore, check_len, db_err, is_unique_violation, json, page_limit};
use crate::store::{Conflict, StoreError, StoreResult};

/// `VARCHAR(50)`.
const MAX_USERNAME: usize = 50;

/// Escapes the LIKE wildcards (`%`, `_`) and the escape character `!`.
///
/// `!` rather than MySQL's default backslash: a backslash is also the escape
/// character of MySQL string literals (unless `NO_BACKSLASH_ESCAPES`), so
/// `ESCAPE '\\'` would mean different things under different `sql_mode`s.
/// With an explicit `ESCAPE '!'` a backslash in the pattern is an ordinary
/// character.
fn like_escape(input: &str) -> String {
    let mut out = String::with_capacity(input.len() + 2);
    for c in input.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

impl MySqlStore {
    pub(super) async fn create_user_impl(&self, user: &User) -> StoreResult<User> {
        check_len("username", &user.username, MAX_USERNAME)?;
        let inserted = sqlx::query(concat!(
            "INSERT INTO users (id, username, password_hash, avatar_url, is_guest, status, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ",
            at_ms!(),
            ", ",
            at_ms!(),
            ")"
        ))
        .bind(user.id)
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.avatar_url.as_deref())
        .bind(user.is_guest)
        .bind(user.status)
        .bind(user.created_at_ms)
        .bind(user.updated_at_ms)
        .execute(&self.pool)
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
        // One statement for any number of ids: the list is one JSON parameter,
        // each element looked up on the primary key.
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_cols!("u", ""),
            " FROM users u
             WHERE u.id IN (SELECT j.id FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j)"
        ))
        .bind(json(ids)?)
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
        // CLIENT_FOUND_ROWS: a matched row counts even if nothing changed.
        let updated = sqlx::query(concat!("UPDATE users SET avatar_url = ?, updated_at = ", at_ms!(), " WHERE id = ?"))
            .bind(avatar_url)
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(self.get_users_impl(&[id]).await?.pop())
    }

    pub(super) async fn search_users_impl(&self, query: &str, limit: u32) -> StoreResult<Vec<User>> {
        let pattern = format!("%{}%", like_escape(query));
        // LOWER() on both sides, compared under the column's binary collation.
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_cols!("u", ""),
            " FROM users u WHERE LOWER(u.username) LIKE LOWER(?) ESCAPE '!'
             ORDER BY u.is_guest, u.username LIMIT ?"
        ))
        .bind(pattern)
        .bind(page_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(|r| rows::user(r, "").map_err(db_err)).collect()
    }
}
