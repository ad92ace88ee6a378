//! Friend requests and friendships.
//!
//! Same table and rules as `sqlite::friends` (read its module docs): one row
//! per direction, the mirror row of an accept takes the negated request id,
//! and a friendship counts only while both rows are accepted.
//!
//! SQLite's `BEGIN IMMEDIATE` makes "read both directions, then write"
//! race-free; here every transaction that writes a pair's rows first locks
//! the pair's lower user id (`users` row, `FOR UPDATE`). Two requests
//! between the same users, in either direction, and an answer to one of
//! them therefore queue on one lock; the order is always that user row,
//! then request rows, then (foreign-key checks) the higher user row.

use gochat_proto::common::{Friend, FriendRequest};
use sqlx::{MySqlConnection, Row};

use super::rows::{self, at_ms, ms, request_cols, user_cols};
use super::{MySqlStore, db_err, is_unique_violation, retrying};
use crate::store::{Conflict, StoreError, StoreResult};

const PENDING: i32 = 0;
const ACCEPTED: i32 = 1;
const REJECTED: i32 = 2;
const BLOCKED: i32 = 3;

const SELECT_REQUEST: &str = concat!(
    "SELECT ",
    request_cols!("f"),
    ", ",
    user_cols!("ru", "r_"),
    ", ",
    user_cols!("tu", "t_"),
    " FROM friendship_requests f
     LEFT JOIN users ru ON ru.id = f.requester_id
     LEFT JOIN users tu ON tu.id = f.target_id
     WHERE f.id = ?"
);

/// A request with `requester` and `target` filled (`r_` / `t_` columns).
fn request_with_users(row: &sqlx::mysql::MySqlRow) -> Result<FriendRequest, sqlx::Error> {
    let mut req = rows::request(row)?;
    req.requester = rows::opt_user(row, "r_")?;
    req.target = rows::opt_user(row, "t_")?;
    Ok(req)
}

async fn request_by_id(conn: &mut MySqlConnection, id: i64) -> StoreResult<Option<FriendRequest>> {
    let row = sqlx::query(SELECT_REQUEST).bind(id).fetch_optional(conn).await.map_err(db_err)?;
    row.map(|r| request_with_users(&r)).transpose().map_err(db_err)
}

/// Serialises writers of the pair `(a, b)` (see the module docs). An unknown
/// user locks nothing; the write that follows then fails on its foreign key.
async fn lock_pair(conn: &mut MySqlConnection, a: i64, b: i64) -> StoreResult<()> {
    sqlx::query("SELECT id FROM users WHERE id = ? FOR UPDATE").bind(a.min(b)).fetch_optional(conn).await.map_err(db_err)?;
    Ok(())
}

impl MySqlStore {
    pub(super) async fn create_friend_request_impl(&self, req: &FriendRequest) -> StoreResult<FriendRequest> {
        if req.requester_id == req.target_id {
            return Err(StoreError::Invalid("cannot befriend oneself".into()));
        }
        retrying("create_friend_request", || self.create_friend_request_once(req)).await
    }

