//! Integration tests: a real engine on 127.0.0.1:0, blocking tungstenite clients.

mod helpers;
mod robustness;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_core::{EngineConfig, EngineError, TextFrame, shard_of};
use helpers::*;
use tungstenite::Message;

#[test]
fn handshake_accepted_on_open_frames_first_then_echo() {
    let (engine, seen) = start(test_config());
    let (mut ws, id) = connect(engine.local_addr(), 7, 0);
    assert_eq!(shard_of(id), 0);
    ws.send(Message::text("hi")).unwrap();
    assert_eq!(read_text(&mut ws), "echo:hi");
    let opened = seen.opened.lock().unwrap().clone();
    assert_eq!(opened.len(), 1);
    assert_eq!((opened[0].id, opened[0].user_id), (id, 7));
    // Counters are bumped after the write completes, so poll rather than read once.
    wait_until("stats", || {
        let s = engine.stats();
        s.len() == 1 && s[0].connections == 1 && s[0].frames_in == 1 && s[0].frames_out == 3
    });
}

#[test]
fn handshake_rejected_with_401_and_no_upgrade() {
    let (engine, seen) = start(test_config());
    let addr = engine.local_addr();
    let err = tungstenite::client(format!("ws://{addr}/ws"), tcp(addr)).unwrap_err();
    match err {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            assert_eq!(resp.headers()["content-type"], "application/json");
            let body = resp.body().clone().unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&body), r#"{"error":"unauthorized"}"#);
        }
        other => panic!("expected an HTTP rejection, got {other}"),
    }
    assert!(seen.opened.lock().unwrap().is_empty());
    wait_until("reject counted", || engine.stats()[0].handshake_rejects == 1);
}

#[test]
fn wrong_path_gets_404() {
    let (engine, _seen) = start(test_config());
    let addr = engine.local_addr();
    let err = tungstenite::client(format!("ws://{addr}/other?user=1"), tcp(addr)).unwrap_err();
    match err {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!("expected 404, got {other}"),
    }
}

#[test]
fn deliver_reaches_every_connection_of_the_users_across_shards_except_excluded() {
    let (engine, _seen) = start(EngineConfig { shards: 2, ..test_config() });
    let addr = engine.local_addr();
    let pusher = engine.pusher();
    // SO_REUSEPORT hashes connections over the shards; open until both hold one of user 1.
    let mut user1 = Vec::new();
    for _ in 0..64 {
        user1.push(connect(addr, 1, 0));
        let shards: std::collections::HashSet<_> = user1.iter().map(|(_, id)| shard_of(*id)).collect();
        if shards.len() == 2 && user1.len() >= 3 {
            break;
        }
    }
    let shards: std::collections::HashSet<_> = user1.iter().map(|(_, id)| shard_of(*id)).collect();
    assert_eq!(shards.len(), 2, "connections landed on both shards");
    let (mut user2, _) = connect(addr, 2, 0);
    let (mut user3, user3_id) = connect(addr, 3, 0);

    let excluded = user1[0].1;
    pusher.deliver(Arc::from(vec![1, 2]), Some(excluded), TextFrame::from("room msg"));
    for (ws, _) in user1.iter_mut().skip(1) {
        assert_eq!(read_text(ws), "room msg");
    }
    assert_eq!(read_text(&mut user2), "room msg");
    // Same shard channel, so a later marker proves the deliver was skipped.
    pusher.send_to(excluded, "marker".into());
    assert_eq!(read_text(&mut user1[0].0), "marker");
    pusher.send_to(user3_id, "marker".into());
    assert_eq!(read_text(&mut user3), "marker");
    // Welcome frames (2 per connection), the deliveries and the two markers.
    let conns = user1.len() as u64 + 2;
    let expected = 2 * conns + (user1.len() as u64 - 1) + 1 + 2;
    wait_until("frames_out", || engine.stats().iter().map(|s| s.frames_out).sum::<u64>() == expected);
}

