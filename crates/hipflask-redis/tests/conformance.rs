//! The Redis store against the conformance suite, on the Redis at
//! `REDIS_URL` (set by `.ci/run`; skipped loudly when unset).

use std::sync::Arc;

use hipflask::{Dict, Record, SessionId, Store, Value};
use hipflask_redis::RedisStore;

async fn store() -> Option<RedisStore> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        // Straight to stderr: the test harness swallows println! of passing tests.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipped: set REDIS_URL");
        return None;
    };
    Some(RedisStore::connect(&url).await.expect("REDIS_URL is reachable"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let Some(store) = store().await else { return };
    hipflask_conformance::run_with(Arc::new(store), hipflask_conformance::Capabilities::FLASK_SESSION_REDIS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_only_python_makes_survive_a_hipflask_update() {
    let Some(store) = store().await else { return };
    let url = std::env::var("REDIS_URL").unwrap();
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Flask-Session's bytes for {'_permanent': True, 'dt': <datetime with
    // microseconds>, 'intkey': {1: 'a'}}: neither survives a decode/encode in Rust.
    let python: Vec<u8> = [
        &[0x83, 0xaa][..],
        b"_permanent",
        &[0xc3, 0xa2],
        b"dt",
        &[0xd7, 0xff, 0xa1, 0xdc, 0xd4, 0x20, 0x65, 0x93, 0x7d, 0x25, 0xa6],
        b"intkey",
        &[0x81, 0x01, 0xa1, b'a'],
    ]
    .concat();
    let id = SessionId::generate();
    let key = format!("session:{}", id.as_str());
    let _: () = redis::cmd("SET").arg(&key).arg(&python).arg("EX").arg(60).query_async(&mut conn).await.unwrap();
    let changes = hipflask::Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(1)))] };
    let now = 1_700_000_000;
    let up = store.update(&id, &hipflask::Update { changes, expires_at: now + 60, loaded: None }, now).await.unwrap();
    assert_eq!(up, hipflask::Updated::Applied);
    let stored: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    let mut want = python.clone();
    want[0] = 0x84;
    want.extend_from_slice(&[0xa6]);
    want.extend_from_slice(b"visits");
    want.push(0x01);
    assert_eq!(stored, want, "untouched entries keep Python's exact bytes");
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!((55..=60).contains(&ttl), "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_prefix_keeps_apps_apart() {
    let Some(store) = store().await else { return };
    let other = store.clone().with_key_prefix("otherapp:");
    let id = SessionId::generate();
    let now = 1_700_000_000;
    let data: Dict = [("a".to_owned(), Value::Int(1))].into();
    store.create(&id, Record { data, created_at: now, expires_at: now + 60 }).await.unwrap();
    assert!(other.load(&id, now).await.unwrap().is_none());
    assert!(!other.list(now).await.unwrap().contains(&id));
    assert!(store.list(now).await.unwrap().contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS") else {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipped: set REDIS_CLUSTER_URLS (.ci/run starts a cluster)");
        return;
    };
    let nodes: Vec<&str> = urls.split(',').collect();
    let store = RedisStore::connect_cluster(&nodes).await.expect("the cluster is reachable");
    hipflask_conformance::run_with(Arc::new(store.clone()), hipflask_conformance::Capabilities::FLASK_SESSION_REDIS)
        .await;
    let err = store.list(0).await.unwrap_err();
    assert!(err.to_string().contains("cluster") || format!("{err:?}").contains("Cluster"), "{err}");
}

