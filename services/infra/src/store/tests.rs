//! The behaviour suite every [`Store`] implementation must pass.
//!
//! Each check is an `async fn(&dyn Store)` that expects an empty, migrated
//! database; an implementation's own test module runs every check against a
//! fresh database (see `sqlite::tests`, whose `store_suite!` list is the
//! index of this file). Keeping the checks engine-agnostic is what makes
//! "SQLite and MySQL behave identically" testable.

use gochat_proto::common::{Conversation, FriendRequest, Member, Message, User};

use super::{Conflict, HistoryDirection, Store, StoreError};

// ---- fixtures ---------------------------------------------------------------

const T0: i64 = 1_700_000_000_000;

pub(crate) fn user(id: i64, name: &str) -> User {
    User {
        id,
        username: name.to_owned(),
        password_hash: format!("$argon2id$hash-of-{id}"),
        created_at_ms: T0,
        updated_at_ms: T0,
        ..Default::default()
    }
}

fn guest(id: i64, name: &str) -> User {
    User { is_guest: true, password_hash: String::new(), ..user(id, name) }
}

/// Creates users `ids` named `u{id}`.
async fn users(store: &dyn Store, ids: &[i64]) {
    for &id in ids {
        store.create_user(&user(id, &format!("u{id}"))).await.expect("create user");
    }
}

fn group(id: &str, owner: i64, at: i64) -> Conversation {
    Conversation {
        id: id.to_owned(),
        r#type: 2,
        name: Some(format!("group {id}")),
        owner_id: Some(owner),
        created_at_ms: at,
        updated_at_ms: at,
        ..Default::default()
    }
}

fn single(id: &str, a: i64, b: i64) -> Conversation {
    Conversation {
        id: id.to_owned(),
        r#type: 1,
        pair_key: Some(format!("s:{}:{}", a.min(b), a.max(b))),
        created_at_ms: T0,
        updated_at_ms: T0,
        ..Default::default()
    }
}

fn member(user_id: i64, role: i32, joined: i64) -> Member {
    Member { user_id, role, joined_at_ms: joined, ..Default::default() }
}

fn msg(id: i64, conv: &str, sender: i64, seq: i64) -> Message {
    Message {
        id,
        conversation_id: conv.to_owned(),
        sender_id: sender,
        message_type: 1,
        content: format!("message {seq}"),
        seq_id: seq,
        client_msg_id: Some(format!("c-{id}")),
        created_at_ms: T0 + seq * 1000,
        ..Default::default()
    }
}

fn request(id: i64, from: i64, to: i64, at: i64) -> FriendRequest {
    FriendRequest {
        id,
        requester_id: from,
        target_id: to,
        status: 0,
        message: Some(format!("hi from {from}")),
        created_at_ms: at,
        updated_at_ms: at,
        ..Default::default()
    }
}

fn seqs(page: &[Message]) -> Vec<i64> {
    page.iter().map(|m| m.seq_id).collect()
}

fn is_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Invalid(_)))
}

