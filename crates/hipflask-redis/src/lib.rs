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
//! # Which client
//!
//! Commands are built and Redis Cluster is reached with redis-rs, the most
//! used Redis client in Rust. A standalone server is reached through a
//! connection of this crate's own (`wire.rs`): through redis-rs' multiplexed
//! connection an uncached read cost the server 43.3k instructions, through
//! this one, which writes the hot path's commands in place, 32.9k
//! (callgrind, the benchmark's `/bench/read`).
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
//! When this process knows the stored bytes (it loaded or wrote them moments
//! before, the usual case), it does that merge itself and the script only
//! compares the stored value with the bytes it expects before storing the
//! result, a third cheaper for Redis than the merge (more for bigger
//! sessions); if anything else wrote in between, the script merges as above.
//! Either way the result is the same.
//!
//! On a standalone server, the loads and saves of requests running at the
//! same moment go out together: a request that finds the connection idle
//! writes its commands at once, and those that come while others wait for
//! Redis are written together after the next read, so each still takes one
//! round trip but Redis and this process are woken once per batch instead
//! of once per command.
//!
//! # Closed connections
//!
//! Redis closes clients idle for longer than its `timeout` setting, and a
//! restart closes all of them. On a standalone server, a command that finds
//! its connection closed is sent once more, on a new connection, so the
//! first request after an idle spell is not answered 503. Loads only read
//! and saves set or delete the request's keys, so sending again never
//! stores anything else; with conflicts refused, a save whose first sending
//! was applied before the connection dropped is answered 409.
//!
//! # Timeouts
//!
//! On a standalone server each command waits 500 ms for its answer
//! (connecting again included; up to an eighth longer, as one task per
//! connection looks for late commands in place of a timer for each), so a
//! Redis that stops answering (paused, swapping, stuck in a slow command)
//! fails the load or save with [`ErrorKind::Timeout`] (503 from the layer,
//! or an empty unsaved session with `fail_open`) instead of holding the
//! request. A session command takes well under a millisecond, so only a
//! Redis in trouble is that slow. The layer's
//! [`store_timeout`](hipflask::ConfigBuilder::store_timeout) still bounds a
//! whole load or save, retries included, and is the one to set for Redis
//! Cluster, whose client has timeouts of its own.
//!
//! # Local cache
//!
//! [`with_local_cache`](RedisStore::with_local_cache) keeps sessions read
//! from Redis in this process and answers later reads without a round trip,
//! kept correct by Redis' client-side caching (`CLIENT TRACKING`): Redis
//! tells this process whenever any client changes a session it holds. Those
//! messages come on a connection of their own, and every cache hit first
//! reads whatever has arrived there (one non-blocking system call), so a
//! change Redis has acknowledged to another process is never served stale
//! here, however busy this process is. (Reading them where the client
//! library delivers them, on a task, left a request served the old session
//! up to 11 ms late on a 2-core machine with both cores busy.) Every cached
//! session is read again after at most 30 seconds. Off by default;
//! standalone Redis 6 or newer, over TCP or a Unix socket.
//!
//! One case is left: should this process lose its tracked connection while
//! its listener stays up, the cache is emptied when the connection's
//! watching task is woken by the closed socket, a moment later; Redis
//! restarts and network failures close both.
//! With [`ConflictPolicy::Reject`](hipflask::ConflictPolicy::Reject), a save
//! computed from a read that old is refused (409 from the layer) rather than
//! writing over the other process's change.
//!
//! # Limits
//!
//! Flask-Session's format does not record when a session was created, so
//! the absolute timeout does not apply on Redis; `list` is not available on
//! Redis Cluster. The per-user index is a set per user beside the sessions,
//! kept on a best-effort basis and checked against the sessions on read.

use std::fmt;
use std::sync::Arc;

use hipflask::{Dict, Error, ErrorKind, Record, SessionId, Store, StoreFuture, Update, Updated, user_of};
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value as RValue};

mod cache;
mod listen;
mod merge;
mod wire;

use wire::{Commands, Wire, reply};

const MERGE: &str = include_str!("merge.lua");

/// How often the local cache's listener is read when no request reads it.
#[cfg(not(test))]
fn local_drain_interval() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

