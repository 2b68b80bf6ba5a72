//! The memory store against the conformance suite, and its bound.

use std::sync::Arc;

use hipflask::{Dict, MemoryStore, Record, SessionId, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    hipflask_conformance::run(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn memory_store_stays_within_capacity() {
    let store = MemoryStore::new().with_capacity(3);
    let now = hipflask_conformance::NOW;
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let id = SessionId::generate();
        store.create(&id, Record { data: Dict::new(), created_at: now, expires_at: now + 100 + i }).await.unwrap();
        ids.push(id);
    }
    assert_eq!(store.len(), 3);
    // The sessions closest to expiry went first.
    assert!(store.load(&ids[0], now).await.unwrap().is_none());
    assert!(store.load(&ids[4], now).await.unwrap().is_some());
}
