//! SQLite store for hipflask's server-side sessions: the embedded default.
//!
//! One file, WAL journal, a page cache of up to 64 MiB, schema created and
//! migrated on open. An update applies the request's per-key changes to the
//! session as stored, so concurrent requests lose nothing, even from
//! several processes sharing the file: when the store knows the row it last
//! read or wrote, one `UPDATE` guarded by that row's exact data (a
//! compare-and-set); when the guard fails or the row is not known, a
//! `BEGIN IMMEDIATE` transaction that reads the row, merges and writes.
//! Loads and saves of a row the store knows find it by its rowid, guarded
//! by its id, so they walk no index of random ids.
//!
//! ```no_run
//! # async fn f() -> Result<(), hipflask::Error> {
//! let store = hipflask_sqlite::SqliteStore::open("sessions.db").await?;
//! let config = hipflask::Config::builder()
//!     .secret_key("change me")
//!     .store(std::sync::Arc::new(store))
//!     .build()?;
//! # let _ = config; Ok(()) }
//! ```
//!
//! Sessions are stored as Flask's tagged JSON, so every Flask value type
//! survives exactly.
//!
//! The connection that writes lives on a thread of its own
//! ([`hipflask::StoreThread`]) that runs the store's calls one after
//! another, as they are queued. SQLite runs one writer at a time anyway, and
//! tokio's blocking pool woke a thread per call and had dozens of them
//! contend for the connection: on the benchmark, most of a request's CPU
//! went to those switches. Loads run on the caller's thread instead, on a
//! second, read-only connection: in WAL mode a reader never waits for a
//! writer, and a read from the page cache costs less than the hand-off to
//! the store's thread and back (read requests took a quarter less CPU).
//! Only while its page cache is warm, though: a write empties the cache of
//! every other connection to the database, and the next read through it
//! starts over, at a cost that grows with the database. So a load that
//! follows a write of this store goes to the store's thread, whose
//! connection made the write and kept its cache; the reader takes over again
//! at the second load in a row with no write between them.
//! When that connection is in use by another call, or SQLite answers
//! "busy" (a reader meets that only while the database recovers from a
//! crash), the load goes to the store's thread. For a database on a slow
//! disk, [`SqliteStore::with_own_threads`] keeps every call off the
//! caller's thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hipflask::{
    Error, ErrorKind, LastSeen, Record, SessionId, Store, StoreFuture, StoreThread, Update, Updated, apply_changes,
    sql_like_prefix, user_of,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// The schema version this crate writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const MIGRATIONS: [&str; 1] = ["CREATE TABLE IF NOT EXISTS hipflask_sessions (
        id TEXT PRIMARY KEY NOT NULL,
        data TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        user_id TEXT
    );
    CREATE INDEX IF NOT EXISTS hipflask_sessions_expires ON hipflask_sessions (expires_at);
    CREATE INDEX IF NOT EXISTS hipflask_sessions_user ON hipflask_sessions (user_id);"];

