//! Filesystem store for hipflask's server-side sessions: one file per
//! session in a directory (`SESSION_FILE_DIR`), surviving restarts.
//!
//! - A save appends the session's new record to its file; a reader takes
//!   the file's last complete record, so it never sees half a session. Once
//!   a file would grow past 8 KiB (or four times its record, for bigger
//!   sessions) it is rewritten instead, to a temporary file renamed over it.
//!   Appending is what makes a save cheap: on ext4, creating a file and
//!   renaming it over another cost about 140 us of kernel time per save
//!   (allocating the inode, and the flush that makes a replacing rename safe
//!   across a power cut), an append about 10 us.
//! - A record says how long it is, so a torn append (a crash, a full disk)
//!   is recognised and skipped: the record before it is the session, and
//!   the next save rewrites the file. A whole record that does not parse
//!   (a damaged block) is skipped the same way, with a warning.
//! - Updates (read, apply the request's per-key changes, write) hold an
//!   exclusive lock on `DIR/.lock`, so concurrent requests lose nothing, also
//!   across processes sharing the directory. Reads take no lock.
//! - Each record is a versioned header line (times and length), the session
//!   as Flask's tagged JSON, and a newline. Files of the first format (one
//!   record without a length) are still read, and rewritten on their next
//!   save. Builds that know only the first format cannot read the current
//!   one, so processes sharing a directory are upgraded together. A file
//!   with no readable record counts as missing.
//! - Listing a user's sessions scans the directory: fine for the small
//!   deployments this store is for; use SQLite or Redis beyond that.
//! - Loads and updates run on the caller's own thread. A session's file is
//!   a few KiB, read from the page cache and appended to in microseconds,
//!   less than it cost to hand the call to another thread and back: write
//!   requests took about a third less CPU than through the store's threads,
//!   and reads a quarter less. Nothing waits there: an update that finds the
//!   directory lock held (by another process, or another call of this one)
//!   goes to a thread of the store's own ([`hipflask::StoreThread`]) and
//!   waits for it there, where creations, deletions and scans also run. The
//!   rewrite that keeps a file small (one save in a few dozen, for small
//!   sessions) costs about 100 us of kernel time on the caller's thread.
//!   For a directory on a network or otherwise slow disk, where a read can
//!   wait on the device, [`FileStore::with_own_threads`] moves every call
//!   off the caller's thread.
//!
//! ```no_run
//! # async fn f() -> Result<(), hipflask::Error> {
//! let store = hipflask_filesystem::FileStore::open("./flask_session").await?;
//! # let _ = store; Ok(()) }
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use hipflask::{
    Error, ErrorKind, Record, SessionId, Store, StoreFuture, StoreThread, Update, Updated, apply_changes, user_of,
};

const HEADER: &str = "hipflask-session 2";
/// The first format: one record, without a length or a final newline.
const HEADER_V1: &str = "hipflask-session 1";
/// Appending stops here: a load reads the whole file, so this bounds its
/// cost and a small session's disk use (two blocks).
const REWRITE_AT: usize = 8 * 1024;
const SUFFIX: &str = ".session";

/// Sessions as files in a directory.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: Arc<Path>,
    user_key: Arc<str>,
    /// `DIR/.lock`, held open: opening it for each save was a sixth of a
    /// save's kernel time. (Deleting it while stores use it would split
    /// them.) Its lock is per open file, so it cannot keep this process's
    /// own callers apart; the mutex does.
    lock: Arc<Mutex<File>>,
    /// Runs loads when calls go to the store's threads.
    reader: StoreThread<()>,
    /// Runs creations, deletions, scans, and updates that find the lock held.
    writer: StoreThread<()>,
    /// Whether loads and updates may run on the caller's thread.
    inline: bool,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Backend, "filesystem session store failed").with_source(e)
}

/// Holds the directory lock, for this process and against others, until
/// dropped.
struct DirLock<'a>(MutexGuard<'a, File>);

impl DirLock<'_> {
    /// Waits for the lock: on the store's thread only.
    fn hold(lock: &Mutex<File>) -> Result<DirLock<'_>, Error> {
        // The file is only ever locked and unlocked: a panic elsewhere
        // cannot leave it half changed.
        let file = lock.lock().unwrap_or_else(PoisonError::into_inner);
        file.lock().map_err(backend)?;
        Ok(DirLock(file))
    }

    /// Takes the lock if no one holds it, without waiting.
    fn try_hold(lock: &Mutex<File>) -> Result<Option<DirLock<'_>>, Error> {
        let file = match lock.try_lock() {
            Ok(file) => file,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(DirLock(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(backend(e)),
        }
    }
}

