//! The stored bytes a store last saw per session, for compare-and-set saves.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

const SHARDS: usize = 16;

/// Sessions bigger than this are not remembered: their saves take the
/// store's locked path, whose cost their size dominates anyway, and a few
/// thousand of them would hold gigabytes.
const MAX_VALUE_LEN: usize = 64 * 1024;

/// Bytes held per session of capacity (at least 16 MiB in all).
const BYTES_PER_SESSION: usize = 1024;

/// Stored bytes by session key, and their total length.
#[derive(Default)]
struct Shard {
    values: HashMap<Box<str>, Box<[u8]>>,
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, key: &str) -> Option<Box<[u8]>> {
        let value = self.values.remove(key)?;
        self.bytes -= value.len();
        Some(value)
    }
}

/// What a store last saw stored under each recently used session key, so a
/// save can be a single compare-and-set ("store this if the stored value is
/// still exactly that") instead of a locked read-modify-write. A request's
/// load and save are moments apart, so a bounded map covers the sessions in
/// flight; a shard that fills up (in sessions or in bytes) starts over, and
/// sessions over 64 KiB are not kept. What it holds is only a hint:
/// a store still compares against the stored value, and falls back to its
/// locked path when they differ.
///
/// ```
/// let seen = hipflask::LastSeen::new(10_000);
/// seen.remember("session:abc", b"{\"a\":1}");
/// assert_eq!(seen.take("session:abc").as_deref(), Some(&b"{\"a\":1}"[..]));
/// assert_eq!(seen.take("session:abc"), None);
/// ```
pub struct LastSeen {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    bytes_per_shard: usize,
}

impl std::fmt::Debug for LastSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LastSeen").field("capacity", &(self.per_shard * SHARDS)).finish_non_exhaustive()
    }
}

impl Default for LastSeen {
    /// Room for about 16,384 sessions: a request's load and save are moments
    /// apart, so that covers the sessions in flight in a busy process.
    fn default() -> LastSeen {
        LastSeen::new(16_384)
    }
}

impl LastSeen {
    /// Room for about `capacity` sessions, and for 1 KiB per session (at
    /// least 16 MiB) of their bytes.
    pub fn new(capacity: usize) -> LastSeen {
        let bytes = capacity.saturating_mul(BYTES_PER_SESSION).max(16 << 20);
        LastSeen {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            bytes_per_shard: bytes / SHARDS,
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        // Every operation leaves a shard consistent before it could panic.
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that `value` was stored under `key` when last seen.
    pub fn remember(&self, key: &str, value: &[u8]) {
        let mut shard = self.shard(key);
        if let Some(old) = shard.values.get(key)
            && **old == *value
        {
            return;
        }
        shard.remove(key);
        if value.len() > MAX_VALUE_LEN {
            return;
        }
        if shard.values.len() >= self.per_shard || shard.bytes + value.len() > self.bytes_per_shard {
            *shard = Shard::default();
        }
        shard.bytes += value.len();
        shard.values.insert(key.into(), value.into());
    }

    /// The bytes last seen under `key`, forgotten: a save takes them, and
    /// remembers what it stored once the store has answered.
    pub fn take(&self, key: &str) -> Option<Box<[u8]>> {
        self.shard(key).remove(key)
    }

    /// Forgets `key` (its session was deleted).
    pub fn forget(&self, key: &str) {
        self.shard(key).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_taken_once_replaced_forgotten_and_bounded() {
        let seen = LastSeen::new(32);
        seen.remember("k", b"one");
        seen.remember("k", b"two");
        assert_eq!(seen.take("k").as_deref(), Some(&b"two"[..]));
        assert_eq!(seen.take("k"), None, "a save takes the bytes");
        seen.remember("gone", b"x");
        seen.forget("gone");
        assert_eq!(seen.take("gone"), None);
        for i in 0..10_000 {
            seen.remember(&format!("key{i}"), b"v");
        }
        let held: usize = seen.shards.iter().map(|s| s.lock().unwrap().values.len()).sum();
        assert!(held <= 32, "{held} held");
    }

    #[test]
    fn big_sessions_are_not_kept_and_the_bytes_held_are_bounded() {
        let seen = LastSeen::new(100_000);
        seen.remember("k", b"small");
        seen.remember("k", &vec![b'x'; MAX_VALUE_LEN + 1]);
        assert_eq!(seen.take("k"), None, "a big value replaces nothing: the old one is stale");
        let value = vec![b'v'; MAX_VALUE_LEN];
        for i in 0..10_000 {
            seen.remember(&format!("key{i}"), &value);
        }
        let bytes: usize = seen.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        let counted: usize =
            seen.shards.iter().map(|s| s.lock().unwrap().values.values().map(|v| v.len()).sum::<usize>()).sum();
        assert_eq!(bytes, counted);
        assert!(bytes <= 100_000 * BYTES_PER_SESSION, "{bytes} bytes held");
        assert!(seen.take("key9999").is_some(), "the latest is kept");
    }
}
