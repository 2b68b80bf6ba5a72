//! The stored bytes a store last saw per session, for compare-and-set saves.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

const SHARDS: usize = 16;

/// Sessions bigger than this are not remembered: their saves take the
/// store's locked path, whose cost their size dominates anyway, and a few
/// thousand of them would hold gigabytes.
const MAX_VALUE_LEN: usize = 64 * 1024;

/// Bytes held per session of capacity (at least 16 MiB in all).
const BYTES_PER_SESSION: usize = 1024;

/// Hashes keys by their last eight bytes and their length, for keys that end
/// in random bytes: a store's keys end in a session id (256 random bits, of
/// which the last eight characters carry 48), a signed cookie in its
/// signature. Those bytes already spread a table evenly, so hashing the whole
/// key with SipHash bought nothing and cost a few hundred instructions per
/// lookup. Keyed per instance, so buckets stay unpredictable; keys still
/// compare in full on a hit.
///
/// ```
/// use std::collections::HashMap;
/// let mut cache: HashMap<Vec<u8>, u32, hipflask::IdKeyHasher> = HashMap::default();
/// cache.insert(b"session:AbCdEfGhIjKl".to_vec(), 1);
/// assert_eq!(cache.get(&b"session:AbCdEfGhIjKl"[..]), Some(&1));
/// ```
#[derive(Clone, Debug)]
pub struct IdKeyHasher {
    seed: u64,
}

impl Default for IdKeyHasher {
    fn default() -> IdKeyHasher {
        IdKeyHasher { seed: RandomState::new().hash_one(0x5eed_u64) | 1 }
    }
}

impl BuildHasher for IdKeyHasher {
    type Hasher = TailHasher;

    fn build_hasher(&self) -> TailHasher {
        TailHasher { state: self.seed }
    }
}

/// The hasher of [`IdKeyHasher`].
#[derive(Debug)]
pub struct TailHasher {
    state: u64,
}