fn conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> Option<Conflict> {
    match r {
        Err(StoreError::Conflict(c)) => Some(c),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

// ---- users --------------------------------------------------------------------

pub(crate) async fn users_create_get_and_duplicates(store: &dyn Store) {
    let alice = store.create_user(&user(1, "alice")).await.unwrap();
    assert_eq!((alice.id, alice.username.as_str(), alice.created_at_ms), (1, "alice", T0));
    assert!(alice.password_hash.is_empty(), "only get_user_by_name hands out the hash");
    store.create_user(&guest(2, "guest_2")).await.unwrap();

    assert_eq!(conflict(store.create_user(&user(3, "alice")).await), Some(Conflict::UsernameTaken));
    assert!(is_invalid(store.create_user(&user(1, "another")).await), "reused id");
    assert!(is_invalid(store.create_user(&user(4, &"x".repeat(51))).await), "name too long");

    let mut got = store.get_users(&[2, 1, 999]).await.unwrap();
    got.sort_by_key(|u| u.id);
    assert_eq!(got.iter().map(|u| u.id).collect::<Vec<_>>(), vec![1, 2]);
    assert!(got[1].is_guest && !got[0].is_guest);
    assert!(got.iter().all(|u| u.password_hash.is_empty()));
    assert!(store.get_users(&[]).await.unwrap().is_empty());

    let by_name = store.get_user_by_name("alice").await.unwrap().expect("alice");
    assert_eq!(by_name.password_hash, "$argon2id$hash-of-1");
    assert!(store.get_user_by_name("Alice").await.unwrap().is_none(), "exact, case-sensitive");
    assert!(store.get_user_by_name("nobody").await.unwrap().is_none());

    let updated = store.update_user_avatar(1, Some("https://x/a.png"), T0 + 5).await.unwrap().unwrap();
    assert_eq!((updated.avatar_url.as_deref(), updated.updated_at_ms), (Some("https://x/a.png"), T0 + 5));
    let cleared = store.update_user_avatar(1, None, T0 + 6).await.unwrap().unwrap();
    assert_eq!(cleared.avatar_url, None);
    assert!(store.update_user_avatar(999, None, T0).await.unwrap().is_none());
}

pub(crate) async fn users_search_escapes_like(store: &dyn Store) {
    for (id, name) in [(1, "alice"), (2, "Alicia"), (4, "bob"), (5, "50%_off\\x"), (6, "a_b"), (7, "axb")] {
        store.create_user(&user(id, name)).await.unwrap();
    }
    store.create_user(&guest(3, "guest_alice")).await.unwrap();
    let names = |v: Vec<User>| v.into_iter().map(|u| u.username).collect::<Vec<_>>();

    // Case-insensitive substring, registered users first, then by username.
    assert_eq!(names(store.search_users("ALI", 10).await.unwrap()), ["Alicia", "alice", "guest_alice"]);
    assert_eq!(names(store.search_users("ali", 2).await.unwrap()), ["Alicia", "alice"], "limit");
    // Wildcards and the escape character match literally.
    assert_eq!(names(store.search_users("_", 10).await.unwrap()), ["50%_off\\x", "a_b", "guest_alice"]);
    assert_eq!(names(store.search_users("a_b", 10).await.unwrap()), ["a_b"]);
    assert_eq!(names(store.search_users("%", 10).await.unwrap()), ["50%_off\\x"]);
    assert_eq!(names(store.search_users("\\", 10).await.unwrap()), ["50%_off\\x"]);
    assert_eq!(names(store.search_users("%_off\\", 10).await.unwrap()), ["50%_off\\x"]);
    assert!(store.search_users("zzz", 10).await.unwrap().is_empty());
}

/// SQL-looking input is data: stored and returned verbatim everywhere.
pub(crate) async fn sql_looking_input_is_stored_verbatim(store: &dyn Store) {
    let evil = "'; DROP TABLE users; --";
    let evil2 = "%_\\ \" ') OR 1=1; DROP TABLE messages; --";
    store.create_user(&user(1, evil)).await.unwrap();
    store.create_user(&user(2, evil2)).await.unwrap();
    assert_eq!(store.get_user_by_name(evil).await.unwrap().unwrap().id, 1);
    assert_eq!(store.search_users(evil, 10).await.unwrap().len(), 1);
    assert_eq!(store.search_users("%_\\", 10).await.unwrap()[0].username, evil2);

    let mut conv = group("g'; DELETE FROM conversations; --", 1, T0);
    conv.name = Some(evil.to_owned());
    conv.description = Some(evil2.to_owned());
    let (created, _) = store.create_conversation(&conv, &[member(1, 3, T0)]).await.unwrap();
    assert_eq!((created.name.as_deref(), created.description.as_deref()), (Some(evil), Some(evil2)));

    let mut m = msg(10, &conv.id, 2, 1);
    m.content = evil2.to_owned();
    m.extra = Some(evil.to_owned());
    m.client_msg_id = Some(evil.to_owned());
    store.save_messages(&[m]).await.unwrap();
    let page = store.history(&conv.id, HistoryDirection::Before(None), 10).await.unwrap();
    assert_eq!(page.items[0].content, evil2);
    assert_eq!(page.items[0].extra.as_deref(), Some(evil));
    assert_eq!(page.items[0].sender.as_ref().unwrap().username, evil2);
    assert_eq!(store.find_message_by_client_id(2, evil).await.unwrap().unwrap().id, 10);

    // Every table is still there.
    assert_eq!(store.get_users(&[1, 2]).await.unwrap().len(), 2);
    assert!(store.get_conversation(&conv.id).await.unwrap().is_some());
}

/// Text compares byte for byte: trailing spaces, case and non-ASCII all
/// count (a PAD SPACE collation would make `alice` and `alice ` one name),
/// and 4-byte UTF-8 is stored whole.
pub(crate) async fn text_compares_exactly(store: &dyn Store) {
    store.create_user(&user(1, "alice")).await.unwrap();
    store.create_user(&user(2, "alice ")).await.expect("a trailing space makes another name");
    store.create_user(&user(3, "Émile 😀")).await.unwrap();
    store.create_user(&user(4, &"😀".repeat(50))).await.expect("50 four-byte characters fit");
    assert_eq!(store.get_user_by_name("alice ").await.unwrap().map(|u| u.id), Some(2));
    assert_eq!(store.get_user_by_name("alice").await.unwrap().map(|u| u.id), Some(1));
    assert!(store.get_user_by_name("alice  ").await.unwrap().is_none());
    assert_eq!(store.get_user_by_name("Émile 😀").await.unwrap().map(|u| u.username), Some("Émile 😀".to_owned()));
    assert!(store.get_user_by_name("émile 😀").await.unwrap().is_none());

    let (_, created) = store.create_conversation(&group("g", 1, T0), &[member(1, 3, T0)]).await.unwrap();
    assert!(created);
    let (_, created) = store.create_conversation(&group("g ", 1, T0), &[]).await.unwrap();
    assert!(created, "`g ` is another conversation id");
    let mut a = msg(1, "g", 1, 1);
    a.client_msg_id = Some("x".into());
    a.content = "naïve 😀 ✓".into();
    let mut b = msg(2, "g", 1, 2);
    b.client_msg_id = Some("x ".into());
    store.save_messages(&[a, b]).await.unwrap();
    let found = store.find_message_by_client_id(1, "x").await.unwrap().expect("x");
    assert_eq!((found.id, found.content.as_str()), (1, "naïve 😀 ✓"));
    assert_eq!(store.find_message_by_client_id(1, "x ").await.unwrap().map(|m| m.id), Some(2));
    let bulk = store.find_messages_by_client_ids(&[(1, "x ".to_owned())]).await.unwrap();
    assert_eq!(bulk.iter().map(|m| m.id).collect::<Vec<_>>(), [2]);

    assert!(store.revoke_token("t", 9_000, 0).await.unwrap());
    assert!(store.revoke_token("t ", 9_000, 0).await.unwrap(), "another token id");
}

// ---- conversations ------------------------------------------------------------

pub(crate) async fn conversation_create_get_update(store: &dyn Store) {
    users(store, &[1, 2, 3]).await;
    let members = [member(1, 3, T0), member(2, 1, T0 + 1), member(2, 1, T0 + 2)];
    let (conv, created) = store.create_conversation(&group("g1", 1, T0), &members).await.unwrap();
    assert!(created);
    assert_eq!(conv.member_count, 2, "duplicate member in the input counted once");
    assert_eq!(store.get_conversation("g1").await.unwrap().as_ref(), Some(&conv));
    assert!(store.get_conversation("nope").await.unwrap().is_none());

    assert!(is_invalid(store.create_conversation(&group("g1", 1, T0), &[]).await), "id taken");
    // One transaction: an unknown member rolls the conversation back.
    assert!(is_invalid(store.create_conversation(&group("g2", 1, T0), &[member(1, 3, T0), member(99, 1, T0)]).await));
    assert!(store.get_conversation("g2").await.unwrap().is_none());
    assert!(store.get_member("g2", 1).await.unwrap().is_none());

    let updated = store.update_conversation("g1", Some("renamed"), None, Some("about"), T0 + 50).await.unwrap().unwrap();
    assert_eq!(updated.name.as_deref(), Some("renamed"));
    assert_eq!(updated.description.as_deref(), Some("about"));
    assert_eq!(updated.avatar_url, None);
    assert_eq!(updated.updated_at_ms, T0 + 50);
    let again = store.update_conversation("g1", None, Some("a.png"), None, T0 + 10).await.unwrap().unwrap();
    assert_eq!(again.name.as_deref(), Some("renamed"), "None leaves a field unchanged");
    assert_eq!(again.avatar_url.as_deref(), Some("a.png"));
    assert_eq!(again.updated_at_ms, T0 + 50, "updated_at never moves back");
    assert!(store.update_conversation("nope", Some("x"), None, None, T0).await.unwrap().is_none());
}

pub(crate) async fn single_chat_is_unique_per_pair(store: &dyn Store) {
    users(store, &[1, 2, 3]).await;
    let (first, created) = store.create_conversation(&single("s-a", 1, 2), &[member(1, 1, T0), member(2, 1, T0)]).await.unwrap();
    assert!(created);
    assert_eq!((first.pair_key.as_deref(), first.member_count), (Some("s:1:2"), 2));

    let (again, created) = store.create_conversation(&single("s-b", 2, 1), &[member(2, 1, T0), member(1, 1, T0)]).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, "s-a");
    assert!(store.get_conversation("s-b").await.unwrap().is_none());

    let (other, created) = store.create_conversation(&single("s-c", 1, 3), &[]).await.unwrap();
    assert!(created && other.id == "s-c");
}

pub(crate) async fn user_conversation_list(store: &dyn Store) {
    users(store, &[1, 2, 3]).await;
    // Activity order after the messages below: c (T0+9s), a (T0+3s), then
    // b and d tie on T0+100 and fall back to id order.
    for (id, at) in [("a", T0), ("b", T0 + 100), ("c", T0), ("d", T0 + 100)] {
        store.create_conversation(&group(id, 1, at), &[member(1, 3, T0), member(2, 1, T0 + 1)]).await.unwrap();
    }
    store.create_conversation(&single("s", 1, 3), &[member(1, 1, T0), member(3, 1, T0)]).await.unwrap();
    store.create_conversation(&group("other", 2, T0 + 500), &[member(2, 3, T0)]).await.unwrap();
    store.save_messages(&[msg(1, "a", 2, 1), msg(2, "a", 1, 2), msg(3, "a", 2, 3)]).await.unwrap();
    store.save_messages(&[msg(4, "c", 1, 9)]).await.unwrap();
    store.update_read_pointer(1, "a", 1, T0).await.unwrap();
    store.update_read_pointer(1, "c", 50, T0).await.unwrap(); // ahead of last_seq

    let page = store.list_user_conversations(1, 0, 10, None).await.unwrap();
    let ids: Vec<_> = page.items.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c", "a", "b", "d", "s"]);
    assert!(!page.has_more);

    let a = &page.items[1];
    assert_eq!((a.last_seq_id, a.unread_count), (3, 2));
    let last = a.last_message.as_ref().expect("last message");
    assert_eq!((last.id, last.seq_id, last.content.as_str()), (3, 3, "message 3"));
    assert_eq!(last.sender.as_ref().map(|u| u.username.as_str()), Some("u2"));
    let me = a.my_membership.as_ref().expect("membership");
    assert_eq!((me.user_id, me.role, me.conversation_id.as_str()), (1, 3, "a"));
    assert_eq!(page.items[0].unread_count, 0, "never negative");
    assert_eq!(page.items[2].unread_count, 0);
    assert!(page.items[2].last_message.is_none());

    let p1 = store.list_user_conversations(1, 0, 2, None).await.unwrap();
    assert_eq!(p1.items.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["c", "a"]);
    assert!(p1.has_more);
    let p3 = store.list_user_conversations(1, 4, 2, None).await.unwrap();
    assert_eq!(p3.items.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["s"]);
    assert!(!p3.has_more);
    let exact = store.list_user_conversations(1, 3, 2, None).await.unwrap();
    assert_eq!(exact.items.len(), 2);
    assert!(!exact.has_more, "a full last page has no more");

    let singles = store.list_user_conversations(1, 0, 10, Some(1)).await.unwrap();
    assert_eq!(singles.items.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["s"]);
    let theirs = store.list_user_conversations(2, 0, 10, None).await.unwrap();
    assert_eq!(theirs.items.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["c", "a", "other", "b", "d"]);
    assert_eq!(theirs.items[2].my_membership.as_ref().map(|m| m.role), Some(3));
    assert!(store.list_user_conversations(99, 0, 10, None).await.unwrap().items.is_empty());
}

// ---- members --------------------------------------------------------------------

pub(crate) async fn members_add_remove_role_and_list(store: &dyn Store) {
    users(store, &[1, 2, 3, 4, 5]).await;
    store.create_conversation(&group("g", 1, T0), &[member(2, 1, T0), member(1, 3, T0 + 5)]).await.unwrap();

    let (added, count) = store.add_members("g", &[member(2, 1, T0 + 9), member(4, 1, T0 + 2), member(3, 1, T0 + 3)]).await.unwrap();
    assert_eq!((added, count), (vec![4, 3], 4), "existing member 2 skipped");
    assert_eq!(store.get_conversation("g").await.unwrap().unwrap().member_count, 4);
    assert!(is_invalid(store.add_members("nope", &[member(5, 1, T0)]).await));
    assert!(is_invalid(store.add_members("g", &[member(99, 1, T0)]).await), "unknown user");

    // Owner first, then by join time.
    let all = store.list_members("g", 0, 10, None).await.unwrap();
    assert_eq!(all.items.iter().map(|m| m.user_id).collect::<Vec<_>>(), [1, 2, 4, 3]);
    assert!(all.items.iter().all(|m| m.user.as_ref().map(|u| u.id) == Some(m.user_id)));
    assert!(!all.has_more);
    let p = store.list_members("g", 1, 2, None).await.unwrap();
    assert_eq!((p.items.iter().map(|m| m.user_id).collect::<Vec<_>>(), p.has_more), (vec![2, 4], true));

    let promoted = store.update_member_role("g", 4, 2, T0 + 20).await.unwrap().unwrap();
    assert_eq!((promoted.role, promoted.user.as_ref().map(|u| u.username.as_str())), (2, Some("u4")));
    assert!(store.update_member_role("g", 5, 2, T0).await.unwrap().is_none());
    let admins = store.list_members("g", 0, 10, Some(2)).await.unwrap();
    assert_eq!(admins.items.iter().map(|m| m.user_id).collect::<Vec<_>>(), [4]);
    assert_eq!(store.get_member("g", 4).await.unwrap().unwrap().role, 2);

    assert_eq!(store.remove_member("g", 3).await.unwrap(), (true, 3));
    assert_eq!(store.remove_member("g", 3).await.unwrap(), (false, 3));
    assert!(store.get_member("g", 3).await.unwrap().is_none());
    assert_eq!(store.get_conversation("g").await.unwrap().unwrap().member_count, 3);

    let ids = store.list_member_ids("g", 0, 2).await.unwrap();
    assert_eq!((ids.items.clone(), ids.has_more), (vec![1, 2], true));
    let ids = store.list_member_ids("g", 2, 2).await.unwrap();
    assert_eq!((ids.items.clone(), ids.has_more), (vec![4], false));
    assert!(store.list_member_ids("g", 4, 2).await.unwrap().items.is_empty());
}

// ---- messages ---------------------------------------------------------------------

pub(crate) async fn save_messages_is_idempotent_and_monotonic(store: &dyn Store) {
    users(store, &[1, 2]).await;
    store.create_conversation(&group("g", 1, T0), &[member(1, 3, T0)]).await.unwrap();
    store.create_conversation(&group("h", 1, T0), &[member(1, 3, T0)]).await.unwrap();

    let batch = [msg(1, "g", 1, 1), msg(2, "g", 2, 2), msg(3, "g", 1, 3), msg(20, "h", 1, 1)];
    let out = store.save_messages(&batch).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (4, 0));
    let out = store.save_messages(&batch).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (0, 4), "redelivery inserts nothing");
    let g = store.get_conversation("g").await.unwrap().unwrap();
    assert_eq!((g.last_seq_id, g.last_message_id, g.updated_at_ms), (3, Some(3), T0 + 3000));
    assert_eq!(store.get_conversation("h").await.unwrap().unwrap().last_seq_id, 1);

    // Newer first, then an older straggler: the pointer never moves back.
    let out = store.save_messages(&[msg(5, "g", 1, 5), msg(5, "g", 1, 5)]).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (1, 1), "duplicate inside one batch");
    // (with a higher id: ids from several logic nodes need not follow seq)
    store.save_messages(&[msg(40, "g", 2, 4)]).await.unwrap();
    let g = store.get_conversation("g").await.unwrap().unwrap();
    assert_eq!((g.last_seq_id, g.last_message_id, g.updated_at_ms), (5, Some(5), T0 + 5000));
    let all = store.history("g", HistoryDirection::After(0), 100).await.unwrap();
    assert_eq!(seqs(&all.items), [1, 2, 3, 4, 5]);

    assert!(is_invalid(store.save_messages(&[msg(30, "nope", 1, 1)]).await));
    // The failed batch is all-or-nothing.
    assert!(is_invalid(store.save_messages(&[msg(6, "g", 1, 6), msg(31, "nope", 1, 1)]).await));
    assert_eq!(store.get_conversation("g").await.unwrap().unwrap().last_seq_id, 5);
    assert!(store.find_message_by_client_id(1, "c-6").await.unwrap().is_none());
    assert_eq!(store.save_messages(&[]).await.unwrap().inserted, 0);
}

