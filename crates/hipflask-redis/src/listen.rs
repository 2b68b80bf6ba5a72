//! The local cache's invalidation listener: a connection of its own that
//! Redis redirects the tracked connection's invalidations to
//! (`CLIENT TRACKING ON REDIRECT <id>`), read without blocking before every
//! cache hit.
//!
//! Why not read the pushes where the client library delivers them: those
//! arrive on a task, and a task runs when the scheduler gets to it. With the
//! process short of CPU that took up to 11 ms, and a request arriving in
//! between was served the session as it was before another process changed
//! it. Here, an invalidation Redis has sent is in this socket's receive
//! buffer, and a hit is only served after that buffer has been read: one
//! system call per hit, and no window left in this process.
//!
//! The connection speaks RESP3, in which Redis sends a redirect target the
//! invalidations as pushes. In RESP2 it would have to subscribe to
//! `__redis__:invalidate`, which needs a channel permission that Redis 7
//! does not give new ACL users by default. Replies are read with redis-rs'
//! own parser and commands written with its encoder: the only protocol code
//! here is the handshake's choice of commands.

use std::io::{self, Read};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, Parser, PushInfo, Value};
use tokio::io::AsyncWriteExt as _;

use crate::cache::LocalCache;

/// How long connecting and saying hello may take before the cache reports
/// the failure (a read then goes to Redis uncached).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket, when connected. A socket found closed, or speaking something
/// else than Redis does, is dropped; the cache is then told it is
/// disconnected, and the next read that misses connects a new one.
#[derive(Default)]
pub(crate) struct Listener {
    socket: Mutex<Option<Socket>>,
}

struct Socket {
    sock: Sock,
    /// The Redis client id to redirect invalidations to.
    id: i64,
    /// redis-rs' own reply parser. It keeps a reply that arrived in parts
    /// until the rest comes, across reads that would block. It is only
    /// handed bytes that arrived: called on an empty socket, it cost a hit
    /// 9k instructions (callgrind) to find nothing.
    parser: Parser,
    /// Where reads land: zeroed once here, not on every hit.
    chunk: Box<[u8]>,
}

/// A non-blocking reader that remembers whether its last read found
/// nothing waiting, as opposed to failing: the parser reports both as an
/// error.
struct Flagged<R> {
    inner: R,
    would_block: bool,
}

impl<R: Read> Read for Flagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf);
        self.would_block = matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        read
    }
}

enum Sock {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Sock::Unix(s) => s.read(buf),
        }
    }
}

/// Bytes already read, handed to the parser as a socket would: when they
/// run out, the next read would block.
struct Fed<'a>(&'a [u8]);

impl Read for Fed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.0.len().min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// The next whole reply on `stream`; `Ok(None)` once nothing more is
/// waiting. A closed socket, a failed read or bytes Redis would not send
/// are errors.
fn next_reply<R: Read>(parser: &mut Parser, stream: &mut Flagged<R>) -> redis::RedisResult<Option<Value>> {
    stream.would_block = false;
    match parser.parse_value(&mut *stream) {
        Ok(value) => Ok(Some(value)),
        Err(_) if stream.would_block => Ok(None),
        Err(e) => Err(e),
    }
}

/// Hands `bytes` that arrived to `parser`, and each whole reply they
/// complete to `each`. Bytes Redis would not send are an error.
fn take_in(parser: &mut Parser, bytes: &[u8], mut each: impl FnMut(Value) -> Result<(), ()>) -> Result<(), ()> {
    let mut fed = Flagged { inner: Fed(bytes), would_block: false };
    while let Some(reply) = next_reply(parser, &mut fed).map_err(|_| ())? {
        each(reply)?;
    }
    Ok(())
}

/// What the cache must do with a reply that came unasked: an invalidation
/// push. Anything else is not what Redis sends here: refused, and the
/// connection dropped.
fn apply(reply: Value, cache: &LocalCache) -> Result<(), ()> {
    match reply {
        Value::Push { kind, data } if kind == redis::PushKind::Invalidate => {
            cache.on_push(PushInfo { kind, data });
            Ok(())
        }
        _ => Err(()),
    }
}

