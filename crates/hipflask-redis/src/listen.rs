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
//! The connection speaks RESP2, subscribed to `__redis__:invalidate`, as
//! Redis requires of a redirect target that does not speak RESP3.

use std::io::{self, Read as _};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::cache::LocalCache;

/// How long connecting and subscribing may take before the cache reports
/// the failure (a read then goes to Redis uncached).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A Redis reply nests two deep here (a message holding a list of keys);
/// anything deeper is not one Redis sends this connection.
const MAX_DEPTH: usize = 4;

/// The socket, when connected. A socket found closed, or speaking something
/// else than Redis does, is dropped; the cache is then told it is
/// disconnected, and the next read that misses connects a new one.
#[derive(Default)]
pub(crate) struct Listener {
    socket: Mutex<Option<Socket>>,
}

struct Socket {
    stream: Stream,
    /// The Redis client id to redirect invalidations to.
    id: i64,
    /// Bytes read but not yet a whole reply.
    pending: Vec<u8>,
    /// Where reads land: zeroed once here, not on every hit (zeroing a
    /// buffer on the stack cost more than the read itself).
    chunk: Box<[u8]>,
}

enum Stream {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
        }
    }
}

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// The reply at the start of `buf` and its length; `Ok(None)` while `buf`
/// holds only part of it.
fn parse(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, ()> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let (kind, line) = (buf.first().ok_or(())?, &buf[1..end]);
    let after = end + 2;
    let number = || -> Result<i64, ()> { std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or(()) };
    Ok(Some(match kind {
        b'+' => (Reply::Simple(line.to_vec()), after),
        b'-' => (Reply::Error(line.to_vec()), after),
        b':' => (Reply::Int(number()?), after),
        b'$' => match number()? {
            -1 => (Reply::Bulk(None), after),
            n => {
                let n = usize::try_from(n).map_err(|_| ())?;
                let end = after.checked_add(n).ok_or(())?;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(());
                }
                (Reply::Bulk(Some(buf[after..end].to_vec())), end + 2)
            }
        },
        b'*' => match number()? {
            -1 => (Reply::Array(None), after),
            n => {
                if depth >= MAX_DEPTH {
                    return Err(());
                }
                let n = usize::try_from(n).map_err(|_| ())?;
                let mut items = Vec::new();
                let mut at = after;
                for _ in 0..n {
                    let Some((item, used)) = parse(&buf[at..], depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    at += used;
                }
                (Reply::Array(Some(items)), at)
            }
        },
        _ => return Err(()),
    }))
}

/// Takes the first whole reply off the front of `pending`, if it holds one.
fn take(pending: &mut Vec<u8>) -> Result<Option<Reply>, ()> {
    let Some((reply, used)) = parse(pending, 0)? else {
        return Ok(None);
    };
    pending.drain(..used);
    Ok(Some(reply))
}

/// `reply` as Redis would send it (commands are arrays of bulk strings).
fn encode(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Simple(line) | Reply::Error(line) => {
            out.push(if matches!(reply, Reply::Simple(_)) { b'+' } else { b'-' });
            out.extend_from_slice(line);
        }
        Reply::Int(n) => out.extend_from_slice(format!(":{n}").as_bytes()),
        Reply::Bulk(None) => out.extend_from_slice(b"$-1"),
        Reply::Bulk(Some(bytes)) => {
            out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
        }
        Reply::Array(None) => out.extend_from_slice(b"*-1"),
        Reply::Array(Some(items)) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                encode(item, out);
            }
            return;
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What the cache must do on a message of the invalidation channel.
fn apply(reply: Reply, cache: &LocalCache) -> Result<(), ()> {
    let Reply::Array(Some(parts)) = reply else {
        return Err(());
    };
    let mut parts = parts.into_iter();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Reply::Bulk(Some(kind))), _, payload) if kind == b"message" => match payload {
            Some(Reply::Array(Some(keys))) => {
                for key in keys {
                    match key {
                        Reply::Bulk(Some(key)) => cache.invalidate(&key),
                        // Not a key we can name: drop everything rather than guess.
                        _ => cache.invalidate_all(),
                    }
                }
            }
            // Nil after FLUSHALL/FLUSHDB, or a shape we do not know.
            _ => cache.invalidate_all(),
        },
        // The answer to SUBSCRIBE, should it still be unread.
        (Some(Reply::Bulk(Some(kind))), _, _) if kind == b"subscribe" => {}
        _ => return Err(()),
    }
    Ok(())
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

    /// Connects and subscribes, replacing any previous socket; returns the
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
            match self.stream.read(&mut self.chunk) {
                Ok(0) => return Err(()),
                Ok(n) => self.pending.extend_from_slice(&self.chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        while let Some(reply) = take(&mut self.pending)? {
            apply(reply, cache)?;
        }
        Ok(())
    }
}

