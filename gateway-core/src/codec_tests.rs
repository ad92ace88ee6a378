//! Codec unit tests: round trips through a small client-side (masking) encoder
//! and every error case of the table in the module doc.

use super::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: `first` is byte 0 (FIN/RSV/opcode), the payload is masked.
fn client(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// Feeds `input` in chunks of `chunk` bytes; returns the events and the first error.
fn run(input: &[u8], chunk: usize, max: usize) -> (Vec<Owned>, Option<DecodeError>) {
    let mut d = Decoder::default();
    let mut got = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        let mut piece = piece.to_vec();
        let r = d.feed(&mut piece, max, &mut |ev| {
            got.push(match ev {
                Event::Text(t) => Owned::Text(t.to_owned()),
                Event::Binary(b) => Owned::Binary(b.to_vec()),
                Event::Ping(p) => Owned::Ping(p.to_vec()),
                Event::Pong => Owned::Pong,
                Event::Close(c) => Owned::Close(c),
            });
            Flow::Continue
        });
        if let Err(e) = r {
            return (got, Some(e));
        }
    }
    (got, None)
}

#[test]
fn text_binary_ping_pong_round_trip_in_any_chunking() {
    let mut input = client(0x81, "héllo".as_bytes());
    input.extend(client(0x82, &[0, 1, 2, 255]));
    input.extend(client(0x89, b"p"));
    input.extend(client(0x8A, b""));
    input.extend(client(0x81, &vec![b'x'; 300]));
    input.extend(client(0x82, &vec![7u8; 70_000]));
    let want = [
        Owned::Text("héllo".into()),
        Owned::Binary(vec![0, 1, 2, 255]),
        Owned::Ping(b"p".to_vec()),
        Owned::Pong,
        Owned::Text("x".repeat(300)),
        Owned::Binary(vec![7u8; 70_000]),
    ];
    for chunk in [1, 2, 3, 7, 125, 4096, input.len()] {
        assert_eq!(run(&input, chunk, 100_000), (want.to_vec(), None), "chunk {chunk}");
    }
}

#[test]
fn decoder_frees_its_buffer_once_a_frame_completes() {
    let frame = client(0x81, b"hello");
    let mut d = Decoder::default();
    let mut n = 0;
    d.feed(&mut frame[..3].to_vec(), 100, &mut |_| {
        n += 1;
        Flow::Continue
    })
    .unwrap();
    assert!(d.is_buffering());
    d.feed(&mut frame[3..].to_vec(), 100, &mut |_| {
        n += 1;
        Flow::Continue
    })
    .unwrap();
    assert_eq!(n, 1);
    assert!(!d.is_buffering(), "idle decoder holds nothing");
}

#[test]
fn fragments_reassemble_with_control_frames_between() {
    let mut input = client(0x01, b"hel");
    input.extend(client(0x89, b"mid"));
    input.extend(client(0x00, b"lo "));
    input.extend(client(0x80, "wörld".as_bytes()));
    input.extend(client(0x02, &[1]));
    input.extend(client(0x80, &[2]));
    for chunk in [1, 5, input.len()] {
        let (got, err) = run(&input, chunk, 1000);
        assert_eq!(err, None);
        assert_eq!(got, vec![Owned::Ping(b"mid".to_vec()), Owned::Text("hello wörld".into()), Owned::Binary(vec![1, 2])]);
    }
}

#[test]
fn utf8_code_point_split_across_fragments_is_fine_but_invalid_text_is_1007() {
    let bytes = "é".as_bytes();
    let mut input = client(0x01, &bytes[..1]);
    input.extend(client(0x80, &bytes[1..]));
    assert_eq!(run(&input, 64, 100).0, vec![Owned::Text("é".into())]);

    assert_eq!(run(&client(0x81, &[0xff, 0xfe]), 64, 100).1, Some(DecodeError::Utf8));
    // Invalid in the first fragment: fails before the message completes.
    assert_eq!(run(&client(0x01, &[b'a', 0xff]), 64, 100).1, Some(DecodeError::Utf8));
    // A truncated code point at the final fragment.
    let mut input = client(0x01, b"a");
    input.extend(client(0x80, &bytes[..1]));
    assert_eq!(run(&input, 64, 100).1, Some(DecodeError::Utf8));
    assert_eq!(DecodeError::Utf8.close_code(), 1007);
}

