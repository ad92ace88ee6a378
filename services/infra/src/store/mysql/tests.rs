//! Runs the shared behaviour suite (`store::tests`) against MariaDB, plus
//! the checks only a server with row locks and several connections can
//! fail: concurrent writers and repeated migrations.
//!
//! Every test gets its own database `gochat_t_<random>` on the server at
//! `GOCHATTEST_MYSQL_URL` (default `mysql://gochat:gochat@127.0.0.1:3306`),
//! dropped afterwards, also when the test fails. These tests only compile
//! with the `mysql` feature, and an unreachable server fails them: whoever
//! enables the feature in a test run promises a server.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use gochat_proto::common::{Conversation, Member, Message};
use sqlx::Row;
use sqlx::migrate::MigrateDatabase;

use super::MySqlStore;
use crate::store::tests as suite;
use crate::store::{Conflict, HistoryDirection, Store, StoreError};

const DEFAULT_SERVER: &str = "mysql://gochat:gochat@127.0.0.1:3306";

fn server_url() -> String {
    std::env::var("GOCHATTEST_MYSQL_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
}

/// `server` (a URL with or without a database and query string) pointing at database `db`.
fn with_database(server: &str, db: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[host_start..].find('/').map_or(base.len(), |i| host_start + i);
    let mut url = format!("{}/{db}", &base[..host_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// Creates and migrates a fresh database, runs `check` on it, drops it.
async fn with_store<F, Fut>(check: F)
where
    F: FnOnce(MySqlStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = with_database(&server_url(), &format!("gochat_t_{:016x}", rand::random::<u64>()));
    MySqlStore::create_database_if_missing(&url)
        .await
        .unwrap_or_else(|e| panic!("MariaDB for the store tests (GOCHATTEST_MYSQL_URL, default {DEFAULT_SERVER}): {e}"));
    let outcome = AssertUnwindSafe(async {
        let store = MySqlStore::connect(&url, 8).await.expect("connect");
        store.migrate().await.expect("migrate");
        check(store.clone()).await;
        store.pool().close().await;
    })
    .catch_unwind()
    .await;
    let dropped = sqlx::MySql::drop_database(&url).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.expect("drop the test database");
}

/// One `#[tokio::test]` per suite check, each on its own database.
macro_rules! store_suite {
    ($($check:ident),* $(,)?) => {
        mod shared {
            $(
                #[tokio::test]
                async fn $check() {
                    super::with_store(|store| async move { super::suite::$check(&store).await }).await;
                }
            )*
        }
    };
}

store_suite!(
    users_create_get_and_duplicates,
    users_search_escapes_like,
    sql_looking_input_is_stored_verbatim,
    text_compares_exactly,
    conversation_create_get_update,
    single_chat_is_unique_per_pair,
    user_conversation_list,
    members_add_remove_role_and_list,
    save_messages_is_idempotent_and_monotonic,
    history_pages_both_directions,
    find_message_by_client_id,
    read_pointer_never_moves_back,
    friend_request_conflicts_and_reopen,
    friend_accept_makes_both_ways,
    revocations_expire_and_keep_the_later_expiry,
    read_pointers_advance_in_bulk,
    client_ids_are_found_in_bulk,
    conversations_and_members_are_read_in_bulk,
    large_message_batches_are_saved_whole,
);

fn group(id: &str) -> Conversation {
    Conversation { id: id.to_owned(), r#type: 2, created_at_ms: 1, updated_at_ms: 1, ..Default::default() }
}

fn msg(id: i64, conv: &str, seq: i64) -> Message {
    Message {
        id,
        conversation_id: conv.to_owned(),
        sender_id: 1,
        message_type: 1,
        content: format!("{conv}#{seq}"),
        seq_id: seq,
        created_at_ms: 1_700_000_000_000 + seq,
        ..Default::default()
    }
}

#[test]
fn test_urls_point_at_the_test_database() {
    assert_eq!(with_database("mysql://u:p@h:1", "d"), "mysql://u:p@h:1/d");
    assert_eq!(with_database("mysql://u:p@h:1/", "d"), "mysql://u:p@h:1/d");
    assert_eq!(with_database("mysql://u:p@h:1/gochat?ssl-mode=disabled", "d"), "mysql://u:p@h:1/d?ssl-mode=disabled");
}

#[tokio::test]
async fn migrations_are_idempotent() {
    with_store(|store| async move {
        store.create_user(&suite::user(1, "alice")).await.unwrap();
        // Already applied by with_store: running them again changes nothing.
        store.migrate().await.expect("second run");
        store.migrate().await.expect("third run");
        let applied: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get("version").unwrap())
            .collect();
        assert_eq!(applied, [1, 2, 3]);
        assert_eq!(store.get_user_by_name("alice").await.unwrap().map(|u| u.id), Some(1));
        // And every table came out utf8mb4 with the byte-exact, NO PAD collation.
        let collations: Vec<String> = sqlx::query(
            "SELECT DISTINCT TABLE_COLLATION AS c FROM information_schema.TABLES
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> '_sqlx_migrations'",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("c").unwrap())
        .collect();
        assert_eq!(collations, ["utf8mb4_nopad_bin"]);
    })
    .await;
}

#[tokio::test]
async fn database_creation_is_idempotent() {
    with_store(|store| async move {
        let name: String = sqlx::query_scalar("SELECT DATABASE()").fetch_one(store.pool()).await.unwrap();
        let url = with_database(&server_url(), &name);
        MySqlStore::create_database_if_missing(&url).await.expect("exists already: fine");
    })
    .await;
}

#[tokio::test]
async fn sessions_are_read_committed_and_strict() {
    with_store(|store| async move {
        let row = sqlx::query("SELECT @@tx_isolation AS iso, @@innodb_lock_wait_timeout AS lwt, @@sql_mode AS mode")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(row.try_get::<String, _>("iso").unwrap(), "READ-COMMITTED");
        assert_eq!(row.try_get::<u64, _>("lwt").unwrap(), 5);
        assert!(row.try_get::<String, _>("mode").unwrap().contains("STRICT_ALL_TABLES"));
    })
    .await;
}

#[tokio::test]
async fn times_round_trip_outside_the_unix_timestamp_range() {
    with_store(|store| async move {
        // Before 1970 and after 2038: FROM_UNIXTIME would give NULL for both.
        for (id, at) in [(1, -86_400_123), (2, 4_102_444_800_456), (3, 0)] {
            let mut u = suite::user(id, &format!("t{id}"));
            u.created_at_ms = at;
            u.updated_at_ms = at;
            let stored = store.create_user(&u).await.unwrap();
            assert_eq!((stored.created_at_ms, stored.updated_at_ms), (at, at));
        }
        let mut u = suite::user(9, "far");
        u.created_at_ms = i64::MAX / 2;
        assert!(matches!(store.create_user(&u).await, Err(StoreError::Invalid(_))), "past year 9999");
    })
    .await;
}

/// Concurrent creators of the same single chat, on separate connections,
/// agree on one conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_chat_creation_yields_one_conversation() {
    with_store(|store| async move {
        store.create_user(&suite::user(1, "a")).await.unwrap();
        store.create_user(&suite::user(2, "b")).await.unwrap();
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let conv = Conversation { id: format!("s-{i}"), r#type: 1, pair_key: Some("s:1:2".into()), ..Default::default() };
                    let members = [1, 2].map(|u| Member { user_id: u, role: 1, ..Default::default() });
                    store.create_conversation(&conv, &members).await.expect("create")
                })
            })
            .collect();
        let mut ids = Vec::new();
        let mut created = 0;
        for t in tasks {
            let (conv, new) = t.await.unwrap();
            created += usize::from(new);
            ids.push(conv.id);
        }
        ids.dedup();
        assert_eq!((created, ids.len()), (1, 1), "one winner, everyone sees it: {ids:?}");
        assert_eq!(store.get_conversation(&ids[0]).await.unwrap().unwrap().member_count, 2);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversations").fetch_one(store.pool()).await.unwrap();
        assert_eq!(n, 1);
    })
    .await;
}

/// The pattern that deadlocks naive InnoDB code: batches touching the same
/// conversations in opposite orders, overlapping (redelivered) messages,
/// and read pointers moved into those conversations meanwhile. Every call
/// succeeds, each message is stored once and counted as inserted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overlapping_batches_neither_deadlock_nor_duplicate() {
    with_store(|store| async move {
        store.create_user(&suite::user(1, "a")).await.unwrap();
        let convs = ["ca", "cb", "cc"];
        for c in convs {
            store.create_conversation(&group(c), &[Member { user_id: 1, role: 3, ..Default::default() }]).await.unwrap();
        }
        const ROUNDS: i64 = 12;
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..6)
            .map(|worker: i64| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut inserted = 0u32;
                    for round in 0..ROUNDS {
                        // Workers 0/2/4 go a->c, 1/3/5 c->a; pairs of workers
                        // send the same seqs (a redelivery racing the original).
                        let seq = round * 3 + worker / 2 + 1;
                        let mut batch: Vec<Message> = (0_i64..).zip(convs).map(|(i, c)| msg(seq * 10 + i, c, seq)).collect();
                        if worker % 2 == 1 {
                            batch.reverse();
                        }
                        inserted += store.save_messages(&batch).await.expect("save").inserted;
                        let pointers: Vec<(i64, String, i64)> = batch.iter().map(|m| (1, m.conversation_id.clone(), seq)).collect();
                        store.advance_read_pointers(&pointers, seq).await.expect("pointers");
                        store.update_read_pointer(1, &batch[0].conversation_id, seq, seq).await.expect("pointer");
                    }
                    inserted
                })
            })
            .collect();
        let mut inserted = 0;
        for t in tasks {
            inserted += t.await.unwrap();
        }
        let per_conv = ROUNDS * 3;
        assert_eq!(i64::from(inserted), per_conv * 3, "each message inserted exactly once");
        for c in convs {
            let conv = store.get_conversation(c).await.unwrap().unwrap();
            assert_eq!(conv.last_seq_id, per_conv, "{c}");
            let page = store.history(c, HistoryDirection::After(0), 1000).await.unwrap();
            assert_eq!(page.items.iter().map(|m| m.seq_id).collect::<Vec<_>>(), (1..=per_conv).collect::<Vec<_>>(), "{c}");
            assert_eq!(conv.last_message_id, page.items.last().map(|m| m.id));
            assert_eq!(store.read_pointer(1, c).await.unwrap(), per_conv, "{c}");
        }
    })
    .await;
}

