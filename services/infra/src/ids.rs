//! Snowflake ids: 41 bits of milliseconds since 2024-01-01, 10 bits of node
//! id, 12 bits of sequence. Ids from one generator are strictly increasing,
//! also when the wall clock steps back (the generator keeps its own clock
//! monotonic by borrowing from the future, at most 4096 ids per ms).

use std::sync::atomic::{AtomicU64, Ordering};

const EPOCH_MS: u64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

/// Lock-free snowflake generator.
#[derive(Debug)]
pub struct Snowflake {
    node: u64,
    /// Last issued (ms << SEQ_BITS | seq), without the node bits.
    last: AtomicU64,
}

impl Snowflake {
    /// `node` must be unique among the processes generating ids (0..=1023).
    pub fn new(node: u16) -> Self {
        Self { node: u64::from(node.min(MAX_NODE)), last: AtomicU64::new(0) }
    }

    pub fn next_id(&self) -> i64 {
        let now = (crate::now_ms() as u64).saturating_sub(EPOCH_MS) << SEQ_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = if now > prev { now } else { prev + 1 };
            match self.last.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let ms = next >> SEQ_BITS;
                    let seq = next & ((1 << SEQ_BITS) - 1);
                    return ((ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq) as i64;
                }
                Err(actual) => prev = actual,
            }
        }
    }
}

/// A random identifier of `len` lowercase alphanumerics (connection ids, guest names).
pub fn random_token(len: usize) -> String {
    use rand::RngExt;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_increasing_across_threads() {
        let generator = std::sync::Arc::new(Snowflake::new(7));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = generator.clone();
                std::thread::spawn(move || {
                    let ids: Vec<i64> = (0..20_000).map(|_| g.next_id()).collect();
                    assert!(ids.windows(2).all(|w| w[0] < w[1]));
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().expect("thread") {
                assert!(id > 0);
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
    }

    #[test]
    fn node_bits_are_embedded() {
        let id = Snowflake::new(5).next_id() as u64;
        assert_eq!((id >> SEQ_BITS) & u64::from(MAX_NODE), 5);
    }
}