impl Drop for DirLock<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl FileStore {
    /// Uses `dir` (created if missing, with mode 0700 on Unix: sessions are secrets).
    pub async fn open(dir: impl AsRef<Path>) -> Result<FileStore, Error> {
        let dir: Arc<Path> = dir.as_ref().into();
        let d = dir.clone();
        let lock_file = tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&d)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
            }
            OpenOptions::new().create(true).truncate(false).write(true).open(d.join(".lock"))
        })
        .await
        .map_err(backend)?
        .map_err(backend)?;
        Ok(FileStore {
            dir,
            user_key: "_user_id".into(),
            lock: Arc::new(Mutex::new(lock_file)),
            reader: StoreThread::start("hipflask-files-read", ())?,
            writer: StoreThread::start("hipflask-files-write", ())?,
            inline: true,
        })
    }

    /// The session key whose value names the user (default `_user_id`).
    pub fn with_user_key(mut self, key: &str) -> FileStore {
        self.user_key = key.into();
        self
    }

    /// Runs every file call on the store's own threads, never on the
    /// caller's. For a directory on a network or otherwise slow disk, where
    /// reading a session can wait milliseconds for the device and would
    /// hold up the other requests of the caller's thread meanwhile.
    pub fn with_own_threads(mut self) -> FileStore {
        self.inline = false;
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

    /// Runs `f` on the writer thread, holding the directory lock.
    fn run_locked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path, &str) -> Result<T, Error> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let (dir, user_key, lock) = (self.dir.clone(), self.user_key.clone(), self.lock.clone());
        self.writer.call(move |()| {
            let _held = DirLock::hold(&lock)?;
            f(&dir, &user_key)
        })
    }
}

fn path_of(dir: &Path, id: &SessionId) -> PathBuf {
    // Ids are validated base64url, so they are safe file names.
    dir.join(format!("{}{SUFFIX}", id.as_str()))
}

/// One record as it is appended: a header line with the times and the
/// body's length, the body, a newline.
fn encode(record: &Record) -> Vec<u8> {
    let body = hipflask::to_tagged_json(&record.data);
    format!("{HEADER} {} {} {}\n{body}\n", record.created_at, record.expires_at, body.len()).into_bytes()
}

/// What a session file holds.
#[derive(Debug, PartialEq)]
struct Contents {
    /// Its last complete, readable record.
    record: Option<Record>,
    /// Whether a record may be appended: the file is whole, readable records
    /// of the current format. After a torn record, appended ones would be
    /// unreachable; a damaged one is left out by the rewrite instead.
    appendable: bool,
    /// Whether a whole record after `record` did not parse (a damaged disk
    /// block, an edit by hand): skipped, and logged.
    damaged: bool,
}

fn decode(bytes: &[u8]) -> Contents {
    if let Some(rest) = bytes.strip_prefix(HEADER_V1.as_bytes()) {
        return Contents { record: decode_v1(rest), appendable: false, damaged: false };
    }
    // From the end, so a load's cost is its last record's and not the
    // file's. Bodies are JSON, which escapes newlines, so a record starts
    // at the file's start or after a newline.
    let mut appendable = None;
    let mut damaged = false;
    let mut before = bytes.len();
    while let Some(line_end) = before.checked_sub(1) {
        let at = bytes[..line_end].iter().rposition(|b| *b == b'\n').map_or(0, |newline| newline + 1);
        before = at;
        let Some(((created_at, expires_at), body, next)) = frame(bytes, at) else { continue };
        // The last whole record is the end of the file unless a torn one follows.
        let appendable = *appendable.get_or_insert(next == bytes.len());
        let Some(data) = std::str::from_utf8(&bytes[body]).ok().and_then(|b| hipflask::parse_tagged_json(b).ok())
        else {
            damaged = true;
            continue;
        };
        let record = Some(Record { data, created_at, expires_at });
        return Contents { record, appendable: appendable && !damaged, damaged };
    }
    Contents { record: None, appendable: appendable.unwrap_or(bytes.is_empty()) && !damaged, damaged }
}

/// The record starting at `at`: its times, its body's range and where the
/// next one starts. `None` at the end, or at anything but a whole record.
fn frame(bytes: &[u8], at: usize) -> Option<((u64, u64), std::ops::Range<usize>, usize)> {
    // The prefix first: most lines a load looks at from the end are bodies.
    let rest = bytes.get(at..)?.strip_prefix(HEADER.as_bytes())?;
    let (created, rest) = field(rest)?;
    let (expires, rest) = field(rest)?;
    let (len, rest) = field(rest)?;
    let start = bytes.len() - rest.strip_prefix(b"\n")?.len();
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (bytes.get(end) == Some(&b'\n')).then_some(((created, expires), start..end, end + 1))
}