/// Shorter in the unit tests, which wait for it.
#[cfg(test)]
fn local_drain_interval() -> std::time::Duration {
    std::time::Duration::from_millis(50)
}

/// Sessions in Redis, in Flask-Session's format.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// The standalone server's client, for the local cache's own connection.
    client: Option<redis::Client>,
    local: Option<Arc<Local>>,
    prefix: String,
    user_key: String,
    script: redis::Script,
    seen: Arc<hipflask::LastSeen>,
}

/// The local cache and the connection every read goes through when it is
/// on: Redis tracks the keys read there and sends invalidations to the
/// listener.
struct Local {
    cache: Arc<cache::LocalCache>,
    tracked: Wire,
    listener: listen::Listener,
    /// Where the listener connects to (again).
    info: redis::ConnectionInfo,
    /// One turning tracking on at a time: each may connect a new listener,
    /// and the redirect must name the one that stays.
    enabling: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
enum Conn {
    Single(Wire),
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
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("prefix", &self.prefix)
            .field("local_cache", &self.local.is_some())
            .finish_non_exhaustive()
    }
}

/// A reply as a `T`; error replies and replies of another type fail.
/// The session under `key` in the local cache, as a record. Like a record
/// read from Redis it has no creation time (Flask-Session's format keeps
/// none, hence no absolute timeout here): `now` stands in.
fn cached(local: &Local, key: &str, now: u64) -> Option<Record> {
    // Every invalidation Redis has sent is applied before anything is served.
    local.listener.drain(&local.cache);
    let (data, left) = local.cache.get(key)?;
    Some(Record { data, created_at: now, expires_at: now + left.as_secs().max(1) })
}

fn typed<T: redis::FromRedisValue>(value: RValue) -> Result<T, Error> {
    reply(value).and_then(|v| Ok(redis::from_redis_value(v)?)).map_err(backend)
}

/// The merge script answered something it never sends.
fn unexpected_reply() -> Error {
    Error::new(ErrorKind::Backend, "Redis answered the session merge script with an unexpected reply")
}

fn backend(e: redis::RedisError) -> Error {
    let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Backend };
    Error::new(kind, "Redis session store failed").with_source(e)
}

/// How long a command on a standalone server may wait for its answer,
/// reconnecting included (see "Timeouts" in the crate docs).
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

impl RedisStore {
    /// Connects to one Redis server: `redis://[USER:PASSWORD@]HOST:PORT/DB`, or
    /// `redis+unix:///PATH` for a Unix socket. TLS (`rediss://`) is refused
    /// with an error: this build has no TLS. The connection reconnects by
    /// itself.
    pub async fn connect(url: &str) -> Result<RedisStore, Error> {
        let client = redis::Client::open(url).map_err(backend)?;
        let conn =
            Wire::connect(client.get_connection_info().clone(), None, RESPONSE_TIMEOUT).await.map_err(backend)?;
        Ok(RedisStore { client: Some(client), ..RedisStore::with(Conn::Single(conn)) })
    }

    /// Connects to a Redis Cluster through any of its nodes.
    pub async fn connect_cluster(nodes: &[&str]) -> Result<RedisStore, Error> {
        let client = redis::cluster::ClusterClient::new(nodes.to_vec()).map_err(backend)?;
        let conn = client.get_async_connection().await.map_err(backend)?;
        Ok(RedisStore::with(Conn::Cluster(conn)))
    }

    fn with(conn: Conn) -> RedisStore {
        RedisStore {
            conn,
            client: None,
            local: None,
            prefix: "session:".into(),
            user_key: "_user_id".into(),
            script: redis::Script::new(MERGE),
            seen: Arc::new(hipflask::LastSeen::default()),
        }
    }

