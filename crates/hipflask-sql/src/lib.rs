//! PostgreSQL and MySQL/MariaDB stores for hipflask's server-side sessions.
//!
//! ```no_run
//! # async fn f() -> Result<(), hipflask::Error> {
//! let pg = hipflask_sql::PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
//! let my = hipflask_sql::MySqlStore::connect("mysql://root@127.0.0.1:3306/test").await?;
//! # let _ = (pg, my); Ok(()) }
//! ```
//!
//! `connect` creates the table `hipflask_sessions` (id, data as Flask's
//! tagged JSON, creation and expiry times, user) with indexes on the expiry
//! and the user, if it is not there yet. An update applies the request's
//! per-key changes to the session as stored, so concurrent requests lose
//! nothing and a deleted session is never recreated. Usually that is one
//! statement: the store remembers the data it last read or wrote for each
//! session in flight ([`hipflask::LastSeen`]), applies the changes to it, and
//! updates the row only if its data is still exactly that. When it is not
//! (another request wrote in between) or nothing is remembered, the update
//! is a transaction that locks the row (`SELECT ... FOR UPDATE`), applies the
//! changes and writes it back. Expired rows are removed by `delete_expired`
//! (`hipflask sessions cleanup`).
//!
//! Loads, and saves by compare-and-set, of requests that come while the
//! previous such statement is running are sent together: on PostgreSQL one
//! statement for all of them, on MySQL one statement for the loads and one
//! transaction (one commit) for the saves. A request alone still waits for
//! a single statement; under load a write costs the database a fraction of
//! a statement and a commit. A statement the database refuses is run again
//! per request, so one bad session fails only its own request.
//!
//! sqlx drives both databases with one API, pools connections and needs no
//! C library; MariaDB counts as MySQL.

mod batch;

use std::fmt;

use batch::{Batcher, Load, Outcome, Row, Swap};
use hipflask::{
    Error, ErrorKind, LastSeen, Record, SessionId, Store, StoreFuture, Update, Updated, apply_changes, sql_like_prefix,
    user_of,
};
use sqlx::Row as _;

fn backend(e: sqlx::Error) -> Error {
    let kind = match e {
        sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Backend,
    };
    Error::new(kind, "SQL session store failed").with_source(e)
}

fn parse_row(id: &str, text: &str) -> Option<hipflask::Dict> {
    match hipflask::parse_tagged_json(text) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, id_prefix = &id[..6.min(id.len())], "unreadable session row; treating it as missing");
            None
        }
    }
}

/// The data `expected` (tagged JSON) becomes with `update` applied, and its
/// user; `None` when it does not parse or the conflict check fails, for the
/// locked path to decide against the row itself.
fn swapped(expected: &str, update: &Update, user_key: &str) -> Option<(String, Option<String>)> {
    let mut data = hipflask::parse_tagged_json(expected).ok()?;
    apply_changes(&mut data, &update.changes, update.loaded.as_deref()).ok()?;
    Some((hipflask::to_tagged_json(&data), user_of(&data, user_key)))
}

/// The SQL of one database, in the same bind order for both.
struct Dialect {
    /// Whether the table and its indexes are all there, read from the
    /// catalog: the `IF NOT EXISTS` statements lock the table even when they
    /// skip, so they run only when something is missing.
    installed: &'static str,
    /// Taken around the migration, held by the connection running it:
    /// PostgreSQL fails all but one of concurrent `CREATE TABLE IF NOT
    /// EXISTS` (a duplicate in its catalog), so instances starting together
    /// on a new database take turns, and the later ones find it installed.
    migrate_lock: &'static str,
    migrate_unlock: &'static str,
    migrate: &'static [&'static str],
    load: &'static str,
    lock: &'static str,
    insert: &'static str,
    update: &'static str,
    /// The update, only if the stored data is still exactly the given text.
    swap: &'static str,
    delete: &'static str,
    delete_expired: &'static str,
    list: &'static str,
    of_user: &'static str,
    delete_user: &'static str,
}

