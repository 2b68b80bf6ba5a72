//! Any bytes as a filesystem store's session file: a load gives a record or
//! nothing, never a panic; a save over whatever is there (appended, or the
//! file rewritten) is what the next load gives.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use hipflask::{Changes, SessionId, Store, Update, Value};
use hipflask_filesystem::FileStore;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    rt: tokio::runtime::Runtime,
    store: FileStore,
    id: SessionId,
    file: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = std::env::temp_dir().join(format!("hipflask-fuzz-files-{}", std::process::id()));
        let store = rt.block_on(FileStore::open(&dir)).unwrap();
        let id = SessionId::generate();
        let file = dir.join(format!("{}.session", id.as_str()));
        Fixture { rt, store, id, file }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    std::fs::write(&f.file, data).unwrap();
    let Some(record) = f.rt.block_on(f.store.load(&f.id, 0)).unwrap() else { return };
    let changes = Changes { cleared: false, keys: vec![("fuzz".into(), Some(Value::Int(1)))] };
    let update = Update { changes, expires_at: record.expires_at, loaded: None };
    assert_eq!(f.rt.block_on(f.store.update(&f.id, &update, 0)).unwrap(), hipflask::Updated::Applied);
    let mut expected = record.data;
    expected.insert("fuzz".into(), Value::Int(1));
    assert_eq!(f.rt.block_on(f.store.load(&f.id, 0)).unwrap().unwrap().data, expected);
});
