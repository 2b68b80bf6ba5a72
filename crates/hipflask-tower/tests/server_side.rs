//! Server-side sessions through the middleware, on the memory store and on
//! a store that fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use hipflask::{
    Config, ConfigBuilder, ConflictPolicy, Error, ErrorKind, MemoryStore, Record, SessionId, Store, StoreFuture,
    Update, Updated,
};
use hipflask_tower::{Session, SessionLayer};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

mod common;
mod faulty;
use common::Logs;
use faulty::Faulty;

fn clock() -> u64 {
    1_700_000_000
}

fn builder(store: Arc<dyn Store>) -> ConfigBuilder {
    Config::builder().secret_key("secret").clock(clock).store(store)
}

async fn get_key(session: Session, Path(key): Path<String>) -> String {
    session.get::<String>(&key).unwrap_or_else(|| "None".into())
}

async fn set_key(session: Session, Path((key, value)): Path<(String, String)>) -> &'static str {
    session.insert(key, value).unwrap();
    "ok"
}

async fn logout(session: Session) -> &'static str {
    session.destroy();
    "bye"
}

async fn login(session: Session) -> &'static str {
    session.regenerate();
    session.insert("_user_id", "alice").unwrap();
    "hi"
}

async fn untouched() -> &'static str {
    "untouched"
}

fn app(config: Config) -> Router {
    app_with(config, Router::new())
}

/// The test routes plus `extra`, all behind the session layer.
fn app_with(config: Config, extra: Router) -> Router {
    extra
        .route("/get/{key}", get(get_key))
        .route("/set/{key}/{value}", get(set_key))
        .route("/logout", get(logout))
        .route("/login", get(login))
        .route("/untouched", get(untouched))
        .layer(SessionLayer::new(config))
}

struct Answer {
    status: StatusCode,
    set_cookie: Option<String>,
    vary: Option<String>,
    body: String,
    logs: String,
}

impl Answer {
    fn cookie_value(&self) -> Option<String> {
        let set = self.set_cookie.as_ref()?;
        Some(set["session=".len()..set.find(';').unwrap_or(set.len())].to_owned())
    }
}

async fn send(app: &Router, path: &str, cookie: Option<&str>) -> Answer {
    let mut req = Request::get(path);
    if let Some(c) = cookie {
        req = req.header("cookie", format!("session={c}"));
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (status, set_cookie, vary) = {
        let header = |name| res.headers().get(name).map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned());
        (res.status(), header("set-cookie"), header("vary"))
    };
    let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Answer { status, set_cookie, vary, body, logs: String::new() }
}

async fn stored(store: &MemoryStore, id: &str) -> Option<Record> {
    let id = SessionId::parse(id)?;
    store.load(&id, clock()).await.unwrap()
}

async fn expiry(store: &MemoryStore, id: &str) -> u64 {
    let id = SessionId::parse(id).unwrap();
    store.load(&id, moving_clock()).await.unwrap().unwrap().expires_at
}

/// The refresh test moves time; it gets a clock of its own so that tests
/// running in parallel do not see it jump.
static MOVING_CLOCK: AtomicU64 = AtomicU64::new(1_700_000_000);

fn moving_clock() -> u64 {
    MOVING_CLOCK.load(Ordering::SeqCst)
}

#[tokio::test]
async fn untouched_and_read_only_requests_write_nothing() {
    let store = Arc::new(MemoryStore::new());
    let app = app(builder(store.clone()).build().unwrap());
    let a = send(&app, "/untouched", None).await;
    assert_eq!((a.set_cookie.as_deref(), a.vary.as_deref()), (None, None));
    let a = send(&app, "/get/user", None).await;
    assert_eq!(a.body, "None");
    assert_eq!((a.set_cookie.as_deref(), a.vary.as_deref()), (None, Some("Cookie")));
    assert!(store.is_empty(), "reading a new session stores nothing");
}

