//! The optional in-process cache of sessions read from Redis.
//!
//! Sessions are read far more often than written, and a read that needs no
//! round trip costs a few hundred nanoseconds instead of tens of
//! microseconds. The cache stays correct through Redis' server-assisted
//! client-side caching: every key is read on one connection with
//! `CLIENT TRACKING ON` (RESP3), and Redis pushes an invalidation on that
//! connection whenever any client changes, deletes or expires a key read
//! there. The rules that keep a stale session from ever being kept:
//!
//! - Nothing is cached, or served, unless tracking is known to be on for the
//!   current connection. A disconnection (which loses the invalidations sent
//!   meanwhile) turns it off, starts a new epoch and empties the cache.
//! - A read remembers a ticket (its shard's invalidation count and the
//!   epoch) before asking Redis; its answer is kept only if no invalidation
//!   of that shard and no disconnection happened since. Checked under the
//!   shard's lock, which invalidations also take.
//! - This process's own writes invalidate the key locally once Redis has
//!   applied them, so a visitor's next request never reads their old session
//!   even before Redis' push arrives.
//! - An entry is served for at most [`MAX_AGE_SECS`]: a bound on staleness
//!   should an invalidation be lost without a disconnection being seen.
//!
//! What remains is the push's own delay: a change made by another process is
//! seen here a fraction of a millisecond later, as if the request had
//! started that much earlier. With conflict detection on, a write based on
//! such a read is refused, never merged.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use hipflask::Dict;
use redis::{PushInfo, PushKind, Value as RValue};

const SHARDS: usize = 16;

/// The longest a cached session is served without reading Redis again.
pub(crate) const MAX_AGE_SECS: u64 = 30;

pub(crate) struct LocalCache {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    per_shard: usize,
    /// `epoch << 1 | tracking`: one word, so turning tracking on can be made
    /// conditional on no disconnection having happened (compare-and-swap).
    state: AtomicU64,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Vec<u8>, Entry>,
    /// Invalidations of this shard so far.
    seq: u64,
}

struct Entry {
    data: Dict,
    expires_at: u64,
    fresh_until: u64,
}

/// What a read saw before asking Redis; see the module docs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    shard: usize,
    seq: u64,
    state: u64,
}

impl Ticket {
    pub(crate) fn tracking(&self) -> bool {
        self.state & 1 == 1
    }
}

impl LocalCache {
    /// A cache of at most about `capacity` sessions (at least one per shard).
    pub(crate) fn new(capacity: usize) -> LocalCache {
        LocalCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            state: AtomicU64::new(0),
        }
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // Every operation leaves a shard consistent before it could panic.
        self.shards[shard].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached session under `key` and its expiry, if tracking is on and
    /// the entry is neither expired nor past its maximum age.
    pub(crate) fn get(&self, key: &str, now: u64) -> Option<(Dict, u64)> {
        if self.state.load(Ordering::SeqCst) & 1 == 0 {
            return None;
        }
        let mut shard = self.lock(self.shard_of(key.as_bytes()));
        let entry = shard.entries.get(key.as_bytes())?;
        if now >= entry.expires_at || now >= entry.fresh_until {
            shard.entries.remove(key.as_bytes());
            return None;
        }
        Some((entry.data.clone(), entry.expires_at))
    }

