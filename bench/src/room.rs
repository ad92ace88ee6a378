//! The room `world` shared by all of a server's threads, and the counters a
//! server publishes for `compare.sh`.
//!
//! The member list changes only on join/leave; a send takes the cached
//! snapshot (`Arc<[u64]>`), rebuilt at most once per change burst, so a
//! broadcast costs one short lock however large the room.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

#[derive(Default)]
struct Members {
    /// user id -> open connections of that user.
    users: HashMap<u64, u32>,
    snapshot: Option<Arc<[u64]>>,
}

/// Members, sequence numbers and counters of the room.
#[derive(Default)]
pub struct Room {
    members: Mutex<Members>,
    seq: AtomicI64,
    pub counters: Counters,
}

/// What a server did, readable from any thread.
#[derive(Default)]
pub struct Counters {
    /// Open connections in the room.
    pub connections: AtomicU64,
    /// Accepted `send-message` frames.
    pub messages: AtomicU64,
    /// `new-message` frames handed to connections (members minus the sending connection, per message).
    pub deliveries: AtomicU64,
    /// Handshakes refused (bad or missing token).
    pub rejected: AtomicU64,
}

impl Room {
    pub fn join(&self, user: u64) {
        let mut m = self.members.lock();
        *m.users.entry(user).or_default() += 1;
        m.snapshot = None;
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self, user: u64) {
        let mut m = self.members.lock();
        if let Some(n) = m.users.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                m.users.remove(&user);
            }
        }
        m.snapshot = None;
        self.counters.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// The member user ids, shared until the membership changes.
    pub fn members(&self) -> Arc<[u64]> {
        let mut m = self.members.lock();
        if let Some(s) = &m.snapshot {
            return s.clone();
        }
        let s: Arc<[u64]> = m.users.keys().copied().collect();
        m.snapshot = Some(s.clone());
        s
    }

    /// Assigns the next sequence number (also used as the message id) and
    /// counts one message delivered to every other open connection.
    pub fn post(&self) -> i64 {
        let others = self.counters.connections.load(Ordering::Relaxed).saturating_sub(1);
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        self.counters.deliveries.fetch_add(others, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Every 100 ms, rewrites `path` with `connections messages deliveries rejected`
    /// (write to a temporary file, then rename, so readers never see half a line).
    pub fn publish_counters(self: &Arc<Self>, path: PathBuf) {
        let room = self.clone();
        let tmp = path.with_extension("tmp");
        let spawned = std::thread::Builder::new().name("stats-file".into()).spawn(move || {
            loop {
                let c = &room.counters;
                let line = format!(
                    "{} {} {} {}\n",
                    c.connections.load(Ordering::Relaxed),
                    c.messages.load(Ordering::Relaxed),
                    c.deliveries.load(Ordering::Relaxed),
                    c.rejected.load(Ordering::Relaxed)
                );
                if std::fs::write(&tmp, line).and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
                    eprintln!("cannot write stats file {}", path.display());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        if let Err(e) = spawned {
            eprintln!("cannot start the stats-file thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_follows_membership() {
        let r = Room::default();
        r.join(1);
        r.join(1);
        r.join(2);
        let mut m = r.members().to_vec();
        m.sort();
        assert_eq!(m, vec![1, 2]);
        assert!(Arc::ptr_eq(&r.members(), &r.members()));
        r.leave(1);
        assert_eq!(r.members().len(), 2);
        r.leave(1);
        assert_eq!(r.members().to_vec(), vec![2]);
        assert_eq!(r.post(), 1);
        assert_eq!(r.counters.deliveries.load(Ordering::Relaxed), 0);
    }
}