#[test]
fn protocol_violations_are_1002() {
    let unmasked = vec![0x81, 0x02, b'h', b'i'];
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (unmasked, DecodeError::Unmasked),
        (client(0xC1, b"x"), DecodeError::Reserved),
        (client(0xA1, b"x"), DecodeError::Reserved),
        (client(0x91, b"x"), DecodeError::Reserved),
        (client(0x83, b"x"), DecodeError::Opcode),
        (client(0x8B, b""), DecodeError::Opcode),
        (client(0x09, b""), DecodeError::Control),
        (client(0x89, &[0; 126]), DecodeError::Control),
        (client(0x80, b"x"), DecodeError::Continuation),
        ([client(0x01, b"a"), client(0x81, b"b")].concat(), DecodeError::Continuation),
        (client(0x88, &[3]), DecodeError::BadClose),
        (client(0x88, &999u16.to_be_bytes()), DecodeError::BadClose),
        (client(0x88, &1005u16.to_be_bytes()), DecodeError::BadClose),
        (client(0x88, &5000u16.to_be_bytes()), DecodeError::BadClose),
    ];
    for (input, want) in cases {
        assert_eq!(run(&input, 64, 100).1, Some(want), "{input:02x?}");
        assert_eq!(want.close_code(), 1002);
        assert!(!want.reason().is_empty());
    }
}

#[test]
fn oversize_is_1009_from_the_header_or_the_fragments() {
    // Only the header is needed to refuse: no payload is buffered.
    let big = client(0x82, &[0; 200]);
    assert_eq!(run(&big[..8], 64, 100).1, Some(DecodeError::TooBig));
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(run(&huge, 64, 100).1, Some(DecodeError::TooBig));
    let mut frag = client(0x01, &[b'a'; 60]);
    frag.extend(client(0x80, &[b'a'; 60]));
    assert_eq!(run(&frag, 64, 100).1, Some(DecodeError::TooBig));
    assert_eq!(run(&client(0x81, &[b'a'; 100]), 64, 100).0.len(), 1, "exactly the limit passes");
    assert_eq!(DecodeError::TooBig.close_code(), 1009);
}

#[test]
fn close_codes_and_reasons() {
    assert_eq!(run(&client(0x88, b""), 64, 100).0, vec![Owned::Close(None)]);
    let mut p = 1000u16.to_be_bytes().to_vec();
    p.extend_from_slice(b"bye");
    assert_eq!(run(&client(0x88, &p), 64, 100).0, vec![Owned::Close(Some(1000))]);
    assert_eq!(run(&client(0x88, &4000u16.to_be_bytes()), 64, 100).0, vec![Owned::Close(Some(4000))]);
    let mut bad = 1000u16.to_be_bytes().to_vec();
    bad.push(0xff);
    assert_eq!(run(&client(0x88, &bad), 64, 100).1, Some(DecodeError::Utf8));
}

#[test]
fn sink_stop_ends_decoding() {
    let mut input = client(0x81, b"a");
    input.extend(client(0x81, b"b"));
    let mut d = Decoder::default();
    let mut seen = 0;
    d.feed(&mut input, 100, &mut |_| {
        seen += 1;
        Flow::Stop
    })
    .unwrap();
    assert_eq!(seen, 1);
}

#[test]
fn server_frames_encode_all_length_forms() {
    for (len, header) in [(0usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
        let payload = vec![b'z'; len];
        let f = encode(OP_TEXT, &payload);
        assert_eq!(f.len(), header + len, "len {len}");
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1] & 0x80, 0, "server frames are unmasked");
        assert_eq!(&f[header..], &payload[..]);
    }
    let c = encode_close(Some(1001), &"é".repeat(100));
    assert_eq!(c[0], 0x88);
    assert!(usize::from(c[1]) <= 125);
    assert_eq!(u16::from_be_bytes([c[2], c[3]]), 1001);
    assert!(std::str::from_utf8(&c[4..]).is_ok());
    assert_eq!(&encode_close(None, "x")[..], &[0x88, 0]);
}

#[test]
fn unmask_matches_the_bytewise_definition() {
    for len in [0, 1, 7, 8, 9, 31] {
        let data: Vec<u8> = (0..len as u8).collect();
        let mut wide = data.clone();
        unmask(&mut wide, MASK);
        let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]).collect();
        assert_eq!(wide, slow);
    }
}