pub(crate) async fn history_pages_both_directions(store: &dyn Store) {
    users(store, &[1, 2]).await;
    store.create_conversation(&group("g", 1, T0), &[member(1, 3, T0)]).await.unwrap();
    store.create_conversation(&group("h", 1, T0), &[member(1, 3, T0)]).await.unwrap();
    let batch: Vec<_> = (1..=5).map(|s| msg(s, "g", 1 + s % 2, s)).collect();
    store.save_messages(&batch).await.unwrap();
    store.save_messages(&[msg(100, "h", 1, 1)]).await.unwrap();

    let before = |b| HistoryDirection::Before(b);
    let p = store.history("g", before(None), 2).await.unwrap();
    assert_eq!((seqs(&p.items), p.has_more), (vec![5, 4], true));
    assert_eq!(p.items[0].sender.as_ref().map(|u| u.id), Some(2));
    assert_eq!(p.items[1].sender.as_ref().map(|u| u.id), Some(1));
    let p = store.history("g", before(Some(4)), 2).await.unwrap();
    assert_eq!((seqs(&p.items), p.has_more), (vec![3, 2], true));
    let p = store.history("g", before(Some(2)), 2).await.unwrap();
    assert_eq!((seqs(&p.items), p.has_more), (vec![1], false));
    let p = store.history("g", HistoryDirection::After(0), 3).await.unwrap();
    assert_eq!((seqs(&p.items), p.has_more), (vec![1, 2, 3], true));
    let p = store.history("g", HistoryDirection::After(3), 3).await.unwrap();
    assert_eq!((seqs(&p.items), p.has_more), (vec![4, 5], false));
    let p = store.history("g", before(None), 5).await.unwrap();
    assert_eq!((p.items.len(), p.has_more), (5, false), "exactly full page");
    assert!(store.history("nope", before(None), 5).await.unwrap().items.is_empty());
}

