//! Friend requests and friendships.
//!
//! One table holds both: a row `(requester, target)` is a request while
//! pending (0), rejected (2) or blocked (3), and one half of a friendship
//! when accepted (1). Accepting stores the reverse row as accepted too, so
//! "my friends" is a plain index range on `(requester_id, status)`.
//!
//! The reverse ("mirror") row of an accept has no caller-supplied id, and a
//! database-assigned id could collide with future snowflakes; it takes the
//! negated id of the accepted request, which is unique because a request is
//! accepted into at most one new mirror row. Mirror rows are nobody's request,
//! so [`list_friend_requests`](crate::store::Store::list_friend_requests)
//! leaves them out (`id > 0`).
//!
//! A friendship counts when both rows are accepted: if one side is later
//! moved to rejected/blocked through `set_friend_request_status`, the pair
//! stops being friends for `are_friends`, `list_friends` and `friend_ids`.

use gochat_proto::common::{Friend, FriendRequest};
use sqlx::Row;

use super::rows::{self, request_cols, user_cols};
use super::{SqliteStore, db_err, is_unique_violation};
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
fn request_with_users(row: &sqlx::sqlite::SqliteRow) -> Result<FriendRequest, sqlx::Error> {
    let mut req = rows::request(row)?;
    req.requester = rows::opt_user(row, "r_")?;
    req.target = rows::opt_user(row, "t_")?;
    Ok(req)
}

async fn request_by_id(conn: &mut sqlx::SqliteConnection, id: i64) -> StoreResult<Option<FriendRequest>> {
    let row = sqlx::query(SELECT_REQUEST).bind(id).fetch_optional(conn).await.map_err(db_err)?;
    row.map(|r| request_with_users(&r)).transpose().map_err(db_err)
}

impl SqliteStore {
    pub(super) async fn create_friend_request_impl(&self, req: &FriendRequest) -> StoreResult<FriendRequest> {
        let (from, to) = (req.requester_id, req.target_id);
        if from == to {
            return Err(StoreError::Invalid("cannot befriend oneself".into()));
        }
        let mut tx = self.begin_write().await?;
        // Both directions in one read; BEGIN IMMEDIATE keeps the rules below
        // race-free (a concurrent request waits for this transaction).
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
                sqlx::query(
                    "UPDATE friendship_requests SET status = 0, message = ?, created_at = ?, updated_at = ?
                     WHERE id = ?",
                )
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
                let inserted = sqlx::query(
                    "INSERT INTO friendship_requests (id, requester_id, target_id, status, message, created_at, updated_at)
                     VALUES (?, ?, ?, 0, ?, ?, ?)",
                )
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
                    // Only reachable without the write lock (another engine):
                    // someone inserted the same pair meanwhile.
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
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE friendship_requests SET status = ?, updated_at = ? WHERE id = ? AND (? IS NULL OR status = ?)
             RETURNING requester_id, target_id",
        )
        .bind(status)
        .bind(now_ms)
        .bind(id)
        .bind(only_if)
        .bind(only_if)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        if status == ACCEPTED {
            let requester: i64 = row.try_get("requester_id").map_err(db_err)?;
            let target: i64 = row.try_get("target_id").map_err(db_err)?;
            // The reverse row may exist already (an older request the other
            // way): then it is accepted in place and keeps its id.
            sqlx::query(
                "INSERT INTO friendship_requests (id, requester_id, target_id, status, message, created_at, updated_at)
                 VALUES (?, ?, ?, 1, NULL, ?, ?)
                 ON CONFLICT (requester_id, target_id) DO UPDATE
                 SET status = 1, updated_at = excluded.updated_at",
            )
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
    }

    pub(super) async fn list_friends_impl(&self, user_id: i64) -> StoreResult<Vec<Friend>> {
        let rows = sqlx::query(concat!(
            "SELECT f.requester_id, f.target_id, f.status, f.updated_at, ",
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
            "SELECT count(*) AS n FROM friendship_requests
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
