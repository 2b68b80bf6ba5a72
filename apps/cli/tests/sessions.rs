//! `hipflask sessions` against a real SQLite store.

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use hipflask::{Dict, Record, SessionId, Store, Value};

fn hipflask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hipflask")).args(args).env_remove("SESSION_DATABASE_URL").output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap().trim_end().to_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[tokio::test]
async fn list_show_delete_cleanup() {
    let dir = std::env::temp_dir().join(format!("hipflask-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sessions.db");
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}", path.display());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let live = SessionId::generate();
    let old = SessionId::generate();
    {
        let store = hipflask_sqlite::SqliteStore::open(&path).await.unwrap();
        let data: Dict = [("user".to_owned(), Value::from("alice"))].into();
        store.create(&live, Record { data, created_at: now, expires_at: now + 3600 }).await.unwrap();
        store.create(&old, Record { data: Dict::new(), created_at: now - 100, expires_at: now - 1 }).await.unwrap();
    }

    let o = hipflask(&["sessions", "list", "--store", &url]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), live.as_str(), "only live sessions are listed");

    let o = hipflask(&["sessions", "show", "--store", &url, live.as_str()]);
    assert!(out(&o).starts_with(r#"{"user":"alice"}"#), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("expires: "));

    let o = hipflask(&["sessions", "cleanup", "--store", &url]);
    assert_eq!(out(&o), "removed 1 expired sessions");

    let o = hipflask(&["sessions", "delete", "--store", &url, live.as_str()]);
    assert_eq!(out(&o), format!("deleted {}", live.as_str()));
    let o = hipflask(&["sessions", "delete", "--store", &url, live.as_str()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("no session"), "{}", err(&o));

    let o = hipflask(&["sessions", "show", "--store", &url, "../etc/passwd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("is not a session id"));

    let o = Command::new(env!("CARGO_BIN_EXE_hipflask"))
        .args(["sessions", "migrate"])
        .env("SESSION_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out(&o), "schema version 1", "{}", err(&o));
}

/// An empty file store of this test's own, its `file://` URL and the time now.
async fn file_store(name: &str) -> (hipflask_filesystem::FileStore, String, u64) {
    let dir = std::env::temp_dir().join(format!("hipflask-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = hipflask_filesystem::FileStore::open(&dir).await.unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    (store, format!("file://{}", dir.display()), now)
}

#[tokio::test]
async fn ids_that_start_with_a_dash_are_ids_not_options() {
    let (store, url, now) = file_store("dash").await;
    // `-h` and `--` would be help and the end of options; `-s` a short flag.
    for prefix in ["-", "--", "-h", "-s"] {
        let text = format!("{prefix}{}A", "w".repeat(42 - prefix.len()));
        let id = SessionId::parse(&text).unwrap();
        let data: Dict = [("n".to_owned(), Value::from(1))].into();
        store.create(&id, Record { data, created_at: now, expires_at: now + 60 }).await.unwrap();
        let o = hipflask(&["sessions", "show", "--store", &url, &text]);
        assert!(out(&o).starts_with(r#"{"n":1}"#), "{text}: {}{}", out(&o), err(&o));
        let o = hipflask(&["sessions", "delete", "--store", &url, &text]);
        assert_eq!(out(&o), format!("deleted {text}"), "{}", err(&o));
    }
}

#[tokio::test]
async fn the_filesystem_store_works_too() {
    let (store, url, now) = file_store("fs").await;
    let id = SessionId::generate();
    store.create(&id, Record { data: Dict::new(), created_at: now, expires_at: now + 60 }).await.unwrap();
    assert_eq!(out(&hipflask(&["sessions", "list", "--store", &url])), id.as_str());
}

#[test]
fn a_missing_or_unsupported_store_is_a_usage_error() {
    let o = hipflask(&["sessions", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("--store"), "{}", err(&o));
    let o = hipflask(&["sessions", "list", "--store", "mongodb://x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("sqlite://"), "{}", err(&o));
}