async fn cached_store() -> Option<RedisStore> {
    Some(store().await?.with_local_cache(1000).await.expect("the Redis server supports client tracking"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_with_local_cache_conforms() {
    let Some(store) = cached_store().await else { return };
    hipflask_conformance::run_with(Arc::new(store), hipflask_conformance::Capabilities::FLASK_SESSION_REDIS).await;
}

/// A plain connection: "another process" writing the same Redis.
async fn other_process() -> redis::aio::MultiplexedConnection {
    other_process_on(&std::env::var("REDIS_URL").unwrap()).await
}

async fn other_process_on(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// A `redis-server` of the test's own on a free loopback port, stopped by its
/// PID when dropped: for a test that cuts connections, which on the shared
/// server would also break the requests other tests have in flight.
struct OwnRedis {
    server: std::process::Child,
    url: String,
}

impl OwnRedis {
    /// `None` (said on stderr) when `REDIS_URL` is unset, as for the shared
    /// server's tests, or when there is no `redis-server` to start.
    async fn start() -> Option<OwnRedis> {
        OwnRedis::start_with(&[], |port| format!("redis://127.0.0.1:{port}")).await
    }

    /// Started with `args` added, reached at `url(port)`.
    async fn start_with(args: &[&str], url: impl Fn(u16) -> String) -> Option<OwnRedis> {
        use std::io::Write as _;
        if std::env::var("REDIS_URL").is_err() {
            let _ = writeln!(std::io::stderr(), "skipped: set REDIS_URL");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn();
        let Ok(server) = started else {
            let _ = writeln!(std::io::stderr(), "skipped: no redis-server to start a server of the test's own");
            return None;
        };
        let own = OwnRedis { server, url: url(port) };
        for _ in 0..100 {
            if redis::Client::open(own.url.as_str()).unwrap().get_multiplexed_async_connection().await.is_ok() {
                return Some(own);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the test's own redis-server on port {port} did not answer within 5 s");
    }
}

/// A store with a local cache on `redis`, and "another process" there.
async fn cached_on(redis: &OwnRedis) -> (RedisStore, redis::aio::MultiplexedConnection) {
    let store = RedisStore::connect(&redis.url).await.unwrap().with_local_cache(1000).await.unwrap();
    (store, other_process_on(&redis.url).await)
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Loads until `want` holds, for at most two seconds: another process's
/// change arrives as a push, a fraction of a millisecond after it is made.
async fn eventually(store: &RedisStore, id: &SessionId, now: u64, want: impl Fn(Option<&Record>) -> bool) -> bool {
    for _ in 0..200 {
        if want(store.load(id, now).await.unwrap().as_ref()) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

fn visits(record: Option<&Record>) -> Option<i64> {
    record.and_then(|r| r.data.get("visits")).and_then(Value::as_i64)
}

/// A new session `{"visits": n}` in `store`, and its Redis key.
async fn session_with_visits(store: &RedisStore, n: i64, now: u64) -> (SessionId, String) {
    let id = SessionId::generate();
    let data: Dict = [("visits".to_owned(), Value::Int(n))].into();
    store.create(&id, Record { data, created_at: now, expires_at: now + 60 }).await.unwrap();
    let key = format!("session:{}", id.as_str());
    (id, key)
}

/// What Flask-Session writes for `{'visits': n}` (n < 128), written by "another process".
async fn flask_sets_visits(other: &mut redis::aio::MultiplexedConnection, key: &str, n: u8) {
    let bytes = [&[0x81, 0xa6][..], b"visits", &[n]].concat();
    let _: () = redis::cmd("SET").arg(key).arg(&bytes).arg("EX").arg(60).query_async(other).await.unwrap();
    after_redis_sent_invalidations(other).await;
}

/// Returns once Redis has sent the invalidations of the commands `other`
/// had answered: it writes them in the turn of its event loop that ran the
/// command, and reads this `PING` in a later one. A browser's next request
/// comes later still; from then on the cache must not serve the old value.
async fn after_redis_sent_invalidations(other: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("PING").query_async(other).await.unwrap();
}

/// The visits a load finds now, without waiting for anything.
async fn visits_now(store: &RedisStore, id: &SessionId, now: u64) -> Option<i64> {
    visits(store.load(id, now).await.unwrap().as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cache_sees_other_processes_writes_and_deletes() {
    let Some(store) = cached_store().await else { return };
    let mut other = other_process().await;
    let now = 1_700_000_000;
    let (id, key) = session_with_visits(&store, 1, now).await;
    assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(1));
    assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(1), "now served from the cache");
    flask_sets_visits(&mut other, &key, 7).await;
    assert_eq!(visits_now(&store, &id, now).await, Some(7), "another process's write is seen at once");
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut other).await.unwrap();
    after_redis_sent_invalidations(&mut other).await;
    assert!(store.load(&id, now).await.unwrap().is_none(), "a logout elsewhere is seen at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_are_read_back_at_once_through_the_local_cache() {
    let Some(store) = cached_store().await else { return };
    let now = 1_700_000_000;
    let (id, _) = session_with_visits(&store, 0, now).await;
    for n in 1..=200 {
        assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(n - 1));
        let changes = hipflask::Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(n)))] };
        let update = hipflask::Update { changes, expires_at: now + 60, loaded: None };
        assert_eq!(store.update(&id, &update, now).await.unwrap(), hipflask::Updated::Applied);
    }
    assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(200));
    assert!(store.delete(&id).await.unwrap());
    assert!(store.load(&id, now).await.unwrap().is_none(), "a delete here is seen here at once");
}

/// A read the local cache can answer needs no future: `load_now` gives it,
/// and never a value older than this process's last write or delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_are_answered_in_place() {
    let Some(plain) = store().await else { return };
    let Some(store) = cached_store().await else { return };
    let now = 1_700_000_000;
    let (id, _) = session_with_visits(&store, 1, now).await;
    assert!(plain.load_now(&id, now).is_none(), "without a cache every read waits for Redis");
    assert!(store.load(&id, now).await.unwrap().is_some());
    let hit = store.load_now(&id, now).expect("cached by the read above").unwrap();
    assert_eq!(visits(hit.as_ref()), Some(1));
    let changes = hipflask::Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(2)))] };
    let update = hipflask::Update { changes, expires_at: now + 60, loaded: None };
    store.update(&id, &update, now).await.unwrap();
    if let Some(after) = store.load_now(&id, now) {
        assert_eq!(visits(after.unwrap().as_ref()), Some(2), "never the value before this process's write");
    }
    assert!(store.delete(&id).await.unwrap());
    assert!(store.load_now(&id, now).is_none(), "a deleted session is not served from the cache");
}

