//! Redis store for hipflask's server-side sessions, standalone or Redis
//! Cluster, in Flask-Session's format: key `SESSION_KEY_PREFIX + id`, a
//! msgpack value, expiry as the key's TTL. A Flask app using Flask-Session
//! and a hipflask app pointed at the same Redis share sessions.
//!
//! ```no_run
//! # async fn f() -> Result<(), hipflask::Error> {
//! let store = hipflask_redis::RedisStore::connect("redis://127.0.0.1:6379").await?;
//! # let _ = store; Ok(()) }
//! ```
//!
//! # Why redis-rs
//!
//! It is the most used Redis client in Rust, its `ConnectionManager`
//! reconnects by itself, and its cluster client speaks the same command API,
//! so one store covers both.
//!
//! # No lost updates, one round trip
//!
//! A save runs one Lua script that edits the stored msgpack map in place:
//! it sets or deletes exactly the keys the request changed and keeps every
//! other entry's bytes as they were (so values only Python can make, such as
//! a datetime with microseconds, survive a hipflask write). A session that
//! no longer exists is not recreated. Loading is one `GET` plus `PTTL` in a
//! pipeline.
//!
//! # Limits
//!
//! Flask-Session's format does not record when a session was created, so
//! the absolute timeout does not apply on Redis; `list` is not available on
//! Redis Cluster. The per-user index is a set per user beside the sessions,
//! kept on a best-effort basis and checked against the sessions on read.

use std::fmt;

use hipflask::{
    Dict, Error, ErrorKind, Record, SessionId, Store, StoreFuture, Update, Updated, user_of, value_to_msgpack,
};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value as RValue};

const MERGE: &str = include_str!("merge.lua");

/// Sessions in Redis, in Flask-Session's format.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    user_key: String,
    script: redis::Script,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, RValue> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<RValue>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.conn {
            Conn::Single(_) => "standalone",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore").field("kind", &kind).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn backend(e: redis::RedisError) -> Error {
    let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Backend };
    Error::new(kind, "Redis session store failed").with_source(e)
}

impl RedisStore {
    /// Connects to one Redis server (`redis://HOST:PORT/DB`, `rediss://` for TLS
    /// where the client supports it). The connection reconnects by itself.
    pub async fn connect(url: &str) -> Result<RedisStore, Error> {
        let client = redis::Client::open(url).map_err(backend)?;
        let conn = ConnectionManager::new(client).await.map_err(backend)?;
        Ok(RedisStore::with(Conn::Single(conn)))
    }

    /// Connects to a Redis Cluster through any of its nodes.
    pub async fn connect_cluster(nodes: &[&str]) -> Result<RedisStore, Error> {
        let client = redis::cluster::ClusterClient::new(nodes.to_vec()).map_err(backend)?;
        let conn = client.get_async_connection().await.map_err(backend)?;
        Ok(RedisStore::with(Conn::Cluster(conn)))
    }

    fn with(conn: Conn) -> RedisStore {
        RedisStore { conn, prefix: "session:".into(), user_key: "_user_id".into(), script: redis::Script::new(MERGE) }
    }

    /// `SESSION_KEY_PREFIX` (default `session:`, as Flask-Session).
    pub fn with_key_prefix(mut self, prefix: &str) -> RedisStore {
        self.prefix = prefix.into();
        self
    }

    /// The session key whose value names the user (default `_user_id`).
    pub fn with_user_key(mut self, key: &str) -> RedisStore {
        self.user_key = key.into();
        self
    }

    fn key(&self, id: &SessionId) -> String {
        format!("{}{}", self.prefix, id.as_str())
    }

    /// The set of a user's session ids. `:` cannot occur in an id, so this
    /// never collides with a session key.
    fn user_set(&self, user: &str) -> String {
        format!("{}user:{user}", self.prefix)
    }

    async fn load_raw(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let mut conn = self.conn.clone();
        let key = self.key(id);
        let (raw, pttl): (Option<Vec<u8>>, i64) =
            redis::pipe().get(&key).pttl(&key).query_async(&mut conn).await.map_err(backend)?;
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        match hipflask::from_stored_session(&raw) {
            Ok(data) => {
                // A key without TTL (set by hand) is treated as living one more hour.
                let ttl = if pttl > 0 { (pttl as u64).div_ceil(1000) } else { 3600 };
                Ok(Some(Record { data, created_at: now, expires_at: now + ttl }))
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable session in Redis; treating it as missing");
                Ok(None)
            }
        }
    }

