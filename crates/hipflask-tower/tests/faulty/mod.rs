//! A store that waits and fails on demand, for the middleware tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hipflask::{Error, ErrorKind, MemoryStore, Record, SessionId, Store, StoreFuture, Update, Updated};

/// A memory store with faults injected: every call waits `delay`, and the
/// calls whose number (from 0) `fails` picks fail with a backend error.
pub(crate) struct Faulty {
    inner: MemoryStore,
    delay: Duration,
    fails: fn(u64) -> bool,
    calls: AtomicU64,
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faulty")
    }
}

impl Faulty {
    pub(crate) fn new(delay: Duration, fails: fn(u64) -> bool) -> Faulty {
        Faulty { inner: MemoryStore::new(), delay, fails, calls: AtomicU64::new(0) }
    }

    fn later<'a, T: Send + 'a>(&self, op: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
        let (delay, fail) = (self.delay, (self.fails)(self.calls.fetch_add(1, Ordering::SeqCst)));
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail {
                return Err(Error::new(ErrorKind::Backend, "injected fault"));
            }
            op.await
        })
    }
}

impl Store for Faulty {
    fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>> {
        self.later(self.inner.load(id, now))
    }
    fn create<'a>(&'a self, id: &'a SessionId, r: Record) -> StoreFuture<'a, ()> {
        self.later(self.inner.create(id, r))
    }
    fn update<'a>(&'a self, id: &'a SessionId, u: &'a Update, now: u64) -> StoreFuture<'a, Updated> {
        self.later(self.inner.update(id, u, now))
    }
    fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool> {
        self.later(self.inner.delete(id))
    }
    fn delete_expired(&self, now: u64) -> StoreFuture<'_, u64> {
        self.later(self.inner.delete_expired(now))
    }
    fn list(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>> {
        self.later(self.inner.list(now))
    }
    fn sessions_of_user<'a>(&'a self, u: &'a str, now: u64) -> StoreFuture<'a, Vec<SessionId>> {
        self.later(self.inner.sessions_of_user(u, now))
    }
    fn delete_user<'a>(&'a self, u: &'a str) -> StoreFuture<'a, u64> {
        self.later(self.inner.delete_user(u))
    }
}
