//! Any bytes as a Redis server's answer, to a load and to a save: the store
//! answers with a session, nothing or an error, never a panic and never a
//! wait past its timeout. The server is a thread of this process that
//! answers each connection's first command with the input and hangs up, so
//! partial replies, junk after a reply and closed connections all come up.
#![no_main]
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::{Arc, Mutex, OnceLock};

use hipflask::{Changes, SessionId, Store, Update, Value};
use hipflask_redis::RedisStore;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000;

struct Fixture {
    rt: tokio::runtime::Runtime,
    store: RedisStore,
    answer: Arc<Mutex<Vec<u8>>>,
    id: SessionId,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new(Vec::new()));
        let said = answer.clone();
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(mut sock) = sock else { continue };
                let mut command = [0u8; 4096];
                if sock.read(&mut command).unwrap_or(0) == 0 {
                    continue;
                }
                let bytes = said.lock().unwrap().clone();
                let _ = sock.write_all(&bytes);
                let _ = sock.shutdown(Shutdown::Both);
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = rt.block_on(RedisStore::connect(&url)).unwrap();
        Fixture { rt, store, answer, id: SessionId::generate() }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    *f.answer.lock().unwrap() = data.to_vec();
    let _ = f.rt.block_on(f.store.load(&f.id, NOW));
    let changes = Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(2)))] };
    let update = Update { changes, expires_at: NOW + 60, loaded: None };
    let _ = f.rt.block_on(f.store.update(&f.id, &update, NOW));
});