/// The value a write here stored is cached without a read; Redis must still
/// tell this process when another one changes the session afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_own_write_other_processes_changes_are_still_seen() {
    let Some(store) = cached_store().await else { return };
    let mut other = other_process().await;
    let now = 1_700_000_000;
    let (id, key) = session_with_visits(&store, 1, now).await;
    for round in 0..20 {
        assert!(store.load(&id, now).await.unwrap().is_some());
        let changes = hipflask::Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(100)))] };
        let update = hipflask::Update { changes, expires_at: now + 60, loaded: None };
        assert_eq!(store.update(&id, &update, now).await.unwrap(), hipflask::Updated::Applied);
        let record = store.load(&id, now).await.unwrap();
        assert_eq!(visits(record.as_ref()), Some(100));
        let ttl = record.unwrap().expires_at - now;
        assert!((55..=60).contains(&ttl), "the cached expiry is the stored TTL: {ttl}");
        let n = 101 + round;
        flask_sets_visits(&mut other, &key, n as u8).await;
        assert_eq!(visits_now(&store, &id, now).await, Some(n), "round {round}: a later change is seen");
    }
}

/// The server's connections with client tracking on: their ids, and the
/// ids of the connections their invalidations are redirected to.
async fn tracking_connections(other: &mut redis::aio::MultiplexedConnection) -> Vec<(String, String)> {
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(other).await.unwrap();
    let field = |line: &str, name: &str| {
        line.split(' ').find_map(|f| f.strip_prefix(name)).unwrap_or_else(|| panic!("no {name} in {line}")).to_owned()
    };
    clients
        .lines()
        .filter(|line| field(line, "flags=").contains('t'))
        .map(|line| (field(line, "id="), field(line, "redir=")))
        .collect()
}