pub(crate) async fn find_message_by_client_id(store: &dyn Store) {
    users(store, &[1, 2]).await;
    store.create_conversation(&group("g", 1, T0), &[member(1, 3, T0)]).await.unwrap();
    store.save_messages(&[msg(7, "g", 2, 1), msg(8, "g", 1, 2)]).await.unwrap();
    let found = store.find_message_by_client_id(2, "c-7").await.unwrap().expect("found");
    assert_eq!((found.id, found.seq_id, found.conversation_id.as_str()), (7, 1, "g"));
    assert_eq!(found.sender.as_ref().map(|u| u.username.as_str()), Some("u2"));
    assert!(store.find_message_by_client_id(1, "c-7").await.unwrap().is_none(), "other sender");
    assert!(store.find_message_by_client_id(2, "c-9").await.unwrap().is_none());
}

pub(crate) async fn read_pointer_never_moves_back(store: &dyn Store) {
    users(store, &[1, 2]).await;
    store.create_conversation(&group("g", 1, T0), &[member(1, 3, T0), member(2, 1, T0)]).await.unwrap();
    assert_eq!(store.update_read_pointer(1, "g", 0, T0).await.unwrap(), (0, false));
    assert_eq!(store.update_read_pointer(1, "g", 5, T0).await.unwrap(), (5, true));
    assert_eq!(store.update_read_pointer(1, "g", 3, T0).await.unwrap(), (5, false));
    assert_eq!(store.update_read_pointer(1, "g", 5, T0).await.unwrap(), (5, false));
    assert_eq!(store.update_read_pointer(1, "g", 7, T0).await.unwrap(), (7, true));
    assert_eq!(store.update_read_pointer(2, "g", 2, T0).await.unwrap(), (2, true), "per user");
    assert_eq!(store.update_read_pointer(1, "g", 6, T0).await.unwrap(), (7, false));
    assert!(is_invalid(store.update_read_pointer(1, "nope", 1, T0).await));

    store.save_messages(&(1..=9).map(|s| msg(s, "g", 2, s)).collect::<Vec<_>>()).await.unwrap();
    let list = store.list_user_conversations(1, 0, 10, None).await.unwrap();
    assert_eq!(list.items[0].unread_count, 2);
}