#[test]
fn send_to_and_close_user_by_tag() {
    let (engine, seen) = start(test_config());
    let addr = engine.local_addr();
    let pusher = engine.pusher();
    let (mut a, a_id) = connect(addr, 5, 1);
    let (mut b, b_id) = connect(addr, 5, 2);
    pusher.send_to(a_id, "for a".into());
    assert_eq!(read_text(&mut a), "for a");

    pusher.close_user(5, Some(1), 4001, "kicked");
    assert_eq!(expect_close(&mut a), 4001);
    pusher.send_to(b_id, "b still open".into());
    assert_eq!(read_text(&mut b), "b still open");
    wait_until("on_close for a", || seen.closed_ids() == vec![a_id]);

    pusher.close_user(5, None, 4002, "all");
    assert_eq!(expect_close(&mut b), 4002);
    wait_until("on_close for b", || seen.closed_ids().contains(&b_id));
    assert_eq!(engine.stats()[0].connections, 0);
}

#[test]
fn close_conn_and_handler_close() {
    let (engine, seen) = start(test_config());
    let addr = engine.local_addr();
    let (mut a, a_id) = connect(addr, 8, 0);
    engine.pusher().close_conn(a_id, 4003, "bye");
    assert_eq!(expect_close(&mut a), 4003);
    let (mut b, b_id) = connect(addr, 8, 0);
    b.send(Message::text("close")).unwrap();
    assert_eq!(expect_close(&mut b), 4000);
    wait_until("both closed", || seen.closed_ids().len() == 2);
    let mut ids = seen.closed_ids();
    ids.sort_unstable();
    assert_eq!(ids, vec![a_id, b_id]);
}

#[test]
fn binary_frame_reaches_on_binary() {
    let (engine, _seen) = start(test_config());
    let (mut ws, _) = connect(engine.local_addr(), 9, 0);
    ws.send(Message::binary(vec![1u8, 2, 3, 4, 5])).unwrap();
    assert_eq!(read_text(&mut ws), "bin:5");
}

#[test]
fn oversize_message_closes_with_1009() {
    let (engine, seen) = start(EngineConfig { max_frame_bytes: 1024, ..test_config() });
    let (mut ws, id) = connect(engine.local_addr(), 10, 0);
    ws.send(Message::text("x".repeat(1024))).unwrap();
    assert_eq!(read_text(&mut ws).len(), "echo:".len() + 1024, "a message at the limit passes");
    ws.send(Message::text("x".repeat(4096))).unwrap();
    assert_eq!(expect_close(&mut ws), 1009);
    wait_until("on_close", || seen.closed_ids() == vec![id]);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let (engine, _seen) = start(test_config());
    let (mut ws, _) = connect(engine.local_addr(), 11, 0);
    ws.get_mut().write_all(&raw_frame(0x81, &[0xff, 0xfe, 0xfd])).unwrap();
    assert_eq!(expect_close(&mut ws), 1007);
}

#[test]
fn unmasked_client_frame_closes_with_1002() {
    let (engine, _seen) = start(test_config());
    let (mut ws, _) = connect(engine.local_addr(), 12, 0);
    ws.get_mut().write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(expect_close(&mut ws), 1002);
}

#[test]
fn heartbeat_pings_active_clients_and_closes_silent_ones() {
    let hb = Duration::from_millis(200);
    let config = EngineConfig { heartbeat: hb, handshake_timeout: Duration::from_secs(1), ..test_config() };
    let (engine, seen) = start(config);
    let addr = engine.local_addr();
    let (mut silent, silent_id) = connect(addr, 20, 0);
    let (mut active, active_id) = connect(addr, 21, 0);

    // The active client keeps reading (which answers pings) for well over 3 heartbeats.
    active.get_mut().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut pings = 0;
    let until = Instant::now() + hb * 8;
    while Instant::now() < until {
        match active.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("active client dropped: {e}"),
        }
    }
    assert!(pings >= 2, "server pinged the idle client ({pings})");

    // The silent client never read, so it never answered: the server gave up on it.
    wait_until("silent client closed", || seen.closed_ids().contains(&silent_id));
    assert_eq!(raw_close_code(&mut silent), Some(1001));
    assert!(!seen.closed_ids().contains(&active_id));
}

