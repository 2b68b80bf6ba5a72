//! The PostgreSQL and MySQL stores against the conformance suite, on the
//! servers at `POSTGRES_URL` and `MYSQL_URL` (set by `.ci/run`; skipped
//! loudly when unset).

use std::sync::Arc;

use hipflask::{Dict, Record, SessionId, Store};
use hipflask_sql::{MySqlStore, PostgresStore};

fn url(var: &str) -> Option<String> {
    let url = std::env::var(var).ok();
    if url.is_none() {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipped: set {var}");
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let Some(url) = url("POSTGRES_URL") else { return };
    let store = PostgresStore::connect(&url).await.unwrap();
    hipflask_conformance::run(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_store_conforms() {
    let Some(url) = url("MYSQL_URL") else { return };
    let store = MySqlStore::connect(&url).await.unwrap();
    hipflask_conformance::run(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_prefix_keeps_apps_apart_and_migrate_is_idempotent() {
    let now = hipflask_conformance::NOW;
    if let Some(url) = url("POSTGRES_URL") {
        let a = PostgresStore::connect(&url).await.unwrap().with_key_prefix("app_a:");
        let b = PostgresStore::connect(&url).await.unwrap().with_key_prefix("app%b:");
        a.migrate().await.unwrap();
        let id = SessionId::generate();
        a.create(&id, Record { data: Dict::new(), created_at: now, expires_at: now + 60 }).await.unwrap();
        assert!(b.load(&id, now).await.unwrap().is_none());
        assert!(!b.list(now).await.unwrap().contains(&id));
        assert!(a.list(now).await.unwrap().contains(&id));
    }
    if let Some(url) = url("MYSQL_URL") {
        let a = MySqlStore::connect(&url).await.unwrap().with_key_prefix("app_a:");
        let b = MySqlStore::connect(&url).await.unwrap().with_key_prefix("app%b:");
        a.migrate().await.unwrap();
        let id = SessionId::generate();
        a.create(&id, Record { data: Dict::new(), created_at: now, expires_at: now + 60 }).await.unwrap();
        assert!(b.load(&id, now).await.unwrap().is_none());
        assert!(a.list(now).await.unwrap().contains(&id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_from_a_stale_instance_is_merged_not_swapped_in() {
    if let Some(url) = url("POSTGRES_URL") {
        let a = PostgresStore::connect(&url).await.unwrap();
        let b = PostgresStore::connect(&url).await.unwrap();
        hipflask_conformance::a_save_from_a_stale_instance_is_merged_not_swapped_in(Arc::new(a), Arc::new(b)).await;
    }
    if let Some(url) = url("MYSQL_URL") {
        let a = MySqlStore::connect(&url).await.unwrap();
        let b = MySqlStore::connect(&url).await.unwrap();
        hipflask_conformance::a_save_from_a_stale_instance_is_merged_not_swapped_in(Arc::new(a), Arc::new(b)).await;
    }
}
