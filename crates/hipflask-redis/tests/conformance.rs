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