    /// Keeps up to about `capacity` sessions in this process and answers
    /// reads of them without a round trip; see the crate docs ("Local
    /// cache") for how it stays correct. Opens two more connections: one in
    /// RESP3 with `CLIENT TRACKING ON`, for reads and saves, and one its
    /// invalidations are redirected to. Fails on Redis Cluster, on TLS
    /// connections, on servers without client-side caching (before
    /// Redis 6) and for an ACL user not allowed `CLIENT`.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), hipflask::Error> {
    /// let store = hipflask_redis::RedisStore::connect("redis://127.0.0.1:6379").await?.with_local_cache(100_000).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn with_local_cache(mut self, capacity: usize) -> Result<RedisStore, Error> {
        let Some(client) = &self.client else {
            return Err(Error::new(
                ErrorKind::Config,
                "the Redis local cache needs a standalone Redis server, not a cluster",
            ));
        };
        let info = client.get_connection_info().clone();
        let listen_to = info.clone();
        let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        let cache = Arc::new(cache::LocalCache::new(capacity));
        let pushes = cache.clone();
        let on_push: wire::PushSender = Arc::new(move |push| pushes.on_push(push));
        let tracked =
            Wire::connect(info.set_redis_settings(settings), Some(on_push), RESPONSE_TIMEOUT).await.map_err(backend)?;
        let local = Local {
            cache,
            tracked,
            listener: listen::Listener::default(),
            info: listen_to,
            enabling: tokio::sync::Mutex::new(()),
        };
        // Fail now, with the reason, rather than run without a working cache.
        local.enable_tracking(local.cache.ticket("")).await.map_err(|e| {
            Error::new(
                ErrorKind::Config,
                "the Redis local cache could not start (it needs Redis 6 or newer, for CLIENT TRACKING and \
                 HELLO 3, and a user allowed CLIENT)",
            )
            .with_source(e)
        })?;
        let local = Arc::new(local);
        // Read the listener now and then even when no hit does: invalidations
        // of keys read once and not since would otherwise wait in Redis'
        // output buffer for this connection, which has no limit by default.
        let every = local_drain_interval();
        let weak = Arc::downgrade(&local);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                // The store, and every clone of it, is gone: so is this task.
                let Some(local) = weak.upgrade() else { break };
                local.listener.drain(&local.cache);
            }
        });
        self.local = Some(local);
        // The next save of a session served from the cache compares against
        // these bytes: keep as many as the cache holds.
        self.seen = Arc::new(hipflask::LastSeen::new(capacity.max(16_384)));
        Ok(self)
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
        // Every request builds one: concatenated, not through `format!`, and
        // with one `as_str`, which checks the id's bytes each time.
        let id = id.as_str();
        let mut key = String::with_capacity(self.prefix.len() + id.len());
        key.push_str(&self.prefix);
        key.push_str(id);
        key
    }

    /// The set of a user's session ids. `:` cannot occur in an id, so this
    /// never collides with a session key.
    fn user_set(&self, user: &str) -> String {
        format!("{}user:{user}", self.prefix)
    }

    async fn load_raw(&self, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
        let key = self.key(id);
        let Some(local) = &self.local else {
            return Ok(self.fetch(false, &key, now).await?.map(|(record, _)| record));
        };
        if let Some(record) = cached(local, &key, now) {
            return Ok(Some(record));
        }
        let mut ticket = local.cache.ticket(&key);
        if !ticket.tracking() {
            // Tracking is off after a disconnection: the connection manager
            // has reconnected (or will), without it. Until it is back on,
            // reads go through uncached.
            // Boxed, as it is rare (after a disconnection): inline, it would
            // grow every load's future, allocated and copied on each request.
            match Box::pin(local.enable_tracking(ticket)).await {
                Ok(Some(on)) => ticket = on,
                Ok(None) => {}
                // Debug only: while Redis is down this fails on every request,
                // and the read below fails and is reported anyway.
                Err(e) => tracing::debug!(error = %e, "cannot turn Redis client tracking back on; reading uncached"),
            }
        }
        let found = self.fetch(true, &key, now).await?;
        if let Some((record, ttl)) = &found {
            local.cache.put(&key, ticket, &record.data, *ttl);
        }
        Ok(found.map(|(record, _)| record))
    }

    /// Drops `key` from the local cache: called after this process wrote it,
    /// so the next read here sees the write even before Redis' push arrives.
    fn written(&self, key: &str) {
        if let Some(local) = &self.local {
            local.cache.invalidate(key.as_bytes());
        }
    }

    /// Sends `cmds` in one round trip, batched with other requests' commands
    /// where the connection allows: on the tracked connection (`tracked`,
    /// with the local cache) or the main one.
    async fn send(&self, tracked: bool, cmds: &(impl Commands + ?Sized)) -> redis::RedisResult<Vec<RValue>> {
        let wire = match (&self.local, tracked, &self.conn) {
            (Some(local), true, _) => Some(&local.tracked),
            (_, _, Conn::Single(wire)) => Some(wire),
            _ => None,
        };
        if let Some(wire) = wire {
            return wire.send(cmds).await;
        }
        let mut pipe = redis::pipe();
        for cmd in cmds.to_cmds() {
            pipe.add_command(cmd);
        }
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// The session under `key` and its TTL, read in one round trip.
    async fn fetch(&self, tracked: bool, key: &str, now: u64) -> Result<Option<(Record, std::time::Duration)>, Error> {
        let replies = self.send(tracked, &Fetch(key)).await.map_err(backend)?;
        let [raw, pttl] = <[RValue; 2]>::try_from(replies)
            .map_err(|r| Error::new(ErrorKind::Backend, format!("Redis sent {} replies to GET and PTTL", r.len())))?;
        let raw: Option<Vec<u8>> = typed(raw)?;
        let pttl: i64 = typed(pttl)?;
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        match hipflask::from_stored_session(&raw) {
            Ok(data) => {
                self.seen.remember_vec(key, raw);
                // A key without TTL (set by hand) is treated as living one more hour.
                let ttl_ms = if pttl > 0 { pttl as u64 } else { 3_600_000 };
                let record = Record { data, created_at: now, expires_at: now + ttl_ms.div_ceil(1000) };
                Ok(Some((record, std::time::Duration::from_millis(ttl_ms))))
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

    /// Reads the merge script's answer: the outcome, and for an applied
    /// write the stored value (`merged` when the script stored that).
    async fn updated(
        &self,
        id: &SessionId,
        update: &Update,
        result: RValue,
        merged: Option<Vec<u8>>,
    ) -> Result<(Updated, Option<Vec<u8>>), Error> {
        let stored = match result {
            RValue::Int(0) => return Ok((Updated::Gone, None)),
            RValue::Int(-1) => {
                return Err(Error::new(ErrorKind::Conflict, "a changed session key was changed by another request"));
            }
            RValue::Int(2) => merged,
            RValue::Array(parts) => {
                let mut parts = parts.into_iter();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(RValue::Int(1)), Some(RValue::BulkString(value)), None) => Some(value),
                    _ => return Err(unexpected_reply()),
                }
            }
            // Whatever else came, nothing says the changes were stored.
            _ => return Err(unexpected_reply()),
        };
        if let Some((_, Some(v))) = update.changes.keys.iter().find(|(k, _)| *k == self.user_key) {
            let data: Dict = [(self.user_key.clone(), v.clone())].into();
            // Boxed, as it is rare (a login): inline, it would grow every
            // save's future, allocated and copied on each request.
            Box::pin(self.index(id, &data)).await?;
        }
        Ok((Updated::Applied, stored))
    }
}

/// The merge script's key and arguments (see `merge.lua`).
#[derive(Clone, Copy)]
struct MergeArgs<'a> {
    key: &'a str,
    ttl: u64,
    cleared: bool,
    reject: bool,
    /// Read the key after writing it, to keep client tracking on it.
    read_back: bool,
    /// Leave the changes out: the script stores `merged` over `expected`,
    /// or answers 3 and the changes are sent in a second call.
    omit_changes: bool,
    expected: &'a [u8],
    merged: &'a [u8],
    changes: &'a [merge::Change],
}

