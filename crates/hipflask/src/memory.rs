//! The in-memory store, for tests and single-process apps.

use std::collections::{HashMap, HashSet};
use std::future::ready;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, ErrorKind};
use crate::sid::SessionId;
use crate::store::{Record, Store, StoreFuture, Update, Updated, apply_changes, user_of};

/// Flask-Login's key for the logged-in user, the default user key.
pub(crate) const DEFAULT_USER_KEY: &str = "_user_id";

/// Sessions in a map in this process: bounded, with expired sessions
/// dropped on access and by [`Store::delete_expired`]. Sessions end with the
/// process and are not shared between processes.
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
    record: Record,
    user: Option<String>,
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

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each operation leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn insert(&mut self, id: SessionId, record: Record, user_key: &str) {
        let user = user_of(&record.data, user_key);
        if let Some(u) = &user {
            self.users.entry(u.clone()).or_default().insert(id.clone());
        }
        self.sessions.insert(id, Entry { record, user });
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
        self.sessions.get(id).filter(|e| e.record.expires_at > now)
    }

    fn sweep(&mut self, now: u64) -> u64 {
        let expired: Vec<SessionId> =
            self.sessions.iter().filter(|(_, e)| e.record.expires_at <= now).map(|(id, _)| id.clone()).collect();
        for id in &expired {
            self.remove(id);
        }
        expired.len() as u64
    }
}

impl Store for MemoryStore {
    fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>> {
        let mut inner = self.lock();
        let found = inner.live(id, now).map(|e| e.record.clone());
        if found.is_none() && inner.sessions.contains_key(id) {
            inner.remove(id);
        }
        Box::pin(ready(Ok(found)))
    }

    fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()> {
        let mut inner = self.lock();
        if inner.sessions.contains_key(id) {
            return Box::pin(ready(Err(Error::new(ErrorKind::Conflict, "session id already in use"))));
        }
        if inner.sessions.len() >= self.capacity {
            let now = record.created_at;
            if inner.sweep(now) == 0 {
                let victim = inner.sessions.iter().min_by_key(|(_, e)| e.record.expires_at).map(|(id, _)| id.clone());
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
        let mut inner = self.lock();
        let inner = &mut *inner;
        let entry = match inner.sessions.get_mut(id) {
            Some(entry) if entry.record.expires_at > now => entry,
            _ => return Box::pin(ready(Ok(Updated::Gone))),
        };
        // In place: apply_changes checks for conflicts before changing anything.
        if let Err(e) = apply_changes(&mut entry.record.data, &update.changes, update.loaded.as_ref()) {
            return Box::pin(ready(Err(e)));
        }
        entry.record.expires_at = update.expires_at;
        let user = user_of(&entry.record.data, &self.user_key);
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
        Box::pin(ready(Ok(Updated::Applied)))
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
        let ids = inner.sessions.iter().filter(|(_, e)| e.record.expires_at > now).map(|(id, _)| id.clone()).collect();
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