    /// Taken before reading `key` from Redis, handed back to [`put`](Self::put).
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let shard = self.shard_of(key.as_bytes());
        let seq = self.lock(shard).seq;
        Ticket { shard, seq, state: self.state.load(Ordering::SeqCst) }
    }

    /// Marks tracking on, unless a disconnection came after `ticket` was
    /// taken. Returns the ticket to use for the read that follows.
    pub(crate) fn tracking_enabled(&self, ticket: Ticket) -> Option<Ticket> {
        let on = ticket.state | 1;
        match self.state.compare_exchange(ticket.state, on, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => Some(Ticket { state: on, ..ticket }),
            Err(now) if now == on => Some(Ticket { state: on, ..ticket }),
            Err(_) => None,
        }
    }

    /// Keeps what a read of `key` found, unless anything that could make it
    /// stale happened since `ticket` was taken.
    pub(crate) fn put(&self, key: &str, ticket: Ticket, data: &Dict, expires_at: u64, now: u64) {
        if !ticket.tracking() {
            return;
        }
        let mut shard = self.lock(ticket.shard);
        // Under the lock: an invalidation or a disconnection either happened
        // before (and is seen here) or waits for this lock (and removes it).
        if shard.seq != ticket.seq || self.state.load(Ordering::SeqCst) != ticket.state {
            return;
        }
        if shard.entries.len() >= self.per_shard {
            shard.entries.clear();
        }
        let fresh_until = now.saturating_add(MAX_AGE_SECS);
        shard.entries.insert(key.as_bytes().to_vec(), Entry { data: data.clone(), expires_at, fresh_until });
    }

    /// Drops `key` and fails every read of its shard that is in flight.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        let mut shard = self.lock(self.shard_of(key));
        shard.entries.remove(key);
        shard.seq += 1;
    }

    fn invalidate_all(&self) {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            shard.entries.clear();
            shard.seq += 1;
        }
    }

    /// The tracking connection was lost, and with it any invalidation sent
    /// meanwhile: tracking off, a new epoch (first), then nothing cached.
    pub(crate) fn disconnected(&self) {
        let _ = self.state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| Some(((s >> 1) + 1) << 1));
        self.invalidate_all();
    }

    /// Handles a push from the tracking connection.
    pub(crate) fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(RValue::Array(keys)) => {
                    for key in keys {
                        match key {
                            RValue::BulkString(key) => self.invalidate(key),
                            RValue::SimpleString(key) => self.invalidate(key.as_bytes()),
                            // Not a key we can name: drop everything rather than guess.
                            _ => self.invalidate_all(),
                        }
                    }
                }
                // Nil after FLUSHALL/FLUSHDB, or a shape we do not know.
                _ => self.invalidate_all(),
            },
            PushKind::Disconnection => self.disconnected(),
            _ => {}
        }
    }

    /// Sessions held, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).entries.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hipflask::Value;

    fn session(n: i64) -> Dict {
        [("visits".to_owned(), Value::Int(n))].into()
    }

    fn tracking(cache: &LocalCache, key: &str) -> Ticket {
        cache.tracking_enabled(cache.ticket(key)).unwrap()
    }

    #[test]
    fn nothing_is_served_or_kept_until_tracking_is_on() {
        let cache = LocalCache::new(100);
        let off = cache.ticket("k");
        cache.put("k", off, &session(1), 1000, 10);
        assert!(cache.get("k", 10).is_none());
        let on = tracking(&cache, "k");
        cache.put("k", on, &session(1), 1000, 10);
        assert_eq!(cache.get("k", 10), Some((session(1), 1000)));
    }

    #[test]
    fn a_read_that_overlapped_an_invalidation_is_not_kept() {
        let cache = LocalCache::new(100);
        let ticket = tracking(&cache, "k");
        cache.invalidate(b"k");
        cache.put("k", ticket, &session(1), 1000, 10);
        assert!(cache.get("k", 10).is_none());
        let ticket = cache.ticket("k");
        cache.put("k", ticket, &session(2), 1000, 10);
        assert_eq!(cache.get("k", 10).map(|(d, _)| d), Some(session(2)));
    }

    #[test]
    fn a_disconnection_empties_the_cache_and_turns_tracking_off() {
        let cache = LocalCache::new(100);
        let ticket = tracking(&cache, "k");
        cache.put("k", ticket, &session(1), 1000, 10);
        let in_flight = cache.ticket("other");
        cache.on_push(PushInfo { kind: PushKind::Disconnection, data: vec![] });
        assert_eq!(cache.len(), 0);
        assert!(cache.get("k", 10).is_none());
        cache.put("other", in_flight, &session(3), 1000, 10);
        assert_eq!(cache.len(), 0, "a read from before the disconnection is not kept");
        // Turning tracking on with a ticket from before the disconnection fails.
        assert!(cache.tracking_enabled(in_flight).is_none());
        assert!(tracking(&cache, "k").tracking());
    }

    #[test]
    fn pushes_invalidate_the_named_keys_or_everything() {
        let cache = LocalCache::new(100);
        for key in ["a", "b", "c"] {
            let t = tracking(&cache, key);
            cache.put(key, t, &session(1), 1000, 10);
        }
        let keys = RValue::Array(vec![RValue::BulkString(b"a".to_vec())]);
        cache.on_push(PushInfo { kind: PushKind::Invalidate, data: vec![keys] });
        assert!(cache.get("a", 10).is_none());
        assert!(cache.get("b", 10).is_some());
        cache.on_push(PushInfo { kind: PushKind::Invalidate, data: vec![RValue::Nil] });
        assert_eq!(cache.len(), 0, "FLUSHALL drops everything");
    }

    #[test]
    fn expired_or_old_entries_are_not_served() {
        let cache = LocalCache::new(100);
        let t = tracking(&cache, "k");
        cache.put("k", t, &session(1), 20, 10);
        assert!(cache.get("k", 19).is_some());
        assert!(cache.get("k", 20).is_none(), "expired");
        let t = cache.ticket("k");
        cache.put("k", t, &session(1), 10_000, 10);
        assert!(cache.get("k", 10 + MAX_AGE_SECS - 1).is_some());
        assert!(cache.get("k", 10 + MAX_AGE_SECS).is_none(), "past the maximum age");
    }

    #[test]
    fn a_full_shard_starts_over_instead_of_growing() {
        let cache = LocalCache::new(SHARDS);
        for i in 0..1000 {
            let key = format!("k{i}");
            let t = tracking(&cache, &key);
            cache.put(&key, t, &session(i), 1000, 10);
        }
        assert!(cache.len() <= SHARDS, "{}", cache.len());
    }
}