/// Invalidations sent while the tracking connection is down are lost: the
/// cache must be emptied and rebuilt, never keep what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracking_connection_leaves_no_stale_session() {
    // On a server of its own: the connections it cuts are then only its own.
    let Some(redis) = OwnRedis::start().await else { return };
    let (store, mut other) = cached_on(&redis).await;
    let now = 1_700_000_000;
    let (id, key) = session_with_visits(&store, 1, now).await;
    assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(1));
    // Cut the connection with tracking on, then change the session while
    // this store cannot hear about it.
    let tracking = tracking_connections(&mut other).await;
    assert_eq!(tracking.len(), 1, "the store's one tracking connection");
    let killed: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&tracking[0].0).query_async(&mut other).await.unwrap();
    assert_eq!(killed, 1);
    flask_sets_visits(&mut other, &key, 5).await;
    assert!(eventually(&store, &id, now, |r| visits(r) == Some(5)).await, "the change made meanwhile is seen");
    // And the cache works again afterwards: a later change is seen too.
    flask_sets_visits(&mut other, &key, 6).await;
    assert!(eventually(&store, &id, now, |r| visits(r) == Some(6)).await);
}

/// A change made elsewhere is seen by the very next read, even when this
/// process has had no time to run any task since: on a single-threaded
/// runtime, with the change made by a blocking client, nothing of this
/// process runs between the change and the read. Reading the client
/// library's pushes (a task) served the old session here every time.
#[tokio::test(flavor = "current_thread")]
async fn a_change_elsewhere_is_seen_without_this_process_running_a_task() {
    let Some(store) = cached_store().await else { return };
    let mut other = redis::Client::open(std::env::var("REDIS_URL").unwrap()).unwrap().get_connection().unwrap();
    let now = 1_700_000_000;
    let (id, key) = session_with_visits(&store, 1, now).await;
    for n in 2..50u8 {
        assert!(store.load(&id, now).await.unwrap().is_some());
        assert!(store.load_now(&id, now).is_some(), "round {n}: cached");
        let bytes = [&[0x81, 0xa6][..], b"visits", &[n]].concat();
        let _: () = redis::cmd("SET").arg(&key).arg(&bytes).arg("EX").arg(60).query(&mut other).unwrap();
        let _: () = redis::cmd("PING").query(&mut other).unwrap();
        // In place, without awaiting anything.
        if let Some(hit) = store.load_now(&id, now) {
            panic!("round {n}: served {:?} from the cache after it changed", visits(hit.unwrap().as_ref()));
        }
        assert_eq!(visits_now(&store, &id, now).await, Some(i64::from(n)));
    }
    let _: () = redis::cmd("DEL").arg(&key).query(&mut other).unwrap();
    let _: () = redis::cmd("PING").query(&mut other).unwrap();
    assert!(store.load_now(&id, now).is_none(), "a logout elsewhere is never served from the cache");
}

/// The invalidations go to a connection of their own: when it is lost, so
/// are the ones sent meanwhile, and the cache must start over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_invalidation_listener_leaves_no_stale_session() {
    let Some(redis) = OwnRedis::start().await else { return };
    let (store, mut other) = cached_on(&redis).await;
    let now = 1_700_000_000;
    let (id, key) = session_with_visits(&store, 1, now).await;
    for round in 0..3u8 {
        assert!(store.load(&id, now).await.unwrap().is_some());
        assert!(store.load_now(&id, now).is_some(), "round {round}: cached again");
        let tracking = tracking_connections(&mut other).await;
        assert_eq!(tracking.len(), 1, "round {round}: the store's one tracking connection");
        let listener = tracking[0].1.clone();
        let killed: i64 =
            redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&listener).query_async(&mut other).await.unwrap();
        assert_eq!(killed, 1, "round {round}: the listener it redirects to");
        let n = 10 + round;
        flask_sets_visits(&mut other, &key, n).await;
        assert_eq!(visits_now(&store, &id, now).await, Some(i64::from(n)), "round {round}: seen at once");
        let tracking = tracking_connections(&mut other).await;
        assert_ne!(tracking[0].1, listener, "round {round}: a new listener took over");
    }
    // And the new listener hears of changes.
    assert!(store.load(&id, now).await.unwrap().is_some());
    flask_sets_visits(&mut other, &key, 99).await;
    assert_eq!(visits_now(&store, &id, now).await, Some(99));
}

