//! Store micro-benchmarks: session-id generation and signing, then one load, one
//! per-key update and one create on every store. Networked stores run when their
//! URL variable is set (REDIS_URL, POSTGRES_URL, MYSQL_URL) and are skipped with a
//! printed note otherwise. The HTTP-level numbers are in docs/BENCHMARKS.md.

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hipflask::{Changes, Dict, MemoryStore, Record, SecretKey, SessionId, SidSigner, Store, Update, Value};
use tokio::runtime::Runtime;

const NOW: u64 = 1_700_000_000;
const LIFETIME: u64 = 2_678_400;

fn ids(c: &mut Criterion) {
    c.bench_function("session_id/generate", |b| b.iter(SessionId::generate));
    let id = SessionId::generate();
    c.bench_function("session_id/parse", |b| b.iter(|| SessionId::parse(black_box(id.as_str())).unwrap()));
    let signer = SidSigner::new(&SecretKey::new("secret").unwrap());
    let signed = signer.sign(id.as_str());
    c.bench_function("session_id/sign", |b| b.iter(|| signer.sign(black_box(id.as_str()))));
    c.bench_function("session_id/unsign", |b| b.iter(|| signer.unsign(black_box(&signed)).unwrap()));
}

/// A logged-in user's session as the demo keeps it.
fn session() -> Dict {
    [
        ("_user_id".to_owned(), Value::from("alice")),
        ("username".to_owned(), Value::from("alice")),
        ("visits".to_owned(), Value::from(1)),
        ("csrf_token".to_owned(), Value::from("4c3d1b2e9f7a6b5c8d0e1f2a3b4c5d6e7f8a9b0c")),
    ]
    .into()
}

fn bench_store(c: &mut Criterion, rt: &Runtime, name: &str, store: Arc<dyn Store>) {
    let id = SessionId::generate();
    let record = Record { data: session(), created_at: NOW, expires_at: NOW + LIFETIME };
    rt.block_on(store.create(&id, record.clone())).unwrap();
    c.bench_function(&format!("store/{name}/load"), |b| {
        b.iter(|| rt.block_on(store.load(black_box(&id), NOW)).unwrap().unwrap())
    });
    let mut visits = 1;
    c.bench_function(&format!("store/{name}/update_one_key"), |b| {
        b.iter(|| {
            visits += 1;
            let changes = Changes { cleared: false, keys: vec![("visits".into(), Some(Value::from(visits)))] };
            let update = Update { changes, expires_at: NOW + LIFETIME, loaded: None };
            rt.block_on(store.update(&id, &update, NOW)).unwrap()
        })
    });
    let mut created = Vec::new();
    c.bench_function(&format!("store/{name}/create"), |b| {
        b.iter(|| {
            let id = SessionId::generate();
            rt.block_on(store.create(&id, record.clone())).unwrap();
            created.push(id);
        })
    });
    // Leave shared databases as they were.
    rt.block_on(async {
        let _ = store.delete(&id).await;
        for id in &created {
            let _ = store.delete(id).await;
        }
    });
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = std::env::temp_dir().join(format!("hipflask-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("bench-{}:", std::process::id());

    bench_store(c, &rt, "memory", Arc::new(MemoryStore::new().with_capacity(10_000_000)));
    let sqlite = rt.block_on(hipflask_sqlite::SqliteStore::open(dir.join("sessions.db"))).unwrap();
    bench_store(c, &rt, "sqlite", Arc::new(sqlite));
    let files = rt.block_on(hipflask_filesystem::FileStore::open(dir.join("files"))).unwrap();
    bench_store(c, &rt, "filesystem", Arc::new(files));
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let store = rt.block_on(hipflask_redis::RedisStore::connect(&url)).unwrap().with_key_prefix(&prefix);
            bench_store(c, &rt, "redis", Arc::new(store.clone()));
            // Loads here are hits: the cost of the cache's own read path.
            let cached = rt.block_on(store.with_local_cache(1000)).unwrap();
            bench_store(c, &rt, "redis-cached", Arc::new(cached));
        }
        Err(_) => eprintln!("skipped store/redis: set REDIS_URL"),
    }
    match std::env::var("POSTGRES_URL") {
        Ok(url) => {
            let store = rt.block_on(hipflask_sql::PostgresStore::connect(&url)).unwrap().with_key_prefix(&prefix);
            bench_store(c, &rt, "postgres", Arc::new(store));
        }
        Err(_) => eprintln!("skipped store/postgres: set POSTGRES_URL"),
    }
    match std::env::var("MYSQL_URL") {
        Ok(url) => {
            let store = rt.block_on(hipflask_sql::MySqlStore::connect(&url)).unwrap().with_key_prefix(&prefix);
            bench_store(c, &rt, "mysql", Arc::new(store));
        }
        Err(_) => eprintln!("skipped store/mysql: set MYSQL_URL"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, ids, stores);
criterion_main!(benches);
