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

/// Sessions of this test.
const AT_ONCE: usize = 20;

/// `AT_ONCE` requests each load and save their own session and `AT_ONCE`
/// more a shared one, all at the same moment, so their loads and saves
/// travel together (on one thread, every load is queued before the first
/// statement goes out, and so is every save). Every change must reach its
/// own session; the shared session must keep all of its writers' keys (the
/// save statement has each of them expecting the same data: one wins, the
/// others must merge); and a save the database refuses (`bad_user` as the
/// user id, on session 0), when there is one, must fail alone.
async fn saves_at_once_each_reach_their_own_session(store: Arc<dyn Store>, bad_user: Option<&str>) {
    use hipflask::{Changes, Update, Updated, Value};
    let now = hipflask_conformance::NOW;
    let record = |data: Dict| Record { data, created_at: now, expires_at: now + 3600 };
    let set = |key: &str, value: Value| Update {
        changes: Changes { cleared: false, keys: vec![(key.to_owned(), Some(value))] },
        expires_at: now + 3600,
        loaded: None,
    };
    let mut own = Vec::new();
    for _ in 0..AT_ONCE {
        let id = SessionId::generate();
        store.create(&id, record(Dict::from_iter([("n".to_owned(), Value::Int(-1))]))).await.unwrap();
        own.push(id);
    }
    let shared = SessionId::generate();
    store.create(&shared, record(Dict::new())).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(2 * AT_ONCE));
    let mut tasks = Vec::new();
    for i in 0..2 * AT_ONCE {
        let (store, barrier) = (store.clone(), barrier.clone());
        let (id, update) = match (i, bad_user) {
            (0, Some(bad_user)) => (own[0].clone(), set("_user_id", Value::from(bad_user))),
            (i, _) if i < AT_ONCE => (own[i].clone(), set("n", Value::Int(i as i64))),
            (i, _) => (shared.clone(), set(&format!("k{i}"), Value::Int(i as i64))),
        };
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            assert!(store.load(&id, now).await.unwrap().is_some());
            store.update(&id, &update, now).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if i == 0 && bad_user.is_some() {
            assert!(result.is_err(), "the database took a value it should refuse");
        } else {
            assert_eq!(result.unwrap(), Updated::Applied, "save {i}");
        }
    }
    let data = |id: &SessionId| {
        let store = store.clone();
        let id = id.clone();
        async move { store.load(&id, now).await.unwrap().unwrap().data }
    };
    for (i, id) in own.iter().enumerate() {
        let n = if i == 0 && bad_user.is_some() { -1 } else { i as i64 };
        assert_eq!(data(id).await.get("n"), Some(&Value::Int(n)), "session {i}");
    }
    assert_eq!(data(&shared).await.len(), AT_ONCE, "a shared session's writers were lost");
}

#[tokio::test(flavor = "current_thread")]
async fn saves_at_once_each_reach_their_own_session_and_a_refused_one_fails_alone() {
    if let Some(url) = url("POSTGRES_URL") {
        let store = Arc::new(PostgresStore::connect(&url).await.unwrap());
        saves_at_once_each_reach_their_own_session(store.clone(), None).await;
        // PostgreSQL's text cannot hold a NUL character.
        saves_at_once_each_reach_their_own_session(store, Some("nul\0user")).await;
    }
    if let Some(url) = url("MYSQL_URL") {
        let store = Arc::new(MySqlStore::connect(&url).await.unwrap());
        saves_at_once_each_reach_their_own_session(store.clone(), None).await;
        // The user id column holds 191 characters; strict mode refuses more.
        saves_at_once_each_reach_their_own_session(store, Some(&"u".repeat(300))).await;
    }
}

/// Three sessions, created and loaded, so that their saves compare and set.
async fn three_loaded_sessions(store: &Arc<dyn Store>) -> Vec<SessionId> {
    let now = hipflask_conformance::NOW;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = SessionId::generate();
        store.create(&id, Record { data: Dict::new(), created_at: now, expires_at: now + 3600 }).await.unwrap();
        assert!(store.load(&id, now).await.unwrap().is_some());
        ids.push(id);
    }
    ids
}

/// Saves of all `ids` at once (each sets `n` to its index), while another
/// transaction holds the row of `ids[0]`: the saves of the others, sent
/// together with it, must finish; the first must wait for its row, and be
/// applied once `release` has released it.
async fn saves_pass_a_row_locked_elsewhere(
    store: &Arc<dyn Store>,
    ids: &[SessionId],
    release: impl std::future::Future<Output = ()>,
) {
    use hipflask::{Changes, Update, Updated, Value};
    let now = hipflask_conformance::NOW;
    let mut saves: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (store, id) = (store.clone(), id.clone());
            let update = Update {
                changes: Changes { cleared: false, keys: vec![("n".into(), Some(Value::Int(i as i64)))] },
                expires_at: now + 3600,
                loaded: None,
            };
            tokio::spawn(async move { store.update(&id, &update, now).await.unwrap() })
        })
        .collect();
    let first = saves.remove(0);
    for save in saves {
        let done = tokio::time::timeout(std::time::Duration::from_secs(10), save).await;
        assert_eq!(done.expect("a save waited for another session's locked row").unwrap(), Updated::Applied);
    }
    assert!(!first.is_finished(), "a save went past its own locked row");
    release.await;
    assert_eq!(first.await.unwrap(), Updated::Applied);
    saved_in_order(store, ids).await;
}

/// Each of `ids` holds its index as `n`.
async fn saved_in_order(store: &Arc<dyn Store>, ids: &[SessionId]) {
    for (i, id) in ids.iter().enumerate() {
        let data = store.load(id, hipflask_conformance::NOW).await.unwrap().unwrap().data;
        assert_eq!(data.get("n"), Some(&hipflask::Value::Int(i as i64)), "session {i}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_row_locked_elsewhere_holds_up_only_its_own_save() {
    use sqlx::Connection as _;
    if let Some(url) = url("POSTGRES_URL") {
        let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url).await.unwrap());
        let ids = three_loaded_sessions(&store).await;
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = other.begin().await.unwrap();
        sqlx::query("SELECT data FROM hipflask_sessions WHERE id = $1 FOR UPDATE")
            .bind(ids[0].as_str())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        saves_pass_a_row_locked_elsewhere(&store, &ids, async { tx.commit().await.unwrap() }).await;
    }
    if let Some(url) = url("MYSQL_URL") {
        let store: Arc<dyn Store> = Arc::new(MySqlStore::connect(&url).await.unwrap());
        let ids = three_loaded_sessions(&store).await;
        let mut other = sqlx::MySqlConnection::connect(&url).await.unwrap();
        let mut tx = other.begin().await.unwrap();
        sqlx::query("SELECT data FROM hipflask_sessions WHERE id = ? FOR UPDATE")
            .bind(ids[0].as_str())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        saves_pass_a_row_locked_elsewhere(&store, &ids, async { tx.commit().await.unwrap() }).await;
    }
}