/// A header's ` <digits>` field at the start of `rest`: its number and what
/// follows it.
fn field(rest: &[u8]) -> Option<(u64, &[u8])> {
    let rest = rest.strip_prefix(b" ")?;
    let (mut n, mut digits) = (0u64, 0);
    for digit in rest.iter().take_while(|b| b.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
        digits += 1;
    }
    (digits > 0).then(|| (n, &rest[digits..]))
}

fn decode_v1(rest: &[u8]) -> Option<Record> {
    let (header, body) = std::str::from_utf8(rest).ok()?.split_once('\n')?;
    let (created, expires) = header.trim().split_once(' ')?;
    let data = hipflask::parse_tagged_json(body).ok()?;
    Some(Record { data, created_at: created.parse().ok()?, expires_at: expires.parse().ok()? })
}

/// Logs a file without a readable record, which then counts as missing,
/// and one whose last whole record was damaged.
fn checked(path: &Path, contents: Contents) -> Contents {
    if contents.record.is_none() {
        tracing::warn!(file = %path.display(), "unreadable session file; treating it as missing");
    } else if contents.damaged {
        tracing::warn!(file = %path.display(), "damaged record in a session file; using the one before it");
    }
    contents
}

/// The file's bytes, as long as it was when this began: a record appended
/// meanwhile is not awaited, and a file is never cut shorter (a rewrite
/// replaces it). `fs::read` and `read_to_end` would also ask for the read
/// position and read once more to see the end, two system calls of a
/// save's dozen.
fn read_all(file: &mut File) -> std::io::Result<Vec<u8>> {
    // A file too big for memory is an error, not an abort.
    let too_big = || std::io::Error::from(std::io::ErrorKind::OutOfMemory);
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| too_big())?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).map_err(|_| too_big())?;
    bytes.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// The stored record, `None` when missing; an unreadable file is logged and
/// counts as missing.
fn read(path: &Path) -> Result<Option<Record>, Error> {
    match File::open(path).and_then(|mut file| read_all(&mut file)) {
        Ok(bytes) => Ok(checked(path, decode(&bytes)).record),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(backend(e)),
    }
}

