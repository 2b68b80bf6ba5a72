//! Filesystem store for hipflask's server-side sessions: one file per
//! session in a directory (`SESSION_FILE_DIR`), surviving restarts.
//!
//! - Writes go to a temporary file that is then renamed over the session's
//!   file, so a reader never sees half a session.
//! - Updates (read, apply the request's per-key changes, write) hold an
//!   exclusive lock on `DIR/.lock`, so concurrent requests lose nothing, also
//!   across processes sharing the directory. Reads take no lock.
//! - Each file starts with a versioned header line, then the session as
//!   Flask's tagged JSON. A file that cannot be read counts as missing.
//! - Listing a user's sessions scans the directory: fine for the small
//!   deployments this store is for; use SQLite or Redis beyond that.
//! - File operations run on two threads of the store's own
//!   ([`hipflask::StoreThread`]): loads on one, everything that takes the
//!   lock on the other, each one call after another. With tokio's blocking
//!   pool, concurrent updates each woke a thread that then waited for the
//!   lock, and thread switches took most of the CPU; loads keep a thread of
//!   their own so they never queue behind a write.
//!
//! ```no_run
//! # async fn f() -> Result<(), hipflask::Error> {
//! let store = hipflask_filesystem::FileStore::open("./flask_session").await?;
//! # let _ = store; Ok(()) }
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hipflask::{
    Error, ErrorKind, Record, SessionId, Store, StoreFuture, StoreThread, Update, Updated, apply_changes, user_of,
};

const HEADER: &str = "hipflask-session 1";
const SUFFIX: &str = ".session";

/// Sessions as files in a directory.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: Arc<Path>,
    user_key: Arc<str>,
    /// Runs loads, which take no lock.
    reader: StoreThread<()>,
    /// Runs everything that takes the directory lock.
    writer: StoreThread<()>,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Backend, "filesystem session store failed").with_source(e)
}

/// Holds the directory lock until dropped.
struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl FileStore {
    /// Uses `dir` (created if missing, with mode 0700 on Unix: sessions are secrets).
    pub async fn open(dir: impl AsRef<Path>) -> Result<FileStore, Error> {
        let dir: Arc<Path> = dir.as_ref().into();
        let d = dir.clone();
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&d)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(backend)?
        .map_err(backend)?;
        let reader = StoreThread::start("hipflask-files-read", ())?;
        let writer = StoreThread::start("hipflask-files-write", ())?;
        Ok(FileStore { dir, user_key: "_user_id".into(), reader, writer })
    }

    /// The session key whose value names the user (default `_user_id`).
    pub fn with_user_key(mut self, key: &str) -> FileStore {
        self.user_key = key.into();
        self
    }

    /// Runs `f` on the writer thread.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path, &str) -> Result<T, Error> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let (dir, user_key) = (self.dir.clone(), self.user_key.clone());
        self.writer.call(move |()| f(&dir, &user_key))
    }
}

fn path_of(dir: &Path, id: &SessionId) -> PathBuf {
    // Ids are validated base64url, so they are safe file names.
    dir.join(format!("{}{SUFFIX}", id.as_str()))
}

fn lock(dir: &Path) -> Result<DirLock, Error> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".lock")).map_err(backend)?;
    file.lock().map_err(backend)?;
    Ok(DirLock(file))
}

fn encode(record: &Record) -> String {
    format!("{HEADER} {} {}\n{}", record.created_at, record.expires_at, hipflask::to_tagged_json(&record.data))
}

fn decode(text: &str) -> Option<Record> {
    let (header, body) = text.split_once('\n')?;
    let times = header.strip_prefix(HEADER)?.trim();
    let (created, expires) = times.split_once(' ')?;
    let data = hipflask::parse_tagged_json(body).ok()?;
    Some(Record { data, created_at: created.parse().ok()?, expires_at: expires.parse().ok()? })
}