#[tokio::test]
async fn a_write_stores_the_session_and_the_cookie_holds_only_the_id() {
    let store = Arc::new(MemoryStore::new());
    let app = app(builder(store.clone()).build().unwrap());
    let a = send(&app, "/set/user/poloyy", None).await;
    let set = a.set_cookie.clone().unwrap();
    // Flask-Session's cookie: the 43-character id, permanent by default.
    assert!(set.ends_with("; Expires=Fri, 15 Dec 2023 22:13:20 GMT; HttpOnly; Path=/"), "{set}");
    let id = a.cookie_value().unwrap();
    assert_eq!(id.len(), 43);
    let record = stored(&store, &id).await.unwrap();
    assert_eq!(hipflask::to_tagged_json(&record.data), r#"{"_permanent":true,"user":"poloyy"}"#);
    let b = send(&app, "/get/user", Some(&id)).await;
    assert_eq!(b.body, "poloyy");
    assert_eq!(b.set_cookie, None, "a read within the refresh interval writes nothing");
    assert_eq!(stored(&store, &id).await.unwrap().expires_at, record.expires_at);
}

#[tokio::test]
async fn expiry_is_refreshed_once_the_refresh_fraction_has_passed() {
    let store = Arc::new(MemoryStore::new());
    let config = builder(store.clone())
        .clock(moving_clock)
        .permanent_session_lifetime(Duration::from_secs(1000))
        .build()
        .unwrap();
    let app = app(config);
    let id = send(&app, "/set/a/1", None).await.cookie_value().unwrap();
    let first = expiry(&store, &id).await;
    MOVING_CLOCK.fetch_add(50, Ordering::SeqCst);
    send(&app, "/get/a", Some(&id)).await;
    assert_eq!(expiry(&store, &id).await, first, "5% of the lifetime: no refresh");
    MOVING_CLOCK.fetch_add(60, Ordering::SeqCst);
    let a = send(&app, "/get/a", Some(&id)).await;
    assert_eq!(expiry(&store, &id).await, first + 110, "11%: refreshed");
    assert!(a.set_cookie.unwrap().contains("Expires="), "the permanent cookie follows the store");
}

#[tokio::test]
async fn hostile_ids_never_reach_the_store_and_unknown_ids_are_not_adopted() {
    let store = Arc::new(MemoryStore::new());
    let app = app(builder(store.clone()).build().unwrap());
    let unknown = SessionId::generate();
    for bad in ["../../etc/passwd", "*", "' OR 1=1 --", "x", &"A".repeat(44), unknown.as_str()] {
        let a = send(&app, "/set/k/v", Some(bad)).await;
        assert_eq!(a.status, StatusCode::OK, "{bad}");
        let new_id = a.cookie_value().unwrap();
        assert_ne!(new_id, bad, "a client's id is never adopted");
        assert!(SessionId::parse(&new_id).is_some());
    }
    assert!(stored(&store, unknown.as_str()).await.is_none());
}

#[tokio::test]
async fn signed_ids_reject_a_bad_signature() {
    let store = Arc::new(MemoryStore::new());
    let app = app(builder(store.clone()).use_signer(true).build().unwrap());
    let a = send(&app, "/set/user/tom", None).await;
    let signed = a.cookie_value().unwrap();
    assert_eq!(signed.len(), 43 + 1 + 27, "Flask-Session's signed id");
    assert_eq!(send(&app, "/get/user", Some(&signed)).await.body, "tom");
    let (sid, _) = signed.split_once('.').unwrap();
    assert_eq!(send(&app, "/get/user", Some(sid)).await.body, "None", "an unsigned id is refused");
    let forged = format!("{sid}.AAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(send(&app, "/get/user", Some(&forged)).await.body, "None");
}

#[tokio::test]
async fn destroy_deletes_the_stored_session_and_the_cookie() {
    let store = Arc::new(MemoryStore::new());
    let app = app(builder(store.clone()).build().unwrap());
    let id = send(&app, "/set/user/alice", None).await.cookie_value().unwrap();
    let a = send(&app, "/logout", Some(&id)).await;
    // Flask-Session's deletion cookie carries only Domain and Path.
    assert_eq!(a.set_cookie.as_deref(), Some("session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/"));
    assert!(stored(&store, &id).await.is_none());
    assert_eq!(send(&app, "/get/user", Some(&id)).await.body, "None");
}

#[tokio::test]
async fn regenerate_moves_the_data_to_a_new_id() {
    let store = Arc::new(MemoryStore::new());
    let app = app(builder(store.clone()).build().unwrap());
    let old = send(&app, "/set/cart/apples", None).await.cookie_value().unwrap();
    let new = send(&app, "/login", Some(&old)).await.cookie_value().unwrap();
    assert_ne!(old, new);
    assert!(stored(&store, &old).await.is_none(), "the old id is gone (fixation)");
    let record = stored(&store, &new).await.unwrap();
    assert_eq!(hipflask::to_tagged_json(&record.data), r#"{"_permanent":true,"_user_id":"alice","cart":"apples"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_session_lose_nothing() {
    let store = Arc::new(MemoryStore::new());
    let app = app(builder(store.clone()).build().unwrap());
    let id = send(&app, "/set/start/1", None).await.cookie_value().unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (app, id) = (app.clone(), id.clone());
            tokio::spawn(async move { send(&app, &format!("/set/k{i}/v{i}"), Some(&id)).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let record = stored(&store, &id).await.unwrap();
    assert_eq!(record.data.len(), 102, "100 keys + start + _permanent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_racing_writers_is_not_undone() {
    let store = Arc::new(MemoryStore::new());
    let app = app(builder(store.clone()).build().unwrap());
    let id = send(&app, "/set/user/alice", None).await.cookie_value().unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (app, id) = (app.clone(), id.clone());
        let path = if i == 25 { "/logout".to_owned() } else { format!("/set/w{i}/x") };
        tasks.push(tokio::spawn(async move { send(&app, &path, Some(&id)).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert!(stored(&store, &id).await.is_none(), "a writer brought the session back");
}

#[tokio::test]
async fn conflicting_writes_of_one_key_are_refused_when_configured() {
    let store = Arc::new(MemoryStore::new());
    let config = builder(store.clone()).conflict_policy(ConflictPolicy::Reject).build().unwrap();
    let id = send(&app(config.clone()), "/set/a/0", None).await.cookie_value().unwrap();
    // A request that loaded a=0, while another saved a=1 in between.
    let session = config.load_session(&[format!("session={id}").as_bytes()]).await.unwrap();
    send(&app(config.clone()), "/set/a/1", Some(&id)).await;
    session.insert("a", "2").unwrap();
    let err = config.save_session(&session).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(send(&app(config), "/get/a", Some(&id)).await.body, "1");
}

/// A save the memory store answers in place is finished before it is
/// awaited; one that must wait for its store (here one without in-place
/// answers) owns what it needs, so it still saves once the handle it was
/// made from is gone. Both save the same way.
#[tokio::test]
async fn saves_answered_in_place_are_ready_and_others_wait_for_the_store() {
    let stores: [(Arc<dyn Store>, &str); 2] = [
        (Arc::new(MemoryStore::new()), "SaveSession(\"ready\")"),
        (Arc::new(Faulty::new(Duration::ZERO, |_| false)), "SaveSession(\"waiting for the store\")"),
    ];
    for (store, state) in stores {
        let config = builder(store).conflict_policy(ConflictPolicy::Reject).build().unwrap();
        let id = send(&app(config.clone()), "/set/a/0", None).await.cookie_value().unwrap();
        let session = config.load_session(&[format!("session={id}").as_bytes()]).await.unwrap();
        session.insert("a", "1").unwrap();
        let save = config.save_session(&session);
        drop(session);
        assert_eq!(format!("{save:?}"), state);
        let outcome = save.await.unwrap();
        assert!(outcome.set_cookie.is_some_and(|c| c.contains(&id)), "{state}: the cookie is re-issued");
        assert_eq!(send(&app(config), "/get/a", Some(&id)).await.body, "1", "{state}");
    }
}

/// A load the store answers in place (the memory store) or that needs no
/// store (no cookie, a cookie session) is finished before it is awaited,
/// with no boxed future; one that must wait for its store owns what it
/// needs, so it still loads once the configuration it was made from is gone.
#[tokio::test]
async fn loads_answered_in_place_are_ready_and_others_wait_for_the_store() {
    let stores: [(Arc<dyn Store>, &str); 2] = [
        (Arc::new(MemoryStore::new()), "LoadSession(\"ready\")"),
        (Arc::new(Faulty::new(Duration::ZERO, |_| false)), "LoadSession(\"waiting for the store\")"),
    ];
    for (store, state) in stores {
        let config = builder(store).build().unwrap();
        let id = send(&app(config.clone()), "/set/a/0", None).await.cookie_value().unwrap();
        let new = config.load_session(&[]);
        assert_eq!(format!("{new:?}"), "LoadSession(\"ready\")", "{state}: no cookie, no store call");
        assert_eq!(new.await.unwrap().get::<String>("a"), None);
        let load = config.load_session(&[format!("session={id}").as_bytes()]);
        drop(config);
        assert_eq!(format!("{load:?}"), state);
        assert_eq!(load.await.unwrap().get::<String>("a").as_deref(), Some("0"), "{state}");
    }
    let cookies = Config::builder().secret_key("secret").build().unwrap();
    assert_eq!(format!("{:?}", cookies.load_session(&[b"session=x"])), "LoadSession(\"ready\")");
}

/// A store that is down.
#[derive(Debug)]
struct Down;

fn down<T: Send + 'static>() -> StoreFuture<'static, T> {
    let source = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused (secret detail)");
    Box::pin(std::future::ready(Err(Error::new(ErrorKind::Backend, "store unreachable").with_source(source))))
}

impl Store for Down {
    fn load<'a>(&'a self, _: &'a SessionId, _: u64) -> StoreFuture<'a, Option<Record>> {
        down()
    }
    fn create<'a>(&'a self, _: &'a SessionId, _: Record) -> StoreFuture<'a, ()> {
        down()
    }
    fn update<'a>(&'a self, _: &'a SessionId, _: &'a Update, _: u64) -> StoreFuture<'a, Updated> {
        down()
    }
    fn delete<'a>(&'a self, _: &'a SessionId) -> StoreFuture<'a, bool> {
        down()
    }
    fn delete_expired(&self, _: u64) -> StoreFuture<'_, u64> {
        down()
    }
    fn list(&self, _: u64) -> StoreFuture<'_, Vec<SessionId>> {
        down()
    }
    fn sessions_of_user<'a>(&'a self, _: &'a str, _: u64) -> StoreFuture<'a, Vec<SessionId>> {
        down()
    }
    fn delete_user<'a>(&'a self, _: &'a str) -> StoreFuture<'a, u64> {
        down()
    }
}

#[test]
fn a_store_that_is_down_gives_503_with_an_empty_body() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let app = app(builder(Arc::new(Down)).build().unwrap());
    let id = SessionId::generate();
    for (path, cookie) in [("/get/user", Some(id.as_str())), ("/set/a/b", None)] {
        let logs = Logs::default();
        let mut a = logs.capture(|| rt.block_on(send(&app, path, cookie)));
        a.logs = logs.text();
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(a.body.is_empty(), "{path}: no detail to the client: {}", a.body);
        assert!(a.logs.contains("secret detail"), "{path}: the detail goes to tracing: {}", a.logs);
    }
    // A route that never touches the session does not notice the outage.
    let a = rt.block_on(send(&app, "/untouched", Some(id.as_str())));
    assert_eq!(a.status, StatusCode::OK);
}

static ABSOLUTE_CLOCK: AtomicU64 = AtomicU64::new(1_700_000_000);

fn absolute_clock() -> u64 {
    ABSOLUTE_CLOCK.load(Ordering::SeqCst)
}

/// On the memory store, whose loads are answered in place, and on a store
/// whose loads wait: the ending deletes the session on both paths.
#[tokio::test]
async fn the_absolute_timeout_ends_even_an_active_session() {
    let stores: [Arc<dyn Store>; 2] = [Arc::new(MemoryStore::new()), Arc::new(Faulty::new(Duration::ZERO, |_| false))];
    for store in stores {
        ABSOLUTE_CLOCK.store(1_700_000_000, Ordering::SeqCst);
        let config = builder(store.clone())
            .clock(absolute_clock)
            .refresh_fraction(0.0)
            .absolute_timeout(Some(Duration::from_secs(100)))
            .build()
            .unwrap();
        let app = app(config);
        let id = send(&app, "/set/user/alice", None).await.cookie_value().unwrap();
        for _ in 0..9 {
            ABSOLUTE_CLOCK.fetch_add(10, Ordering::SeqCst);
            assert_eq!(send(&app, "/get/user", Some(&id)).await.body, "alice", "{store:?}: active within the timeout");
        }
        ABSOLUTE_CLOCK.fetch_add(10, Ordering::SeqCst);
        assert_eq!(send(&app, "/get/user", Some(&id)).await.body, "None", "{store:?}: 100 s after creation it is over");
        let sid = SessionId::parse(&id).unwrap();
        assert!(store.load(&sid, absolute_clock()).await.unwrap().is_none(), "{store:?}: and deleted from the store");
    }
}

#[tokio::test]
async fn a_handler_sees_a_conflict_when_it_saves_itself() {
    let store = Arc::new(MemoryStore::new());
    let config = builder(store.clone()).conflict_policy(ConflictPolicy::Reject).build().unwrap();
    let other = store.clone();
    let handler = move |session: Session| async move {
        // Another request changes `a` after this one loaded the session.
        let id = session.id().unwrap();
        let changes = hipflask::Changes { cleared: false, keys: vec![("a".into(), Some("other".into()))] };
        other.update(&id, &Update { changes, expires_at: clock() + 60, loaded: None }, clock()).await.unwrap();
        session.insert("a", "mine").unwrap();
        match session.save().await {
            Err(e) if e.kind() == ErrorKind::Conflict => "conflict seen".to_owned(),
            other => format!("{other:?}"),
        }
    };
    let router = app_with(config, Router::new().route("/race", get(handler)));
    let id = send(&router, "/set/a/first", None).await.cookie_value().unwrap();
    let a = send(&router, "/race", Some(&id)).await;
    assert_eq!(a.body, "conflict seen");
    assert_eq!(send(&router, "/get/a", Some(&id)).await.body, "other", "the handler's change was not written");
}

#[tokio::test]
async fn an_explicit_save_of_a_new_session_still_sets_the_cookie_once() {
    let store = Arc::new(MemoryStore::new());
    let handler = |session: Session| async move {
        session.insert("a", "1").unwrap();
        session.save().await.unwrap();
        session.insert("b", "2").unwrap();
        "saved"
    };
    let router = app_with(builder(store.clone()).build().unwrap(), Router::new().route("/early", get(handler)));
    let a = send(&router, "/early", None).await;
    assert_eq!(a.status, StatusCode::OK);
    let id = a.cookie_value().expect("the cookie of the early save");
    let record = stored(&store, &id).await.unwrap();
    assert_eq!(hipflask::to_tagged_json(&record.data), r#"{"_permanent":true,"a":"1","b":"2"}"#);
    assert_eq!(store.len(), 1);
}

#[test]
fn a_store_failing_on_a_schedule_gives_503_then_recovers_with_sessions_intact() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    // Calls 3 to 6 fail: an outage of a few requests in the middle of a visit.
    let store = Arc::new(Faulty::new(Duration::ZERO, |call| (3..7).contains(&call)));
    let app = app(builder(store.clone()).build().unwrap());
    let logs = Logs::default();
    let run = |path: &str, cookie: Option<&str>| logs.capture(|| rt.block_on(send(&app, path, cookie)));
    let id = run("/set/a/1", None).cookie_value().unwrap(); // call 0: create
    assert_eq!(run("/set/a/2", Some(&id)).status, StatusCode::OK); // calls 1, 2
    for path in ["/set/a/3", "/get/a", "/set/b/x", "/get/a"] {
        let a = run(path, Some(&id)); // calls 3 to 6: the load fails
        assert_eq!((a.status, a.body.as_str(), a.set_cookie.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, "", None));
    }
    // Back without a restart, with the session as the last good write left it.
    assert_eq!(run("/get/a", Some(&id)).body, "2");
    assert_eq!(run("/get/b", Some(&id)).body, "None");
    assert_eq!(run("/set/a/4", Some(&id)).status, StatusCode::OK);
    assert_eq!(run("/get/a", Some(&id)).body, "4");
    assert!(logs.text().contains("injected fault"), "{}", logs.text());
}

#[test]
fn a_slow_store_times_out_with_503() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let slow = Arc::new(Faulty::new(Duration::from_millis(300), |_| false));
    let config = builder(slow).store_timeout(Some(Duration::from_millis(50))).build().unwrap();
    let app = app(config);
    let logs = Logs::default();
    let a = logs.capture(|| rt.block_on(send(&app, "/set/a/b", None)));
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.body.is_empty());
    assert!(logs.text().contains("did not answer within 50ms"), "{}", logs.text());
}

#[test]
fn a_slow_load_and_a_slow_explicit_save_time_out_too() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let slow = Arc::new(Faulty::new(Duration::from_millis(300), |_| false));
    let config = builder(slow).store_timeout(Some(Duration::from_millis(50))).build().unwrap();
    let early = |session: Session| async move {
        session.insert("a", "1").unwrap();
        match session.save().await {
            Ok(()) => "saved".to_owned(),
            Err(e) => format!("{:?}", e.kind()),
        }
    };
    let app = app_with(config, Router::new().route("/early", get(early)));
    let logs = Logs::default();
    // The store would answer at 300 ms: only the deadline ends these sooner.
    let started = std::time::Instant::now();
    let id = SessionId::generate();
    let a = logs.capture(|| rt.block_on(send(&app, "/get/a", Some(id.as_str()))));
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let a = logs.capture(|| rt.block_on(send(&app, "/early", None)));
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "Timeout"), "the handler hears of it");
    assert!(started.elapsed() >= Duration::from_millis(100), "{:?}", started.elapsed());
    assert!(logs.text().contains("did not answer within 50ms"), "{}", logs.text());
}

#[test]
fn fail_open_serves_an_empty_session_that_is_never_saved() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let app = app(builder(Arc::new(Down)).fail_open(true).build().unwrap());
    let id = SessionId::generate();
    let logs = Logs::default();
    let a = logs.capture(|| rt.block_on(send(&app, "/get/user", Some(id.as_str()))));
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "None"));
    let a = logs.capture(|| rt.block_on(send(&app, "/set/user/x", Some(id.as_str()))));
    assert_eq!(a.status, StatusCode::OK, "the page works");
    assert_eq!(a.set_cookie, None, "nothing replaces the visitor's real cookie");
    assert!(logs.text().contains("fail-open"), "{}", logs.text());
}