/// Sessions in a SQLite database file.
#[derive(Clone)]
pub struct SqliteStore {
    conn: StoreThread<Connection>,
    /// A second connection, read-only, for loads on the caller's thread;
    /// none for an in-memory database (a second connection would open
    /// another one) or after `with_own_threads`.
    reader: Option<Arc<Mutex<Reader>>>,
    /// The writes this store has made, counted on its thread: see
    /// [`Reader::may_answer`].
    writes: Arc<AtomicU64>,
    /// `writes` as the previous load found it.
    last_load: Arc<AtomicU64>,
    user_key: Arc<str>,
    prefix: Arc<str>,
    /// Per stored id, the rowid and data of the row as this store last read
    /// or wrote it (`remember`), for the compare-and-set update.
    seen: Arc<LastSeen>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("user_key", &self.user_key)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Backend, "SQLite session store failed").with_source(e)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, Error> {
        let path = path.as_ref().to_owned();
        let (conn, path) = tokio::task::spawn_blocking(move || Connection::open(&path).map(|conn| (conn, path)))
            .await
            .map_err(backend)?
            .map_err(backend)?;
        let mut store = SqliteStore::from_connection(conn).await?;
        // Opened once the schema exists.
        let reader = tokio::task::spawn_blocking(move || open_reader(&path)).await.map_err(backend)??;
        store.reader = Some(Arc::new(Mutex::new(Reader { conn: reader, warm_at: 0 })));
        Ok(store)
    }

    /// An in-memory database (for tests).
    pub async fn in_memory() -> Result<SqliteStore, Error> {
        SqliteStore::from_connection(Connection::open_in_memory().map_err(backend)?).await
    }

    async fn from_connection(conn: Connection) -> Result<SqliteStore, Error> {
        let store = SqliteStore {
            conn: StoreThread::start("hipflask-sqlite", conn)?,
            reader: None,
            writes: Arc::new(AtomicU64::new(0)),
            last_load: Arc::new(AtomicU64::new(0)),
            user_key: "_user_id".into(),
            prefix: "".into(),
            seen: Arc::new(LastSeen::default()),
        };
        store.conn.call(migrate).await?;
        Ok(store)
    }

    /// The session key whose value names the user (default `_user_id`).
    pub fn with_user_key(mut self, key: &str) -> SqliteStore {
        self.user_key = key.into();
        self
    }

    /// `SESSION_KEY_PREFIX`: stored ids become `prefix + id`, as Flask-Session's
    /// SQLAlchemy backend stores them (default: no prefix), so several apps
    /// can share one table.
    pub fn with_key_prefix(mut self, prefix: &str) -> SqliteStore {
        self.prefix = prefix.into();
        self
    }

    /// Runs every call on the store's own thread, never on the caller's: for
    /// a database on a slow disk, where a load can wait on the device and
    /// would hold up the other requests of the caller's thread meanwhile.
    pub fn with_own_threads(mut self) -> SqliteStore {
        self.reader = None;
        self
    }

    fn key(&self, id: &SessionId) -> String {
        format!("{}{}", self.prefix, id.as_str())
    }

    /// Runs `f`, which may write, on the store's thread, and counts it.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let writes = self.writes.clone();
        self.conn.call(move |conn| {
            let result = f(conn);
            writes.fetch_add(1, Ordering::Release);
            result
        })
    }
}

/// The read-only connection, and when it last answered.
struct Reader {
    conn: Connection,
    /// `SqliteStore::writes` when this connection last answered a load.
    warm_at: u64,
}

impl Reader {
    /// Whether this connection may answer a load, given `SqliteStore::writes`
    /// now and as the previous load found it.
    ///
    /// Any write empties the page cache of every other connection to the
    /// database: the reader's next read finds it cold, clears it (callgrind
    /// puts about 5k instructions in SQLite's `pcache1TruncateUnsafe` per
    /// such load at a million sessions) and reads its pages again: a write
    /// request at a million sessions cost a fifth more instructions than at
    /// a thousand. The thread's connection, which made the write, still has
    /// every page. So the reader answers while no write came since
    /// it last did, or from the second load in a row with no write between
    /// them: a run of reads pays the cold start once, and a load that follows
    /// a write goes to the thread. Writes by other processes are not counted;
    /// they only make the reader's next read slower.
    fn may_answer(&self, writes: u64, previous_load: u64) -> bool {
        self.warm_at == writes || previous_load == writes
    }
}

/// The connection for loads on the caller's thread. It never waits: SQLite
/// answers "busy" at once instead (a WAL reader meets that only while the
/// database recovers from a crash), and the load then goes to the store's
/// thread.
fn open_reader(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 0; PRAGMA cache_size = -65536;")
        .map_err(backend)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    // A 64 MiB page cache (SQLite's default is 2 MiB): with a million
    // sessions the id index no longer fits the default, and every lookup
    // went to the OS for its pages, a third slower than with a thousand.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
         PRAGMA cache_size = -65536;",
    )
    .map_err(backend)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(Error::new(
            ErrorKind::Backend,
            format!("the session database has schema version {version}, newer than this hipflask ({SCHEMA_VERSION})"),
        ));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", i as i64 + 1).map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