#[cfg(test)]
impl MergeArgs<'_> {
    /// The script's call as a redis-rs command, for tests that send it
    /// through a connection of their own.
    fn command(&self, verb: &str, script: &str) -> Cmd {
        let mut cmds = ScriptCall { verb, script, args: self }.to_cmds();
        cmds.pop().expect("one command")
    }
}

/// A load's two commands, `GET` and `PTTL` of the key.
struct Fetch<'a>(&'a str);

impl Commands for Fetch<'_> {
    fn count(&self) -> usize {
        2
    }

    fn write(&self, out: &mut Vec<u8>) {
        for verb in [&b"GET"[..], b"PTTL"] {
            wire::command_of(out, 2);
            wire::arg(out, verb);
            wire::arg(out, self.0.as_bytes());
        }
    }

    fn to_cmds(&self) -> Vec<Cmd> {
        vec![redis::cmd("GET").arg(self.0).clone(), redis::cmd("PTTL").arg(self.0).clone()]
    }
}

/// One call of the merge script: `EVALSHA <sha>` or `EVAL <source>`, then
/// the key and arguments. Written straight into the connection's buffer on
/// a standalone server; redis' `ScriptInvocation` copied every argument into
/// a vector of its own first, a dozen allocations per save.
struct ScriptCall<'a> {
    verb: &'a str,
    script: &'a str,
    args: &'a MergeArgs<'a>,
}