    async fn index(&self, id: &SessionId, data: &Dict) -> Result<(), Error> {
        if let Some(user) = user_of(data, &self.user_key) {
            let mut conn = self.conn.clone();
            let _: () = redis::cmd("SADD")
                .arg(self.user_set(&user))
                .arg(id.as_str())
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }
}

fn key_bytes(key: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(key.len() + 2);
    value_to_msgpack(&hipflask::Value::from(key), &mut out)?;
    Ok(out)
}

impl Store for RedisStore {
    fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>> {
        Box::pin(self.load_raw(id, now))
    }

    fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let value = hipflask::to_msgpack(&record.data)?;
            let ttl = record.expires_at.saturating_sub(record.created_at).max(1);
            let mut conn = self.conn.clone();
            let set: Option<String> = redis::cmd("SET")
                .arg(self.key(id))
                .arg(value)
                .arg("EX")
                .arg(ttl)
                .arg("NX")
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            if set.is_none() {
                return Err(Error::new(ErrorKind::Conflict, "session id already in use"));
            }
            self.index(id, &record.data).await
        })
    }

    fn update<'a>(&'a self, id: &'a SessionId, update: &'a Update, now: u64) -> StoreFuture<'a, Updated> {
        Box::pin(async move {
            let ttl = update.expires_at.saturating_sub(now).max(1);
            let mut inv = self.script.key(self.key(id));
            inv.arg(ttl).arg(if update.changes.cleared { "1" } else { "0" }).arg(if update.loaded.is_some() {
                "1"
            } else {
                "0"
            });
            for (key, value) in &update.changes.keys {
                inv.arg(key_bytes(key)?);
                match value {
                    Some(v) => {
                        let mut bytes = Vec::new();
                        value_to_msgpack(v, &mut bytes)?;
                        inv.arg("s").arg(bytes);
                    }
                    None => {
                        inv.arg("d").arg("");
                    }
                }
                let loaded = match update.loaded.as_ref().and_then(|l| l.get(key)) {
                    Some(v) => {
                        let mut bytes = vec![b'p'];
                        value_to_msgpack(v, &mut bytes)?;
                        bytes
                    }
                    None => b"a".to_vec(),
                };
                inv.arg(loaded);
            }
            let mut conn = self.conn.clone();
            let result: i64 = inv.invoke_async(&mut conn).await.map_err(backend)?;
            match result {
                0 => Ok(Updated::Gone),
                -1 => Err(Error::new(ErrorKind::Conflict, "a changed session key was changed by another request")),
                _ => {
                    if let Some((_, Some(v))) = update.changes.keys.iter().find(|(k, _)| *k == self.user_key) {
                        let data: Dict = [(self.user_key.clone(), v.clone())].into();
                        self.index(id, &data).await?;
                    }
                    Ok(Updated::Applied)
                }
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let n: i64 = redis::cmd("DEL").arg(self.key(id)).query_async(&mut conn).await.map_err(backend)?;
            Ok(n > 0)
        })
    }

    fn delete_expired(&self, _now: u64) -> StoreFuture<'_, u64> {
        // Redis expires keys by their TTL.
        Box::pin(std::future::ready(Ok(0)))
    }

    fn list(&self, _now: u64) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(async move {
            let Conn::Single(conn) = &self.conn else {
                return Err(Error::new(ErrorKind::Backend, "listing sessions is not supported on Redis Cluster"));
            };
            let mut conn = conn.clone();
            let pattern = format!("{}*", glob_escape(&self.prefix));
            let mut ids = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(backend)?;
                ids.extend(keys.iter().filter_map(|k| k.strip_prefix(&self.prefix)).filter_map(SessionId::parse));
                if next == 0 {
                    return Ok(ids);
                }
                cursor = next;
            }
        })
    }

    fn sessions_of_user<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, Vec<SessionId>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let members: Vec<String> =
                redis::cmd("SMEMBERS").arg(self.user_set(user)).query_async(&mut conn).await.map_err(backend)?;
            let mut live = Vec::new();
            for id in members.iter().filter_map(|m| SessionId::parse(m)) {
                // The index is best effort: keep only sessions that still belong to the user.
                let owner = self.load_raw(&id, now).await?.and_then(|r| user_of(&r.data, &self.user_key));
                if owner.as_deref() == Some(user) {
                    live.push(id);
                } else {
                    let _: i64 = redis::cmd("SREM")
                        .arg(self.user_set(user))
                        .arg(id.as_str())
                        .query_async(&mut conn)
                        .await
                        .map_err(backend)?;
                }
            }
            Ok(live)
        })
    }

    fn delete_user<'a>(&'a self, user: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let ids = self.sessions_of_user(user, 0).await?;
            let mut n = 0;
            for id in &ids {
                if self.delete(id).await? {
                    n += 1;
                }
            }
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("DEL").arg(self.user_set(user)).query_async(&mut conn).await.map_err(backend)?;
            Ok(n)
        })
    }
}

/// Escapes Redis glob characters so a prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
