//! The in-memory store, for tests and single-process apps.

use std::collections::{HashMap, HashSet};
use std::future::ready;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::{Error, ErrorKind};
use crate::seen::IdKeyHasher;
use crate::sid::SessionId;
use crate::store::{Changes, Record, Store, StoreFuture, Update, Updated, check_loaded, conflict, user_of_value};
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
    /// Hashed with the keyed multiply the caches use, not SipHash: an id's
    /// hash is one multiply of its random prefix, where SipHash cost about
    /// 140 instructions, twice on every write. Keyed per store like theirs,
    /// so nobody can aim ids at one bucket; ids compare in full on a hit.
    sessions: HashMap<SessionId, Entry, IdKeyHasher>,
    users: HashMap<String, HashSet<SessionId>>,
}

#[derive(Debug)]
struct Entry {
    /// Shared with the sessions of the requests that loaded it (see
    /// [`MemoryStore::load_shared`]); copied before a change while any of
    /// them holds it, so what a session holds never changes under it.
    data: Compact,
    created_at: u64,
    expires_at: u64,
    user: Option<String>,
}

/// A key a session reading through a [`Compact`] record changed: one of the
/// record's, by position, or a new one. Overwriting a key, the usual write,
/// then copies no name, and the store finds the entry without a search.
#[derive(Clone, Debug)]
pub(crate) enum Key {
    /// The record's entry at this position.
    Stored(usize),
    /// A key the record does not have.
    New(String),
}

/// A stored session's data: its entries in key order, in one allocation
/// that fits them. A `Dict` (a B-tree) allocates a node with room for
/// eleven entries however few it holds: for the usual session of a few keys
/// that node was two thirds of the store's memory, and at a million sessions
/// the cache lines it spread over made every request slower.
///
/// Cloning shares the entries: the store and the sessions of the requests
/// that loaded a record hold the same one (see [`MemoryStore::load_shared`]),
/// and a change copies them first while anyone else holds them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Compact(Arc<[(Box<str>, Value)]>);

impl Compact {
    pub(crate) fn new(data: Dict) -> Compact {
        Compact(data.into_iter().map(|(k, v)| (k.into_boxed_str(), v)).collect())
    }