/// Sends `commands` and reads one reply to each.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, commands: &[&[&[u8]]]) -> io::Result<Vec<Reply>> {
    let mut out = Vec::new();
    for args in commands {
        let args = args.iter().map(|arg| Reply::Bulk(Some(arg.to_vec()))).collect();
        encode(&Reply::Array(Some(args)), &mut out);
    }
    stream.write_all(&out).await?;
    let garbled =
        || io::Error::new(io::ErrorKind::InvalidData, "the invalidation listener got a reply Redis does not send");
    let (mut buf, mut replies) = (Vec::new(), Vec::new());
    while replies.len() < commands.len() {
        match take(&mut buf).map_err(|()| garbled())? {
            Some(reply) => replies.push(reply),
            None => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "Redis closed the invalidation listener"));
                }
            }
        }
    }
    if !buf.is_empty() {
        return Err(garbled());
    }
    Ok(replies)
}

/// Authenticates, learns the connection's id and subscribes; every reply
/// must be the expected one.
async fn subscribe<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, info: &ConnectionInfo) -> io::Result<i64> {
    let settings = info.redis_settings();
    let mut commands: Vec<Vec<&[u8]>> = Vec::new();
    if let Some(password) = settings.password() {
        let mut auth: Vec<&[u8]> = vec![b"AUTH"];
        auth.extend(settings.username().map(str::as_bytes));
        auth.push(password.as_bytes());
        commands.push(auth);
    }
    commands.push(vec![b"CLIENT", b"ID"]);
    commands.push(vec![b"SUBSCRIBE", b"__redis__:invalidate"]);
    let borrowed: Vec<&[&[u8]]> = commands.iter().map(Vec::as_slice).collect();
    let replies = handshake(stream, &borrowed).await?;
    let refused = |what: &str, reply: &Reply| {
        let detail = match reply {
            Reply::Error(e) => String::from_utf8_lossy(e).into_owned(),
            other => format!("{other:?}"),
        };
        io::Error::other(format!("Redis refused the invalidation listener's {what}: {detail}"))
    };
    let mut replies = replies.into_iter();
    if settings.password().is_some() {
        let reply = replies.next().ok_or_else(|| refused("AUTH", &Reply::Array(None)))?;
        if reply != Reply::Simple(b"OK".to_vec()) {
            return Err(refused("AUTH", &reply));
        }
    }
    let id = match replies.next() {
        Some(Reply::Int(id)) => id,
        other => return Err(refused("CLIENT ID", &other.unwrap_or(Reply::Array(None)))),
    };
    match replies.next() {
        Some(Reply::Array(Some(parts))) if parts.first() == Some(&Reply::Bulk(Some(b"subscribe".to_vec()))) => {}
        other => return Err(refused("SUBSCRIBE", &other.unwrap_or(Reply::Array(None)))),
    }
    Ok(id)
}

