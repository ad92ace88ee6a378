//! Queue, close and heartbeat rules of one connection (no socket needed).

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::EngineConfig;
use crate::shard::Command;

fn setup(max_out: usize) -> (Core, Conn) {
    let config = Arc::new(EngineConfig { max_outbound_bytes: max_out, ..Default::default() });
    let core = Core::new(0, config, Arc::default());
    let info = ConnInfo { id: 1, user_id: 7, tag: 0, shard: 0, peer: SocketAddr::from(([127, 0, 0, 1], 1)) };
    (core, Conn::new(info, 0))
}

fn text(s: &str) -> Bytes {
    codec::encode(OP_TEXT, s.as_bytes())
}

fn queued(c: &Conn) -> Vec<Bytes> {
    c.out.borrow().iter().map(|o| o.wire.clone()).collect()
}

#[test]
fn queue_over_limit_closes_with_1013_and_drops_queue() {
    let (core, c) = setup(14);
    assert!(c.push_text(&core, text("12345"), 5));
    assert!(c.push_text(&core, text("12345"), 5));
    assert!(!c.push_text(&core, text("1"), 1));
    assert!(c.is_closing());
    assert_eq!(queued(&c), vec![codec::encode_close(Some(1013), "outbound queue full")]);
    let snap = core.stats.snapshot(0);
    assert_eq!(snap.slow_closes, 1);
    assert_eq!(snap.outbound_queue_bytes, c.queued.get() as u64);
    assert!(!c.push_text(&core, text("x"), 1), "no pushes after close");
}

#[test]
fn a_lower_outbound_limit_applies_to_the_next_push() {
    let (core, c) = setup(1000);
    assert!(c.push_text(&core, text("12345"), 5));
    core.apply(Command::SetMaxOutbound(8), false);
    assert!(!c.push_text(&core, text("12345"), 5), "7 + 7 queued bytes > 8");
    assert!(c.is_closing());
    assert_eq!(core.stats.snapshot(0).slow_closes, 1);
}

#[test]
fn open_frames_go_first_and_graceful_close_keeps_queue() {
    let (core, c) = setup(1000);
    assert!(c.push_text(&core, text("later"), 5));
    c.push_front_all(&core, vec!["a".into(), "b".into()]);
    c.request_close(&core, 1001, "bye", false);
    c.request_close(&core, 1013, "ignored", true);
    assert_eq!(queued(&c), vec![text("a"), text("b"), text("later"), codec::encode_close(Some(1001), "bye")]);
}

#[test]
fn partial_writes_keep_the_frame_whole_and_count_on_completion() {
    let (core, c) = setup(1000);
    c.push_text(&core, text("hello"), 5);
    c.push_text(&core, text("world"), 5);
    c.consume(&core, 3);
    assert_eq!(c.head_written.get(), 3);
    // A discarding close must not cut the half-written frame.
    c.request_close(&core, 1002, "", true);
    assert_eq!(queued(&c), vec![text("hello"), codec::encode_close(Some(1002), "")]);
    c.consume(&core, 4);
    assert_eq!(core.stats.snapshot(0).frames_out, 1);
    assert_eq!(core.stats.snapshot(0).bytes_out, 5);
    c.consume(&core, 4);
    assert!(queued(&c).is_empty());
    assert_eq!(core.stats.snapshot(0).frames_out, 1, "control frames are not counted");
    assert_eq!(core.stats.snapshot(0).outbound_queue_bytes, 0);
}

#[test]
fn heartbeat_pings_after_one_interval_and_closes_after_three() {
    let (core, c) = setup(1000);
    c.heartbeat(&core, 50, 100);
    assert!(queued(&c).is_empty(), "not idle yet");
    c.heartbeat(&core, 100, 100);
    c.heartbeat(&core, 150, 100);
    assert_eq!(queued(&c).len(), 1, "one ping per interval");
    c.consume(&core, 2);
    c.last_rx.set(180);
    c.heartbeat(&core, 250, 100);
    assert!(queued(&c).is_empty() && !c.is_closing(), "traffic resets idleness");
    c.heartbeat(&core, 480, 100);
    assert!(c.is_closing());
    assert_eq!(queued(&c).last(), Some(&codec::encode_close(Some(1001), "heartbeat timeout")));
}