impl ScriptCall<'_> {
    /// How many arguments [`each_arg`](Self::each_arg) gives.
    fn arg_count(&self) -> usize {
        8 + if self.args.omit_changes { 0 } else { 4 * self.args.changes.len() }
    }

    /// The arguments, in order, to `arg`: one list for both ways of writing.
    fn each_arg(&self, mut arg: impl FnMut(&[u8])) {
        let args = self.args;
        // One argument for every flag: Redis makes a Lua string of each.
        let mut flags = [0u8; 4];
        let mut n = 0;
        for (on, letter) in
            [(args.cleared, b'c'), (args.reject, b'r'), (args.read_back, b'b'), (args.omit_changes, b'o')]
        {
            if on {
                flags[n] = letter;
                n += 1;
            }
        }
        for bytes in [self.verb.as_bytes(), self.script.as_bytes(), b"1", args.key.as_bytes()] {
            arg(bytes);
        }
        arg(wire::decimal(args.ttl, &mut [0; 20]));
        for bytes in [&flags[..n], args.expected, args.merged] {
            arg(bytes);
        }
        if args.omit_changes {
            return;
        }
        for change in args.changes {
            arg(&change.key);
            match &change.value {
                Some(bytes) => {
                    arg(b"s");
                    arg(bytes);
                }
                None => {
                    arg(b"d");
                    arg(b"");
                }
            }
            arg(&change.loaded);
        }
    }
}

impl Commands for ScriptCall<'_> {
    fn count(&self) -> usize {
        1
    }

    fn write(&self, out: &mut Vec<u8>) {
        wire::command_of(out, self.arg_count());
        self.each_arg(|bytes| wire::arg(out, bytes));
    }

    fn to_cmds(&self) -> Vec<Cmd> {
        let mut cmd = Cmd::with_capacity(self.arg_count(), 0);
        self.each_arg(|bytes| {
            cmd.arg(bytes);
        });
        vec![cmd]
    }
}

impl RedisStore {
    /// Runs the merge script: once, and with the changes a second time when
    /// they were left out and the stored bytes were not those expected.
    async fn run_merge(&self, tracked: bool, args: &MergeArgs<'_>) -> redis::RedisResult<RValue> {
        // Stored bytes other than those expected (another process wrote)
        // answer 3: the script is called again, with the changes, to merge
        // them into what is stored.
        let full = MergeArgs { expected: &[], merged: &[], omit_changes: false, ..*args };
        let mut args = args;
        // One call site, in a loop: each `await` of the script would hold a
        // future of its own in this one, allocated on every save.
        loop {
            let result = self.run_script(tracked, args).await?;
            if args.omit_changes && result == RValue::Int(3) {
                args = &full;
                continue;
            }
            return Ok(result);
        }
    }

    /// One call of the merge script, by its hash, and by its source when the
    /// server does not know it (after a restart or `SCRIPT FLUSH`), which
    /// also loads it for the next calls. A refused `EVALSHA` wrote nothing,
    /// so sending the source is never a second write.
    async fn run_script(&self, tracked: bool, args: &MergeArgs<'_>) -> redis::RedisResult<RValue> {
        let mut call = ScriptCall { verb: "EVALSHA", script: self.script.get_hash(), args };
        loop {
            let replies = self.send(tracked, &call).await;
            let result = replies.and_then(|replies| {
                replies
                    .into_iter()
                    .next()
                    .map_or_else(|| Err(wire::failure("Redis sent no reply to the script")), reply)
            });
            match result {
                Err(e)
                    if call.verb == "EVALSHA"
                        && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    call = ScriptCall { verb: "EVAL", script: MERGE, args };
                }
                result => return result,
            }
        }
    }
}

