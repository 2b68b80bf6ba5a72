//! The in-memory store, for tests and single-process apps.

use std::collections::{HashMap, HashSet};
use std::future::ready;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, ErrorKind};
use crate::sid::SessionId;
use crate::store::{Changes, Record, Store, StoreFuture, Update, Updated, check_loaded, user_of_value};
use crate::value::{Dict, Value};

/// Flask-Login's key for the logged-in user, the default user key.
pub(crate) const DEFAULT_USER_KEY: &str = "_user_id";

/// Sessions in a map in this process: bounded, with expired sessions
/// dropped on access and by [`Store::delete_expired`]. Sessions end with the
/// process and are not shared between processes.
///
/// A session of a few keys takes about 400 bytes. Holding hundreds of
/// thousands of them, each request touches a few random pages among hundreds
/// of megabytes, and with 4 KiB pages the processor's address translation
/// misses become the cost that grows: a write measured 7-11% slower at a
/// million sessions than at a thousand. On Linux with glibc 2.35 or newer,
/// starting the process with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` lets the
/// allocator use transparent huge pages (when
/// `/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` or `always`),
/// which took that to 3% in the same benchmark.
///
/// ```
/// use hipflask::{MemoryStore, Store};
/// let store = MemoryStore::new().with_capacity(10_000).with_user_key("user_id");
/// # let _ = store;
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    capacity: usize,
    user_key: String,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionId, Entry>,
    users: HashMap<String, HashSet<SessionId>>,
}

#[derive(Debug)]
struct Entry {
    data: Compact,
    created_at: u64,
    expires_at: u64,
    user: Option<String>,
}

/// A stored session's data: its entries in key order, in one allocation
/// that fits them. A `Dict` (a B-tree) allocates a node with room for
/// eleven entries however few it holds: for the usual session of a few keys
/// that node was two thirds of the store's memory, and at a million sessions
/// the cache lines it spread over made every request slower.
#[derive(Debug, Default)]
struct Compact(Box<[(Box<str>, Value)]>);

impl Compact {
    fn new(data: Dict) -> Compact {
        Compact(data.into_iter().map(|(k, v)| (k.into_boxed_str(), v)).collect())
    }

    fn to_dict(&self) -> Dict {
        // Inserted one by one: collecting would first gather the entries in a
        // vector to sort them, one more allocation for entries already sorted.
        let mut dict = Dict::new();
        for (k, v) in &*self.0 {
            dict.insert(String::from(&**k), v.clone());
        }
        dict
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// [`apply_changes`](crate::apply_changes) on this layout: the same
    /// conflict check, then the same changes.
    fn apply(&mut self, changes: &Changes, loaded: Option<&[Option<Value>]>) -> Result<(), Error> {
        check_loaded(changes, loaded, |key| self.get(key))?;
        let mut entries = if changes.cleared { Vec::new() } else { std::mem::take(&mut self.0).into_vec() };
        for (key, value) in &changes.keys {
            match (entries.binary_search_by(|(k, _)| (**k).cmp(key)), value) {
                (Ok(i), Some(v)) => entries[i].1 = v.clone(),
                (Ok(i), None) => {
                    entries.remove(i);
                }
                (Err(i), Some(v)) => entries.insert(i, (key.as_str().into(), v.clone())),
                (Err(_), None) => {}
            }
        }
        self.0 = entries.into_boxed_slice();
        Ok(())
    }

    fn user(&self, user_key: &str) -> Option<String> {
        user_of_value(self.get(user_key)?)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store holding at most 100,000 sessions, indexing users by
    /// `_user_id` (Flask-Login's key).
    pub fn new() -> MemoryStore {
        MemoryStore { inner: Mutex::default(), capacity: 100_000, user_key: DEFAULT_USER_KEY.into() }
    }

    /// The most sessions kept; past it the session closest to expiry is
    /// dropped (expired ones first).
    pub fn with_capacity(mut self, capacity: usize) -> MemoryStore {
        self.capacity = capacity.max(1);
        self
    }

    /// The session key whose value names the user, for the per-user index.
    pub fn with_user_key(mut self, key: impl Into<String>) -> MemoryStore {
        self.user_key = key.into();
        self
    }

    /// The number of sessions held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether the store holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`Store::load`], answered in place: every answer of this store is.
    fn load_in_place(&self, id: &SessionId, now: u64) -> Option<Record> {
        let mut inner = self.lock();
        let found = inner.live(id, now).map(|e| Record {
            data: e.data.to_dict(),
            created_at: e.created_at,
            expires_at: e.expires_at,
        });
        if found.is_none() && inner.sessions.contains_key(id) {
            inner.remove(id);
        }
        found
    }

    /// [`Store::update`], done in place.
    fn update_in_place(&self, id: &SessionId, update: &Update, now: u64) -> Result<Updated, Error> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let entry = match inner.sessions.get_mut(id) {
            Some(entry) if entry.expires_at > now => entry,
            _ => return Ok(Updated::Gone),
        };
        // In place: apply_changes checks for conflicts before changing anything.
        entry.data.apply(&update.changes, update.loaded.as_deref())?;
        entry.expires_at = update.expires_at;
        let user = entry.data.user(&self.user_key);
        if user != entry.user {
            // Logged in or out, or another user: move the id in the user index.
            let old = std::mem::replace(&mut entry.user, user.clone());
            if let Some(old) = old
                && let Some(ids) = inner.users.get_mut(&old)
            {
                ids.remove(id);
                if ids.is_empty() {
                    inner.users.remove(&old);
                }
            }
            if let Some(u) = user {
                inner.users.entry(u).or_default().insert(id.clone());
            }
        }
        Ok(Updated::Applied)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each operation leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn insert(&mut self, id: SessionId, record: Record, user_key: &str) {
        let data = Compact::new(record.data);
        let user = data.user(user_key);
        if let Some(u) = &user {
            self.users.entry(u.clone()).or_default().insert(id.clone());
        }
        let entry = Entry { data, created_at: record.created_at, expires_at: record.expires_at, user };
        self.sessions.insert(id, entry);
    }

    fn remove(&mut self, id: &SessionId) -> Option<Entry> {
        let entry = self.sessions.remove(id)?;
        if let Some(u) = &entry.user
            && let Some(ids) = self.users.get_mut(u)
        {
            ids.remove(id);
            if ids.is_empty() {
                self.users.remove(u);
            }
        }
        Some(entry)
    }

    fn live(&self, id: &SessionId, now: u64) -> Option<&Entry> {
        self.sessions.get(id).filter(|e| e.expires_at > now)
    }

    fn sweep(&mut self, now: u64) -> u64 {
        let expired: Vec<SessionId> =
            self.sessions.iter().filter(|(_, e)| e.expires_at <= now).map(|(id, _)| id.clone()).collect();
        for id in &expired {
            self.remove(id);
        }
        expired.len() as u64
    }
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>> {
        Box::pin(ready(Ok(self.load_in_place(id, now))))
    }

    fn load_now(&self, id: &SessionId, now: u64) -> Option<Result<Option<Record>, Error>> {
        Some(Ok(self.load_in_place(id, now)))
    }

    fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()> {
        let mut inner = self.lock();
        if inner.sessions.contains_key(id) {
            return Box::pin(ready(Err(Error::new(ErrorKind::Conflict, "session id already in use"))));
        }
        if inner.sessions.len() >= self.capacity {
            let now = record.created_at;
            if inner.sweep(now) == 0 {
                let victim = inner.sessions.iter().min_by_key(|(_, e)| e.expires_at).map(|(id, _)| id.clone());
                if let Some(victim) = victim {
                    tracing::warn!(
                        capacity = self.capacity,
                        "memory session store full; dropping the session closest to expiry"
                    );
                    inner.remove(&victim);
                }
            }
        }
        inner.insert(id.clone(), record, &self.user_key);
        Box::pin(ready(Ok(())))
    }

    fn update<'a>(&'a self, id: &'a SessionId, update: &'a Update, now: u64) -> StoreFuture<'a, Updated> {
        Box::pin(ready(self.update_in_place(id, update, now)))
    }