const POSTGRES: Dialect = Dialect {
    installed: "SELECT to_regclass('hipflask_sessions') IS NOT NULL
        AND to_regclass('hipflask_sessions_expires') IS NOT NULL
        AND to_regclass('hipflask_sessions_user') IS NOT NULL",
    // Any fixed key: it only has to be the same for every instance.
    migrate_lock: "SELECT pg_advisory_lock(4847126539210375)",
    migrate_unlock: "SELECT pg_advisory_unlock(4847126539210375)",
    migrate: &[
        "CREATE TABLE IF NOT EXISTS hipflask_sessions (
            id TEXT PRIMARY KEY, data TEXT NOT NULL, created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL, user_id TEXT)",
        "CREATE INDEX IF NOT EXISTS hipflask_sessions_expires ON hipflask_sessions (expires_at)",
        "CREATE INDEX IF NOT EXISTS hipflask_sessions_user ON hipflask_sessions (user_id)",
    ],
    load: "SELECT data, created_at, expires_at FROM hipflask_sessions WHERE id = $1 AND expires_at > $2",
    lock: "SELECT data, created_at, expires_at FROM hipflask_sessions WHERE id = $1 AND expires_at > $2 FOR UPDATE",
    insert: "INSERT INTO hipflask_sessions (id, data, created_at, expires_at, user_id) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
    update: "UPDATE hipflask_sessions SET data = $1, expires_at = $2, user_id = $3 WHERE id = $4",
    // TEXT equality is byte equality under PostgreSQL's deterministic collations.
    swap: "UPDATE hipflask_sessions SET data = $1, expires_at = $2, user_id = $3
           WHERE id = $4 AND data = $5 AND expires_at > $6",
    delete: "DELETE FROM hipflask_sessions WHERE id = $1",
    delete_expired: "DELETE FROM hipflask_sessions WHERE expires_at <= $1 AND id LIKE $2",
    list: "SELECT id FROM hipflask_sessions WHERE expires_at > $1 AND id LIKE $2",
    of_user: "SELECT id FROM hipflask_sessions WHERE user_id = $1 AND expires_at > $2 AND id LIKE $3",
    delete_user: "DELETE FROM hipflask_sessions WHERE user_id = $1 AND id LIKE $2",
};

const MYSQL: Dialect = Dialect {
    installed: "SELECT COUNT(DISTINCT index_name) = 3 FROM information_schema.statistics
        WHERE table_schema = DATABASE() AND table_name = 'hipflask_sessions'
        AND index_name IN ('PRIMARY', 'hipflask_sessions_expires', 'hipflask_sessions_user')",
    // Past the timeout the migration runs anyway; its statements are idempotent.
    migrate_lock: "SELECT GET_LOCK('hipflask_sessions_migrate', 60)",
    migrate_unlock: "SELECT RELEASE_LOCK('hipflask_sessions_migrate')",
    migrate: &["CREATE TABLE IF NOT EXISTS hipflask_sessions (
            id VARCHAR(191) NOT NULL PRIMARY KEY, data LONGTEXT NOT NULL, created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL, user_id VARCHAR(191),
            INDEX hipflask_sessions_expires (expires_at), INDEX hipflask_sessions_user (user_id))"],
    load: "SELECT data, created_at, expires_at FROM hipflask_sessions WHERE id = ? AND expires_at > ?",
    lock: "SELECT data, created_at, expires_at FROM hipflask_sessions WHERE id = ? AND expires_at > ? FOR UPDATE",
    // A duplicate id fails with a unique-key violation, mapped to a conflict.
    insert: "INSERT INTO hipflask_sessions (id, data, created_at, expires_at, user_id) VALUES (?, ?, ?, ?, ?)",
    update: "UPDATE hipflask_sessions SET data = ?, expires_at = ?, user_id = ? WHERE id = ?",
    // Compared as bytes: the column's collation may ignore case and
    // trailing spaces, which would let a different session pass for the same.
    swap: "UPDATE hipflask_sessions SET data = ?, expires_at = ?, user_id = ?
           WHERE id = ? AND CAST(data AS BINARY) = CAST(? AS BINARY) AND expires_at > ?",
    delete: "DELETE FROM hipflask_sessions WHERE id = ?",
    delete_expired: "DELETE FROM hipflask_sessions WHERE expires_at <= ? AND id LIKE ?",
    list: "SELECT id FROM hipflask_sessions WHERE expires_at > ? AND id LIKE ?",
    of_user: "SELECT id FROM hipflask_sessions WHERE user_id = ? AND expires_at > ? AND id LIKE ?",
    delete_user: "DELETE FROM hipflask_sessions WHERE user_id = ? AND id LIKE ?",
};

/// How long a pooled connection may sit unused before it is pinged on its
/// way out of the pool.
const IDLE_PING_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