/// The listener connects as the store does: with the URL's password (and
/// user), and over a Unix socket when the URL names one. The ACL user has
/// no channel permission (Redis 7's default for new users): the listener
/// needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invalidation_listener_authenticates_and_speaks_unix_sockets() {
    let socket = std::env::temp_dir().join(format!("hipflask-redis-{}.sock", std::process::id()));
    let unix = socket.to_str().unwrap().to_owned();
    let servers = [
        OwnRedis::start_with(&["--requirepass", "s3cret"], |port| format!("redis://:s3cret@127.0.0.1:{port}")).await,
        OwnRedis::start_with(
            &["--user", "app", "on", ">apppass", "~*", "resetchannels", "+@all", "--user", "default", "off"],
            |port| format!("redis://app:apppass@127.0.0.1:{port}"),
        )
        .await,
        OwnRedis::start_with(&["--unixsocket", &unix, "--unixsocketperm", "700"], |_| format!("redis+unix://{unix}"))
            .await,
    ];
    for redis in servers {
        let Some(redis) = redis else { return };
        let (store, mut other) = cached_on(&redis).await;
        let now = 1_700_000_000;
        let (id, key) = session_with_visits(&store, 1, now).await;
        assert_eq!(visits_now(&store, &id, now).await, Some(1));
        assert!(store.load_now(&id, now).is_some(), "{}: cached", redis.url);
        flask_sets_visits(&mut other, &key, 2).await;
        assert_eq!(visits_now(&store, &id, now).await, Some(2), "{}: the change is seen at once", redis.url);
    }
    let _ = std::fs::remove_file(&socket);
}

/// Redis closes connections idle for longer than its `timeout`: the next
/// request must not fail for it (it did, with a 503, before), on either
/// connection, with or without the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_while_idle_are_not_a_failed_request() {
    let Some(redis) = OwnRedis::start_with(&["--timeout", "1"], |port| format!("redis://127.0.0.1:{port}")).await
    else {
        return;
    };
    let plain = RedisStore::connect(&redis.url).await.unwrap();
    let (cached, _) = cached_on(&redis).await;
    // Both at once: each step waits for Redis to close what sat idle.
    let idle = |store: RedisStore| async move {
        let now = 1_700_000_000;
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(2500));
        let (id, _) = session_with_visits(&store, 1, now).await;
        pause().await;
        let changes = hipflask::Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(2)))] };
        let update = hipflask::Update { changes, expires_at: now + 60, loaded: None };
        assert_eq!(store.update(&id, &update, now).await.unwrap(), hipflask::Updated::Applied, "{store:?}");
        pause().await;
        assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(2), "{store:?}");
        pause().await;
        assert!(store.delete(&id).await.unwrap(), "{store:?}");
    };
    tokio::join!(idle(plain), idle(cached));
}

