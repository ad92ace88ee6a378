//! RFC 6455 framing: server-side encode (unmasked, encoded once into [`Bytes`])
//! and an incremental client-frame decoder that holds no buffer while idle.
//!
//! ```text
//!  byte 0: FIN RSV1 RSV2 RSV3 opcode(4)   byte 1: MASK len7
//!  len7 = 126 -> 2-byte length, 127 -> 8-byte length; then 4-byte mask key (client frames)
//! ```
//!
//! | input                                   | error            | close code |
//! |-----------------------------------------|------------------|------------|
//! | MASK bit clear (client frames must mask) | `Unmasked`       | 1002 |
//! | RSV1..3 set (no extension negotiated)    | `Reserved`       | 1002 |
//! | opcode 3-7 / 11-15                       | `Opcode`         | 1002 |
//! | control frame fragmented or > 125 bytes  | `Control`        | 1002 |
//! | continuation without start / data frame inside a fragmented message | `Continuation` | 1002 |
//! | close payload of 1 byte or invalid code  | `BadClose`       | 1002 |
//! | text (or close reason) not UTF-8, also across fragments | `Utf8` | 1007 |
//! | message over the size limit              | `TooBig`         | 1009 |

use bytes::{BufMut, Bytes, BytesMut};

pub(crate) const OP_CONT: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// Why a client frame was refused; each maps to one close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Unmasked,
    Reserved,
    Opcode,
    Control,
    Continuation,
    BadClose,
    Utf8,
    TooBig,
}

impl DecodeError {
    /// The close code RFC 6455 prescribes for this error.
    pub fn close_code(self) -> u16 {
        match self {
            DecodeError::Utf8 => 1007,
            DecodeError::TooBig => 1009,
            _ => 1002,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Unmasked => "client frames must be masked",
            DecodeError::Reserved => "reserved bits set",
            DecodeError::Opcode => "unknown opcode",
            DecodeError::Control => "bad control frame",
            DecodeError::Continuation => "bad fragmentation",
            DecodeError::BadClose => "bad close frame",
            DecodeError::Utf8 => "invalid utf-8",
            DecodeError::TooBig => "message too big",
        }
    }
}

/// A complete client message or control frame, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// The peer's close code (`None` for an empty close payload).
    Close(Option<u16>),
}

/// What the event sink wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop decoding; the rest of the input is dropped (the connection is closing).
    Stop,
}

/// Parsed header of one client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: u8,
    pub header_len: usize,
    pub payload_len: usize,
    pub mask: [u8; 4],
}

/// Parses a client frame header; `Ok(None)` when more bytes are needed.
/// Data frames longer than `max` fail here, before their payload is buffered.
pub fn parse_head(buf: &[u8], max: usize) -> Result<Option<Head>, DecodeError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(DecodeError::Reserved);
    }
    let opcode = b0 & 0x0f;
    if !matches!(opcode, OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(DecodeError::Opcode);
    }
    if b1 & 0x80 == 0 {
        return Err(DecodeError::Unmasked);
    }
    let len7 = usize::from(b1 & 0x7f);
    let is_control = opcode & 0x8 != 0;
    if is_control && (!fin || len7 > 125) {
        return Err(DecodeError::Control);
    }
    let (payload_len, ext) = match len7 {
        126 => match buf.get(2..4) {
            Some(b) => (usize::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                // Lengths beyond usize (or with the top bit set) are over any limit anyway.
                (usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX), 8)
            }
            None => return Ok(None),
        },
        n => (n, 0),
    };
    if payload_len > max {
        return Err(DecodeError::TooBig);
    }
    let Some(m) = buf.get(2 + ext..6 + ext) else { return Ok(None) };
    Ok(Some(Head { fin, opcode, header_len: 6 + ext, payload_len, mask: [m[0], m[1], m[2], m[3]] }))
}

/// XORs the mask into `payload` in place, 8 bytes at a time.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Encodes one unmasked server frame (FIN set). Called once per message: the
/// result is shared by every socket it goes to.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// A Close frame; `code` `None` sends an empty payload. The reason is cut to
/// the 123 bytes a control frame allows, on a char boundary.
pub fn encode_close(code: Option<u16>, reason: &str) -> Bytes {
    let Some(code) = code else { return encode(OP_CLOSE, &[]) };
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

/// Close codes a peer may send (RFC 6455 7.4 plus the IANA-registered 1012-1014).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Assembly {
    text: bool,
    data: Vec<u8>,
    /// Prefix of `data` already known to be valid UTF-8 (text only).
    checked: usize,
}