    /// Whether both are the same record, not merely equal ones.
    pub(crate) fn same(&self, other: &Compact) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub(crate) fn to_dict(&self) -> Dict {
        // Inserted one by one: collecting would first gather the entries in a
        // vector to sort them, one more allocation for entries already sorted.
        let mut dict = Dict::new();
        for (k, v) in self.0.iter() {
            dict.insert(String::from(&**k), v.clone());
        }
        dict
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    /// Where `key` is among the entries.
    pub(crate) fn position(&self, key: &str) -> Option<usize> {
        // A session holds a few keys. Scanning them with the lengths compared
        // first skips most without reading their text, where each probe of a
        // binary search compares text for the order; past a few keys the
        // search reads fewer.
        if self.0.len() <= 8 {
            return self.0.iter().position(|(k, _)| k.len() == key.len() && **k == *key);
        }
        self.find(key).ok()
    }

    /// The name of a key a session changed.
    pub(crate) fn name<'a>(&'a self, key: &'a Key) -> &'a str {
        match key {
            // Positions come from `position` on this very record.
            Key::Stored(i) => self.0.get(*i).map_or("", |(k, _)| k),
            Key::New(k) => k,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.position(key).and_then(|i| self.at(i))
    }

    /// The value at a position `position` gave.
    pub(crate) fn at(&self, i: usize) -> Option<&Value> {
        self.0.get(i).map(|(_, v)| v)
    }

    /// The keys, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// [`apply_changes`](crate::apply_changes) on this layout: the same
    /// conflict check, then the same changes.
    #[cfg(test)]
    fn apply(&mut self, changes: &Changes, loaded: Option<&[Option<Value>]>) -> Result<(), Error> {
        check_loaded(changes, loaded, |key| self.get(key))?;
        self.apply_unchecked(changes);
        Ok(())
    }

    /// The changes of [`apply_changes`](crate::apply_changes), once the
    /// conflict check passed.
    fn apply_unchecked(&mut self, changes: &Changes) {
        // The usual write sets keys the session has: done in place, with the
        // entries copied first only if another request holds them.
        if !changes.cleared && changes.keys.iter().all(|(k, v)| v.is_some() && self.find(k).is_ok()) {
            let entries = Arc::make_mut(&mut self.0);
            for (key, value) in &changes.keys {
                if let (Ok(i), Some(v)) = (entries.binary_search_by(|(k, _)| (**k).cmp(key)), value) {
                    entries[i].1 = v.clone();
                }
            }
            return;
        }
        let mut entries = if changes.cleared { Vec::new() } else { self.take_entries() };
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
        self.0 = entries.into();
    }

    /// The entries, moved out when nobody else holds them, copied otherwise.
    fn take_entries(&mut self) -> Vec<(Box<str>, Value)> {
        match Arc::get_mut(&mut self.0) {
            Some(entries) => {
                entries.iter_mut().map(|(k, v)| (std::mem::take(k), std::mem::replace(v, Value::Null))).collect()
            }
            None => self.0.to_vec(),
        }
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

    /// The record of a live session, shared rather than copied, with its
    /// times: what a session of this store reads through (see `Session`'s
    /// layered data) until it saves with [`update_shared`](Self::update_shared).
    pub(crate) fn load_shared(&self, id: &SessionId, now: u64) -> Option<(Compact, u64, u64)> {
        let mut inner = self.lock();
        let found = inner.live(id, now).map(|e| (e.data.clone(), e.created_at, e.expires_at));
        if found.is_none() && inner.sessions.contains_key(id) {
            inner.remove(id);
        }
        found
    }

    /// [`Store::update`], done in place.
    fn update_in_place(&self, id: &SessionId, update: &Update, now: u64) -> Result<Updated, Error> {
        let mut inner = self.lock();
        let Inner { sessions, users } = &mut *inner;
        let Some(entry) = sessions.get_mut(id).filter(|e| e.expires_at > now) else {
            return Ok(Updated::Gone);
        };
        // Checked before anything is copied or changed.
        check_loaded(&update.changes, update.loaded.as_deref(), |key| entry.data.get(key))?;
        entry.data.apply_unchecked(&update.changes);
        entry.expires_at = update.expires_at;
        Inner::reindex_user(users, id, entry, &self.user_key, &update.changes);
        Ok(Updated::Applied)
    }

    /// [`Store::update`] for a session that read through `base`, the record
    /// [`load_shared`](Self::load_shared) gave it, handed back here so that
    /// the store can change the record in place when nobody else holds it.
    /// `over` is what the session set (`Some`) or removed (`None`), in key
    /// order, with keys of `base` named by position.
    ///
    /// When the stored record is still `base`, nothing changed it since the
    /// load (a record is never changed while a session holds it), so there is
    /// no conflict to look for, and the record after the changes is exactly
    /// the session's view: it is returned with `true` for the session to read
    /// through from now on, and the values set may have been moved out of
    /// `over`. Otherwise the stored record is compared with `base` key by key
    /// (with `check`, [`ConflictPolicy::Reject`]) and `base` is returned with
    /// `false`: the session keeps its own view, and `over` is untouched.
    ///
    /// [`ConflictPolicy::Reject`]: crate::ConflictPolicy::Reject
    pub(crate) fn update_shared(
        &self,
        id: &SessionId,
        over: &mut [(Key, Option<Value>)],
        expires_at: u64,
        base: Compact,
        check: bool,
        now: u64,
    ) -> (Result<Updated, Error>, Compact, bool) {
        let mut inner = self.lock();
        let Inner { sessions, users } = &mut *inner;
        let Some(entry) = sessions.get_mut(id).filter(|e| e.expires_at > now) else {
            return (Ok(Updated::Gone), base, false);
        };
        // The usual write: keys the loaded record has, set again, and nothing
        // changed the record since. Done by position, with the values moved
        // in, once the session's hold is let go: the entries are copied only
        // if another request holds them.
        if entry.data.same(&base) && over.iter().all(|(k, v)| matches!(k, Key::Stored(_)) && v.is_some()) {
            drop(base);
            let entries = Arc::make_mut(&mut entry.data.0);
            let mut user_changed = false;
            for (key, value) in over.iter_mut() {
                if let (Key::Stored(i), Some(v)) = (key, value.take())
                    && let Some((name, slot)) = entries.get_mut(*i)
                {
                    *slot = v;
                    user_changed |= **name == *self.user_key;
                }
            }
            entry.expires_at = expires_at;
            if user_changed {
                Inner::move_user(users, id, entry, &self.user_key);
            }
            return (Ok(Updated::Applied), entry.data.clone(), true);
        }
        // Anything else goes by name, as another store's update does.
        let changes =
            Changes { cleared: false, keys: over.iter().map(|(k, v)| (base.name(k).to_owned(), v.clone())).collect() };
        // Still the record the session loaded: nothing changed it since, so
        // there is nothing to compare. Let go of the session's hold first,
        // under the store's lock: the record is then changed in place unless
        // another request holds it.
        let kept = if entry.data.same(&base) {
            drop(base);
            None
        } else if check && let Some((key, _)) = changes.keys.iter().find(|(k, _)| entry.data.get(k) != base.get(k)) {
            return (Err(conflict(key)), base, false);
        } else {
            Some(base)
        };
        entry.data.apply_unchecked(&changes);
        entry.expires_at = expires_at;
        Inner::reindex_user(users, id, entry, &self.user_key, &changes);
        match kept {
            None => (Ok(Updated::Applied), entry.data.clone(), true),
            Some(base) => (Ok(Updated::Applied), base, false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each operation leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Moves `id` in the user index after `changes` were applied to
    /// `entry`: logged in or out, or another user.
    fn reindex_user(
        users: &mut HashMap<String, HashSet<SessionId>>,
        id: &SessionId,
        entry: &mut Entry,
        user_key: &str,
        changes: &Changes,
    ) {
        // Most writes leave the user alone: no lookup, and no copy of the
        // user's id to compare.
        if !changes.cleared && changes.keys.iter().all(|(key, _)| key != user_key) {
            return;
        }
        Inner::move_user(users, id, entry, user_key);
    }

    /// Moves `id` in the user index to the user `entry` now names, if that
    /// is another one.
    fn move_user(users: &mut HashMap<String, HashSet<SessionId>>, id: &SessionId, entry: &mut Entry, user_key: &str) {
        let user = entry.data.user(user_key);
        if user == entry.user {
            return;
        }
        let old = std::mem::replace(&mut entry.user, user.clone());
        if let Some(old) = old
            && let Some(ids) = users.get_mut(&old)
        {
            ids.remove(id);
            if ids.is_empty() {
                users.remove(&old);
            }
        }
        if let Some(u) = user {
            users.entry(u).or_default().insert(id.clone());
        }
    }

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
    use crate::Session;
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

    /// One request's edits of a loaded session: set (`Some`) or remove each key.
    fn edits() -> impl Strategy<Value = Vec<(String, Option<Value>)>> {
        let key = proptest::sample::select(&KEYS[..]).prop_map(str::to_owned);
        proptest::collection::vec((key, proptest::option::of((0i64..3).prop_map(Value::Int))), 0..4)
    }

    fn edit(session: &Session, edits: &[(String, Option<Value>)]) {
        for (key, value) in edits {
            match value {
                Some(v) => session.insert_value(key.as_str(), v.clone()),
                None => drop(session.remove(key)),
            }
        }
    }

    const NOW: u64 = 1_000;

    /// What a session holds, read key by key (`to_dict` would make a layered
    /// session a map).
    fn view(session: &Session) -> Vec<Option<Value>> {
        KEYS.iter().map(|k| session.get_value(k)).collect()
    }

    fn stored(store: &MemoryStore, data: Dict) -> SessionId {
        let id = SessionId::generate();
        let record = Record { data, created_at: NOW, expires_at: NOW + 100 };
        store.lock().insert(id.clone(), record, DEFAULT_USER_KEY);
        id
    }

    /// A request's session, loaded as the middleware loads it.
    fn open(store: &MemoryStore, id: &SessionId, check: bool) -> Session {
        let (base, created, expires) = store.load_shared(id, NOW).expect("stored");
        Session::layered(base, id.clone(), (created, expires), check)
    }

    /// A save as the middleware makes it, through the record when the
    /// session still reads through it.
    fn save(store: &MemoryStore, id: &SessionId, session: &Session) -> Result<Updated, ErrorKind> {
        let answer = session.update_layered(store, id, NOW + 100, NOW).unwrap_or_else(|| {
            let (changes, loaded) = session.changes_and_loaded(true);
            store.update_in_place(id, &Update { changes, expires_at: NOW + 100, loaded }, NOW)
        });
        answer.map_err(|e| e.kind())
    }

    fn record(store: &MemoryStore, id: &SessionId) -> Compact {
        store.lock().sessions[id].data.clone()
    }

    /// A request alone on its session changes the stored record in place
    /// and reads through it after; one whose record another request holds
    /// leaves that request's view alone, and the other's save is still
    /// checked against what it loaded.
    #[test]
    fn a_record_changes_in_place_only_when_no_other_request_holds_it() {
        let store = MemoryStore::new();
        let id = stored(&store, [("a".to_owned(), Value::Int(1))].into());
        let alone = open(&store, &id, true);
        let before = Arc::as_ptr(&record(&store, &id).0);
        alone.insert_value("a", Value::Int(2));
        assert_eq!(save(&store, &id, &alone), Ok(Updated::Applied));
        let after = record(&store, &id);
        assert_eq!(Arc::as_ptr(&after.0), before, "changed in place, not copied");
        // The store's hold, this test's and the session's: it reads through it.
        assert_eq!(Arc::strong_count(&after.0), 3);
        assert!(alone.changes().is_empty(), "nothing left over the record");
        drop(after);

        let first = open(&store, &id, true);
        let second = open(&store, &id, true);
        first.insert_value("a", Value::Int(3));
        assert_eq!(save(&store, &id, &first), Ok(Updated::Applied));
        assert_ne!(Arc::as_ptr(&record(&store, &id).0), before, "copied: the second request holds it");
        assert_eq!(second.get::<i64>("a"), Some(2), "the second request's view is what it loaded");
        second.insert_value("a", Value::Int(4));
        assert_eq!(save(&store, &id, &second), Err(ErrorKind::Conflict), "a was changed since it loaded");
        assert_eq!(record(&store, &id).get("a"), Some(&Value::Int(3)));
        assert_eq!(second.get::<i64>("a"), Some(4), "a refused save leaves the handler's view");
        let third = open(&store, &id, true);
        store.lock().remove(&id);
        third.insert_value("b", Value::Int(1));
        assert_eq!(save(&store, &id, &third), Ok(Updated::Gone), "logged out meanwhile: not brought back");
        assert!(store.lock().sessions.is_empty());
    }

    proptest! {
        /// Two requests on one session, saved one after the other through
        /// the shared record, leave what `apply_changes` leaves applying
        /// their changes in the same order to a map: the same data, the same
        /// conflicts, the same user index. Each keeps its own view throughout.
        #[test]
        fn shared_saves_are_apply_changes(
            data in dict(),
            first_edits in edits(),
            second_edits in edits(),
            check in any::<bool>(),
            second_loads_late in any::<bool>(),
        ) {
            let store = MemoryStore::new();
            let id = stored(&store, data.clone());
            let first = open(&store, &id, check);
            let mut second = (!second_loads_late).then(|| open(&store, &id, check));
            edit(&first, &first_edits);
            let mut want = data;
            let (changes, loaded) = first.changes_and_loaded(true);
            let want_first = crate::apply_changes(&mut want, &changes, loaded.as_deref()).map(|_| Updated::Applied);
            let seen = view(&first);
            prop_assert_eq!(save(&store, &id, &first), want_first.map_err(|e| e.kind()));
            prop_assert_eq!(view(&first), seen);

            let second = second.take().unwrap_or_else(|| open(&store, &id, check));
            edit(&second, &second_edits);
            let (changes, loaded) = second.changes_and_loaded(true);
            let want_second = crate::apply_changes(&mut want, &changes, loaded.as_deref()).map(|_| Updated::Applied);
            let seen = view(&second);
            prop_assert_eq!(save(&store, &id, &second), want_second.map_err(|e| e.kind()));
            prop_assert_eq!(view(&second), seen);

            prop_assert_eq!(record(&store, &id).to_dict(), want.clone());
            let user = crate::user_of(&want, DEFAULT_USER_KEY);
            let indexed: Vec<String> = store.lock().users.keys().cloned().collect();
            prop_assert_eq!(indexed, user.into_iter().collect::<Vec<_>>());
        }

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