/// A cache that cannot work is refused when it is made, saying why, rather
/// than run uncached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_use_client_tracking_gets_a_clear_error() {
    let args = ["--user", "app", "on", ">apppass", "~*", "+@all", "-client", "--user", "default", "off"];
    let Some(redis) = OwnRedis::start_with(&args, |port| format!("redis://app:apppass@127.0.0.1:{port}")).await else {
        return;
    };
    let store = RedisStore::connect(&redis.url).await.unwrap();
    let err = store.with_local_cache(100).await.unwrap_err();
    assert_eq!(err.kind(), hipflask::ErrorKind::Config);
    assert!(err.to_string().contains("local cache could not start"), "{err}");
    let cause = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
    let shout = cause.to_uppercase();
    assert!(shout.contains("NOPERM") && shout.contains("CLIENT"), "the cause names the refused command: {cause}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cache_is_refused_on_a_cluster() {
    let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS") else {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "skipped: set REDIS_CLUSTER_URLS (.ci/run starts a cluster)");
        return;
    };
    let nodes: Vec<&str> = urls.split(',').collect();
    let store = RedisStore::connect_cluster(&nodes).await.expect("the cluster is reachable");
    let err = store.with_local_cache(10).await.unwrap_err();
    assert_eq!(err.kind(), hipflask::ErrorKind::Config);
    assert!(err.to_string().contains("standalone"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_from_a_stale_instance_is_merged_not_swapped_in() {
    let (Some(a), Some(b)) = (store().await, store().await) else { return };
    hipflask_conformance::a_save_from_a_stale_instance_is_merged_not_swapped_in(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_after_a_load_keeps_the_other_entries_exact_bytes() {
    let Some(store) = store().await else { return };
    let mut other = other_process().await;
    // {'n': 5} with 5 as a 16-bit integer: a decode and encode would shorten it.
    let python = [0x81, 0xa1, b'n', 0xcd, 0x00, 0x05];
    let id = SessionId::generate();
    let key = format!("session:{}", id.as_str());
    let _: () = redis::cmd("SET").arg(&key).arg(&python[..]).arg("EX").arg(60).query_async(&mut other).await.unwrap();
    let now = 1_700_000_000;
    let loaded = store.load(&id, now).await.unwrap().expect("readable");
    assert_eq!(loaded.data["n"], Value::Int(5));
    let changes = hipflask::Changes { cleared: false, keys: vec![("m".into(), Some(Value::Int(1)))] };
    let up = store.update(&id, &hipflask::Update { changes, expires_at: now + 60, loaded: None }, now).await.unwrap();
    assert_eq!(up, hipflask::Updated::Applied);
    let stored: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut other).await.unwrap();
    assert_eq!(stored, [0x82, 0xa1, b'n', 0xcd, 0x00, 0x05, 0xa1, b'm', 0x01]);
}

/// After a Redis restart or `SCRIPT FLUSH` the server no longer knows the
/// merge script: a save sends its source instead, once, and is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_still_works_after_the_server_forgets_the_script() {
    let (Some(plain), Some(cached)) = (store().await, cached_store().await) else { return };
    let sha = redis::Script::new(include_str!("../src/merge.lua")).get_hash().to_owned();
    let mut other = other_process().await;
    let now = 1_700_000_000;
    for store in [plain, cached] {
        let (id, key) = session_with_visits(&store, 1, now).await;
        assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(1));
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut other).await.unwrap();
        let changes = hipflask::Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(2)))] };
        let update = hipflask::Update { changes, expires_at: now + 60, loaded: None };
        assert_eq!(store.update(&id, &update, now).await.unwrap(), hipflask::Updated::Applied);
        let stored: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut other).await.unwrap();
        assert_eq!(stored, [&[0x81, 0xa6][..], b"visits", &[2]].concat(), "written once, as Flask-Session would");
        let known: Vec<bool> = redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query_async(&mut other).await.unwrap();
        assert_eq!(known, [true], "sending the source loaded it for the next saves");
    }
}

/// Concurrent requests' commands travel together: each load and save must
/// still get its own reply, and one session Redis cannot read (a key of
/// another type) fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_replies_and_errors() {
    let (Some(plain), Some(cached)) = (store().await, cached_store().await) else { return };
    let mut other = other_process().await;
    let now = 1_700_000_000;
    for store in [plain, cached] {
        let mut ids = Vec::new();
        for n in 0..100 {
            ids.push(session_with_visits(&store, n, now).await.0);
        }
        let broken = SessionId::generate();
        let _: () = redis::cmd("RPUSH")
            .arg(format!("session:{}", broken.as_str()))
            .arg("not a session")
            .query_async(&mut other)
            .await
            .unwrap();
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for (n, id) in ids.iter().cloned().enumerate() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(n as i64));
                let changes =
                    hipflask::Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(n as i64 * 2)))] };
                let update = hipflask::Update { changes, expires_at: now + 60, loaded: None };
                assert_eq!(store.update(&id, &update, now).await.unwrap(), hipflask::Updated::Applied);
            }));
        }
        let failing = {
            let store = store.clone();
            let broken = broken.clone();
            tokio::spawn(async move { store.load(&broken, now).await })
        };
        for task in tasks {
            task.await.unwrap();
        }
        assert!(failing.await.unwrap().is_err(), "a list under a session key is an error, for that request only");
        for (n, id) in ids.iter().enumerate() {
            let key = format!("session:{}", id.as_str());
            let stored: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut other).await.unwrap();
            let want = hipflask::to_msgpack(&[("visits".to_owned(), Value::Int(n as i64 * 2))].into()).unwrap();
            assert_eq!(stored, want);
        }
    }
}