// ---- friends ------------------------------------------------------------------------

pub(crate) async fn friend_request_conflicts_and_reopen(store: &dyn Store) {
    users(store, &[1, 2, 3]).await;
    let sent = store.create_friend_request(&request(10, 1, 2, T0)).await.unwrap();
    assert_eq!((sent.id, sent.status, sent.message.as_deref()), (10, 0, Some("hi from 1")));
    assert_eq!(sent.requester.as_ref().map(|u| u.id), Some(1));
    assert_eq!(sent.target.as_ref().map(|u| u.id), Some(2));

    assert_eq!(conflict(store.create_friend_request(&request(11, 1, 2, T0)).await), Some(Conflict::AlreadyRequested));
    assert_eq!(conflict(store.create_friend_request(&request(12, 2, 1, T0)).await), Some(Conflict::AlreadyRequested));
    assert!(is_invalid(store.create_friend_request(&request(13, 1, 1, T0)).await));
    assert!(is_invalid(store.create_friend_request(&request(14, 1, 99, T0)).await), "unknown user");

    let pending = store.list_friend_requests(2, true, Some(0)).await.unwrap();
    assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), [10]);
    assert!(store.list_friend_requests(2, false, None).await.unwrap().is_empty());
    assert_eq!(store.list_friend_requests(1, false, None).await.unwrap().len(), 1);

    let rejected = store.set_friend_request_status(10, 2, None, T0 + 1).await.unwrap().unwrap();
    assert_eq!((rejected.status, rejected.updated_at_ms), (2, T0 + 1));
    assert!(!store.are_friends(1, 2).await.unwrap());
    assert!(store.list_friend_requests(2, true, Some(0)).await.unwrap().is_empty());

    // Re-request after a rejection: the same row, pending again, new text/time.
    let mut again = request(15, 1, 2, T0 + 9);
    again.message = Some("please?".into());
    let reopened = store.create_friend_request(&again).await.unwrap();
    assert_eq!((reopened.id, reopened.status, reopened.message.as_deref(), reopened.created_at_ms), (10, 0, Some("please?"), T0 + 9));
    assert!(store.get_friend_request(15).await.unwrap().is_none());

    // A rejected request the other way does not block a new one this way.
    store.set_friend_request_status(10, 2, None, T0 + 10).await.unwrap();
    let back = store.create_friend_request(&request(16, 2, 1, T0 + 11)).await.unwrap();
    assert_eq!((back.id, back.requester_id, back.status), (16, 2, 0));

    // Newest first.
    store.create_friend_request(&request(17, 3, 1, T0 + 20)).await.unwrap();
    let received = store.list_friend_requests(1, true, None).await.unwrap();
    assert_eq!(received.iter().map(|r| r.id).collect::<Vec<_>>(), [17, 16]);
    assert!(received.iter().all(|r| r.requester.is_some() && r.target.is_some()));
    assert!(store.set_friend_request_status(999, 1, None, T0).await.unwrap().is_none());
    assert!(is_invalid(store.set_friend_request_status(10, 7, None, T0).await));
}

