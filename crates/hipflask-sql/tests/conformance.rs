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

/// Starting an instance while another is in the middle of a save: `connect`
/// must not wait for that transaction (the `IF NOT EXISTS` DDL did, and
/// every later save then queued behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_does_not_wait_for_open_write_transactions() {
    use sqlx::Connection as _;
    let patience = std::time::Duration::from_secs(2);
    if let Some(url) = url("POSTGRES_URL") {
        PostgresStore::connect(&url).await.unwrap();
        let mut busy = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = busy.begin().await.unwrap();
        sqlx::query("UPDATE hipflask_sessions SET data = data WHERE id = ''").execute(&mut *tx).await.unwrap();
        let started = tokio::time::timeout(patience, PostgresStore::connect(&url)).await;
        tx.rollback().await.unwrap();
        started.expect("PostgreSQL: connect waited for another session's transaction").unwrap();
    }
    if let Some(url) = url("MYSQL_URL") {
        MySqlStore::connect(&url).await.unwrap();
        let mut busy = sqlx::MySqlConnection::connect(&url).await.unwrap();
        let mut tx = busy.begin().await.unwrap();
        sqlx::query("UPDATE hipflask_sessions SET data = data WHERE id = ''").execute(&mut *tx).await.unwrap();
        let started = tokio::time::timeout(patience, MySqlStore::connect(&url)).await;
        tx.rollback().await.unwrap();
        started.expect("MariaDB: connect waited for another session's transaction").unwrap();
    }
}

/// Instances starting together on a new database.
const INSTANCES: usize = 8;

/// Calls `connect` for `INSTANCES` instances at once; each must succeed, and
/// the store must then keep a session.
async fn start_together_and_use<S, F>(connect: impl Fn() -> F)
where
    S: Store,
    F: std::future::Future<Output = Result<S, hipflask::Error>> + Send + 'static,
{
    let starting: Vec<_> = (0..INSTANCES).map(|_| tokio::spawn(connect())).collect();
    let mut last = None;
    for instance in starting {
        last = Some(instance.await.unwrap().unwrap());
    }
    let store = last.unwrap();
    let (id, now) = (SessionId::generate(), hipflask_conformance::NOW);
    store.create(&id, Record { data: Dict::new(), created_at: now, expires_at: now + 60 }).await.unwrap();
    assert!(store.load(&id, now).await.unwrap().is_some());
}

/// On an empty database, `connect` creates the table and its indexes, and
/// the store works (every other test runs on a database that has them), also
/// when several instances start at once: PostgreSQL fails all but one of
/// concurrent `CREATE TABLE IF NOT EXISTS` unless they take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_installs_the_schema_on_an_empty_database_even_from_instances_starting_together() {
    use sqlx::Connection as _;
    let name = format!("hipflask_fresh_{}", std::process::id());
    let on = |url: &str| format!("{}/{name}", &url[..url.rfind('/').unwrap()]);
    if let Some(url) = url("POSTGRES_URL") {
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let fresh = on(&url);
        start_together_and_use(|| {
            let url = fresh.clone();
            async move { PostgresStore::connect(&url).await }
        })
        .await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    }
    if let Some(url) = url("MYSQL_URL") {
        let mut admin = sqlx::MySqlConnection::connect(&url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let fresh = on(&url);
        start_together_and_use(|| {
            let url = fresh.clone();
            async move { MySqlStore::connect(&url).await }
        })
        .await;
        sqlx::query(&format!("DROP DATABASE {name}")).execute(&mut admin).await.unwrap();
    }
}