#[test]
fn slow_reader_is_closed_with_1013_and_others_still_receive() {
    let config = EngineConfig { max_outbound_bytes: 64 * 1024, handshake_timeout: Duration::from_secs(5), ..test_config() };
    let (engine, _seen) = start(config);
    let addr = engine.local_addr();
    let pusher = engine.pusher();
    let (mut slow, slow_id) = connect(addr, 30, 0);
    let (mut fast, fast_id) = connect(addr, 31, 0);

    let chunk = TextFrame::from("y".repeat(16 * 1024));
    let mut pushed = 0u64;
    while engine.stats()[0].slow_closes == 0 {
        assert!(pushed < 50_000, "no slow close after {pushed} pushes");
        for _ in 0..64 {
            pusher.send_to(slow_id, chunk.clone());
        }
        pushed += 64;
        std::thread::sleep(Duration::from_millis(1));
    }
    pusher.send_to(fast_id, "still served".into());
    assert_eq!(read_text(&mut fast), "still served");
    assert_eq!(expect_close(&mut slow), 1013);
    assert_eq!(engine.stats()[0].slow_closes, 1);
}

#[test]
fn shutdown_flushes_closes_with_1001_and_calls_on_close() {
    let (engine, seen) = start(EngineConfig { shards: 2, ..test_config() });
    let addr = engine.local_addr();
    let pusher = engine.pusher();
    let mut clients: Vec<_> = (0..4).map(|i| connect(addr, 40 + i, 0)).collect();
    for (_, id) in &clients {
        pusher.send_to(*id, "last words".into());
    }
    let stopper = std::thread::spawn(move || engine.shutdown());
    for (ws, _) in &mut clients {
        assert_eq!(read_text(ws), "last words");
        assert_eq!(expect_close(ws), 1001);
        // Answer the close so the server does not wait for its deadline.
        let _ = ws.read();
    }
    stopper.join().expect("shutdown returns");
    let mut closed = seen.closed_ids();
    closed.sort_unstable();
    let mut expected: Vec<_> = clients.iter().map(|(_, id)| *id).collect();
    expected.sort_unstable();
    assert_eq!(closed, expected, "on_close exactly once per connection");
    assert!(std::net::TcpStream::connect(addr).is_err(), "no longer listening");
    // Pushing after shutdown is a no-op.
    pusher.send_to(expected[0], "late".into());
}

#[test]
fn several_engines_start_side_by_side() {
    let engines: Vec<_> = (0..3).map(|_| start(EngineConfig { shards: 2, ..test_config() })).collect();
    for (engine, _) in &engines {
        let (mut ws, _) = connect(engine.local_addr(), 50, 0);
        ws.send(Message::text("ping")).unwrap();
        assert_eq!(read_text(&mut ws), "echo:ping");
    }
}

#[test]
fn bad_config_and_busy_port_are_reported() {
    let err = gateway_core::Engine::start(EngineConfig { shards: 0, ..test_config() }, |_| unreachable_handler())
        .err()
        .expect("zero shards refused");
    assert!(matches!(err, EngineError::Config(_)), "{err}");

    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = EngineConfig { addr: blocker.local_addr().unwrap(), ..test_config() };
    let err = gateway_core::Engine::start(config, |_| unreachable_handler()).err().expect("port taken");
    assert!(matches!(err, EngineError::Bind(_)), "{err}");
}

fn unreachable_handler() -> impl gateway_core::Handler {
    struct Never;
    impl gateway_core::Handler for Never {
        type Session = ();
        fn on_handshake(&self, _: &gateway_core::HandshakeRequest<'_>) -> Result<gateway_core::Accept<()>, gateway_core::Reject> {
            Err(gateway_core::Reject { status: 503, body: "{}".into() })
        }
        // Not `async fn`: the trait wants a `'static` future that does not borrow `self`.
        #[allow(clippy::manual_async_fn)]
        fn on_open(&self, _: gateway_core::ConnInfo, _: &()) -> impl Future<Output = Result<Vec<TextFrame>, (u16, String)>> + 'static {
            async { Ok(Vec::new()) }
        }
        fn on_text(&self, _: gateway_core::ConnInfo, _: &mut (), _: &str, _: &dyn gateway_core::Reply) {}
        fn on_close(&self, _: gateway_core::ConnInfo, _: ()) {}
    }
    Never
}
