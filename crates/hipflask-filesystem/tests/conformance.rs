//! The filesystem store against the conformance suite, and its file handling.

use std::sync::Arc;

use hipflask::{Changes, Dict, Record, SessionId, Store, Update, Value};
use hipflask_filesystem::FileStore;

const NOW: u64 = hipflask_conformance::NOW;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hipflask-fs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_store_conforms() {
    let store = FileStore::open(temp_dir("conformance")).await.unwrap();
    hipflask_conformance::run(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_store_conforms_on_its_own_threads() {
    let store = FileStore::open(temp_dir("conformance-threads")).await.unwrap().with_own_threads();
    hipflask_conformance::run(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_directory_lose_nothing() {
    // Two instances stand in for two processes sharing the directory; one
    // updates on the caller's thread when it can, the other on its own.
    let dir = temp_dir("shared");
    let a: Arc<dyn Store> = Arc::new(FileStore::open(&dir).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(FileStore::open(&dir).await.unwrap().with_own_threads());
    let id = Arc::new(SessionId::generate());
    a.create(&id, Record { data: Dict::new(), created_at: NOW, expires_at: NOW + 60 }).await.unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let id = id.clone();
            tokio::spawn(async move {
                let changes = Changes { cleared: false, keys: vec![(format!("k{i}"), Some(Value::Int(i)))] };
                store.update(&id, &Update { changes, expires_at: NOW + 60, loaded: None }, NOW).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.load(&id, NOW).await.unwrap().unwrap().data.len(), 40);
}

#[tokio::test]
async fn corrupted_and_foreign_files_are_harmless() {
    let dir = temp_dir("corrupt");
    let store = FileStore::open(&dir).await.unwrap();
    let id = SessionId::generate();
    store.create(&id, Record { data: Dict::new(), created_at: NOW, expires_at: NOW + 60 }).await.unwrap();
    std::fs::write(dir.join(format!("{}.session", id.as_str())), b"\xff\xfe garbage").unwrap();
    std::fs::write(dir.join("notes.txt"), "not a session").unwrap();
    std::fs::write(dir.join("..session"), "odd name").unwrap();
    assert_eq!(store.load(&id, NOW).await.unwrap(), None, "a corrupted file is a missing session");
    assert_eq!(store.list(NOW).await.unwrap(), Vec::<SessionId>::new());
    assert_eq!(store.delete_expired(NOW + 100).await.unwrap(), 0);
}

#[tokio::test]
async fn sessions_survive_a_new_store_on_the_same_directory() {
    let dir = temp_dir("reopen");
    let id = SessionId::generate();
    let data: Dict = [("user".to_owned(), Value::from("alice"))].into();
    FileStore::open(&dir)
        .await
        .unwrap()
        .create(&id, Record { data: data.clone(), created_at: NOW, expires_at: NOW + 60 })
        .await
        .unwrap();
    let again = FileStore::open(&dir).await.unwrap();
    assert_eq!(again.load(&id, NOW).await.unwrap().unwrap().data, data);
}

/// Loads take no lock, and an update that finds the directory lock held
/// (here as another process would hold it) waits for it on the store's
/// thread: neither holds up the caller's thread, which is the runtime's
/// only one here. The lock is let go a second later from a thread of the
/// test's, so a wait on the caller's thread would fail the test, not hang it.
#[tokio::test(flavor = "current_thread")]
async fn nothing_waits_for_the_lock_on_the_callers_thread() {
    for own_threads in [false, true] {
        let dir = temp_dir(&format!("lock-wait-{own_threads}"));
        let mut store = FileStore::open(&dir).await.unwrap();
        if own_threads {
            store = store.with_own_threads();
        }
        let id = SessionId::generate();
        let record = Record { data: Dict::from([("a".into(), Value::Int(1))]), created_at: NOW, expires_at: NOW + 60 };
        store.create(&id, record).await.unwrap();
        let other_process = std::fs::OpenOptions::new().write(true).open(dir.join(".lock")).unwrap();
        other_process.lock().unwrap();
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let releasing = std::thread::spawn({
            let released = released.clone();
            move || {
                std::thread::sleep(std::time::Duration::from_secs(1));
                released.store(true, std::sync::atomic::Ordering::SeqCst);
                other_process.unlock().unwrap();
            }
        });
        let saving = tokio::spawn({
            let (store, id) = (store.clone(), id.clone());
            async move { store.update(&id, &set("a", Value::Int(2)), NOW).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!saving.is_finished(), "the update did not wait for the lock");
        let loaded = store.load(&id, NOW).await.unwrap().unwrap();
        assert!(!released.load(std::sync::atomic::Ordering::SeqCst), "the load waited for the lock");
        assert_eq!(loaded.data["a"], Value::Int(1));
        assert_eq!(saving.await.unwrap().unwrap(), hipflask::Updated::Applied);
        assert!(released.load(std::sync::atomic::Ordering::SeqCst));
        releasing.join().unwrap();
        assert_eq!(store.load(&id, NOW).await.unwrap().unwrap().data["a"], Value::Int(2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn set(key: &str, value: Value) -> Update {
    Update {
        changes: Changes { cleared: false, keys: vec![(key.into(), Some(value))] },
        expires_at: NOW + 60,
        loaded: None,
    }
}

fn records_in(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file).unwrap().matches("hipflask-session 2 ").count()
}

/// A store in a directory of its own, the directory, an id and its file.
async fn one_session_file(name: &str) -> (FileStore, std::path::PathBuf, SessionId, std::path::PathBuf) {
    let dir = temp_dir(name);
    let store = FileStore::open(&dir).await.unwrap();
    let id = SessionId::generate();
    let file = dir.join(format!("{}.session", id.as_str()));
    (store, dir, id, file)
}

/// Saves append to the session's file and each load sees the latest; the
/// file is rewritten as one record before it passes 8 KiB.
#[tokio::test]
async fn saves_append_until_the_file_is_rewritten() {
    let (store, dir, id, file) = one_session_file("append").await;
    store.create(&id, Record { data: Dict::new(), created_at: NOW, expires_at: NOW + 60 }).await.unwrap();
    let (mut most, mut rewrites) = (1, 0);
    for i in 0..600 {
        let before = records_in(&file);
        assert_eq!(store.update(&id, &set("n", Value::Int(i)), NOW).await.unwrap(), hipflask::Updated::Applied);
        assert_eq!(store.load(&id, NOW).await.unwrap().unwrap().data["n"], Value::Int(i));
        let after = records_in(&file);
        if after == 1 {
            rewrites += 1;
        } else {
            assert_eq!(after, before + 1, "an append adds one record");
        }
        most = most.max(after);
        assert!(std::fs::metadata(&file).unwrap().len() <= 8 * 1024);
    }
    assert!(most > 50, "small saves append ({most} records at most)");
    assert!(rewrites >= 3, "a file near 8 KiB is rewritten ({rewrites} rewrites)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Appends `junk` after a session's record `n = 1`: loads still give that
/// record, and the next save rewrites the file, leaving the junk out.
async fn junk_is_skipped_and_rewritten_away(name: &str, junk: &str) {
    let (store, dir, id, file) = one_session_file(name).await;
    store.create(&id, Record { data: Dict::new(), created_at: NOW, expires_at: NOW + 60 }).await.unwrap();
    store.update(&id, &set("n", Value::Int(1)), NOW).await.unwrap();
    let mut appending = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    std::io::Write::write_all(&mut appending, junk.as_bytes()).unwrap();
    assert_eq!(store.load(&id, NOW).await.unwrap().unwrap().data["n"], Value::Int(1));
    store.update(&id, &set("n", Value::Int(3)), NOW).await.unwrap();
    assert_eq!(store.load(&id, NOW).await.unwrap().unwrap().data["n"], Value::Int(3));
    assert_eq!(records_in(&file), 1, "rewritten, the junk gone");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What an append cut short by a crash or a full disk leaves is skipped,
/// and the next save rewrites the file rather than append after it.
#[tokio::test]
async fn a_torn_record_is_skipped_and_the_next_save_rewrites_the_file() {
    junk_is_skipped_and_rewritten_away("torn", &format!("hipflask-session 2 {NOW} {} 40\n{{\"n\":2", NOW + 60)).await;
}

/// A whole record that does not parse (a damaged block) gives way to the
/// one before it, and the next save rewrites the file without it.
#[tokio::test]
async fn a_damaged_record_gives_way_to_the_one_before_and_is_rewritten_away() {
    let damaged = format!("hipflask-session 2 {NOW} {} 6\n{{\"n\":}}\n", NOW + 60);
    junk_is_skipped_and_rewritten_away("damaged", &damaged).await;
}

/// Files written before records carried their length are still sessions,
/// and move to the current format on their next save.
#[tokio::test]
async fn first_format_files_are_read_and_rewritten_on_save() {
    let (store, dir, id, file) = one_session_file("v1").await;
    std::fs::write(&file, format!("hipflask-session 1 {NOW} {}\n{{\"user\":\"alice\"}}", NOW + 60)).unwrap();
    assert_eq!(store.load(&id, NOW).await.unwrap().unwrap().data["user"], Value::from("alice"));
    store.update(&id, &set("n", Value::Int(1)), NOW).await.unwrap();
    let loaded = store.load(&id, NOW).await.unwrap().unwrap();
    assert_eq!((loaded.data["user"].clone(), loaded.data["n"].clone()), (Value::from("alice"), Value::Int(1)));
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("hipflask-session 2 "));
    assert_eq!(records_in(&file), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
