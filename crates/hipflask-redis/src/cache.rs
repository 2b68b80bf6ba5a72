//! The optional in-process cache of sessions read from Redis.
//!
//! Sessions are read far more often than written, and a read that needs no
//! round trip costs a few hundred nanoseconds instead of tens of
//! microseconds. The cache stays correct through Redis' server-assisted
//! client-side caching: every key is read on one connection with
//! `CLIENT TRACKING ON`, and Redis sends an invalidation whenever any client
//! changes, deletes or expires a key read there. The invalidations are
//! redirected to a connection of their own (see `listen`), read without
//! blocking before every hit, so a hit never ignores one Redis has sent. The
//! rules that keep a stale session from ever being kept:
//!
//! - Nothing is cached, or served, unless tracking is known to be on for the
//!   current connections. Losing either (and with it the invalidations sent
//!   meanwhile) turns it off, starts a new epoch and empties the cache.
//! - A read or a write remembers a ticket (the change count of its key's
//!   stripe, and the epoch) before asking Redis; its answer is kept only if
//!   that count and the epoch have not moved since. Checked under the shard's
//!   lock, which every change of the count also takes.
//! - This process's writes go through the tracked connection with NOLOOP
//!   (Redis does not echo them) and the merge script reads the key back, so
//!   Redis keeps tracking it; the value the script stored replaces the cached
//!   one, and moves the count, so an older answer still in flight is dropped.
//!   Creates and deletes (on the main connection) drop the key locally once
//!   Redis has applied them, so a visitor's next request never reads the
//!   old session even before Redis' invalidation is read.
//! - An entry is served for at most [`MAX_AGE`]: a bound on staleness
//!   should an invalidation be lost without a disconnection being seen.
//! - Expiry is kept as Redis keeps it, in real time from the key's TTL, not
//!   by the application's clock: Redis may expire a key a little late, and
//!   its invalidation comes later still, but the cache stops at the TTL.
//!
//! What remains is Redis' own order: it may answer the client that made a
//! change a moment before it writes the invalidation here, both in the same
//! turn of its event loop. A request that follows that answer through
//! another process (a browser's next request) comes later than that.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hipflask::{Dict, IdKeyHasher};
use redis::{PushInfo, PushKind, Value};

const SHARDS: usize = 16;
/// Change counters per shard: keys are told apart by hash into
/// `SHARDS * STRIPES` counters, so a write to one session rarely voids a
/// concurrent read or write of another (with one counter per shard, 32
/// concurrent writers voided most of each other's updates).
const STRIPES: usize = 256;

/// The longest a cached session is served without reading Redis again.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(30);

pub(crate) struct LocalCache {
    shards: Vec<Mutex<Shard>>,
    hasher: IdKeyHasher,
    per_shard: usize,
    /// `epoch << 1 | tracking`: one word, so turning tracking on can be made
    /// conditional on no disconnection having happened (compare-and-swap).
    state: AtomicU64,
}

struct Shard {
    entries: HashMap<Vec<u8>, Entry, IdKeyHasher>,
    /// Changes so far of the keys hashed to each stripe.
    seqs: Vec<u64>,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard { entries: HashMap::default(), seqs: vec![0; STRIPES] }
    }
}

struct Entry {
    data: Dict,
    /// When Redis' TTL runs out.
    expires: Instant,
    /// [`MAX_AGE`] after caching.
    fresh_until: Instant,
}

impl Entry {
    fn new(data: Dict, ttl: Duration) -> Entry {
        let now = Instant::now();
        Entry { data, expires: now + ttl, fresh_until: now + MAX_AGE }
    }
}

