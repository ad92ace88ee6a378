//! What one connection checks on every delivery: message content (which
//! carries the send timestamp), duplicates and ordering.
//!
//! | content | meaning |
//! |---|---|
//! | `lg:<sender>:<n>:<unix_nanos>` | measured message `n` of user `sender` |
//! | `lgw:<sender>:<n>:<unix_nanos>` | warm-up message (checked, not counted) |
//!
//! The matching `client_msg_id` is `m<n>-<run>` or `w<n>-<run>`, so an ack or
//! an error tells which phase its message belonged to. `<run>` is random per
//! process: the server remembers client message ids (idempotency), so ids
//! reused by a second run against the same users would be answered with the
//! first run's ack and never delivered.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (same clock on sender and receiver).
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A loadgen message's content.
pub fn content(measured: bool, sender: &str, n: u64, nanos: u64) -> String {
    let tag = if measured { "lg" } else { "lgw" };
    format!("{tag}:{sender}:{n}:{nanos}")
}

/// A parsed loadgen content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub measured: bool,
    pub nanos: u64,
}

/// Parses a content written by [`content`]; `None` for anything else.
pub fn parse_content(s: &str) -> Option<Stamp> {
    let (measured, rest) = if let Some(r) = s.strip_prefix("lg:") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("lgw:") {
        (false, r)
    } else {
        return None;
    };
    let mut parts = rest.split(':');
    let (_sender, n, nanos) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    n.parse::<u64>().ok()?;
    Some(Stamp { measured, nanos: nanos.parse().ok()? })
}

/// This process's run tag (random, fixed for the process).
fn run_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| format!("{:08x}", rand::random::<u32>()))
}

/// The `client_msg_id` of message `n`.
pub fn client_msg_id(measured: bool, n: u64) -> String {
    format!("{}{n}-{}", if measured { 'm' } else { 'w' }, run_tag())
}

/// Whether a `client_msg_id` belongs to a measured message of this run (`None`: not ours).
pub fn measured_id(id: &str) -> Option<bool> {
    let measured = match id.as_bytes().first()? {
        b'm' => true,
        b'w' => false,
        _ => return None,
    };
    let (n, tag) = id[1..].split_once('-')?;
    (tag == run_tag()).then_some(())?;
    n.parse::<u64>().ok().map(|_| measured)
}

/// Largest seqId window remembered per conversation (bits); beyond it only
/// ordering is checked. 4 Mi bits = 512 KiB, far above any run's message count.
const WINDOW: u64 = 1 << 22;

/// Verdict on one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    /// New, but a higher seqId of the same conversation arrived before it.
    OutOfOrder,
    Duplicate,
}

/// The seqIds one connection saw in one conversation. A message id maps to
/// exactly one (conversation, seqId), so a repeated seqId is a repeated message.
#[derive(Debug, Default)]
struct SeqWindow {
    started: bool,
    base: i64,
    max: i64,
    bits: Vec<u64>,
}

impl SeqWindow {
    fn see(&mut self, seq: i64) -> Seen {
        if !self.started {
            self.started = true;
            self.base = seq;
            self.max = seq;
            self.bits.push(1);
            return Seen::New;
        }
        if seq < self.base {
            // Older than anything remembered: it cannot be checked for
            // duplicates, but it did arrive after a higher seqId.
            return Seen::OutOfOrder;
        }
        let idx = (seq - self.base) as u64;
        let verdict_by_order = if seq < self.max { Seen::OutOfOrder } else { Seen::New };
        self.max = self.max.max(seq);
        if idx >= WINDOW {
            return verdict_by_order;
        }
        let (word, bit) = ((idx / 64) as usize, idx % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            return Seen::Duplicate;
        }
        self.bits[word] |= 1 << bit;
        verdict_by_order
    }
}

/// Duplicate and order checks for one connection, per conversation.
#[derive(Debug, Default)]
pub struct Tracker {
    convs: HashMap<String, SeqWindow>,
}

impl Tracker {
    pub fn see(&mut self, conversation: &str, seq: i64) -> Seen {
        if let Some(w) = self.convs.get_mut(conversation) {
            return w.see(seq);
        }
        let mut w = SeqWindow::default();
        let v = w.see(seq);
        self.convs.insert(conversation.to_string(), w);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trip() {
        let c = content(true, "42", 7, 1_700_000_000_123_456_789);
        assert_eq!(c, "lg:42:7:1700000000123456789");
        assert_eq!(parse_content(&c), Some(Stamp { measured: true, nanos: 1_700_000_000_123_456_789 }));
        assert_eq!(parse_content(&content(false, "1", 0, 5)), Some(Stamp { measured: false, nanos: 5 }));
        for bad in ["hello", "lg:", "lg:1:2", "lg:1:x:3", "lg:1:2:3:4", "lg:1:2:-3", "lgx:1:2:3", ""] {
            assert_eq!(parse_content(bad), None, "{bad}");
        }
    }

    #[test]
    fn client_msg_ids() {
        assert_eq!(measured_id(&client_msg_id(true, 12)), Some(true));
        assert_eq!(measured_id(&client_msg_id(false, 0)), Some(false));
        assert_eq!(measured_id("x1"), None);
        assert_eq!(measured_id("m"), None);
        assert_eq!(measured_id("m12-00000000").filter(|_| run_tag() != "00000000"), None, "another run's id");
        assert_ne!(client_msg_id(true, 1), "m1", "ids carry the run tag");
        assert_eq!(measured_id(""), None);
    }

    #[test]
    fn duplicates_and_order() {
        let mut t = Tracker::default();
        assert_eq!(t.see("a", 10), Seen::New);
        assert_eq!(t.see("a", 11), Seen::New);
        assert_eq!(t.see("a", 11), Seen::Duplicate);
        assert_eq!(t.see("a", 13), Seen::New);
        assert_eq!(t.see("a", 12), Seen::OutOfOrder);
        assert_eq!(t.see("a", 12), Seen::Duplicate);
        assert_eq!(t.see("a", 9), Seen::OutOfOrder);
        // Conversations are independent.
        assert_eq!(t.see("b", 1), Seen::New);
        assert_eq!(t.see("b", 2), Seen::New);
        // Far beyond the window: ordering still checked.
        let far = 10 + WINDOW as i64 + 5;
        assert_eq!(t.see("a", far), Seen::New);
        assert_eq!(t.see("a", far - 1), Seen::OutOfOrder);
    }
}