    fn update_now(&self, id: &SessionId, update: &Update, now: u64) -> Option<Result<Updated, Error>> {
        Some(self.update_in_place(id, update, now))
    }

    fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool> {
        let existed = self.lock().remove(id).is_some();
        Box::pin(ready(Ok(existed)))
    }

    fn delete_expired(&self, now: u64) -> StoreFuture<'_, u64> {
        let n = self.lock().sweep(now);
        Box::pin(ready(Ok(n)))
    }

    fn list(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>> {
        let inner = self.lock();
        let ids = inner.sessions.iter().filter(|(_, e)| e.expires_at > now).map(|(id, _)| id.clone()).collect();
        Box::pin(ready(Ok(ids)))
    }

    fn sessions_of_user<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, Vec<SessionId>> {
        let inner = self.lock();
        let ids = inner
            .users
            .get(user)
            .map(|ids| ids.iter().filter(|id| inner.live(id, now).is_some()).cloned().collect())
            .unwrap_or_default();
        Box::pin(ready(Ok(ids)))
    }

    fn delete_user<'a>(&'a self, user: &'a str) -> StoreFuture<'a, u64> {
        let mut inner = self.lock();
        let ids: Vec<SessionId> = inner.users.get(user).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        for id in &ids {
            inner.remove(id);
        }
        Box::pin(ready(Ok(ids.len() as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEYS: [&str; 5] = ["_permanent", "_user_id", "a", "b", "visits"];

    fn dict() -> impl Strategy<Value = Dict> {
        proptest::collection::btree_map(
            proptest::sample::select(&KEYS[..]).prop_map(str::to_owned),
            (0i64..3).prop_map(Value::Int),
            0..5,
        )
    }

    fn changes() -> impl Strategy<Value = Changes> {
        let key = proptest::sample::select(&KEYS[..]).prop_map(str::to_owned);
        let value = proptest::option::of((0i64..3).prop_map(Value::Int));
        (any::<bool>(), proptest::collection::vec((key, value), 0..4)).prop_map(|(cleared, mut keys)| {
            // One final value per key, as a session records them.
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            keys.dedup_by(|a, b| a.0 == b.0);
            Changes { cleared, keys }
        })
    }

    proptest! {
        /// The compact layout's merge gives what `apply_changes` gives on a
        /// `Dict`: the same data, the same conflicts.
        #[test]
        fn compact_apply_is_apply_changes(stored in dict(), changes in changes(), loaded in proptest::option::of(dict())) {
            // The loaded session's values of the changed keys, as a session gives them.
            let loaded: Option<Vec<Option<Value>>> =
                loaded.map(|d| changes.keys.iter().map(|(k, _)| d.get(k).cloned()).collect());
            let mut want = stored.clone();
            let want_result = crate::apply_changes(&mut want, &changes, loaded.as_deref()).map_err(|e| e.kind());
            let mut compact = Compact::new(stored);
            let result = compact.apply(&changes, loaded.as_deref()).map_err(|e| e.kind());
            prop_assert_eq!(result, want_result);
            prop_assert_eq!(compact.to_dict(), want);
        }
    }
}