/// What a read saw before asking Redis; see the module docs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    shard: usize,
    stripe: usize,
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
            hasher: IdKeyHasher::default(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            state: AtomicU64::new(0),
        }
    }

    /// The shard and the stripe within it that `key` belongs to.
    fn place(&self, key: &[u8]) -> (usize, usize) {
        let h = self.hasher.hash_one(key) as usize;
        (h % SHARDS, (h / SHARDS) % STRIPES)
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // Every operation leaves a shard consistent before it could panic.
        self.shards[shard].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached session under `key` with its remaining TTL, if tracking is
    /// on and the entry is neither expired nor past its maximum age.
    pub(crate) fn get(&self, key: &str) -> Option<(Dict, Duration)> {
        if self.state.load(Ordering::SeqCst) & 1 == 0 {
            return None;
        }
        let mut shard = self.lock(self.place(key.as_bytes()).0);
        let entry = shard.entries.get(key.as_bytes())?;
        let now = Instant::now();
        let left = entry.expires.checked_duration_since(now).filter(|d| !d.is_zero() && now < entry.fresh_until);
        let Some(left) = left else {
            shard.entries.remove(key.as_bytes());
            return None;
        };
        Some((entry.data.clone(), left))
    }

    /// Taken before reading `key` from Redis, handed back to [`put`](Self::put).
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let (shard, stripe) = self.place(key.as_bytes());
        let seq = self.lock(shard).seqs[stripe];
        Ticket { shard, stripe, seq, state: self.state.load(Ordering::SeqCst) }
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
    pub(crate) fn put(&self, key: &str, ticket: Ticket, data: &Dict, ttl: Duration) {
        if !ticket.tracking() {
            return;
        }
        let mut shard = self.lock(ticket.shard);
        // Under the lock: an invalidation or a disconnection either happened
        // before (and is seen here) or waits for this lock (and removes it).
        if shard.seqs[ticket.stripe] != ticket.seq || self.state.load(Ordering::SeqCst) != ticket.state {
            return;
        }
        self.insert(&mut shard, key, data.clone(), ttl);
    }

    /// Caches `data` in `shard` (the key's), starting the shard over when full.
    fn insert(&self, shard: &mut Shard, key: &str, data: Dict, ttl: Duration) {
        // A session written here is usually cached already: replaced in
        // place, without a new copy of its key.
        if let Some(entry) = shard.entries.get_mut(key.as_bytes()) {
            *entry = Entry::new(data, ttl);
            return;
        }
        if shard.entries.len() >= self.per_shard {
            shard.entries.clear();
        }
        shard.entries.insert(key.as_bytes().to_vec(), Entry::new(data, ttl));
    }

    /// After this process wrote `key` on the tracked connection: keeps the
    /// value the write stored, or drops the old one. The tracked connection
    /// has NOLOOP, so Redis sends no invalidation for this write, and the
    /// script read the key after writing it, so Redis tracks it again: any
    /// later change by anyone is pushed. A push (or disconnection) since
    /// `ticket` may concern a change after this write, so then nothing is
    /// kept; either way the old value is gone.
    ///
    /// The key's change count moves on either way: a write answered later but
    /// applied earlier (or a read sent before this write) then finds its
    /// ticket outdated and cannot put an older value back. Without this, 100
    /// concurrent writes left a cached session missing a quarter of its keys.
    pub(crate) fn replace(&self, key: &str, ticket: Ticket, data: Dict, ttl: Duration) {
        let mut shard = self.lock(ticket.shard);
        let unchanged = shard.seqs[ticket.stripe] == ticket.seq && self.state.load(Ordering::SeqCst) == ticket.state;
        shard.seqs[ticket.stripe] += 1;
        if !(ticket.tracking() && unchanged) {
            shard.entries.remove(key.as_bytes());
            return;
        }
        self.insert(&mut shard, key, data, ttl);
    }

    /// Drops `key` and voids every read or write of it (or of a key sharing
    /// its stripe) that is in flight.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        let (shard, stripe) = self.place(key);
        let mut shard = self.lock(shard);
        shard.entries.remove(key);
        shard.seqs[stripe] += 1;
    }

    fn invalidate_all(&self) {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            shard.entries.clear();
            shard.seqs.iter_mut().for_each(|seq| *seq += 1);
        }
    }

    /// The tracking connection was lost, and with it any invalidation sent
    /// meanwhile: tracking off, a new epoch (first), then nothing cached.
    pub(crate) fn disconnected(&self) {
        let _ = self.state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| Some(((s >> 1) + 1) << 1));
        self.invalidate_all();
    }

    /// Handles a push: an invalidation (on the listener, see `listen`), or,
    /// on the tracked connection, news that invalidations may have been
    /// lost.
    pub(crate) fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        match key {
                            Value::BulkString(key) => self.invalidate(key),
                            Value::SimpleString(key) => self.invalidate(key.as_bytes()),
                            // Not a key we can name: drop everything rather than guess.
                            _ => self.invalidate_all(),
                        }
                    }
                }
                // Nil after FLUSHALL/FLUSHDB, or a shape we do not know.
                _ => self.invalidate_all(),
            },
            // This process lost the tracked connection.
            PushKind::Disconnection => self.disconnected(),
            // Redis could not reach the connection invalidations go to.
            PushKind::Other(kind) if kind == "tracking-redir-broken" => self.disconnected(),
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

    const HOUR: Duration = Duration::from_secs(3600);

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
        cache.put("k", off, &session(1), HOUR);
        assert!(cache.get("k").is_none());
        let on = tracking(&cache, "k");
        cache.put("k", on, &session(1), HOUR);
        assert_eq!(cache.get("k").map(|(d, _)| d), Some(session(1)));
    }

    #[test]
    fn a_read_that_overlapped_an_invalidation_is_not_kept() {
        let cache = LocalCache::new(100);
        let ticket = tracking(&cache, "k");
        cache.invalidate(b"k");
        cache.put("k", ticket, &session(1), HOUR);
        assert!(cache.get("k").is_none());
        let ticket = cache.ticket("k");
        cache.put("k", ticket, &session(2), HOUR);
        assert_eq!(cache.get("k").map(|(d, _)| d), Some(session(2)));
    }

    #[test]
    fn a_disconnection_empties_the_cache_and_turns_tracking_off() {
        let cache = LocalCache::new(100);
        let ticket = tracking(&cache, "k");
        cache.put("k", ticket, &session(1), HOUR);
        let in_flight = cache.ticket("other");
        cache.on_push(PushInfo { kind: PushKind::Disconnection, data: vec![] });
        assert_eq!(cache.len(), 0);
        assert!(cache.get("k").is_none());
        cache.put("other", in_flight, &session(3), HOUR);
        assert_eq!(cache.len(), 0, "a read from before the disconnection is not kept");
        // Turning tracking on with a ticket from before the disconnection fails.
        assert!(cache.tracking_enabled(in_flight).is_none());
        assert!(tracking(&cache, "k").tracking());
    }

    #[test]
    fn a_broken_redirect_empties_the_cache_and_other_pushes_do_not() {
        let cache = LocalCache::new(100);
        let ticket = tracking(&cache, "k");
        cache.put("k", ticket, &session(1), HOUR);
        cache.on_push(PushInfo { kind: PushKind::Message, data: vec![] });
        assert_eq!(cache.len(), 1);
        cache.on_push(PushInfo { kind: PushKind::Other("tracking-redir-broken".into()), data: vec![] });
        assert_eq!(cache.len(), 0);
        assert!(!cache.ticket("k").tracking());
    }

    #[test]
    fn an_own_write_replaces_the_value_or_drops_it_when_anything_intervened() {
        let cache = LocalCache::new(100);
        let t = tracking(&cache, "k");
        cache.put("k", t, &session(1), HOUR);
        let before_write = cache.ticket("k");
        let concurrent = cache.ticket("k");
        cache.replace("k", before_write, session(2), HOUR);
        assert_eq!(cache.get("k").map(|(d, _)| d), Some(session(2)));
        // Another write or read in flight at the same time may hold an older
        // value: it must not replace this one, and the entry is dropped.
        cache.put("k", concurrent, &session(1), HOUR);
        assert_eq!(cache.get("k").map(|(d, _)| d), Some(session(2)));
        cache.replace("k", concurrent, session(1), HOUR);
        assert!(cache.get("k").is_none());
        let t = cache.ticket("k");
        cache.put("k", t, &session(2), HOUR);
        // A push for this key while the write was in flight: the new value
        // may already be old, and the previous one certainly is.
        let before_write = cache.ticket("k");
        cache.invalidate(b"k");
        let t = cache.ticket("k");
        cache.put("k", t, &session(2), HOUR);
        cache.replace("k", before_write, session(3), HOUR);
        assert!(cache.get("k").is_none());
        // With tracking off nothing is kept, and nothing old survives.
        let t = tracking(&cache, "k");
        cache.put("k", t, &session(3), HOUR);
        cache.disconnected();
        let off = cache.ticket("k");
        cache.replace("k", off, session(4), HOUR);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn pushes_invalidate_the_named_keys_or_everything() {
        let cache = LocalCache::new(100);
        for key in ["a", "b", "c"] {
            let t = tracking(&cache, key);
            cache.put(key, t, &session(1), HOUR);
        }
        let keys = redis::Value::Array(vec![redis::Value::BulkString(b"a".to_vec())]);
        cache.on_push(PushInfo { kind: PushKind::Invalidate, data: vec![keys] });
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some());
        cache.on_push(PushInfo { kind: PushKind::Invalidate, data: vec![redis::Value::Nil] });
        assert_eq!(cache.len(), 0, "FLUSHALL drops everything");
    }

    #[test]
    fn entries_end_with_their_ttl_or_their_maximum_age() {
        let cache = LocalCache::new(100);
        let t = tracking(&cache, "k");
        cache.put("k", t, &session(1), Duration::from_millis(50));
        let (_, left) = cache.get("k").unwrap();
        assert!(left <= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get("k").is_none(), "expired in real time");
        let t = cache.ticket("k");
        cache.put("k", t, &session(1), HOUR);
        let (_, left) = cache.get("k").unwrap();
        assert!(left > MAX_AGE, "the TTL reported is Redis', not the cache's: {left:?}");
        let (shard, _) = cache.place(b"k");
        cache.lock(shard).entries.get_mut(b"k".as_slice()).unwrap().fresh_until = Instant::now();
        assert!(cache.get("k").is_none(), "past its maximum age");
    }

    #[test]
    fn a_full_shard_starts_over_instead_of_growing() {
        let cache = LocalCache::new(SHARDS);
        for i in 0..1000 {
            let key = format!("k{i}");
            let t = tracking(&cache, &key);
            cache.put(&key, t, &session(i), HOUR);
        }
        assert!(cache.len() <= SHARDS, "{}", cache.len());
    }
}