impl Local {
    /// Sends `CLIENT TRACKING ON` on the tracked connection, redirected to
    /// the listener (connected first if need be), then marks the cache as
    /// tracking unless a disconnection came in between. `None` (read
    /// uncached) while another request is at it: with Redis unreachable a
    /// connect can take seconds, and requests queued behind one another
    /// would each wait for all the connects before theirs.
    async fn enable_tracking(&self, ticket: cache::Ticket) -> Result<Option<cache::Ticket>, redis::RedisError> {
        let Ok(_one) = self.enabling.try_lock() else { return Ok(None) };
        // A listener that died unnoticed is found here, and replaced.
        self.listener.drain(&self.cache);
        let id = match self.listener.id() {
            Some(id) => id,
            None => self.listener.connect(&self.info).await?,
        };
        let mut conn = self.tracked.clone();
        // Per key, not broadcast (`BCAST`, which needs no read after a write
        // to keep hearing of a key): Redis 7 sends a broadcast client the
        // invalidations of writes its own scripts made, NOLOOP or not, so
        // every save emptied the cache entry it had just filled.
        let () = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("REDIRECT")
            .arg(id)
            .arg("NOLOOP")
            .query_async(&mut conn)
            .await?;
        Ok(self.cache.tracking_enabled(ticket))
    }
}

impl Store for RedisStore {
    fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>> {
        Box::pin(self.load_raw(id, now))
    }

    /// A hit in the local cache needs no round trip: answered in place.
    fn load_now(&self, id: &SessionId, now: u64) -> Option<Result<Option<Record>, Error>> {
        let record = cached(self.local.as_ref()?, &self.key(id), now)?;
        Some(Ok(Some(record)))
    }

    fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let value = hipflask::to_msgpack(&record.data)?;
            let ttl = record.expires_at.saturating_sub(record.created_at).max(1);
            let mut conn = self.conn.clone();
            let key = self.key(id);
            let set: Result<Option<String>, Error> = redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("EX")
                .arg(ttl)
                .arg("NX")
                .query_async(&mut conn)
                .await
                .map_err(backend);
            self.written(&key);
            if set?.is_none() {
                return Err(Error::new(ErrorKind::Conflict, "session id already in use"));
            }
            self.seen.remember(&key, &value);
            self.index(id, &record.data).await
        })
    }

    fn update<'a>(&'a self, id: &'a SessionId, update: &'a Update, now: u64) -> StoreFuture<'a, Updated> {
        Box::pin(async move {
            let ttl = update.expires_at.saturating_sub(now).max(1);
            let key = self.key(id);
            let cleared = update.changes.cleared;
            let reject = update.loaded.is_some();
            let changes = merge::encode(&update.changes, update.loaded_values()?)?;
            let expected = self.seen.take(&key);
            let merged = expected.as_deref().and_then(|stored| merge::merge(stored, cleared, reject, &changes));
            let (expected, merged_arg) = match (&expected, &merged) {
                (Some(expected), Some(merged)) => (&expected[..], &merged[..]),
                _ => (&[][..], &[][..]),
            };
            // Through the tracked connection (with the local cache) the key is
            // read after the write, so that Redis goes on tracking it.
            let read_back = self.local.is_some();
            let args = MergeArgs {
                key: &key,
                ttl,
                cleared,
                reject,
                read_back,
                // With a merge to store, the changes go only if it is refused.
                omit_changes: !expected.is_empty(),
                expected,
                merged: merged_arg,
                changes: &changes,
            };
            let Some(local) = &self.local else {
                let result = self.run_merge(false, &args).await.map_err(backend)?;
                let (updated, stored) = self.updated(id, update, result, merged).await?;
                if let Some(value) = stored {
                    self.seen.remember_vec(&key, value);
                }
                return Ok(updated);
            };
            // Through the tracked connection (NOLOOP: Redis does not tell it
            // about its own writes), so the value the script returns can
            // replace the cached one: the next request on this session needs
            // no read. See `LocalCache::replace` for why that is safe.
            let ticket = local.cache.ticket(&key);
            let sent = std::time::Instant::now();
            let result = match self.run_merge(true, &args).await {
                Ok(result) => result,
                Err(e) => {
                    // The write may have been applied: forget the old value.
                    self.written(&key);
                    return Err(backend(e));
                }
            };
            let outcome = self.updated(id, update, result, merged).await;
            match outcome {
                Ok((updated @ Updated::Applied, Some(value))) => {
                    match hipflask::from_stored_session(&value) {
                        Ok(data) => {
                            self.seen.remember_vec(&key, value);
                            // Counted from before the script ran: never past Redis' own expiry.
                            let ttl = std::time::Duration::from_secs(ttl).saturating_sub(sent.elapsed());
                            local.cache.replace(&key, ticket, data, ttl);
                        }
                        Err(_) => self.written(&key),
                    }
                    Ok(updated)
                }
                outcome => {
                    self.written(&key);
                    outcome.map(|(updated, _)| updated)
                }
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let key = self.key(id);
            let n: Result<i64, Error> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.map_err(backend);
            self.written(&key);
            self.seen.forget(&key);
            Ok(n? > 0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use hipflask::Value;

    /// A store with a local cache on the Redis at `REDIS_URL`, and that URL;
    /// `None`, said on stderr, when it is unset.
    async fn cached_store() -> Option<(RedisStore, String)> {
        let Ok(url) = std::env::var("REDIS_URL") else {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "skipped: set REDIS_URL");
            return None;
        };
        Some((RedisStore::connect(&url).await.unwrap().with_local_cache(100).await.unwrap(), url))
    }

    /// A new session `{"visits": n}` in `store`, alive for a minute.
    async fn session_with_visits(store: &RedisStore, n: i64, now: u64) -> SessionId {
        let id = SessionId::generate();
        let data: Dict = [("visits".to_owned(), Value::Int(n))].into();
        store.create(&id, Record { data, created_at: now, expires_at: now + 60 }).await.unwrap();
        id
    }

    /// The hot path's commands, written straight into the connection's
    /// buffer, are byte for byte what redis-rs writes for the same commands
    /// (which the cluster path sends).
    #[test]
    fn commands_written_in_place_are_redis_rs_bytes() {
        let packed = |cmds: Vec<Cmd>| cmds.iter().flat_map(Cmd::get_packed_command).collect::<Vec<u8>>();
        let fetch = Fetch("session:abc");
        let mut out = b"left from before".to_vec();
        fetch.write(&mut out);
        assert_eq!(out[16..], packed(fetch.to_cmds()));
        assert_eq!(
            packed(fetch.to_cmds()),
            packed(vec![redis::cmd("GET").arg("session:abc").clone(), redis::cmd("PTTL").arg("session:abc").clone()])
        );
        let changes = [
            merge::Change { key: b"visits".to_vec(), value: Some(vec![0x05]), loaded: vec![0x04] },
            merge::Change { key: "caf\u{e9}".as_bytes().to_vec(), value: None, loaded: Vec::new() },
        ];
        for (omit_changes, cleared, ttl) in [(false, false, 2_678_400), (true, true, 1), (false, true, u64::MAX)] {
            let args = MergeArgs {
                key: "session:abc",
                ttl,
                cleared,
                reject: true,
                read_back: omit_changes,
                omit_changes,
                expected: b"\x81\xa1a\x01",
                merged: b"",
                changes: &changes,
            };
            let call = ScriptCall { verb: "EVALSHA", script: "0123abcd", args: &args };
            let mut out = Vec::new();
            call.write(&mut out);
            // What the command was built as before: argument by argument.
            let mut want = redis::cmd("EVALSHA");
            want.arg("0123abcd").arg(1).arg("session:abc").arg(ttl);
            let flags: String = [(cleared, 'c'), (true, 'r'), (omit_changes, 'b'), (omit_changes, 'o')]
                .iter()
                .filter_map(|&(on, c)| on.then_some(c))
                .collect();
            want.arg(flags).arg(&b"\x81\xa1a\x01"[..]).arg(&b""[..]);
            if !omit_changes {
                want.arg("visits").arg("s").arg(&[0x05_u8][..]).arg(&[0x04_u8][..]);
                want.arg("caf\u{e9}").arg("d").arg("").arg(&b""[..]);
            }
            assert_eq!(out, want.get_packed_command(), "omit {omit_changes}");
            assert_eq!(out, packed(call.to_cmds()));
        }
    }

    /// This build has no TLS: a `rediss://` URL is an error that says so,
    /// at once, not a plain-text connection.
    #[tokio::test]
    async fn a_tls_url_is_refused_with_an_error() {
        let err = RedisStore::connect("rediss://127.0.0.1:6379").await.expect_err("no TLS here");
        let cause = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
        assert!(cause.to_uppercase().contains("TLS"), "{err}: {cause}");
    }

    /// Invalidations are read even while no request reads the cache, and
    /// the task that reads them ends with the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_listener_is_read_even_when_no_request_reads_it() {
        let Some((store, url)) = cached_store().await else { return };
        let mut other = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let now = 1_700_000_000;
        let id = session_with_visits(&store, 1, now).await;
        assert!(store.load(&id, now).await.unwrap().is_some());
        let key = store.key(&id);
        let local = store.local.clone().unwrap();
        assert!(local.cache.get(&key).is_some(), "cached by the load");
        let _: () = redis::cmd("DEL").arg(&key).query_async(&mut other).await.unwrap();
        // Looked at without reading the listener, as no request would.
        let mut gone = false;
        for _ in 0..40 {
            tokio::time::sleep(local_drain_interval()).await;
            if local.cache.get(&key).is_none() {
                gone = true;
                break;
            }
        }
        assert!(gone, "the invalidation was read without any request");
        // Dropping every clone of the store ends the task that reads it.
        let weak = Arc::downgrade(&local);
        drop((local, store));
        tokio::time::sleep(local_drain_interval() * 3).await;
        assert!(weak.upgrade().is_none(), "nothing keeps the cache alive");
    }

    /// A request that finds tracking off while another request is turning
    /// it back on reads Redis at once, uncached, instead of waiting its turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_never_waits_for_tracking_to_come_back() {
        let Some((store, _)) = cached_store().await else { return };
        let now = 1_700_000_000;
        let id = session_with_visits(&store, 3, now).await;
        let local = store.local.clone().unwrap();
        local.cache.disconnected();
        let busy = local.enabling.lock().await;
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), store.load(&id, now)).await;
        let record = read.expect("answered while tracking is being turned on").unwrap().unwrap();
        assert_eq!(record.data.get("visits").and_then(Value::as_i64), Some(3));
        assert!(store.load_now(&id, now).is_none(), "read uncached: tracking is not on yet");
        drop(busy);
        assert!(store.load(&id, now).await.unwrap().is_some());
        assert!(store.load(&id, now).await.unwrap().is_some());
        assert!(store.load_now(&id, now).is_some(), "cached again once tracking is back");
    }

    /// What this process saved through the cache is served from the cache
    /// afterwards: Redis must not answer the save with an invalidation of
    /// the very key (as it does for a broadcast-tracking client).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_own_write_stays_in_the_local_cache() {
        let Some((store, _)) = cached_store().await else { return };
        let now = 1_700_000_000;
        let id = session_with_visits(&store, 1, now).await;
        assert!(store.load(&id, now).await.unwrap().is_some());
        let changes = hipflask::Changes { cleared: false, keys: vec![("visits".into(), Some(Value::Int(2)))] };
        let update = Update { changes, expires_at: now + 60, loaded: None };
        assert_eq!(store.update(&id, &update, now).await.unwrap(), Updated::Applied);
        // An invalidation about the write would arrive well within this,
        // and be read by the hit below.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let hit = store.load_now(&id, now).expect("still cached after its own write").unwrap();
        assert_eq!(hit.and_then(|r| r.data.get("visits").and_then(Value::as_i64)), Some(2));
        assert!(store.delete(&id).await.unwrap());
    }
}