/// The cache hears of the keys it read, whatever their prefix: a store moved
/// to another prefix after the cache was made still sees every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_set_after_the_cache_is_never_served_stale() {
    let Some(store) = cached_store().await else { return };
    let store = store.with_key_prefix("otherapp:");
    let mut other = other_process().await;
    let now = 1_700_000_000;
    let id = SessionId::generate();
    let data: Dict = [("visits".to_owned(), Value::Int(1))].into();
    store.create(&id, Record { data, created_at: now, expires_at: now + 60 }).await.unwrap();
    let key = format!("otherapp:{}", id.as_str());
    for n in 2..20 {
        assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(i64::from(n) - 1));
        flask_sets_visits(&mut other, &key, n).await;
        assert_eq!(visits_now(&store, &id, now).await, Some(i64::from(n)), "change {n} is seen");
    }
}

/// With no key prefix the cache hears of every key's changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_empty_prefix_the_cache_still_hears_of_changes() {
    let Some(store) = store().await else { return };
    let store = store.with_key_prefix("").with_local_cache(100).await.expect("client tracking");
    let mut other = other_process().await;
    let now = 1_700_000_000;
    let id = SessionId::generate();
    let data: Dict = [("visits".to_owned(), Value::Int(1))].into();
    store.create(&id, Record { data, created_at: now, expires_at: now + 60 }).await.unwrap();
    assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(1));
    assert_eq!(visits(store.load(&id, now).await.unwrap().as_ref()), Some(1), "now served from the cache");
    flask_sets_visits(&mut other, id.as_str(), 9).await;
    assert_eq!(visits_now(&store, &id, now).await, Some(9), "another process's write is seen");
    let _: () = redis::cmd("DEL").arg(id.as_str()).query_async(&mut other).await.unwrap();
}

/// A Redis that stops answering (here: its process paused) fails a load and
/// a save with a timeout (500 ms each; checked against a three-second bound
/// to leave room for a busy machine), with and without the local cache,
/// instead of holding the request; once it answers again, so does the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_fails_in_time_and_is_used_again_after() {
    let Some(redis) = OwnRedis::start().await else { return };
    let plain = RedisStore::connect(&redis.url).await.unwrap();
    let (cached, _) = cached_on(&redis).await;
    let now = 1_700_000_000;
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &redis.server.id().to_string()]).status().unwrap();
        assert!(ok.success(), "kill {sig}");
    };
    let mut ids = Vec::new();
    for store in [&plain, &cached] {
        ids.push(session_with_visits(store, 1, now).await.0);
    }
    signal("-STOP");
    for (store, id) in [&plain, &cached].into_iter().zip(&ids) {
        let started = std::time::Instant::now();
        // A miss in the cache, so that it has to ask Redis.
        let other = SessionId::generate();
        let load = tokio::time::timeout(std::time::Duration::from_secs(5), store.load(&other, now)).await;
        let error = load.expect("the load gave up by itself").expect_err("Redis cannot have answered");
        assert_eq!(error.kind(), hipflask::ErrorKind::Timeout, "{error:?}");
        let changes = hipflask::Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(2)))] };
        let update = hipflask::Update { changes, expires_at: now + 60, loaded: None };
        let save = tokio::time::timeout(std::time::Duration::from_secs(5), store.update(id, &update, now)).await;
        let error = save.expect("the save gave up by itself").expect_err("Redis cannot have answered");
        assert_eq!(error.kind(), hipflask::ErrorKind::Timeout, "{error:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());
    }
    signal("-CONT");
    for (store, id) in [&plain, &cached].into_iter().zip(&ids) {
        // The save sent while Redis was paused may have been applied when it
        // woke: either value is right, a failure or a missing session is not.
        let mut answered = None;
        for _ in 0..50 {
            if let Ok(record) = store.load(id, now).await {
                answered = Some(visits(record.as_ref()));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let got = answered.expect("the store answers again once Redis does");
        assert!(matches!(got, Some(1) | Some(2)), "{got:?}");
    }
}