/// Requests both ways between the same users at once: one is stored, the
/// other is told one is pending. Then two answers at once: one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_friend_requests_and_answers_have_one_winner() {
    with_store(|store| async move {
        let store = Arc::new(store);
        for round in 0..6_i64 {
            let (a, b) = (round * 2 + 1, round * 2 + 2);
            store.create_user(&suite::user(a, &format!("u{a}"))).await.unwrap();
            store.create_user(&suite::user(b, &format!("u{b}"))).await.unwrap();
            let send = |id: i64, from: i64, to: i64| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let req = gochat_proto::common::FriendRequest { id, requester_id: from, target_id: to, ..Default::default() };
                    store.create_friend_request(&req).await
                })
            };
            let (x, y) = (send(100 + a, a, b), send(200 + a, b, a));
            let results = [x.await.unwrap(), y.await.unwrap()];
            let stored: Vec<i64> = results.iter().filter_map(|r| r.as_ref().ok().map(|q| q.id)).collect();
            assert_eq!(stored.len(), 1, "{results:?}");
            assert!(results.iter().any(|r| matches!(r, Err(StoreError::Conflict(Conflict::AlreadyRequested)))), "{results:?}");
            let answer = |status: i32| {
                let store = Arc::clone(&store);
                let id = stored[0];
                tokio::spawn(async move { store.set_friend_request_status(id, status, Some(0), 5).await })
            };
            let (accept, reject) = (answer(1), answer(2));
            let answers = [accept.await.unwrap().expect("accept"), reject.await.unwrap().expect("reject")];
            assert_eq!(answers.iter().filter(|a| a.is_some()).count(), 1, "{answers:?}");
            let accepted = answers[0].is_some();
            assert_eq!(store.are_friends(a, b).await.unwrap(), accepted);
        }
    })
    .await;
}