/// The stored record, `None` when missing; an unreadable file is logged and
/// counts as missing.
fn read(path: &Path) -> Result<Option<Record>, Error> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let record = decode(&text);
            if record.is_none() {
                tracing::warn!(file = %path.display(), "unreadable session file; treating it as missing");
            }
            Ok(record)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(file = %path.display(), "session file is not UTF-8; treating it as missing");
            Ok(None)
        }
        Err(e) => Err(backend(e)),
    }
}

fn write_atomically(dir: &Path, path: &Path, record: &Record) -> Result<(), Error> {
    let tmp = dir.join(format!(".tmp-{}", SessionId::generate().as_str()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(encode(record).as_bytes())?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(backend)
}

/// Every session file in the directory, with its record when readable.
fn scan(dir: &Path) -> Result<Vec<(SessionId, Option<Record>)>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(backend)? {
        let entry = entry.map_err(backend)?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(SessionId::parse) else {
            continue;
        };
        out.push((id, read(&entry.path())?));
    }
    Ok(out)
}

impl Store for FileStore {
    fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>> {
        let id = id.clone();
        let path = path_of(&self.dir, &id);
        self.reader.call(move |()| Ok(read(&path)?.filter(|r| r.expires_at > now)))
    }

    fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()> {
        let id = id.clone();
        self.run(move |dir, _| {
            let _lock = lock(dir)?;
            let path = path_of(dir, &id);
            if path.exists() {
                return Err(Error::new(ErrorKind::Conflict, "session id already in use"));
            }
            write_atomically(dir, &path, &record)
        })
    }

    fn update<'a>(&'a self, id: &'a SessionId, update: &'a Update, now: u64) -> StoreFuture<'a, Updated> {
        let (id, update) = (id.clone(), update.clone());
        self.run(move |dir, _| {
            let _lock = lock(dir)?;
            let path = path_of(dir, &id);
            let Some(mut record) = read(&path)?.filter(|r| r.expires_at > now) else {
                return Ok(Updated::Gone);
            };
            apply_changes(&mut record.data, &update.changes, update.loaded.as_deref())?;
            record.expires_at = update.expires_at;
            write_atomically(dir, &path, &record)?;
            Ok(Updated::Applied)
        })
    }

    fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool> {
        let id = id.clone();
        self.run(move |dir, _| {
            let _lock = lock(dir)?;
            match fs::remove_file(path_of(dir, &id)) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(backend(e)),
            }
        })
    }

    fn delete_expired(&self, now: u64) -> StoreFuture<'_, u64> {
        self.run(move |dir, _| {
            let _lock = lock(dir)?;
            let mut n = 0;
            for (id, record) in scan(dir)? {
                // Unreadable files are left for a person to look at.
                if record.is_some_and(|r| r.expires_at <= now) {
                    fs::remove_file(path_of(dir, &id)).map_err(backend)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    fn list(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>> {
        self.run(move |dir, _| {
            Ok(scan(dir)?
                .into_iter()
                .filter(|(_, r)| r.as_ref().is_some_and(|r| r.expires_at > now))
                .map(|(id, _)| id)
                .collect())
        })
    }

    fn sessions_of_user<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, Vec<SessionId>> {
        let user = user.to_owned();
        self.run(move |dir, key| {
            Ok(scan(dir)?
                .into_iter()
                .filter(|(_, r)| {
                    r.as_ref().is_some_and(|r| r.expires_at > now && user_of(&r.data, key).as_deref() == Some(&*user))
                })
                .map(|(id, _)| id)
                .collect())
        })
    }

    fn delete_user<'a>(&'a self, user: &'a str) -> StoreFuture<'a, u64> {
        let user = user.to_owned();
        self.run(move |dir, key| {
            let _lock = lock(dir)?;
            let mut n = 0;
            for (id, record) in scan(dir)? {
                if record.is_some_and(|r| user_of(&r.data, key).as_deref() == Some(&*user)) {
                    fs::remove_file(path_of(dir, &id)).map_err(backend)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }
}