    async fn create_friend_request_once(&self, req: &FriendRequest) -> StoreResult<FriendRequest> {
        let (from, to) = (req.requester_id, req.target_id);
        let mut tx = self.begin_write().await?;
        lock_pair(&mut tx, from, to).await?;
        // Both directions in one read, under the pair lock (READ COMMITTED:
        // it sees whatever the previous holder committed).
        let existing = sqlx::query(
            "SELECT id, requester_id, status FROM friendship_requests
             WHERE (requester_id = ? AND target_id = ?) OR (requester_id = ? AND target_id = ?)",
        )
        .bind(from)
        .bind(to)
        .bind(to)
        .bind(from)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| Ok((r.try_get::<i64, _>("id")?, r.try_get::<i64, _>("requester_id")?, r.try_get::<i32, _>("status")?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(db_err)?;
        if existing.iter().any(|&(_, _, status)| status == ACCEPTED) {
            return Err(StoreError::Conflict(Conflict::AlreadyFriends));
        }
        if existing.iter().any(|&(_, _, status)| status == PENDING) {
            return Err(StoreError::Conflict(Conflict::AlreadyRequested));
        }
        let id = match existing.iter().find(|&&(_, requester, _)| requester == from) {
            // Same direction, rejected before: reopen the row (its id stays)
            // as a fresh pending request. A reverse-direction row of any
            // status does not matter: this is a new request the other way.
            Some(&(id, _, REJECTED)) => {
                sqlx::query(concat!(
                    "UPDATE friendship_requests SET status = 0, message = ?, created_at = ",
                    at_ms!(),
                    ", updated_at = ",
                    at_ms!(),
                    " WHERE id = ?"
                ))
                .bind(req.message.as_deref())
                .bind(req.created_at_ms)
                .bind(req.updated_at_ms)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                id
            }
            Some(&(_, _, BLOCKED)) => return Err(StoreError::Invalid("friend request blocked".into())),
            Some(&(_, _, status)) => return Err(StoreError::Invalid(format!("friend request in unknown status {status}"))),
            None => {
                let inserted = sqlx::query(concat!(
                    "INSERT INTO friendship_requests (id, requester_id, target_id, status, message, created_at, updated_at)
                     VALUES (?, ?, ?, 0, ?, ",
                    at_ms!(),
                    ", ",
                    at_ms!(),
                    ")"
                ))
                .bind(req.id)
                .bind(from)
                .bind(to)
                .bind(req.message.as_deref())
                .bind(req.created_at_ms)
                .bind(req.updated_at_ms)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => req.id,
                    // The pair lock rules out a concurrent insert of the same
                    // pair, so this is a reused request id: reported like
                    // SQLite reports it.
                    Err(e) if is_unique_violation(&e) => {
                        return Err(StoreError::Conflict(Conflict::AlreadyRequested));
                    }
                    Err(e) => return Err(db_err(e)),
                }
            }
        };
        let stored =
            request_by_id(&mut tx, id).await?.ok_or_else(|| StoreError::Invalid(format!("friend request {id} vanished after write")))?;
        tx.commit().await?;
        Ok(stored)
    }

    pub(super) async fn get_friend_request_impl(&self, id: i64) -> StoreResult<Option<FriendRequest>> {
        request_by_id(&mut *self.pool.acquire().await?, id).await
    }

    pub(super) async fn list_friend_requests_impl(
        &self,
        user_id: i64,
        received: bool,
        status: Option<i32>,
    ) -> StoreResult<Vec<FriendRequest>> {
        // Two literal statements rather than an OR, so each walks its own
        // (target_id, status) / (requester_id, status) index.
        let query = if received {
            sqlx::query(concat!(
                "SELECT ",
                request_cols!("f"),
                ", ",
                user_cols!("ru", "r_"),
                ", ",
                user_cols!("tu", "t_"),
                " FROM friendship_requests f
                 LEFT JOIN users ru ON ru.id = f.requester_id
                 LEFT JOIN users tu ON tu.id = f.target_id
                 WHERE f.target_id = ? AND (? IS NULL OR f.status = ?) AND f.id > 0
                 ORDER BY f.created_at DESC, f.id DESC"
            ))
        } else {
            sqlx::query(concat!(
                "SELECT ",
                request_cols!("f"),
                ", ",
                user_cols!("ru", "r_"),
                ", ",
                user_cols!("tu", "t_"),
                " FROM friendship_requests f
                 LEFT JOIN users ru ON ru.id = f.requester_id
                 LEFT JOIN users tu ON tu.id = f.target_id
                 WHERE f.requester_id = ? AND (? IS NULL OR f.status = ?) AND f.id > 0
                 ORDER BY f.created_at DESC, f.id DESC"
            ))
        };
        let rows = query.bind(user_id).bind(status).bind(status).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(|r| request_with_users(r).map_err(db_err)).collect()
    }

    pub(super) async fn set_friend_request_status_impl(
        &self,
        id: i64,
        status: i32,
        only_if: Option<i32>,
        now_ms: i64,
    ) -> StoreResult<Option<FriendRequest>> {
        if !(PENDING..=BLOCKED).contains(&status) {
            return Err(StoreError::Invalid(format!("unknown friend request status {status}")));
        }
        retrying("set_friend_request_status", move || async move {
            let mut tx = self.begin_write().await?;
            // The pair of a request never changes, so reading it before the
            // lock is safe; the status is checked after, in the UPDATE.
            let pair = sqlx::query("SELECT requester_id, target_id FROM friendship_requests WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            let Some(pair) = pair else {
                return Ok(None);
            };
            let requester: i64 = pair.try_get("requester_id").map_err(db_err)?;
            let target: i64 = pair.try_get("target_id").map_err(db_err)?;
            lock_pair(&mut tx, requester, target).await?;
            // The answer and its precondition in one statement: of two
            // concurrent answers to a pending request, one matches.
            let done = sqlx::query(concat!(
                "UPDATE friendship_requests SET status = ?, updated_at = ",
                at_ms!(),
                " WHERE id = ? AND (? IS NULL OR status = ?)"
            ))
            .bind(status)
            .bind(now_ms)
            .bind(id)
            .bind(only_if)
            .bind(only_if)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if done.rows_affected() == 0 {
                return Ok(None);
            }
            if status == ACCEPTED {
                // The reverse row may exist already (an older request the
                // other way): then it is accepted in place and keeps its id.
                sqlx::query(concat!(
                    "INSERT INTO friendship_requests (id, requester_id, target_id, status, message, created_at, updated_at)
                     VALUES (?, ?, ?, 1, NULL, ",
                    at_ms!(),
                    ", ",
                    at_ms!(),
                    ") ON DUPLICATE KEY UPDATE status = 1, updated_at = VALUES(updated_at)"
                ))
                .bind(-id)
                .bind(target)
                .bind(requester)
                .bind(now_ms)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            let updated = request_by_id(&mut tx, id).await?;
            tx.commit().await?;
            Ok(updated)
        })
        .await
    }

    pub(super) async fn list_friends_impl(&self, user_id: i64) -> StoreResult<Vec<Friend>> {
        let rows = sqlx::query(concat!(
            "SELECT f.requester_id, f.target_id, f.status, ",
            ms!("f.updated_at"),
            " AS updated_at, ",
            user_cols!("u", "u_"),
            " FROM friendship_requests f
             JOIN friendship_requests r
               ON r.requester_id = f.target_id AND r.target_id = f.requester_id AND r.status = 1
             LEFT JOIN users u ON u.id = f.target_id
             WHERE f.requester_id = ? AND f.status = 1
             ORDER BY u.username, f.target_id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(Friend {
                    user_id: r.try_get("requester_id")?,
                    friend_id: r.try_get("target_id")?,
                    status: r.try_get("status")?,
                    // The row's last change is the accept: "friends since".
                    created_at_ms: r.try_get("updated_at")?,
                    friend: rows::opt_user(r, "u_")?,
                    online: false,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err)
    }

    pub(super) async fn are_friends_impl(&self, a: i64, b: i64) -> StoreResult<bool> {
        if a == b {
            return Ok(false);
        }
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM friendship_requests
             WHERE ((requester_id = ? AND target_id = ?) OR (requester_id = ? AND target_id = ?)) AND status = 1",
        )
        .bind(a)
        .bind(b)
        .bind(b)
        .bind(a)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(row.try_get::<i64, _>("n").map_err(db_err)? == 2)
    }

    pub(super) async fn friend_ids_impl(&self, user_id: i64) -> StoreResult<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT f.target_id FROM friendship_requests f
             JOIN friendship_requests r
               ON r.requester_id = f.target_id AND r.target_id = f.requester_id AND r.status = 1
             WHERE f.requester_id = ? AND f.status = 1
             ORDER BY f.target_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(|r| r.try_get::<i64, _>("target_id")).collect::<Result<Vec<_>, _>>().map_err(db_err)
    }
}