/// A `BEGIN IMMEDIATE` transaction run through cached statements, rolled
/// back when dropped uncommitted. rusqlite's `Transaction` prepares `BEGIN`
/// and `COMMIT` anew each time: 3.5k instructions, a twentieth of a save.
struct Immediate<'c> {
    conn: &'c Connection,
    done: bool,
}

impl<'c> Immediate<'c> {
    fn begin(conn: &'c Connection) -> Result<Immediate<'c>, Error> {
        if !conn.is_autocommit() {
            // Left open by a rollback that failed: start from a clean state.
            run_cached(conn, "ROLLBACK")?;
        }
        run_cached(conn, "BEGIN IMMEDIATE")?;
        Ok(Immediate { conn, done: false })
    }

    fn commit(mut self) -> Result<(), Error> {
        run_cached(self.conn, "COMMIT")?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        // Also after a failed COMMIT (busy), which leaves the transaction open.
        if !self.done && !self.conn.is_autocommit() {
            let _ = run_cached(self.conn, "ROLLBACK");
        }
    }
}

fn run_cached(conn: &Connection, sql: &str) -> Result<(), Error> {
    conn.prepare_cached(sql).and_then(|mut stmt| stmt.execute([])).map(drop).map_err(backend)
}

/// Reads a row's data; a row that cannot be read is treated as missing, so
/// the visitor gets a new session instead of an error.
fn parse_row(id: &str, text: &str) -> Option<hipflask::Dict> {
    match hipflask::parse_tagged_json(text) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, id_prefix = &id[..6.min(id.len())], "unreadable session row; treating it as missing");
            None
        }
    }
}

/// A live session as loaded: its record, its data as stored, and its rowid.
type Row = (Record, String, i64);

/// The live session stored under `id`.
fn load_row(conn: &Connection, id: &str, now: u64) -> Result<Option<Row>, Error> {
    // Cached statements: preparing SQL costs more than running it on a hot page.
    let row = conn
        .prepare_cached(
            "SELECT data, created_at, expires_at, rowid FROM hipflask_sessions WHERE id = ?1 AND expires_at > ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![id, now as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional()
        })
        .map_err(backend)?;
    Ok(row.and_then(|(text, created, expires, rowid)| to_row(id, text, created, expires, rowid)))
}

/// A row found by the rowid this store last saw it under, if it still holds
/// `id` and is live: no walk of the id index, whose random text keys made
/// each load touch pages all over the file at a million sessions.
const LOAD_BY_ROWID: &str =
    "SELECT data, created_at, expires_at FROM hipflask_sessions WHERE rowid = ?1 AND id = ?2 AND expires_at > ?3";