pub(crate) async fn friend_accept_makes_both_ways(store: &dyn Store) {
    users(store, &[1, 2, 3, 4]).await;
    store.create_friend_request(&request(10, 1, 2, T0)).await.unwrap();
    assert!(store.set_friend_request_status(10, 1, Some(2), T0 + 4).await.unwrap().is_none(), "guard: not rejected, so unchanged");
    assert_eq!(store.get_friend_request(10).await.unwrap().unwrap().status, 0);
    let accepted = store.set_friend_request_status(10, 1, Some(0), T0 + 5).await.unwrap().unwrap();
    assert!(store.set_friend_request_status(10, 2, Some(0), T0 + 6).await.unwrap().is_none(), "already answered");
    assert_eq!((accepted.status, accepted.requester_id), (1, 1));

    assert!(store.are_friends(1, 2).await.unwrap());
    assert!(store.are_friends(2, 1).await.unwrap());
    assert!(!store.are_friends(1, 3).await.unwrap());
    assert!(!store.are_friends(1, 1).await.unwrap());
    assert_eq!(store.friend_ids(1).await.unwrap(), [2]);
    assert_eq!(store.friend_ids(2).await.unwrap(), [1]);
    let friends = store.list_friends(2).await.unwrap();
    assert_eq!(friends.len(), 1);
    assert_eq!((friends[0].user_id, friends[0].friend_id, friends[0].status), (2, 1, 1));
    assert_eq!(friends[0].friend.as_ref().map(|u| u.username.as_str()), Some("u1"));
    assert!(!friends[0].online);

    assert_eq!(conflict(store.create_friend_request(&request(11, 1, 2, T0)).await), Some(Conflict::AlreadyFriends));
    assert_eq!(conflict(store.create_friend_request(&request(12, 2, 1, T0)).await), Some(Conflict::AlreadyFriends));
    // The stored reverse half is nobody's request.
    assert!(store.list_friend_requests(1, true, None).await.unwrap().is_empty());
    assert!(store.list_friend_requests(2, false, None).await.unwrap().is_empty());
    assert_eq!(store.list_friend_requests(1, false, Some(1)).await.unwrap()[0].id, 10);

    // Accepting when a (rejected) row the other way exists accepts it in place.
    store.create_friend_request(&request(20, 3, 4, T0)).await.unwrap();
    store.set_friend_request_status(20, 2, None, T0 + 1).await.unwrap();
    store.create_friend_request(&request(21, 4, 3, T0 + 2)).await.unwrap();
    store.set_friend_request_status(21, 1, None, T0 + 3).await.unwrap();
    assert!(store.are_friends(3, 4).await.unwrap());
    assert_eq!(store.get_friend_request(20).await.unwrap().unwrap().status, 1);
    assert_eq!(store.friend_ids(3).await.unwrap(), [4]);
    assert_eq!(store.friend_ids(4).await.unwrap(), [3]);

    // Blocking one half ends the friendship for both sides.
    store.set_friend_request_status(10, 3, None, T0 + 9).await.unwrap();
    assert!(!store.are_friends(1, 2).await.unwrap());
    assert!(store.friend_ids(1).await.unwrap().is_empty());
    assert!(store.list_friends(2).await.unwrap().is_empty());
}