impl Listener {
    /// The client id to redirect to, if connected.
    pub(crate) fn id(&self) -> Option<i64> {
        self.lock().as_ref().map(|s| s.id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Socket>> {
        // Every path leaves the socket either whole or gone before it could panic.
        self.socket.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects and says hello, replacing any previous socket; returns the
    /// new connection's client id.
    pub(crate) async fn connect(&self, info: &ConnectionInfo) -> Result<i64, redis::RedisError> {
        let socket = tokio::time::timeout(CONNECT_TIMEOUT, open(info))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting the invalidation listener timed out"))??;
        let id = socket.id;
        *self.lock() = Some(socket);
        Ok(id)
    }

    /// Reads every invalidation already received and applies it to `cache`.
    /// A closed or garbled connection is dropped and the cache told.
    pub(crate) fn drain(&self, cache: &LocalCache) {
        let mut guard = self.lock();
        let Some(socket) = guard.as_mut() else { return };
        if socket.read_and_apply(cache).is_err() {
            *guard = None;
            cache.disconnected();
        }
    }
}

impl Socket {
    fn read_and_apply(&mut self, cache: &LocalCache) -> Result<(), ()> {
        loop {
            let n = match self.sock.read(&mut self.chunk) {
                Ok(0) => return Err(()),
                Ok(n) => n,
                // The usual case, one system call per hit: nothing came.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(()),
            };
            take_in(&mut self.parser, &self.chunk[..n], |reply| apply(reply, cache))?;
        }
    }
}

/// A connected socket still in tokio's hands, for the handshake.
enum Connecting {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Connecting {
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Connecting::Tcp(s) => s.write_all(bytes).await,
            #[cfg(unix)]
            Connecting::Unix(s) => s.write_all(bytes).await,
        }
    }

    async fn readable(&self) -> io::Result<()> {
        match self {
            Connecting::Tcp(s) => s.readable().await,
            #[cfg(unix)]
            Connecting::Unix(s) => s.readable().await,
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connecting::Tcp(s) => s.try_read(buf),
            #[cfg(unix)]
            Connecting::Unix(s) => s.try_read(buf),
        }
    }

    /// Out of tokio's hands; tokio's sockets are non-blocking, and stay so.
    fn into_std(self) -> io::Result<Sock> {
        Ok(match self {
            Connecting::Tcp(s) => Sock::Tcp(s.into_std()?),
            #[cfg(unix)]
            Connecting::Unix(s) => Sock::Unix(s.into_std()?),
        })
    }
}

/// Reads a socket still in tokio's hands without waiting.
struct TryRead<'a>(&'a Connecting);

impl Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// The next reply during the handshake, waiting for it as long as it takes
/// (the caller bounds the whole handshake).
async fn reply(connecting: &Connecting, parser: &mut Parser) -> redis::RedisResult<Value> {
    loop {
        if let Some(reply) = next_reply(parser, &mut Flagged { inner: TryRead(connecting), would_block: false })? {
            return Ok(reply);
        }
        connecting.readable().await?;
    }
}

/// Connects, switches to RESP3 (authenticating, if the URL says how) and
/// learns the connection's id; every reply must be the expected one.
async fn open(info: &ConnectionInfo) -> redis::RedisResult<Socket> {
    let mut connecting = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            Connecting::Tcp(tokio::net::TcpStream::connect((host.as_str(), *port)).await?)
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => Connecting::Unix(tokio::net::UnixStream::connect(path).await?),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the Redis local cache supports plain TCP and Unix socket connections",
            )
            .into());
        }
    };
    let settings = info.redis_settings();
    let mut hello = redis::cmd("HELLO");
    hello.arg(3);
    if let Some(password) = settings.password() {
        // A password alone is the default user's, as for AUTH.
        hello.arg("AUTH").arg(settings.username().unwrap_or("default")).arg(password);
    }
    connecting
        .send(&[hello.get_packed_command(), redis::cmd("CLIENT").arg("ID").get_packed_command()].concat())
        .await?;
    let refused = |what: &str, reply: Value| -> redis::RedisError {
        let detail = match reply {
            Value::ServerError(e) => e.to_string(),
            other => format!("{other:?}"),
        };
        io::Error::other(format!("Redis refused the invalidation listener's {what}: {detail}")).into()
    };
    let mut parser = Parser::new();
    match reply(&connecting, &mut parser).await? {
        Value::Map(_) => {}
        other => return Err(refused("HELLO 3", other)),
    }
    let id = match reply(&connecting, &mut parser).await? {
        Value::Int(id) => id,
        other => return Err(refused("CLIENT ID", other)),
    };
    // Out of tokio's hands from now on, with the parser (and anything it
    // holds already) kept.
    let chunk = vec![0; 4096].into_boxed_slice();
    Ok(Socket { sock: connecting.into_std()?, id, parser, chunk })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An invalidation of `keys`, as Redis 7 pushes it in RESP3.
    fn invalidation(keys: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!(">2\r\n$10\r\ninvalidate\r\n*{}\r\n", keys.len()).into_bytes();
        for key in keys {
            out.extend_from_slice(format!("${}\r\n", key.len()).as_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Every reply `parts` complete, handed in one after another as the
    /// drain hands in what each read brought; or the first error.
    fn replies(parts: &[Vec<u8>]) -> Result<Vec<Value>, ()> {
        let (mut parser, mut got) = (Parser::new(), Vec::new());
        for part in parts {
            take_in(&mut parser, part, |reply| {
                got.push(reply);
                Ok(())
            })?;
        }
        Ok(got)
    }

    proptest! {
        /// Whatever arrives, the drain gets replies or an error, never a
        /// panic: the listener then starts over, the process goes on.
        #[test]
        fn any_bytes_are_taken_or_refused_without_a_panic(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..4),
            damaged in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3), 1..4),
            at in any::<usize>(),
        ) {
            let _ = replies(&parts);
            // Bytes of a real invalidation with some replaced reach further in.
            let mut push = invalidation(&damaged);
            let at = at % push.len();
            push[at] = push[at].wrapping_add(1);
            let _ = replies(&[push]);
        }

        /// However the socket cuts the stream, each invalidation comes out
        /// whole, in order, once the rest of it has arrived.
        #[test]
        fn invalidations_come_out_whole_however_the_stream_is_cut(
            pushes in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..4), 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let stream: Vec<u8> = pushes.iter().flat_map(|keys| invalidation(keys)).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut from = 0;
            let parts: Vec<Vec<u8>> = cuts.into_iter().map(|cut| { let part = stream[from..cut].to_vec(); from = cut; part }).collect();
            let got = replies(&parts).unwrap();
            let want: Vec<Value> = pushes
                .iter()
                .map(|keys| Value::Push {
                    kind: redis::PushKind::Invalidate,
                    data: vec![Value::Array(keys.iter().map(|k| Value::BulkString(k.clone())).collect())],
                })
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn bytes_that_are_no_reply_are_an_error() {
        assert_eq!(replies(&[b"?what\r\n".to_vec()]), Err(()));
        assert_eq!(replies(&[b">2\r\n$3\r\nab".to_vec(), b"cdef\r\n".to_vec()]), Err(()), "a string longer than said");
        let push = invalidation(&[b"k".to_vec()]);
        assert_eq!(replies(&[push[..7].to_vec()]), Ok(vec![]), "half a reply waits for the rest");
    }

    #[test]
    fn only_invalidations_are_applied() {
        const HOUR: Duration = Duration::from_secs(3600);
        let cache = LocalCache::new(100);
        let ticket = cache.tracking_enabled(cache.ticket("a")).unwrap();
        cache.put("a", ticket, &hipflask::Dict::new(), HOUR);
        let mut got = replies(&[invalidation(&[b"a".to_vec()])]).unwrap();
        apply(got.remove(0), &cache).unwrap();
        assert!(cache.get("a").is_none());
        assert_eq!(apply(Value::Int(1), &cache), Err(()));
        let message = Value::Push { kind: redis::PushKind::Message, data: vec![] };
        assert_eq!(apply(message, &cache), Err(()));
    }
}
