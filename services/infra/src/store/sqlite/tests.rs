//! Runs the shared behaviour suite (`store::tests`) against SQLite, once on a
//! fresh temp file (the production shape: WAL, a pool of connections) and
//! once in memory (one connection, which would deadlock if any method held a
//! connection while acquiring another), plus the SQLite-only checks.

use std::sync::Arc;

use super::SqliteStore;
use crate::store::tests as suite;
use crate::store::{HistoryDirection, Store};

async fn file_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("gochat.db")).await.expect("open");
    (dir, store)
}

/// One `#[tokio::test]` per suite check and backend.
macro_rules! store_suite {
    ($($check:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test]
                async fn $check() {
                    let (_dir, store) = super::file_store().await;
                    super::suite::$check(&store).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $check() {
                    let store = super::SqliteStore::open_in_memory().await.expect("open");
                    super::suite::$check(&store).await;
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

#[tokio::test]
async fn data_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("gochat.db"); // directory created too
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.create_user(&suite::user(1, "alice")).await.unwrap();
        let conv = gochat_proto::common::Conversation { id: "g".into(), r#type: 2, ..Default::default() };
        store.create_conversation(&conv, &[]).await.unwrap();
        let m = gochat_proto::common::Message {
            id: 1,
            conversation_id: "g".into(),
            sender_id: 1,
            content: "persisted".into(),
            seq_id: 1,
            ..Default::default()
        };
        store.save_messages(&[m]).await.unwrap();
        store.pool().close().await;
    }
    // Reopening runs the migrations again: already applied, nothing changes.
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get_user_by_name("alice").await.unwrap().map(|u| u.id), Some(1));
    assert_eq!(store.get_conversation("g").await.unwrap().map(|c| c.last_seq_id), Some(1));
    let page = store.history("g", HistoryDirection::Before(None), 10).await.unwrap();
    assert_eq!(page.items[0].content, "persisted");
}

#[tokio::test]
async fn open_sets_the_pragmas() {
    let (_dir, store) = file_store().await;
    let mut conn = store.pool().acquire().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *conn).await.unwrap();
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut *conn).await.unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut *conn).await.unwrap();
    assert_eq!((mode.as_str(), fk, sync, busy), ("wal", 1, 1, 5000));
}

#[tokio::test]
async fn in_memory_stores_are_separate() {
    let a = SqliteStore::open_in_memory().await.unwrap();
    let b = SqliteStore::open_in_memory().await.unwrap();
    a.create_user(&suite::user(1, "alice")).await.unwrap();
    assert!(b.get_user_by_name("alice").await.unwrap().is_none());
    b.create_user(&suite::user(1, "alice")).await.unwrap();
}

/// Concurrent creators of the same single chat (several pool connections,
/// so real lock contention) agree on one conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_chat_creation_yields_one_conversation() {
    let (_dir, store) = file_store().await;
    store.create_user(&suite::user(1, "a")).await.unwrap();
    store.create_user(&suite::user(2, "b")).await.unwrap();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let conv = gochat_proto::common::Conversation {
                    id: format!("s-{i}"),
                    r#type: 1,
                    pair_key: Some("s:1:2".into()),
                    ..Default::default()
                };
                let members = [1, 2].map(|u| gochat_proto::common::Member { user_id: u, role: 1, ..Default::default() });
                store.create_conversation(&conv, &members).await.unwrap()
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
}