async fn open(info: &ConnectionInfo) -> io::Result<Socket> {
    let (stream, id) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            let id = subscribe(&mut stream, info).await?;
            // Tokio's sockets are non-blocking, and stay so as std's.
            (Stream::Tcp(stream.into_std()?), id)
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let mut stream = tokio::net::UnixStream::connect(path).await?;
            let id = subscribe(&mut stream, info).await?;
            (Stream::Unix(stream.into_std()?), id)
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the Redis local cache supports plain TCP and Unix socket connections",
            ));
        }
    };
    Ok(Socket { stream, id, pending: Vec::new(), chunk: vec![0; 4096].into_boxed_slice() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(bytes: &[u8]) -> Reply {
        let (reply, used) = parse(bytes, 0).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        reply
    }

    #[test]
    fn replies_parse_whole_and_wait_when_cut() {
        let message = b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*2\r\n$3\r\nk:1\r\n$0\r\n\r\n";
        let keys = Reply::Array(Some(vec![Reply::Bulk(Some(b"k:1".to_vec())), Reply::Bulk(Some(Vec::new()))]));
        let want = Reply::Array(Some(vec![
            Reply::Bulk(Some(b"message".to_vec())),
            Reply::Bulk(Some(b"__redis__:invalidate".to_vec())),
            keys,
        ]));
        assert_eq!(whole(message), want);
        for cut in 0..message.len() {
            assert_eq!(parse(&message[..cut], 0), Ok(None), "cut at {cut}");
        }
        assert_eq!(whole(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(whole(b"*-1\r\n"), Reply::Array(None));
        assert_eq!(whole(b":42\r\n"), Reply::Int(42));
        assert_eq!(whole(b"+OK\r\n"), Reply::Simple(b"OK".to_vec()));
        assert_eq!(whole(b"-ERR no\r\n"), Reply::Error(b"ERR no".to_vec()));
    }

    #[test]
    fn what_redis_never_sends_is_refused_not_guessed() {
        for bad in [&b"?x\r\n"[..], b"$3\r\nabcd\r\n", b":x\r\n", b"$-2\r\n", b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"] {
            assert_eq!(parse(bad, 0), Err(()), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"$99999999999999999999\r\n", 0), Err(()));
        assert_eq!(parse(&format!("${}\r\n", usize::MAX).into_bytes(), 0), Err(()));
    }

    /// Any reply Redis could send: lines without line breaks, any bytes in
    /// bulk strings, arrays nested up to the depth accepted.
    fn any_reply() -> impl Strategy<Value = Reply> {
        let line = || proptest::collection::vec(0x20u8..0x7f, 0..12);
        let leaf = prop_oneof![
            line().prop_map(Reply::Simple),
            line().prop_map(Reply::Error),
            any::<i64>().prop_map(Reply::Int),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)).prop_map(Reply::Bulk),
            Just(Reply::Array(None)),
        ];
        leaf.prop_recursive(MAX_DEPTH as u32, 32, 5, |inner| {
            proptest::collection::vec(inner, 0..5).prop_map(|items| Reply::Array(Some(items)))
        })
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, used))) = parse(&bytes, 0) {
                prop_assert!(used <= bytes.len());
            }
        }

        /// However the socket cuts the stream, the same replies come out,
        /// in order, and nothing is left over.
        #[test]
        fn replies_come_out_whole_however_the_stream_is_cut(
            replies in proptest::collection::vec(any_reply(), 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut stream = Vec::new();
            for reply in &replies {
                encode(reply, &mut stream);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let (mut pending, mut got, mut from) = (Vec::new(), Vec::new(), 0);
            for cut in cuts {
                pending.extend_from_slice(&stream[from..cut]);
                from = cut;
                while let Some(reply) = take(&mut pending).unwrap() {
                    got.push(reply);
                }
            }
            prop_assert_eq!(got, replies);
            prop_assert!(pending.is_empty());
        }
    }

    #[test]
    fn messages_invalidate_their_keys_or_everything() {
        const HOUR: Duration = Duration::from_secs(3600);
        let cache = LocalCache::new(100);
        for key in ["a", "b"] {
            let ticket = cache.tracking_enabled(cache.ticket(key)).unwrap();
            cache.put(key, ticket, &hipflask::Dict::new(), HOUR);
        }
        let message = |payload: Reply| {
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"message".to_vec())),
                Reply::Bulk(Some(b"__redis__:invalidate".to_vec())),
                payload,
            ]))
        };
        let keys = Reply::Array(Some(vec![Reply::Bulk(Some(b"a".to_vec()))]));
        apply(message(keys), &cache).unwrap();
        assert!(cache.get("a").is_none() && cache.get("b").is_some(), "only the named key");
        apply(message(Reply::Bulk(None)), &cache).unwrap();
        assert!(cache.get("b").is_none(), "FLUSHALL drops everything");
        assert_eq!(apply(Reply::Int(1), &cache), Err(()));
        assert_eq!(apply(Reply::Array(Some(vec![Reply::Bulk(Some(b"pong".to_vec()))])), &cache), Err(()));
    }
}