impl Assembly {
    fn push(&mut self, payload: &[u8], fin: bool, max: usize) -> Result<(), DecodeError> {
        if self.data.len() + payload.len() > max {
            return Err(DecodeError::TooBig);
        }
        self.data.extend_from_slice(payload);
        if self.text {
            // Validate as fragments arrive so bad text fails early; a code point
            // split across fragments is fine until the final one.
            match std::str::from_utf8(&self.data[self.checked..]) {
                Ok(_) => self.checked = self.data.len(),
                Err(e) if e.error_len().is_none() && !fin => self.checked += e.valid_up_to(),
                Err(_) => return Err(DecodeError::Utf8),
            }
        }
        Ok(())
    }
}

/// Decoder state that exists only while a frame or a fragmented message is incomplete.
#[derive(Debug, Default)]
struct Partial {
    /// Bytes of a frame not yet complete (masked, as received).
    pending: Vec<u8>,
    frag: Option<Assembly>,
}

/// Incremental decoder of one connection's client frames. Idle it is one
/// null pointer: input is decoded straight from the caller's (shard-wide)
/// buffer, and only the tail of an incomplete frame is copied aside.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Option<Box<Partial>>,
}

impl Decoder {
    /// True while part of a frame or message is buffered.
    pub fn is_buffering(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes every complete frame in `input` (unmasking it in place) and hands
    /// each message to `sink`; keeps an incomplete tail. After an error the
    /// connection must be closed: the decoder's state is unspecified.
    pub fn feed(&mut self, input: &mut [u8], max: usize, sink: &mut dyn FnMut(Event<'_>) -> Flow) -> Result<(), DecodeError> {
        let mut part = self.partial.take().unwrap_or_default();
        let result = if part.pending.is_empty() {
            let r = decode_all(&mut part.frag, input, max, sink);
            if let Ok(used) = r {
                part.pending.extend_from_slice(&input[used..]);
            }
            r
        } else {
            let mut pending = std::mem::take(&mut part.pending);
            pending.extend_from_slice(input);
            let r = decode_all(&mut part.frag, &mut pending, max, sink);
            if let Ok(used) = r {
                pending.drain(..used);
                part.pending = pending;
            }
            r
        };
        // After a Stop the connection is closing; a kept tail is freed with it.
        if result.is_ok() && (!part.pending.is_empty() || part.frag.is_some()) {
            if part.pending.is_empty() {
                part.pending = Vec::new(); // release capacity of a drained tail
            }
            self.partial = Some(part);
        }
        result.map(|_| ())
    }
}

/// Decodes complete frames from `buf`; returns how many bytes were consumed.
fn decode_all(
    frag: &mut Option<Assembly>,
    buf: &mut [u8],
    max: usize,
    sink: &mut dyn FnMut(Event<'_>) -> Flow,
) -> Result<usize, DecodeError> {
    let mut pos = 0;
    while let Some(head) = parse_head(&buf[pos..], max)? {
        let start = pos + head.header_len;
        let end = start + head.payload_len;
        if end > buf.len() {
            break;
        }
        pos = end;
        let payload = &mut buf[start..end];
        unmask(payload, head.mask);
        let flow = match head.opcode {
            OP_TEXT | OP_BINARY => {
                if frag.is_some() {
                    return Err(DecodeError::Continuation);
                }
                let text = head.opcode == OP_TEXT;
                if head.fin {
                    if text {
                        sink(Event::Text(std::str::from_utf8(payload).map_err(|_| DecodeError::Utf8)?))
                    } else {
                        sink(Event::Binary(payload))
                    }
                } else {
                    let mut a = Assembly { text, data: Vec::new(), checked: 0 };
                    a.push(payload, false, max)?;
                    *frag = Some(a);
                    Flow::Continue
                }
            }
            OP_CONT => {
                let a = frag.as_mut().ok_or(DecodeError::Continuation)?;
                a.push(payload, head.fin, max)?;
                if head.fin {
                    let a = frag.take().ok_or(DecodeError::Continuation)?;
                    if a.text {
                        sink(Event::Text(std::str::from_utf8(&a.data).map_err(|_| DecodeError::Utf8)?))
                    } else {
                        sink(Event::Binary(&a.data))
                    }
                } else {
                    Flow::Continue
                }
            }
            OP_PING => sink(Event::Ping(payload)),
            OP_PONG => sink(Event::Pong),
            _ => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(DecodeError::BadClose),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        if !valid_close_code(code) {
                            return Err(DecodeError::BadClose);
                        }
                        std::str::from_utf8(&payload[2..]).map_err(|_| DecodeError::Utf8)?;
                        Some(code)
                    }
                };
                sink(Event::Close(code));
                Flow::Stop
            }
        };
        if flow == Flow::Stop {
            break;
        }
    }
    Ok(pos)
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
