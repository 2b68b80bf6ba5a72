//! The demo on server-side sessions (every SESSION_TYPE but cookie): the
//! same pages, with the cookie holding only an id, regenerate at login,
//! destroy at logout, and logging out everywhere. Every test runs on each store.

use std::sync::Arc;

use hipflask::{MemoryStore, Store};
use hipflask_demo::{DemoApp, DemoConfig, app};
use hipflask_sqlite::SqliteStore;
use http::{Method, StatusCode};

mod common;
use common::Client;

fn frozen() -> u64 {
    1_700_000_000
}

fn demo(store: Arc<dyn Store>) -> DemoApp {
    let session = hipflask::Config::builder().secret_key("secret").clock(frozen).store(store.clone()).build().unwrap();
    app(DemoConfig { session, store: Some(store), metrics: None })
}

async fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

async fn filesystem() -> Arc<dyn Store> {
    let dir = std::env::temp_dir().join(format!("hipflask-demo-fs-{}", hipflask::SessionId::generate().as_str()));
    Arc::new(hipflask_filesystem::FileStore::open(dir).await.unwrap())
}

/// The Redis at REDIS_URL under a key prefix of this test's own.
async fn redis(local_cache: bool) -> Option<Arc<dyn Store>> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipped: set REDIS_URL");
        return None;
    };
    let prefix = format!("demo-test-{}:", hipflask::SessionId::generate().as_str());
    let store = hipflask_redis::RedisStore::connect(&url).await.unwrap().with_key_prefix(&prefix);
    Some(Arc::new(if local_cache { store.with_local_cache(1000).await.unwrap() } else { store }))
}

/// A SQL database from `var` under a key prefix of this test's own.
async fn sql(var: &str) -> Option<Arc<dyn Store>> {
    let Ok(url) = std::env::var(var) else {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipped: set {var}");
        return None;
    };
    let prefix = format!("demo-test-{}:", hipflask::SessionId::generate().as_str());
    Some(if var == "POSTGRES_URL" {
        Arc::new(hipflask_sql::PostgresStore::connect(&url).await.unwrap().with_key_prefix(&prefix))
    } else {
        Arc::new(hipflask_sql::MySqlStore::connect(&url).await.unwrap().with_key_prefix(&prefix))
    })
}

async fn sqlite() -> Arc<dyn Store> {
    let dir = std::env::temp_dir().join(format!(
        "hipflask-demo-{}-{}",
        std::process::id(),
        hipflask::SessionId::generate().as_str()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Arc::new(SqliteStore::open(dir.join("sessions.db")).await.unwrap())
}

/// Runs each test body on every store.
macro_rules! on_every_store {
    ($($name:ident($store:ident) $body:block)*) => {
        mod memory_store {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { let $store = memory().await; $body })*
        }
        mod sqlite_store {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { let $store = sqlite().await; $body })*
        }
        mod filesystem_store {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { let $store = filesystem().await; $body })*
        }
        mod postgres_store {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { let Some($store) = sql("POSTGRES_URL").await else { return }; $body })*
        }
        mod mysql_store {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { let Some($store) = sql("MYSQL_URL").await else { return }; $body })*
        }
        mod redis_store {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { let Some($store) = redis(false).await else { return }; $body })*
        }
        mod redis_store_with_local_cache {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { let Some($store) = redis(true).await else { return }; $body })*
        }
    };
}

async fn live(store: &Arc<dyn Store>) -> usize {
    store.list(frozen()).await.unwrap().len()
}

on_every_store! {
pages_work_the_same_on_a_store(store) {
    let mut c = Client::new(demo(store.clone()));
    for n in 1..=3 {
        assert_eq!(c.get("/visits-counter/").await.body, format!("Total visits: {n}"));
    }
    assert_eq!(c.cookie.as_deref().map(str::len), Some(43), "the cookie holds only the id");
    assert!(c.get("/set").await.body.contains("session.get('user') = poloyy"));
    assert!(c.get("/del").await.body.contains("session.get('user') = None"));
    c.get("/session/").await;
    c.get("/session/").await;
    assert!(c.get("/session/").await.body.contains("'pineapples': '100'"));
    assert_eq!(c.json(Method::PUT, "/api/session/n", "7").await.status, StatusCode::NO_CONTENT);
    assert!(c.get("/api/session").await.body.contains(r#""n":7"#));
    assert_eq!(live(&store).await, 1);
}

login_regenerates_and_logout_destroys(store) {
    let mut c = Client::new(demo(store.clone()));
    c.get("/visits-counter/").await;
    let before = c.cookie.clone().unwrap();
    c.form("/login", "username=alice&password=x&remember=on").await;
    let after = c.cookie.clone().unwrap();
    assert_ne!(before, after, "a new id at login");
    let page = c.get("/").await;
    assert!(page.body.contains("Logged in as <strong>alice</strong>"));
    assert!(page.body.contains("Log out everywhere"));
    c.form("/logout", "").await;
    let page = c.get("/").await;
    assert!(page.body.contains("Logged out"));
    assert!(!page.body.contains("Logged in as"));
    let id = hipflask::SessionId::parse(&after).unwrap();
    assert!(store.load(&id, frozen()).await.unwrap().is_none(), "the logged-in session is gone from the store");
}

log_out_everywhere_ends_the_users_other_sessions(store) {
    let app = demo(store.clone());
    let mut laptop = Client::new(app.clone());
    let mut phone = Client::new(app.clone());
    let mut other = Client::new(app);
    laptop.form("/login", "username=alice&password=x").await;
    phone.form("/login", "username=alice&password=x").await;
    other.form("/login", "username=bob&password=x").await;
    for c in [&mut laptop, &mut phone, &mut other] {
        c.get("/").await;
    }
    laptop.form("/logout-everywhere", "").await;
    assert!(laptop.get("/").await.body.contains("Logged out of 2 sessions"));
    assert!(!phone.get("/").await.body.contains("Logged in as"), "the phone is logged out too");
    assert!(other.get("/").await.body.contains("Logged in as <strong>bob</strong>"), "bob is not");
}

permanent_pages_and_bench_routes(store) {
    let mut c = Client::new(demo(store.clone()));
    assert_eq!(c.get("/get_session/").await.body, "没有session数据");
    assert!(c.get("/permanent/").await.set_cookie().unwrap().contains("Expires="));
    assert_eq!(c.get("/get_session/").await.body, "zhiliao");
    assert!(c.get("/del_session/").await.set_cookie().unwrap().contains("Max-Age=0"));
    assert_eq!(c.get("/get_session/").await.body, "没有session数据");
    assert_eq!(c.get("/bench/seed").await.body, "1");
    let read = c.get("/bench/read").await;
    assert_eq!((read.body.as_str(), read.set_cookie()), ("1", None), "a read does not write");
    assert_eq!(c.get("/bench/write").await.body, "2");
    assert_eq!(c.get("/bench/read").await.body, "2");
    assert_eq!(live(&store).await, 1);
}

bad_api_bodies_leave_the_stored_session_alone(store) {
    let mut c = Client::new(demo(store.clone()));
    c.json(Method::PUT, "/api/session/keep", r#""me""#).await;
    for body in ["not json", "[[[", "\"yes\""] {
        let path = if body.contains("yes") { "/api/session/_permanent" } else { "/api/session/x" };
        assert_eq!(c.json(Method::PUT, path, body).await.status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(c.get("/api/session").await.body, r#"{"_permanent":true,"keep":"me"}"#);
}
}
