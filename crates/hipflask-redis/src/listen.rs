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
//! does not give new ACL users by default.

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
/// Redis' own limit on a string (`proto-max-bulk-len`), also taken as the
/// most items an aggregate may announce: a claim beyond it is refused
/// rather than waited for.
const MAX_LEN: usize = 512 << 20;

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

/// One reply, RESP2 or RESP3. Kinds this listener never looks into share a
/// variant, told apart by their first byte.
#[derive(Clone, Debug, PartialEq)]
enum Reply {
    /// `+`, and RESP3's one-line scalars: `#` boolean, `,` double,
    /// `(` big number.
    Line(u8, Vec<u8>),
    /// `-`, or RESP3's `!` blob error.
    Error(Vec<u8>),
    Int(i64),
    /// `$`, or RESP3's `=` verbatim string.
    Bulk(Vec<u8>),
    /// `$-1`, `*-1`, or RESP3's `_`.
    Null,
    /// `*` array, `~` set, `>` push, or `%` map (keys and values in turn).
    Aggregate(u8, Vec<Reply>),
}

/// The reply at the start of `buf` and its length; `Ok(None)` while `buf`
/// holds only part of it.
fn parse(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, ()> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    // A line break first: no kind byte, not a reply.
    let Some((&kind, line)) = buf[..end].split_first() else {
        return Err(());
    };
    let after = end + 2;
    let number = || -> Result<i64, ()> { std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or(()) };
    let length = || usize::try_from(number()?).ok().filter(|&n| n <= MAX_LEN).ok_or(());
    Ok(Some(match kind {
        b'+' | b'#' | b',' | b'(' => (Reply::Line(kind, line.to_vec()), after),
        b'-' => (Reply::Error(line.to_vec()), after),
        b':' => (Reply::Int(number()?), after),
        b'_' if line.is_empty() => (Reply::Null, after),
        b'$' | b'*' if number()? == -1 => (Reply::Null, after),
        b'$' | b'=' | b'!' => {
            let end = after + length()?;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(());
            }
            let bytes = buf[after..end].to_vec();
            (if kind == b'!' { Reply::Error(bytes) } else { Reply::Bulk(bytes) }, end + 2)
        }
        b'*' | b'~' | b'>' | b'%' => {
            if depth >= MAX_DEPTH {
                return Err(());
            }
            let n = length()? * if kind == b'%' { 2 } else { 1 };
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..n {
                let Some((item, used)) = parse(&buf[at..], depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at += used;
            }
            (Reply::Aggregate(kind, items), at)
        }
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
        Reply::Line(kind, line) => {
            out.push(*kind);
            out.extend_from_slice(line);
        }
        Reply::Error(line) => {
            out.push(b'-');
            out.extend_from_slice(line);
        }
        Reply::Int(n) => out.extend_from_slice(format!(":{n}").as_bytes()),
        Reply::Null => out.push(b'_'),
        Reply::Bulk(bytes) => {
            out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
        }
        Reply::Aggregate(kind, items) => {
            let n = if *kind == b'%' { items.len() / 2 } else { items.len() };
            out.extend_from_slice(format!("{}{n}\r\n", char::from(*kind)).as_bytes());
            for item in items {
                encode(item, out);
            }
            return;
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What the cache must do on a push: an invalidation names the keys to
/// drop, or none (`FLUSHALL`, `FLUSHDB`) to drop everything. Anything else
/// is not what Redis sends here: refused, and the connection dropped.
fn apply(reply: Reply, cache: &LocalCache) -> Result<(), ()> {
    let Reply::Aggregate(b'>', parts) = reply else {
        return Err(());
    };
    match parts.as_slice() {
        [Reply::Bulk(kind), payload] if kind == b"invalidate" => match payload {
            Reply::Aggregate(b'*', keys) => {
                for key in keys {
                    match key {
                        Reply::Bulk(key) => cache.invalidate(key),
                        // Not a key we can name: drop everything rather than guess.
                        _ => cache.invalidate_all(),
                    }
                }
            }
            _ => cache.invalidate_all(),
        },
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
        let args = args.iter().map(|arg| Reply::Bulk(arg.to_vec())).collect();
        encode(&Reply::Aggregate(b'*', args), &mut out);
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

/// Switches to RESP3 (authenticating, if the URL says how) and learns the
/// connection's id; every reply must be the expected one.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, info: &ConnectionInfo) -> io::Result<i64> {
    let settings = info.redis_settings();
    let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
    if let Some(password) = settings.password() {
        // A password alone is the default user's, as for AUTH.
        hello.extend([&b"AUTH"[..], settings.username().unwrap_or("default").as_bytes(), password.as_bytes()]);
    }
    let replies = handshake(stream, &[&hello, &[b"CLIENT", b"ID"]]).await?;
    let refused = |what: &str, reply: Option<&Reply>| {
        let detail = match reply {
            Some(Reply::Error(e)) => String::from_utf8_lossy(e).into_owned(),
            other => format!("{other:?}"),
        };
        io::Error::other(format!("Redis refused the invalidation listener's {what}: {detail}"))
    };
    match replies.first() {
        Some(Reply::Aggregate(b'%', _)) => {}
        other => return Err(refused("HELLO 3", other)),
    }
    match replies.get(1) {
        Some(Reply::Int(id)) => Ok(*id),
        other => Err(refused("CLIENT ID", other)),
    }
}

async fn open(info: &ConnectionInfo) -> io::Result<Socket> {
    let (stream, id) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            let id = hello(&mut stream, info).await?;
            // Tokio's sockets are non-blocking, and stay so as std's.
            (Stream::Tcp(stream.into_std()?), id)
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let mut stream = tokio::net::UnixStream::connect(path).await?;
            let id = hello(&mut stream, info).await?;
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

    fn bulk(bytes: &[u8]) -> Reply {
        Reply::Bulk(bytes.to_vec())
    }

    #[test]
    fn replies_parse_whole_and_wait_when_cut() {
        // An invalidation of two keys, as Redis 7 pushes it.
        let push = b">2\r\n$10\r\ninvalidate\r\n*2\r\n$3\r\nk:1\r\n$0\r\n\r\n";
        let keys = Reply::Aggregate(b'*', vec![bulk(b"k:1"), bulk(b"")]);
        assert_eq!(whole(push), Reply::Aggregate(b'>', vec![bulk(b"invalidate"), keys]));
        for cut in 0..push.len() {
            assert_eq!(parse(&push[..cut], 0), Ok(None), "cut at {cut}");
        }
        // The start of a HELLO 3 answer: a map of two entries.
        let map = whole(b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(map, Reply::Aggregate(b'%', vec![bulk(b"server"), bulk(b"redis"), bulk(b"proto"), Reply::Int(3)]));
        for null in [&b"$-1\r\n"[..], b"*-1\r\n", b"_\r\n"] {
            assert_eq!(whole(null), Reply::Null);
        }
        assert_eq!(whole(b":42\r\n"), Reply::Int(42));
        assert_eq!(whole(b"+OK\r\n"), Reply::Line(b'+', b"OK".to_vec()));
        assert_eq!(whole(b"#t\r\n"), Reply::Line(b'#', b"t".to_vec()));
        assert_eq!(whole(b"-ERR no\r\n"), Reply::Error(b"ERR no".to_vec()));
        assert_eq!(whole(b"!6\r\nERR no\r\n"), Reply::Error(b"ERR no".to_vec()));
        assert_eq!(whole(b"=7\r\ntxt:abc\r\n"), bulk(b"txt:abc"));
    }

    #[test]
    fn what_redis_never_sends_is_refused_not_guessed() {
        let deep = b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n";
        for bad in [&b"\r\n"[..], b"?x\r\n", b"$3\r\nabcd\r\n", b":x\r\n", b"$-2\r\n", b"_x\r\n", b"|1\r\n", deep] {
            assert_eq!(parse(bad, 0), Err(()), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"$99999999999999999999\r\n", 0), Err(()));
        assert_eq!(parse(format!("%{}\r\n", i64::MAX).as_bytes(), 0), Err(()));
        assert_eq!(parse(format!("${}\r\n", i64::MAX).as_bytes(), 0), Err(()));
    }

    /// Any reply Redis could send: lines without line breaks, any bytes in
    /// bulk strings, arrays nested up to the depth accepted.
    fn any_reply() -> impl Strategy<Value = Reply> {
        let line = || proptest::collection::vec(0x20u8..0x7f, 0..12);
        let leaf = prop_oneof![
            (prop_oneof![Just(b'+'), Just(b'#'), Just(b','), Just(b'(')], line()).prop_map(|(k, l)| Reply::Line(k, l)),
            line().prop_map(Reply::Error),
            any::<i64>().prop_map(Reply::Int),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Reply::Bulk),
            Just(Reply::Null),
        ];
        leaf.prop_recursive(MAX_DEPTH as u32, 32, 5, |inner| {
            let kind = prop_oneof![Just(b'*'), Just(b'~'), Just(b'>'), Just(b'%')];
            (kind, proptest::collection::vec(inner, 0..5)).prop_map(|(kind, mut items)| {
                if kind == b'%' && items.len() % 2 == 1 {
                    items.pop();
                }
                Reply::Aggregate(kind, items)
            })
        })
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, used))) = parse(&bytes, 0) {
                prop_assert!(used <= bytes.len());
            }
        }

        /// Valid replies with bytes changed, dropped or added: what random
        /// bytes rarely reach (the insides of lengths and nesting) is
        /// reached here, and still nothing panics or reads past the end.
        #[test]
        fn damaged_replies_are_refused_or_waited_for_without_a_panic(
            reply in any_reply(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..6),
        ) {
            let mut bytes = Vec::new();
            encode(&reply, &mut bytes);
            for (at, byte, how) in edits {
                let at = at % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ => bytes.insert(at, byte),
                }
            }
            let mut pending = bytes.clone();
            while let Ok(Some(_)) = take(&mut pending) {}
            prop_assert!(pending.len() <= bytes.len());
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
    fn pushes_invalidate_their_keys_or_everything() {
        const HOUR: Duration = Duration::from_secs(3600);
        let cache = LocalCache::new(100);
        for key in ["a", "b"] {
            let ticket = cache.tracking_enabled(cache.ticket(key)).unwrap();
            cache.put(key, ticket, &hipflask::Dict::new(), HOUR);
        }
        let push = |payload: Reply| Reply::Aggregate(b'>', vec![bulk(b"invalidate"), payload]);
        apply(push(Reply::Aggregate(b'*', vec![bulk(b"a")])), &cache).unwrap();
        assert!(cache.get("a").is_none() && cache.get("b").is_some(), "only the named key");
        apply(push(Reply::Null), &cache).unwrap();
        assert!(cache.get("b").is_none(), "FLUSHALL drops everything");
        assert_eq!(apply(Reply::Int(1), &cache), Err(()));
        assert_eq!(apply(Reply::Aggregate(b'>', vec![bulk(b"message"), bulk(b"x"), bulk(b"y")]), &cache), Err(()));
    }
}
