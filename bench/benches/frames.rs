//! Frame encode/decode: the JSON `new-message` of API.md §3 encoded once into
//! a `TextFrame`, gateway-core's RFC 6455 codec (server encode, client-frame
//! decode with unmasking), and client JSON parsing.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway_core::TextFrame;
use gateway_core::codec::{self, Decoder, Event, Flow};
use gochat_bench::protocol::{self, Posted};
use std::hint::black_box;

const OP_TEXT: u8 = 0x1;

fn posted() -> Posted<'static> {
    Posted {
        id: 123_456,
        seq_id: 123_456,
        sender_id: 4242,
        sender_name: "user4242",
        conversation_id: "world",
        content: "t=1732530000123456 the quick brown fox jumps over the lazy dog",
        message_type: 1,
        client_msg_id: Some("4242-000017"),
    }
}

/// A masked client text frame, as a browser sends it.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | OP_TEXT];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let m = posted();
    let json = protocol::new_message(&m);
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("new_message_json", |b| b.iter(|| protocol::new_message(black_box(&m))));
    g.bench_function("new_message_json_to_textframe", |b| {
        b.iter(|| TextFrame::try_from(protocol::new_message(black_box(&m))).map(|f| f.len()))
    });
    g.bench_function("ws_frame_encode", |b| b.iter(|| codec::encode(OP_TEXT, black_box(&json))));
    let frame = TextFrame::try_from(json.clone()).unwrap_or_else(|_| TextFrame::from("x"));
    g.bench_function("textframe_clone_x1000", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                black_box(frame.clone());
            }
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let send = r#"{"type":"send-message","data":{"conversationId":"world","content":"t=1732530000123456 the quick brown fox jumps over the lazy dog","messageType":1,"client_msg_id":"4242-000017"}}"#;
    let wire = client_frame(send.as_bytes());
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("ws_client_frame_decode", |b| {
        let mut dec = Decoder::default();
        let mut buf = wire.clone();
        b.iter(|| {
            buf.copy_from_slice(&wire);
            let mut n = 0;
            let r = dec.feed(&mut buf, 64 * 1024, &mut |e| {
                if let Event::Text(t) = e {
                    n += t.len();
                }
                Flow::Continue
            });
            black_box((r, n))
        })
    });
    g.bench_function("send_message_json_parse", |b| b.iter(|| protocol::parse(black_box(send)).is_ok()));
    g.bench_function("decode_and_parse", |b| {
        let mut dec = Decoder::default();
        let mut buf = wire.clone();
        b.iter(|| {
            buf.copy_from_slice(&wire);
            let mut ok = false;
            let _ = dec.feed(&mut buf, 64 * 1024, &mut |e| {
                if let Event::Text(t) = e {
                    ok = protocol::parse(t).is_ok();
                }
                Flow::Continue
            });
            black_box(ok)
        })
    });
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