pub(crate) async fn client_ids_are_found_in_bulk(store: &dyn Store) {
    users(store, &[1, 2]).await;
    let conv = Conversation { id: "g_ids".into(), r#type: 2, created_at_ms: 1, updated_at_ms: 1, ..Default::default() };
    let member = |u: i64| Member { conversation_id: "g_ids".into(), user_id: u, role: 1, joined_at_ms: 1, ..Default::default() };
    store.create_conversation(&conv, &[member(1), member(2)]).await.expect("conversation");
    let msg = |id: i64, seq: i64, sender: i64, cid: &str| Message {
        id,
        conversation_id: "g_ids".into(),
        sender_id: sender,
        message_type: 1,
        content: "x".into(),
        seq_id: seq,
        client_msg_id: Some(cid.into()),
        created_at_ms: seq,
        ..Default::default()
    };
    store.save_messages(&[msg(11, 1, 1, "a"), msg(12, 2, 2, "a"), msg(13, 3, 1, "b")]).await.expect("save");
    let keys = vec![(1, "a".to_string()), (2, "a".to_string()), (1, "zz".to_string()), (2, "b".to_string()), (1, "'); --".to_string())];
    let mut found: Vec<(i64, i64)> =
        store.find_messages_by_client_ids(&keys).await.expect("bulk").iter().map(|m| (m.id, m.seq_id)).collect();
    found.sort();
    assert_eq!(found, vec![(11, 1), (12, 2)], "only exact (sender, id) pairs");
    assert!(store.find_messages_by_client_ids(&[]).await.expect("empty").is_empty());
}

pub(crate) async fn conversations_and_members_are_read_in_bulk(store: &dyn Store) {
    users(store, &[1, 2, 3]).await;
    store.create_conversation(&group("g1", 1, T0), &[member(1, 3, T0), member(2, 1, T0)]).await.unwrap();
    store.create_conversation(&group("g2", 3, T0), &[member(3, 3, T0)]).await.unwrap();
    // A 64-character prefix of a longer id must not match the shorter one.
    let long_id = "l".repeat(64);
    store.create_conversation(&group(&long_id, 1, T0), &[member(1, 3, T0)]).await.unwrap();
    let longer = format!("{long_id}x");
    let mut ids: Vec<String> = ["g1", "g2", "nope", "'); --", "g1"].iter().map(|s| s.to_string()).collect();
    ids.push(longer.clone());
    let mut convs = store.get_conversations(&ids).await.unwrap();
    convs.sort_by(|a, b| a.id.cmp(&b.id));
    let one = |id: &'static str| async move { store.get_conversation(id).await.unwrap().unwrap() };
    assert_eq!(convs, vec![one("g1").await, one("g2").await], "existing ones, each once, as read one by one");
    assert!(store.get_conversations(&[]).await.unwrap().is_empty());

    let mut keys: Vec<(String, i64)> =
        [("g1", 1), ("g1", 2), ("g1", 3), ("g2", 3), ("nope", 1), ("G1", 1), ("g1", 2)].iter().map(|(c, u)| (c.to_string(), *u)).collect();
    keys.push((longer.clone(), 1));
    let mut found = store.get_members(&keys).await.unwrap();
    found.sort_by(|a, b| (&a.conversation_id, a.user_id).cmp(&(&b.conversation_id, b.user_id)));
    let mut expected = Vec::new();
    for (c, u) in [("g1", 1), ("g1", 2), ("g2", 3)] {
        expected.push(store.get_member(c, u).await.unwrap().unwrap());
    }
    assert_eq!(found, expected, "exact (conversation, user) pairs, with their users");
    assert!(found.iter().all(|m| m.user.is_some()));
    assert!(store.get_members(&[]).await.unwrap().is_empty());

    store.create_conversation(&group("empty", 1, T0), &[]).await.unwrap();
    let mut asked: Vec<String> = ["g2", "g1", "nope", "empty", "g1"].iter().map(|s| s.to_string()).collect();
    asked.push(longer);
    let lists = store.member_id_lists(&asked, 2).await.unwrap();
    assert_eq!(lists, vec![("g1".to_string(), vec![1, 2]), ("g2".to_string(), vec![3])], "whole lists, ascending, once each");
    assert_eq!(store.member_id_lists(&asked, 1).await.unwrap(), vec![("g2".to_string(), vec![3])], "larger conversations are left out");
    assert!(store.member_id_lists(&[], 10).await.unwrap().is_empty());
}

pub(crate) async fn large_message_batches_are_saved_whole(store: &dyn Store) {
    users(store, &[1, 2]).await;
    store.create_conversation(&group("big1", 1, T0), &[member(1, 3, T0), member(2, 1, T0)]).await.unwrap();
    store.create_conversation(&group("big2", 1, T0), &[member(1, 3, T0)]).await.unwrap();
    // More rows than one insert statement carries, interleaved over two conversations.
    let batch: Vec<Message> = (1..=1300i64)
        .map(|i| Message {
            id: 10_000 + i,
            conversation_id: if i % 2 == 0 { "big1" } else { "big2" }.into(),
            sender_id: 1 + i % 2,
            message_type: 1,
            content: format!("m{i}"),
            seq_id: (i + 1) / 2,
            client_msg_id: Some(format!("c{i}")),
            created_at_ms: T0 + i,
            ..Default::default()
        })
        .collect();
    let out = store.save_messages(&batch).await.unwrap();
    assert_eq!((out.inserted, out.duplicates), (1300, 0));
    let again = store.save_messages(&batch[600..700]).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 100), "a redelivered slice inserts nothing");
    for (id, last_id) in [("big1", 10_000 + 1300), ("big2", 10_000 + 1299)] {
        let c = store.get_conversation(id).await.unwrap().unwrap();
        assert_eq!((c.last_seq_id, c.last_message_id), (650, Some(last_id)), "{id} points at its newest message");
    }
    let page = store.history("big1", HistoryDirection::After(640), 100).await.unwrap();
    assert_eq!(page.items.iter().map(|m| m.seq_id).collect::<Vec<_>>(), (641..=650).collect::<Vec<_>>());
}