/// [`load_row`], trying first the rowid the store remembers for `id`. A row
/// that moved since (deleted and made again, or renumbered by `VACUUM`) is
/// not the one at that rowid any more, and is found by its id.
fn load_known_row(conn: &Connection, seen: &LastSeen, id: &str, now: u64) -> Result<Option<Row>, Error> {
    if let Some(rowid) = seen.peek(id, |bytes| remembered(bytes).map(|(rowid, _)| rowid)).flatten() {
        let row = conn
            .prepare_cached(LOAD_BY_ROWID)
            .and_then(|mut stmt| {
                stmt.query_row(params![rowid, id, now as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
            })
            .map_err(backend)?;
        if let Some((text, created, expires)) = row {
            return Ok(to_row(id, text, created, expires, rowid));
        }
    }
    load_row(conn, id, now)
}

/// The live session stored under `id`, remembered for the next update.
fn load_remembered(conn: &Connection, seen: &LastSeen, id: &str, now: u64) -> Result<Option<Record>, Error> {
    let Some((record, text, rowid)) = load_known_row(conn, seen, id, now)? else {
        return Ok(None);
    };
    remember(seen, id, rowid, &text);
    Ok(Some(record))
}

fn to_row(id: &str, text: String, created: i64, expires: i64, rowid: i64) -> Option<Row> {
    let data = parse_row(id, &text)?;
    Some((Record { data, created_at: created as u64, expires_at: expires as u64 }, text, rowid))
}

/// Remembers a row as this store read or wrote it: its rowid, then its data.
fn remember(seen: &LastSeen, id: &str, rowid: i64, text: &str) {
    let mut bytes = Vec::with_capacity(8 + text.len());
    bytes.extend_from_slice(&rowid.to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
    seen.remember_vec(id, bytes);
}

/// The rowid and data `remember` kept.
fn remembered(bytes: &[u8]) -> Option<(i64, &str)> {
    let (rowid, text) = bytes.split_first_chunk::<8>()?;
    Some((i64::from_le_bytes(*rowid), std::str::from_utf8(text).ok()?))
}

/// `data` with `update` applied, as stored text, and the new user if the
/// update changed it (for `write_row`). Fails on a conflict.
fn merged(
    mut data: hipflask::Dict,
    update: &Update,
    user_key: &str,
) -> Result<(String, Option<Option<String>>), Error> {
    let user_before = user_of(&data, user_key);
    apply_changes(&mut data, &update.changes, update.loaded.as_deref())?;
    let user = user_of(&data, user_key);
    Ok((hipflask::to_tagged_json(&data), (user != user_before).then_some(user)))
}

/// Writes `text` over the row, and the user column only when `user` says it
/// changed: SQLite does not compare old and new values, so an UPDATE
/// rewrites the entries of every index on a column it sets, and setting the
/// user column on every save rewrote the user index entry each time.
/// `guard`: only if the row still holds exactly this data and is live at
/// `now` (the compare-and-set). Returns whether the row was written.
fn write_row(
    conn: &Connection,
    rowid: i64,
    text: &str,
    expires_at: u64,
    user: Option<Option<String>>,
    guard: Option<(&str, &str, u64)>,
) -> Result<bool, Error> {
    // The row is found by rowid, not by id: a search of the id index walks
    // random text keys, and at a million sessions those walks were most of
    // what a write had grown by since a thousand.
    let n = match (user, guard) {
        (None, None) => conn
            .prepare_cached("UPDATE hipflask_sessions SET data = ?2, expires_at = ?3 WHERE rowid = ?1")
            .and_then(|mut stmt| stmt.execute(params![rowid, text, expires_at as i64])),
        (Some(user), None) => conn
            .prepare_cached("UPDATE hipflask_sessions SET data = ?2, expires_at = ?3, user_id = ?4 WHERE rowid = ?1")
            .and_then(|mut stmt| stmt.execute(params![rowid, text, expires_at as i64, user])),
        (None, Some((id, expected, now))) => conn
            .prepare_cached(
                "UPDATE hipflask_sessions SET data = ?2, expires_at = ?3
                 WHERE rowid = ?1 AND id = ?4 AND data = ?5 AND expires_at > ?6",
            )
            .and_then(|mut stmt| stmt.execute(params![rowid, text, expires_at as i64, id, expected, now as i64])),
        (Some(user), Some((id, expected, now))) => conn
            .prepare_cached(
                "UPDATE hipflask_sessions SET data = ?2, expires_at = ?3, user_id = ?7
                 WHERE rowid = ?1 AND id = ?4 AND data = ?5 AND expires_at > ?6",
            )
            .and_then(|mut stmt| stmt.execute(params![rowid, text, expires_at as i64, id, expected, now as i64, user])),
    }
    .map_err(backend)?;
    Ok(n == 1)
}

/// The ids among stored keys that carry `prefix`.
fn ids(rows: Result<Vec<String>, rusqlite::Error>, prefix: &str) -> Result<Vec<SessionId>, Error> {
    Ok(rows.map_err(backend)?.iter().filter_map(|s| s.strip_prefix(prefix).and_then(SessionId::parse)).collect())
}

impl Store for SqliteStore {
    fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>> {
        let id = self.key(id);
        Box::pin(async move {
            // On the caller's thread when the reader is free (a reader in
            // WAL mode does not wait for writers): a page-cache read is
            // cheaper than the hand-off to the store's thread and back.
            let writes = self.writes.load(Ordering::Acquire);
            let previous_load = self.last_load.swap(writes, Ordering::Relaxed);
            if let Some(reader) = &self.reader
                && let Ok(mut reader) = reader.try_lock()
                && reader.may_answer(writes, previous_load)
                && let Ok(answer) = load_remembered(&reader.conn, &self.seen, &id, now)
            {
                reader.warm_at = writes;
                return Ok(answer);
            }
            // Busy, cold after a write, or failed: the store's thread answers
            // (waiting if it must, and saying why it failed).
            let seen = self.seen.clone();
            self.conn.call(move |conn| load_remembered(conn, &seen, &id, now)).await
        })
    }

    fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()> {
        let id = self.key(id);
        let user = user_of(&record.data, &self.user_key);
        let seen = self.seen.clone();
        self.write(move |conn| {
            let data = hipflask::to_tagged_json(&record.data);
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO hipflask_sessions (id, data, created_at, expires_at, user_id) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (id) DO NOTHING",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![id, data, record.created_at as i64, record.expires_at as i64, user])
                })
                .map_err(backend)?;
            if inserted == 0 {
                return Err(Error::new(ErrorKind::Conflict, "session id already in use"));
            }
            remember(&seen, &id, conn.last_insert_rowid(), &data);
            Ok(())
        })
    }

    fn update<'a>(&'a self, id: &'a SessionId, update: &'a Update, now: u64) -> StoreFuture<'a, Updated> {
        let id = self.key(id);
        let update = update.clone();
        let user_key = self.user_key.clone();
        let seen = self.seen.clone();
        self.write(move |conn| {
            // The row as this store last saw it, usually moments ago: merged
            // here and written in one statement if it is still exactly that.
            // A single statement is atomic, so no transaction; and it finds
            // the row by rowid, sparing a walk of the id index.
            if let Some(bytes) = seen.take(&id)
                && let Some((rowid, expected)) = remembered(&bytes)
                // Unparsable, or a conflict against what was seen: the
                // transaction decides against the row itself.
                && let Ok(data) = hipflask::parse_tagged_json(expected)
                && let Ok((text, user)) = merged(data, &update, &user_key)
                && write_row(conn, rowid, &text, update.expires_at, user, Some((&id, expected, now)))?
            {
                remember(&seen, &id, rowid, &text);
                return Ok(Updated::Applied);
            }
            let tx = Immediate::begin(conn)?;
            let Some((record, _, rowid)) = load_row(conn, &id, now)? else {
                return Ok(Updated::Gone);
            };
            let (text, user) = merged(record.data, &update, &user_key)?;
            // The rowid just read is stable within the transaction.
            write_row(conn, rowid, &text, update.expires_at, user, None)?;
            tx.commit()?;
            remember(&seen, &id, rowid, &text);
            Ok(Updated::Applied)
        })
    }

    fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool> {
        let id = self.key(id);
        let seen = self.seen.clone();
        self.write(move |conn| {
            seen.forget(&id);
            let n = conn
                .prepare_cached("DELETE FROM hipflask_sessions WHERE id = ?1")
                .and_then(|mut stmt| stmt.execute(params![id]))
                .map_err(backend)?;
            Ok(n > 0)
        })
    }

    fn delete_expired(&self, now: u64) -> StoreFuture<'_, u64> {
        let like = sql_like_prefix(&self.prefix);
        self.write(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM hipflask_sessions WHERE expires_at <= ?1 AND id LIKE ?2 ESCAPE '\\'",
                    params![now as i64, like],
                )
                .map_err(backend)?;
            Ok(n as u64)
        })
    }

    fn list(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>> {
        let prefix = self.prefix.clone();
        self.conn.call(move |conn| {
            let mut stmt =
                conn.prepare("SELECT id FROM hipflask_sessions WHERE expires_at > ?1 ORDER BY id").map_err(backend)?;
            ids(stmt.query_map(params![now as i64], |r| r.get(0)).and_then(Iterator::collect), &prefix)
        })
    }

    fn sessions_of_user<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, Vec<SessionId>> {
        let user = user.to_owned();
        let prefix = self.prefix.clone();
        self.conn.call(move |conn| {
            let mut stmt = conn
                .prepare("SELECT id FROM hipflask_sessions WHERE user_id = ?1 AND expires_at > ?2 ORDER BY id")
                .map_err(backend)?;
            ids(stmt.query_map(params![user, now as i64], |r| r.get(0)).and_then(Iterator::collect), &prefix)
        })
    }

    fn delete_user<'a>(&'a self, user: &'a str) -> StoreFuture<'a, u64> {
        let user = user.to_owned();
        let like = sql_like_prefix(&self.prefix);
        self.write(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM hipflask_sessions WHERE user_id = ?1 AND id LIKE ?2 ESCAPE '\\'",
                    params![user, like],
                )
                .map_err(backend)?;
            Ok(n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load the reader cannot answer (here a reader whose database has no
    /// sessions table) is answered by the store's thread instead.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_reader_gives_way_to_the_stores_thread() {
        let mut store = SqliteStore::in_memory().await.unwrap();
        let id = SessionId::generate();
        let record =
            Record { data: [("a".to_owned(), hipflask::Value::Int(1))].into(), created_at: 1, expires_at: 100 };
        store.create(&id, record.clone()).await.unwrap();
        // Warm as of the create, so that the load goes to it first.
        let reader = Reader { conn: Connection::open_in_memory().unwrap(), warm_at: 1 };
        assert!(load_remembered(&reader.conn, &store.seen, id.as_str(), 10).is_err());
        store.reader = Some(Arc::new(Mutex::new(reader)));
        assert_eq!(store.load(&id, 10).await.unwrap(), Some(record));
        assert_eq!(store.reader.as_ref().unwrap().lock().unwrap().warm_at, 1);
    }

    /// Whether the reader answered each load so far: it records the writes
    /// it answered after.
    fn reader_warm_at(store: &SqliteStore) -> u64 {
        store.reader.as_ref().unwrap().lock().unwrap().warm_at
    }

    /// A load right after a write goes to the store's thread, whose
    /// connection made the write and kept its page cache; the reader, whose
    /// cache the write emptied, answers from the second load in a row.
    #[tokio::test(flavor = "current_thread")]
    async fn a_load_after_a_write_goes_to_the_connection_that_wrote() {
        let dir = std::env::temp_dir().join(format!("hipflask-sqlite-route-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sessions.db");
        let _ = std::fs::remove_file(&path);
        let store = SqliteStore::open(&path).await.unwrap();
        let id = SessionId::generate();
        let record =
            |n| Record { data: [("n".to_owned(), hipflask::Value::Int(n))].into(), created_at: 1, expires_at: 100 };
        store.create(&id, record(1)).await.unwrap();
        assert_eq!(store.writes.load(Ordering::SeqCst), 1);

        // First load after the create: the thread's.
        assert_eq!(store.load(&id, 10).await.unwrap(), Some(record(1)));
        assert_eq!(reader_warm_at(&store), 0, "answered by the reader right after a write");
        // No write since that load: the reader answers, and is warm from then on.
        assert_eq!(store.load(&id, 10).await.unwrap(), Some(record(1)));
        assert_eq!(reader_warm_at(&store), 1);
        assert_eq!(store.load(&id, 10).await.unwrap(), Some(record(1)));
        assert_eq!(reader_warm_at(&store), 1);

        // A save, then loads: the same again, and every answer is the saved one.
        let changes = hipflask::Changes { keys: vec![("n".to_owned(), Some(hipflask::Value::Int(2)))], cleared: false };
        let update = Update { changes, loaded: None, expires_at: 100 };
        assert_eq!(store.update(&id, &update, 10).await.unwrap(), Updated::Applied);
        assert_eq!(store.load(&id, 10).await.unwrap(), Some(record(2)));
        assert_eq!(reader_warm_at(&store), 1, "answered by the reader right after a write");
        assert_eq!(store.load(&id, 10).await.unwrap(), Some(record(2)));
        assert_eq!(reader_warm_at(&store), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The load by rowid reads the table alone: SQLite's plan for it names
    /// the rowid and no index (the id index's walk is what it is for).
    #[test]
    fn a_load_by_rowid_walks_no_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {LOAD_BY_ROWID}"))
            .unwrap()
            .query_map(params![1, "session:x", 0], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(plan, ["SEARCH hipflask_sessions USING INTEGER PRIMARY KEY (rowid=?)"], "{plan:?}");
    }
}