#[test]
fn direct_delivery_writes_an_idle_socket_and_queues_behind_pending_frames() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (core, c) = setup(1000);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    // Not open yet (fd unset): queued as before.
    assert!(c.push_text_now(&core, text("queued"), 6));
    assert_eq!(queued(&c), vec![text("queued")]);
    c.fd.set(server.as_raw_fd());
    // Something is queued: the new frame goes behind it, nothing is written.
    assert!(c.push_text_now(&core, text("behind"), 6));
    assert_eq!(queued(&c), vec![text("queued"), text("behind")]);
    c.drop_queue(&core);
    // Empty queue: written at once and counted, the queue stays empty.
    assert!(c.push_text_now(&core, text("now"), 3));
    assert!(queued(&c).is_empty());
    let mut got = vec![0; text("now").len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, text("now"));
    let snap = core.stats.snapshot(0);
    assert_eq!((snap.frames_out, snap.bytes_out, snap.outbound_queue_bytes), (1, 3, 0));
    // Over the limit still closes with 1013; closing stops direct writes.
    assert!(!c.push_text_now(&core, Bytes::from(vec![b'x'; 2000]), 2000));
    assert!(c.is_closing());
    assert!(!c.push_text_now(&core, text("late"), 4));
}

#[test]
fn one_deliver_writes_its_idle_targets_in_one_batch_and_queues_the_rest() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (core, _) = setup(1000);
    assert!(core.batches_sends(), "io_uring is available here (the engine checks the kernel at start)");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peers = Vec::new();
    let mut servers = Vec::new();
    let mut conns = Vec::new();
    // More targets than one submission carries, so the batch is chunked.
    let n = 300u64;
    for user in 0..n {
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let info = |id| ConnInfo { id, user_id: user, tag: 0, shard: 0, peer: SocketAddr::from(([127, 0, 0, 1], 1)) };
        let c = core.register(|id| Conn::new(info(id), 0)).unwrap();
        c.fd.set(server.as_raw_fd());
        peers.push(peer);
        servers.push(server);
        conns.push(c);
    }
    // User 1 has a frame pending: the new one must queue behind it. User 2
    // is not open yet, user 3 is closing, user 4 is the excluded sender.
    assert!(conns[1].push_text(&core, text("first"), 5));
    conns[2].fd.set(-1);
    conns[3].request_close(&core, 1000, "bye", false);
    // User 5 is listed twice: its socket gets the frame once, never two
    // interleaved sends.
    let users: Arc<[u64]> = (0..n).chain([5]).collect();
    let exclude = Some(conns[4].info.id);
    core.apply(Command::Deliver { users, exclude, wire: text("hello"), payload: 5 }, true);

    let written: Vec<usize> = (0..n as usize).filter(|i| ![1, 2, 3, 4].contains(i)).collect();
    for &i in &written {
        let mut got = vec![0; text("hello").len()];
        peers[i].read_exact(&mut got).unwrap();
        assert_eq!(got, text("hello"), "target {i} got the frame at once");
        assert!(queued(&conns[i]).is_empty());
    }
    peers[5].set_nonblocking(true).unwrap();
    let mut more = [0u8; 16];
    assert_eq!(peers[5].read(&mut more).map_err(|e| e.kind()), Err(std::io::ErrorKind::WouldBlock), "one copy only");
    assert_eq!(queued(&conns[1]), vec![text("first"), text("hello")], "order kept behind a pending frame");
    assert_eq!(queued(&conns[2]), vec![text("hello")], "not open yet: queued");
    assert_eq!(queued(&conns[3]), vec![codec::encode_close(Some(1000), "bye")], "closing: nothing more");
    assert!(queued(&conns[4]).is_empty(), "the sender's connection is excluded");
    let snap = core.stats.snapshot(0);
    assert_eq!(snap.frames_out, written.len() as u64);
    assert_eq!(snap.bytes_out, 5 * written.len() as u64);
}

#[test]
fn idle_connection_task_stays_small() {
    struct H;
    impl Handler for H {
        type Session = ();
        fn on_handshake(&self, _req: &HandshakeRequest<'_>) -> Result<Accept<()>, crate::Reject> {
            Ok(Accept { user_id: 1, tag: 0, session: () })
        }
        #[allow(clippy::manual_async_fn)]
        fn on_open(&self, _conn: ConnInfo, _session: &()) -> impl Future<Output = Result<Vec<TextFrame>, (u16, String)>> + 'static {
            async { Ok(Vec::new()) }
        }
        fn on_text(&self, _conn: ConnInfo, _session: &mut (), _text: &str, _reply: &dyn Reply) {}
        fn on_close(&self, _conn: ConnInfo, _session: ()) {}
    }
    // The task future is what every idle connection keeps (plus glommio's
    // task header): the stream, two Rcs, the decoder, the gate pass.
    let size = std::mem::size_of::<Serve<H>>();
    assert!(size <= std::mem::size_of::<TcpStream>() + 48, "Serve is {size} bytes");
}