pub(crate) async fn read_pointers_advance_in_bulk(store: &dyn Store) {
    users(store, &[1, 2]).await;
    let conv = Conversation { id: "g_bulk".into(), r#type: 2, created_at_ms: 1, updated_at_ms: 1, ..Default::default() };
    let member = |u: i64| Member { conversation_id: "g_bulk".into(), user_id: u, role: 1, joined_at_ms: 1, ..Default::default() };
    store.create_conversation(&conv, &[member(1), member(2)]).await.expect("conversation");
    store.update_read_pointer(1, "g_bulk", 5, 1).await.expect("pointer");
    store.advance_read_pointers(&[(1, "g_bulk".into(), 3), (2, "g_bulk".into(), 4)], 2).await.expect("bulk");
    assert_eq!(store.read_pointer(1, "g_bulk").await.expect("read"), 5, "never backwards");
    assert_eq!(store.read_pointer(2, "g_bulk").await.expect("read"), 4, "created");
    assert_eq!(store.read_pointer(3, "g_bulk").await.expect("read"), 0, "none yet");
    store.advance_read_pointers(&[], 4).await.expect("empty is fine");
}

pub(crate) async fn revocations_expire_and_keep_the_later_expiry(store: &dyn Store) {
    assert!(store.revoke_token("a", 5_000, 1_000).await.expect("revoke a"), "first revocation");
    assert!(store.revoke_token("b", 2_000, 1_000).await.expect("revoke b"));
    assert!(!store.revoke_token("a", 4_000, 1_000).await.expect("revoke a again, earlier expiry"), "not the first");
    assert_eq!(store.revoked_tokens(1_000).await.expect("list"), vec![("a".to_string(), 5_000), ("b".to_string(), 2_000)]);
    assert_eq!(store.revoked_tokens(3_000).await.expect("list"), vec![("a".to_string(), 5_000)], "b expired");
    store.revoke_token("c", 9_000, 6_000).await.expect("revoke c purges the expired");
    assert_eq!(store.revoked_tokens(0).await.expect("list"), vec![("c".to_string(), 9_000)]);
    assert!(store.revoke_token(&"x".repeat(65), 9_000, 0).await.is_err(), "over-long id");
}
