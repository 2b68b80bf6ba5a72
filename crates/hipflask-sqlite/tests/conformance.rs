//! The SQLite store against the conformance suite, on a real database file.

use std::sync::Arc;

use hipflask::{Dict, Record, SessionId, Store};
use hipflask_sqlite::SqliteStore;

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hipflask-sqlite-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("sessions.db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_conforms() {
    let store = SqliteStore::open(temp_db("conformance")).await.unwrap();
    hipflask_conformance::run(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_conforms_on_its_own_thread() {
    let store = SqliteStore::open(temp_db("conformance-thread")).await.unwrap().with_own_threads();
    hipflask_conformance::run(Arc::new(store)).await;
}

/// A load answers from the last commit while another process holds a
/// write transaction open, without waiting for it on the caller's thread,
/// the runtime's only one here. The transaction ends a second later from a
/// thread of the test's, so a wait would fail the test, not hang it.
#[tokio::test(flavor = "current_thread")]
async fn loads_do_not_wait_for_another_process_writing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let now = hipflask_conformance::NOW;
    for own_thread in [false, true] {
        let path = temp_db(&format!("writing-{own_thread}"));
        let mut store = SqliteStore::open(&path).await.unwrap();
        if own_thread {
            store = store.with_own_threads();
        }
        let id = SessionId::generate();
        let data: Dict = [("user".to_owned(), hipflask::Value::from("alice"))].into();
        store.create(&id, Record { data: data.clone(), created_at: now, expires_at: now + 60 }).await.unwrap();
        // A load right after this store's own write goes to its thread; the
        // ones after it, with no write between, to the read-only connection,
        // which is the one this test is about.
        store.load(&id, now).await.unwrap();
        let other_process = rusqlite::Connection::open(&path).unwrap();
        other_process
            .execute_batch("BEGIN IMMEDIATE; UPDATE hipflask_sessions SET data = '{\"user\":\"bob\"}';")
            .unwrap();
        let committed = Arc::new(AtomicBool::new(false));
        let committing = std::thread::spawn({
            let committed = committed.clone();
            move || {
                std::thread::sleep(std::time::Duration::from_secs(1));
                committed.store(true, Ordering::SeqCst);
                other_process.execute_batch("COMMIT").unwrap();
            }
        });
        let loaded = store.load(&id, now).await.unwrap().unwrap();
        assert!(!committed.load(Ordering::SeqCst), "the load waited for the other process");
        assert_eq!(loaded.data, data);
        committing.join().unwrap();
        assert_eq!(store.load(&id, now).await.unwrap().unwrap().data["user"], hipflask::Value::from("bob"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_reopening_the_file() {
    let path = temp_db("reopen");
    let id = SessionId::generate();
    let data: Dict = [("user".to_owned(), hipflask::Value::from("alice"))].into();
    let now = hipflask_conformance::NOW;
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.create(&id, Record { data: data.clone(), created_at: now, expires_at: now + 60 }).await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.load(&id, now).await.unwrap().unwrap().data, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_row_reads_as_missing() {
    let path = temp_db("corrupt");
    let store = SqliteStore::open(&path).await.unwrap();
    let id = SessionId::generate();
    let now = hipflask_conformance::NOW;
    store.create(&id, Record { data: Dict::new(), created_at: now, expires_at: now + 60 }).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE hipflask_sessions SET data = '{not json' WHERE id = ?1", [id.as_str()]).unwrap();
    assert_eq!(store.load(&id, now).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_with_a_clear_error() {
    let path = temp_db("newer");
    drop(SqliteStore::open(&path).await.unwrap());
    rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_prefix_separates_apps_sharing_one_table() {
    let path = temp_db("prefix");
    let a = SqliteStore::open(&path).await.unwrap().with_key_prefix("session:");
    let b = SqliteStore::open(&path).await.unwrap().with_key_prefix("other_%:");
    hipflask_conformance::run(Arc::new(a.clone())).await;
    let now = hipflask_conformance::NOW;
    let id = SessionId::generate();
    a.create(&id, Record { data: Dict::new(), created_at: now, expires_at: now + 60 }).await.unwrap();
    assert!(b.load(&id, now).await.unwrap().is_none(), "another prefix does not see it");
    assert!(b.list(now).await.unwrap().is_empty());
    assert_eq!(b.delete_expired(now + 3600 * 24).await.unwrap(), 0, "nor cleans it up");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let stored: String =
        conn.query_row("SELECT id FROM hipflask_sessions WHERE id LIKE 'session:%' LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(stored.starts_with("session:"), "stored as prefix + id, as Flask-Session does");
}

/// Two processes on one file: a save from the one that read the row before
/// the other changed it merges into the row as stored, never over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_from_a_stale_instance_is_merged_not_swapped_in() {
    let path = temp_db("stale");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    hipflask_conformance::a_save_from_a_stale_instance_is_merged_not_swapped_in(Arc::new(a), Arc::new(b)).await;
}

/// A load finds a row by the rowid it was last seen under, but only if that
/// rowid still holds the session: a row deleted and made again elsewhere,
/// with its old rowid now another session's, is found by its id; one
/// deleted for good is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_moved_by_another_process_is_found_by_its_id() {
    let path = temp_db("moved");
    let store = SqliteStore::open(&path).await.unwrap();
    let now = hipflask_conformance::NOW;
    let dict = |v: &str| -> Dict { [("v".to_owned(), hipflask::Value::from(v))].into() };
    let (x, y) = (SessionId::generate(), SessionId::generate());
    store.create(&x, Record { data: dict("x1"), created_at: now, expires_at: now + 60 }).await.unwrap();
    assert_eq!(store.load(&x, now).await.unwrap().unwrap().data, dict("x1"));

    let conn = rusqlite::Connection::open(&path).unwrap();
    let old: i64 =
        conn.query_row("SELECT rowid FROM hipflask_sessions WHERE id = ?1", [x.as_str()], |r| r.get(0)).unwrap();
    conn.execute("DELETE FROM hipflask_sessions WHERE id = ?1", [x.as_str()]).unwrap();
    conn.execute(
        "INSERT INTO hipflask_sessions (rowid, id, data, created_at, expires_at) VALUES (?1, ?2, '{\"v\":\"y\"}', ?3, ?4)",
        rusqlite::params![old, y.as_str(), now as i64, (now + 60) as i64],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO hipflask_sessions (id, data, created_at, expires_at) VALUES (?1, '{\"v\":\"x2\"}', ?2, ?3)",
        rusqlite::params![x.as_str(), now as i64, (now + 60) as i64],
    )
    .unwrap();
    assert_eq!(store.load(&x, now).await.unwrap().unwrap().data, dict("x2"), "not the row now at its old rowid");
    assert_eq!(store.load(&y, now).await.unwrap().unwrap().data, dict("y"));

    // A save goes to the row as found, and leaves the other alone.
    let changes = hipflask::Changes { cleared: false, keys: vec![("v".to_owned(), Some(hipflask::Value::from("x3")))] };
    let update = hipflask::Update { changes, expires_at: now + 60, loaded: None };
    assert_eq!(store.update(&x, &update, now).await.unwrap(), hipflask::Updated::Applied);
    assert_eq!(store.load(&x, now).await.unwrap().unwrap().data, dict("x3"));
    assert_eq!(store.load(&y, now).await.unwrap().unwrap().data, dict("y"));

    conn.execute("DELETE FROM hipflask_sessions WHERE id = ?1", [x.as_str()]).unwrap();
    assert_eq!(store.load(&x, now).await.unwrap(), None, "deleted elsewhere");
}