/// Replaces (or creates) the file at `path` in one step: readers see the
/// old file or the new one.
fn write_atomically(dir: &Path, path: &Path, encoded: &[u8]) -> Result<(), Error> {
    let tmp = dir.join(format!(".tmp-{}", SessionId::generate().as_str()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(encoded)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(backend)
}

/// Saves `record` to the file at `path`, open as `file` under the directory
/// lock: appended when the file is `appendable` (its length then) and stays
/// small, else the file is rewritten.
fn save(dir: &Path, path: &Path, mut file: File, appendable: Option<usize>, record: &Record) -> Result<(), Error> {
    let encoded = encode(record);
    if appendable.is_some_and(|len| len + encoded.len() <= REWRITE_AT.max(4 * encoded.len())) {
        // One write of the whole record; a failure part-way leaves a torn
        // record, which readers skip and the next save rewrites.
        return file.write_all(&encoded).map_err(backend);
    }
    drop(file);
    write_atomically(dir, path, &encoded)
}

/// Reads the session's file, applies the request's changes and saves it;
/// the caller holds the directory lock.
fn update_file(dir: &Path, id: &SessionId, update: &Update, now: u64) -> Result<Updated, Error> {
    let path = path_of(dir, id);
    // Opened for appending, and read through the same handle.
    let mut file = match OpenOptions::new().read(true).append(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Updated::Gone),
        Err(e) => return Err(backend(e)),
    };
    let bytes = read_all(&mut file).map_err(backend)?;
    let Contents { record, appendable, .. } = checked(&path, decode(&bytes));
    let Some(mut record) = record.filter(|r| r.expires_at > now) else {
        return Ok(Updated::Gone);
    };
    apply_changes(&mut record.data, &update.changes, update.loaded.as_deref())?;
    record.expires_at = update.expires_at;
    save(dir, &path, file, appendable.then_some(bytes.len()), &record)?;
    Ok(Updated::Applied)
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
        let path = path_of(&self.dir, id);
        let load = move || Ok(read(&path)?.filter(|r| r.expires_at > now));
        if self.inline {
            return Box::pin(async move { load() });
        }
        self.reader.call(move |()| load())
    }

    fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()> {
        let id = id.clone();
        self.run_locked(move |dir, _| {
            let path = path_of(dir, &id);
            if path.exists() {
                return Err(Error::new(ErrorKind::Conflict, "session id already in use"));
            }
            write_atomically(dir, &path, &encode(&record))
        })
    }

    fn update<'a>(&'a self, id: &'a SessionId, update: &'a Update, now: u64) -> StoreFuture<'a, Updated> {
        Box::pin(async move {
            if self.inline
                && let Some(_held) = DirLock::try_hold(&self.lock)?
            {
                return update_file(&self.dir, id, update, now);
            }
            // Held by another process or call: waited for on the thread.
            let (id, update) = (id.clone(), update.clone());
            self.run_locked(move |dir, _| update_file(dir, &id, &update, now)).await
        })
    }

    fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool> {
        let id = id.clone();
        self.run_locked(move |dir, _| match fs::remove_file(path_of(dir, &id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(backend(e)),
        })
    }

    fn delete_expired(&self, now: u64) -> StoreFuture<'_, u64> {
        self.run_locked(move |dir, _| {
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
        self.run_locked(move |dir, key| {
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

#[cfg(test)]
mod tests {
    use hipflask::Value;
    use proptest::prelude::*;

    use super::*;

    fn record(n: i64, text: &str) -> Record {
        let data = [("n".to_owned(), Value::Int(n)), ("text".to_owned(), Value::from(text))].into();
        Record { data, created_at: 1_700_000_000, expires_at: 1_700_000_000 + n.unsigned_abs() }
    }

    proptest! {
        /// Whatever prefix of a third record an interrupted append left, the
        /// second record is the session until the third is whole, and only
        /// whole records may be followed by another.
        #[test]
        fn the_last_whole_record_wins(
            a in any::<i64>(), b in any::<i64>(), c in any::<i64>(), text in ".{0,40}", cut in any::<usize>(),
        ) {
            let third = encode(&record(c, &text));
            let cut = cut % (third.len() + 1);
            let mut bytes = [encode(&record(a, "")), encode(&record(b, &text))].concat();
            bytes.extend_from_slice(&third[..cut]);
            let whole = cut == third.len();
            let expected = if whole { record(c, &text) } else { record(b, &text) };
            prop_assert_eq!(decode(&bytes), Contents {
                record: Some(expected), appendable: whole || cut == 0, damaged: false,
            });
        }

        /// Any bytes decode to some answer without a panic.
        #[test]
        fn any_bytes_decode_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), at in any::<usize>()) {
            let _ = decode(&bytes);
            // A real record with bytes written over part of it reaches further in.
            let mut damaged = [encode(&record(1, "x")), encode(&record(2, "y"))].concat();
            let at = at % damaged.len();
            let end = (at + bytes.len()).min(damaged.len());
            damaged[at..end].copy_from_slice(&bytes[..end - at]);
            let _ = decode(&damaged);
        }
    }

    #[test]
    fn a_whole_record_that_does_not_parse_gives_way_to_the_one_before() {
        let mut bytes = encode(&record(1, "kept"));
        bytes.extend_from_slice(format!("{HEADER} 1 2 5\n{{\"n\":\n").as_bytes());
        assert_eq!(decode(&bytes), Contents { record: Some(record(1, "kept")), appendable: false, damaged: true });
        let header_only = format!("{HEADER} 1 2 18446744073709551615\n");
        assert_eq!(decode(header_only.as_bytes()), Contents { record: None, appendable: false, damaged: false });
        assert_eq!(decode(b""), Contents { record: None, appendable: true, damaged: false });
        // Fields past u64, empty or signed are not numbers.
        for header in [" 99999999999999999999 1 2", "  1 2", " +1 1 2", " 1 2"] {
            assert_eq!(decode(format!("{HEADER}{header}\n{{}}\n").as_bytes()).record, None, "{header}");
        }
    }

    #[test]
    fn first_format_files_are_read_but_not_appended_to() {
        let v1 = format!("{HEADER_V1} 10 20\n{{\"n\":5}}");
        let expected = Record { data: [("n".to_owned(), Value::Int(5))].into(), created_at: 10, expires_at: 20 };
        assert_eq!(decode(v1.as_bytes()), Contents { record: Some(expected), appendable: false, damaged: false });
        assert_eq!(decode(format!("{HEADER_V1} 10\n{{}}").as_bytes()).record, None);
    }
}