macro_rules! sql_store {
    ($(#[$doc:meta])* $name:ident, $db:ty, $dialect:expr, $batched:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            pool: sqlx::Pool<$db>,
            user_key: String,
            prefix: String,
            seen: std::sync::Arc<LastSeen>,
            loads: Option<Batcher<Load, Option<Row>>>,
            swaps: Option<Batcher<Swap, bool>>,
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).field("prefix", &self.prefix).finish_non_exhaustive()
            }
        }

        impl $name {
            /// Connects (a pool of up to 10 connections) and creates the table if needed.
            pub async fn connect(url: &str) -> Result<$name, Error> {
                // sqlx pings every connection it hands out by default: a round
                // trip and a third of a load's CPU. A connection in steady use
                // has just proven itself, so only one idle for a while (the one
                // that may have died with a database restart) is pinged.
                let pool = sqlx::pool::PoolOptions::<$db>::new()
                    .max_connections(10)
                    .acquire_timeout(std::time::Duration::from_secs(5))
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= IDLE_PING_AFTER {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect(url)
                    .await
                    .map_err(backend)?;
                let seen = std::sync::Arc::new(LastSeen::default());
                let loads = Batcher::start({
                    let pool = pool.clone();
                    move |jobs| batch::$batched::load_many(pool.clone(), jobs)
                });
                let swaps = Batcher::start({
                    let pool = pool.clone();
                    move |jobs| batch::$batched::swap_many(pool.clone(), jobs)
                });
                let store = $name { pool, user_key: "_user_id".into(), prefix: String::new(), seen, loads, swaps };
                store.migrate().await?;
                Ok(store)
            }

            /// Creates the table and indexes if they are missing (idempotent).
            ///
            /// When everything is there already, as on every start but the
            /// first, it only reads the catalog: `CREATE INDEX IF NOT EXISTS`
            /// waits for every open write transaction on the table, and queued
            /// writes then wait behind it, so starting one more instance
            /// stalled every instance's saves.
            pub async fn migrate(&self) -> Result<(), Error> {
                let mut conn = self.pool.acquire().await.map_err(backend)?;
                if Self::installed(&mut conn).await? {
                    return Ok(());
                }
                sqlx::query($dialect.migrate_lock).execute(&mut *conn).await.map_err(backend)?;
                let migrated = async {
                    // Another instance may have installed it while this one waited.
                    if !Self::installed(&mut conn).await? {
                        for sql in $dialect.migrate {
                            sqlx::query(sql).execute(&mut *conn).await.map_err(backend)?;
                        }
                    }
                    Ok(())
                }
                .await;
                if sqlx::query($dialect.migrate_unlock).execute(&mut *conn).await.is_err() {
                    // It may still hold the lock: closed, not pooled, so the lock goes with it.
                    drop(conn.detach());
                }
                migrated
            }

            async fn installed(conn: &mut sqlx::pool::PoolConnection<$db>) -> Result<bool, Error> {
                sqlx::query_scalar($dialect.installed).fetch_one(&mut **conn).await.map_err(backend)
            }

            /// `SESSION_KEY_PREFIX`: stored ids become `prefix + id`, as
            /// Flask-Session's SQLAlchemy backend stores them.
            pub fn with_key_prefix(mut self, prefix: &str) -> $name {
                self.prefix = prefix.into();
                self
            }

            /// The session key whose value names the user (default `_user_id`).
            pub fn with_user_key(mut self, key: &str) -> $name {
                self.user_key = key.into();
                self
            }

            fn key(&self, id: &SessionId) -> String {
                format!("{}{}", self.prefix, id.as_str())
            }

            fn ids(&self, rows: Vec<String>) -> Vec<SessionId> {
                rows.iter().filter_map(|k| k.strip_prefix(&self.prefix).and_then(SessionId::parse)).collect()
            }
        }

        impl Store for $name {
            fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>> {
                Box::pin(async move {
                    let key = self.key(id);
                    let outcome = match &self.loads {
                        Some(loads) => loads.call(Load { key: key.clone(), now: now as i64 }).await,
                        None => Outcome::Alone,
                    };
                    let row = match outcome {
                        Outcome::Done(row) => row,
                        Outcome::Failed(e) => return Err(batch::failed(e)),
                        Outcome::Alone => sqlx::query_as($dialect.load)
                            .bind(&key)
                            .bind(now as i64)
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(backend)?,
                    };
                    Ok(row.and_then(|(text, created_at, expires_at): Row| {
                        let data = parse_row(&key, &text)?;
                        self.seen.remember_vec(&key, text.into_bytes());
                        Some(Record { data, created_at: created_at as u64, expires_at: expires_at as u64 })
                    }))
                })
            }

            fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()> {
                Box::pin(async move {
                    let key = self.key(id);
                    let text = hipflask::to_tagged_json(&record.data);
                    let done = sqlx::query($dialect.insert)
                        .bind(&key)
                        .bind(&text)
                        .bind(record.created_at as i64)
                        .bind(record.expires_at as i64)
                        .bind(user_of(&record.data, &self.user_key))
                        .execute(&self.pool)
                        .await
                        .map_err(|e| match e.as_database_error() {
                            Some(d) if d.is_unique_violation() => {
                                Error::new(ErrorKind::Conflict, "session id already in use")
                            }
                            _ => backend(e),
                        })?;
                    if done.rows_affected() == 0 {
                        return Err(Error::new(ErrorKind::Conflict, "session id already in use"));
                    }
                    self.seen.remember_vec(&key, text.into_bytes());
                    Ok(())
                })
            }

            fn update<'a>(&'a self, id: &'a SessionId, update: &'a Update, now: u64) -> StoreFuture<'a, Updated> {
                Box::pin(async move {
                    let key = self.key(id);
                    if let Some(expected) = self.seen.take(&key)
                        && let Ok(expected) = std::str::from_utf8(&expected)
                        && let Some((text, user)) = swapped(expected, update, &self.user_key)
                    {
                        // Kept for the statement of its own, should the batch not be run.
                        let swap = Swap {
                            key: key.clone(),
                            expected: expected.to_owned(),
                            data: text.clone(),
                            expires_at: update.expires_at as i64,
                            user: user.clone(),
                            now: now as i64,
                        };
                        let outcome = match &self.swaps {
                            Some(swaps) => swaps.call(swap).await,
                            None => Outcome::Alone,
                        };
                        let applied = match outcome {
                            Outcome::Done(applied) => applied,
                            Outcome::Failed(e) => return Err(batch::failed(e)),
                            Outcome::Alone => {
                                sqlx::query($dialect.swap)
                                    .bind(&text)
                                    .bind(update.expires_at as i64)
                                    .bind(user)
                                    .bind(&key)
                                    .bind(expected)
                                    .bind(now as i64)
                                    .execute(&self.pool)
                                    .await
                                    .map_err(backend)?
                                    .rows_affected()
                                    == 1
                            }
                        };
                        if applied {
                            self.seen.remember_vec(&key, text.into_bytes());
                            return Ok(Updated::Applied);
                        }
                    }
                    let mut tx = self.pool.begin().await.map_err(backend)?;
                    let row = sqlx::query($dialect.lock)
                        .bind(&key)
                        .bind(now as i64)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(backend)?;
                    let Some(mut data) = row.and_then(|r| parse_row(&key, &r.get::<String, _>(0))) else {
                        return Ok(Updated::Gone);
                    };
                    apply_changes(&mut data, &update.changes, update.loaded.as_deref())?;
                    let text = hipflask::to_tagged_json(&data);
                    sqlx::query($dialect.update)
                        .bind(&text)
                        .bind(update.expires_at as i64)
                        .bind(user_of(&data, &self.user_key))
                        .bind(&key)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                    tx.commit().await.map_err(backend)?;
                    self.seen.remember_vec(&key, text.into_bytes());
                    Ok(Updated::Applied)
                })
            }

            fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool> {
                Box::pin(async move {
                    let key = self.key(id);
                    let done = sqlx::query($dialect.delete).bind(&key).execute(&self.pool).await.map_err(backend)?;
                    self.seen.forget(&key);
                    Ok(done.rows_affected() > 0)
                })
            }

            fn delete_expired(&self, now: u64) -> StoreFuture<'_, u64> {
                Box::pin(async move {
                    let done = sqlx::query($dialect.delete_expired)
                        .bind(now as i64)
                        .bind(sql_like_prefix(&self.prefix))
                        .execute(&self.pool)
                        .await
                        .map_err(backend)?;
                    Ok(done.rows_affected())
                })
            }

            fn list(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>> {
                Box::pin(async move {
                    let rows: Vec<String> = sqlx::query_scalar($dialect.list)
                        .bind(now as i64)
                        .bind(sql_like_prefix(&self.prefix))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(backend)?;
                    Ok(self.ids(rows))
                })
            }

            fn sessions_of_user<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, Vec<SessionId>> {
                Box::pin(async move {
                    let rows: Vec<String> = sqlx::query_scalar($dialect.of_user)
                        .bind(user)
                        .bind(now as i64)
                        .bind(sql_like_prefix(&self.prefix))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(backend)?;
                    Ok(self.ids(rows))
                })
            }

            fn delete_user<'a>(&'a self, user: &'a str) -> StoreFuture<'a, u64> {
                Box::pin(async move {
                    let done = sqlx::query($dialect.delete_user)
                        .bind(user)
                        .bind(sql_like_prefix(&self.prefix))
                        .execute(&self.pool)
                        .await
                        .map_err(backend)?;
                    Ok(done.rows_affected())
                })
            }
        }
    };
}

sql_store!(
    /// Sessions in PostgreSQL.
    PostgresStore,
    sqlx::Postgres,
    POSTGRES,
    postgres
);

sql_store!(
    /// Sessions in MySQL or MariaDB.
    MySqlStore,
    sqlx::MySql,
    MYSQL,
    mysql
);