/// One multiply whose high half is folded into the low half, so every input
/// bit reaches the low bits a table indexes by.
fn fold_mul(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut tail = [0u8; 8];
        let n = bytes.len().min(8);
        tail[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
        self.state = fold_mul(self.state ^ u64::from_le_bytes(tail), 0x9E37_79B9_7F4A_7C15 ^ bytes.len() as u64);
    }

    /// `str` and slices hash a length or a terminator as well as their bytes;
    /// those mix in without replacing the bytes written before.
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn write_u64(&mut self, i: u64) {
        self.state = fold_mul(self.state ^ i, 0xD6E8_FEB8_6659_FD93);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// Stored bytes by session key, and their total length. A key whose bytes
/// were taken keeps its entry (`None`) until the save that took them
/// remembers what it stored: the key's text is not allocated again.
#[derive(Default)]
struct Shard {
    values: HashMap<Box<str>, Option<Box<[u8]>>, IdKeyHasher>,
    bytes: usize,
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
    hasher: IdKeyHasher,
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
            hasher: IdKeyHasher::default(),
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
        self.put(key, value);
    }

    /// [`remember`](LastSeen::remember), keeping `value`'s own buffer instead
    /// of a copy (shrunk to its length if it has spare capacity).
    pub fn remember_vec(&self, key: &str, value: Vec<u8>) {
        self.put(key, value);
    }

    fn put<V: AsRef<[u8]> + Into<Box<[u8]>>>(&self, key: &str, value: V) {
        let len = value.as_ref().len();
        let mut shard = self.shard(key);
        let shard = &mut *shard;
        if let Some(slot) = shard.values.get_mut(key) {
            if slot.as_deref() == Some(value.as_ref()) {
                return;
            }
            if let Some(old) = slot.take() {
                shard.bytes -= old.len();
            }
            if len > MAX_VALUE_LEN {
                return;
            }
            if shard.bytes + len <= self.bytes_per_shard {
                shard.bytes += len;
                *slot = Some(value.into());
                return;
            }
        }
        if len > MAX_VALUE_LEN {
            return;
        }
        if shard.values.len() >= self.per_shard || shard.bytes + len > self.bytes_per_shard {
            *shard = Shard::default();
        }
        shard.bytes += len;
        shard.values.insert(key.into(), Some(value.into()));
    }

    /// The bytes last seen under `key`, forgotten: a save takes them, and
    /// remembers what it stored once the store has answered.
    pub fn take(&self, key: &str) -> Option<Box<[u8]>> {
        let mut shard = self.shard(key);
        let shard = &mut *shard;
        let value = shard.values.get_mut(key)?.take()?;
        shard.bytes -= value.len();
        Some(value)
    }

    /// Reads the bytes last seen under `key` and leaves them for the save: a
    /// load can find the stored row by what they say about it.
    pub fn peek<R>(&self, key: &str, read: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let shard = self.shard(key);
        shard.values.get(key)?.as_deref().map(read)
    }

    /// Forgets `key` (its session was deleted).
    pub fn forget(&self, key: &str) {
        let mut shard = self.shard(key);
        if let Some(Some(value)) = shard.values.remove(key) {
            shard.bytes -= value.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids spread over a table by their last characters alone, and a key's
    /// hash is the same whichever form (`str`, `Box<str>`) it is hashed in.
    #[test]
    fn id_keys_spread_evenly_and_hash_alike_in_every_form() {
        let hasher = IdKeyHasher::default();
        let mut buckets = [0usize; 64];
        for _ in 0..64_000 {
            let key = format!("session:{}", crate::SessionId::generate().as_str());
            let h = hasher.hash_one(key.as_str());
            assert_eq!(h, hasher.hash_one(Box::<str>::from(key.as_str())));
            buckets[h as usize % 64] += 1;
        }
        // 1,000 expected per bucket; a hash blind to the id lands all in one.
        assert!(buckets.iter().all(|n| (800..1200).contains(n)), "{buckets:?}");
        assert_ne!(hasher.hash_one("a:xyz"), hasher.hash_one("b:xyz"), "the length or the prefix byte counts");
        assert_ne!(hasher.hash_one("xyz"), hasher.hash_one("1xyz"), "the length counts");
        assert_ne!(
            IdKeyHasher::default().hash_one("same"),
            IdKeyHasher::default().hash_one("same"),
            "each instance has its own key"
        );
    }

    #[test]
    fn values_are_taken_once_replaced_forgotten_and_bounded() {
        let seen = LastSeen::new(32);
        seen.remember("k", b"one");
        seen.remember("k", b"two");
        assert_eq!(seen.peek("k", <[u8]>::to_vec), Some(b"two".to_vec()));
        assert_eq!(seen.take("k").as_deref(), Some(&b"two"[..]), "a peek leaves the bytes");
        assert_eq!(seen.take("k"), None, "a save takes the bytes");
        assert_eq!(seen.peek("k", <[u8]>::len), None, "taken bytes cannot be peeked at");
        assert_eq!(seen.peek("never", <[u8]>::len), None);
        seen.remember("gone", b"x");
        seen.forget("gone");
        assert_eq!(seen.take("gone"), None);
        for i in 0..10_000 {
            seen.remember(&format!("key{i}"), b"v");
        }
        let held: usize = seen.shards.iter().map(|s| s.lock().unwrap().values.len()).sum();
        assert!(held <= 32, "{held} held");
    }

    /// The byte count follows every path: taken, remembered again (as a copy
    /// or as the vector itself), unchanged, replaced, forgotten while taken.
    #[test]
    fn the_bytes_held_are_counted_through_takes_and_returns() {
        let seen = LastSeen::new(64);
        let held = |seen: &LastSeen| -> (usize, usize) {
            let counted =
                seen.shards.iter().map(|s| s.lock().unwrap().values.values().flatten().map(|v| v.len()).sum::<usize>());
            (seen.shards.iter().map(|s| s.lock().unwrap().bytes).sum(), counted.sum())
        };
        seen.remember("a", b"1234");
        seen.remember_vec("b", b"12".to_vec());
        assert_eq!(held(&seen), (6, 6));
        assert_eq!(seen.take("a").as_deref(), Some(&b"1234"[..]));
        assert_eq!(held(&seen), (2, 2), "taken bytes are not held");
        seen.remember_vec("a", b"123456".to_vec());
        seen.remember("b", b"12");
        assert_eq!(held(&seen), (8, 8), "an unchanged value is not counted twice");
        seen.remember("b", b"123");
        assert_eq!(held(&seen), (9, 9));
        assert_eq!(seen.take("b").as_deref(), Some(&b"123"[..]));
        seen.forget("b");
        seen.forget("a");
        assert_eq!(held(&seen), (0, 0));
        assert_eq!((seen.take("a"), seen.take("b")), (None, None));
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
        let counted: usize = seen
            .shards
            .iter()
            .map(|s| s.lock().unwrap().values.values().flatten().map(|v| v.len()).sum::<usize>())
            .sum();
        assert_eq!(bytes, counted);
        assert!(bytes <= 100_000 * BYTES_PER_SESSION, "{bytes} bytes held");
        assert!(seen.take("key9999").is_some(), "the latest is kept");
    }
}