/// Many readers marking the same seq at once: exactly one moved the pointer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_marks_move_the_pointer_once() {
    with_store(|store| async move {
        store.create_user(&suite::user(1, "a")).await.unwrap();
        store.create_conversation(&group("g"), &[Member { user_id: 1, role: 3, ..Default::default() }]).await.unwrap();
        let store = Arc::new(store);
        for seq in [5, 9] {
            let tasks: Vec<_> = (0..6)
                .map(|_| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move { store.update_read_pointer(1, "g", seq, seq).await.expect("mark") })
                })
                .collect();
            let mut moved = 0;
            for t in tasks {
                let (pointer, m) = t.await.unwrap();
                assert_eq!(pointer, seq);
                moved += usize::from(m);
            }
            assert_eq!(moved, 1, "seq {seq}");
        }
    })
    .await;
}

/// Concurrent joins of one group keep `member_count` exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_keep_the_member_count() {
    with_store(|store| async move {
        for id in 1..=40 {
            store.create_user(&suite::user(id, &format!("u{id}"))).await.unwrap();
        }
        store.create_conversation(&group("g"), &[]).await.unwrap();
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..4_i64)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    // Overlapping ranges: users 1..=10 are added by two workers.
                    let members: Vec<Member> = (w * 10 + 1..=w * 10 + 20)
                        .filter(|&u| u <= 40)
                        .map(|u| Member { user_id: u, role: 1, ..Default::default() })
                        .collect();
                    let mut added = store.add_members("g", &members).await.expect("add").0.len();
                    if w == 0 {
                        added -= usize::from(store.remove_member("g", 1).await.expect("remove").0);
                    }
                    added
                })
            })
            .collect();
        let mut net = 0;
        for t in tasks {
            net += t.await.unwrap();
        }
        let count = store.get_conversation("g").await.unwrap().unwrap().member_count;
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversation_members WHERE conversation_id = 'g'")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!((count, rows), (39, 39));
        assert_eq!(net, 39);
    })
    .await;
}

/// A message id reused for another (conversation, seq) is an error, not a
/// duplicate to skip (what INSERT IGNORE would have done).
#[tokio::test]
async fn a_reused_message_id_is_rejected() {
    with_store(|store| async move {
        store.create_user(&suite::user(1, "a")).await.unwrap();
        store.create_conversation(&group("g"), &[]).await.unwrap();
        store.save_messages(&[msg(7, "g", 1)]).await.unwrap();
        assert!(matches!(store.save_messages(&[msg(7, "g", 2)]).await, Err(StoreError::Invalid(_))));
        let mut long = msg(8, "g", 3);
        long.content = "x".repeat(70_000); // over TEXT's 64 KiB: MEDIUMTEXT takes it
        assert_eq!(store.save_messages(&[long]).await.unwrap().inserted, 1);
        let mut name = group("h");
        name.name = Some("n".repeat(101));
        assert!(matches!(store.create_conversation(&name, &[]).await, Err(StoreError::Invalid(_))), "too long: invalid, not truncated");
    })
    .await;
}
