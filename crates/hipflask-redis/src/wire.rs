//! The standalone server's connection: one socket, shared by every request,
//! with no task of its own to carry commands and replies (a connection that
//! pushes, the local cache's, has one that reads it while it is idle: see
//! [`watch`]).
//!
//! Why not redis-rs' multiplexed connection: a round trip through it cost the
//! server about 24k instructions (callgrind, the benchmark's uncached read),
//! more than the rest of the request. A command went through a channel to
//! the connection's task, which wrote it, and a reply came back through its
//! parser and a second channel; `ConnectionManager` and the response timer
//! wrapped each in futures of their own. Here a request writes its command
//! itself when the socket is idle, and the request waiting longest reads the
//! socket for everyone: it parses what arrived, hands every other request
//! its replies and wakes it, and passes the reading on when its own replies
//! are in. A reply therefore wakes one task, the one that needs it.
//!
//! Requests that come while others wait for Redis append their commands to
//! the pending output, which the reading request writes after its next read:
//! one write and one wake-up of Redis for all the commands queued in that
//! round trip, and each still waits for a single round trip of its own.
//! Only the order of replies is relied on (Redis answers a connection's
//! commands in order).
//!
//! # Closed connections
//!
//! Redis closes clients idle for longer than its `timeout` setting, and a
//! restart closes all of them. A command that finds its socket closed fails
//! every command still waiting on it, and is sent once more on a new
//! connection, so the first request after an idle spell is not answered
//! 503. Sending again is safe for what this store sends. Loads only read. A
//! save sets or deletes the keys its request changed, so applied twice it
//! stores the same; when the first one was applied before the connection
//! dropped, the second finds the bytes it expected gone and merges, which
//! with conflicts refused answers 409 rather than lose anything. Creates and
//! deletes are `SET` and `DEL`. Only a dropped connection is retried, once.
//!
//! A request that gives up (its timeout, or its client went away) leaves its
//! commands to be answered: their replies are read and dropped when they
//! come, and the reading passes to another request.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, Pipeline, PushInfo, PushKind, RedisError, RedisFuture, RedisResult, Value,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Commands as the connection writes them: straight into its buffer, in
/// RESP, by the hot path's own types (no `Cmd` built and copied for each),
/// or as redis-rs commands for everything else and for Redis Cluster.
pub(crate) trait Commands {
    /// How many commands: Redis answers each with one reply.
    fn count(&self) -> usize;
    /// Appends them to `out` in RESP.
    fn write(&self, out: &mut Vec<u8>);
    /// The same commands for redis-rs, on a cluster.
    fn to_cmds(&self) -> Vec<Cmd>;
}

impl<C: Borrow<Cmd>> Commands for [C] {
    fn count(&self) -> usize {
        self.len()
    }

    fn write(&self, out: &mut Vec<u8>) {
        for cmd in self {
            cmd.borrow().write_packed_command(out);
        }
    }

    fn to_cmds(&self) -> Vec<Cmd> {
        self.iter().map(|c| c.borrow().clone()).collect()
    }
}

/// Starts a command of `args` arguments in `out`.
pub(crate) fn command_of(out: &mut Vec<u8>, args: usize) {
    out.push(b'*');
    out.extend_from_slice(decimal(args as u64, &mut [0; 20]));
    out.extend_from_slice(b"\r\n");
}

/// Appends one argument to the command being written.
pub(crate) fn arg(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(decimal(bytes.len() as u64, &mut [0; 20]));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `buf`.
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Told of the connection's pushes, and of its loss as a `Disconnection`.
pub(crate) type PushSender = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// How long the store's constructor waits for its first connection.
#[cfg(not(test))]
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Shorter in the unit tests, which wait for it.
#[cfg(test)]
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// How much a read asks the kernel for at least.
const READ_CHUNK: usize = 16 * 1024;

/// A connection to one Redis server, connected again when it drops.
#[derive(Clone)]
pub(crate) struct Wire(Arc<Shared>);

struct Shared {
    info: ConnectionInfo,
    on_push: Option<PushSender>,
    /// Bounds each command, reconnecting included (see "Timeouts" in the
    /// crate docs).
    timeout: Duration,
    link: Mutex<Option<Arc<Link>>>,
    /// One connect at a time; the others wait for its socket.
    connecting: tokio::sync::Mutex<()>,
}

/// One socket, for as long as it lives.
struct Link {
    sock: Sock,
    /// Set once the socket failed: later commands go to a new one.
    broken: AtomicBool,
    on_push: Option<PushSender>,
    /// Told when the last handle on the connection is dropped.
    closed: tokio::sync::Notify,
    /// Everything else. Held across the non-blocking system calls: they
    /// never wait, and whoever holds it is the only one touching the socket.
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Commands not yet written.
    out: Vec<u8>,
    /// Bytes read but not yet a whole reply.
    input: Vec<u8>,
    /// Requests waiting for replies, in the order of their commands.
    waiting: VecDeque<Waiting>,
    /// Answers not yet taken by their requests.
    done: Vec<(u64, RedisResult<Vec<Value>>)>,
    /// The request reading the socket for everyone, if any.
    reader: Option<u64>,
    next_id: u64,
    /// The task that reads the socket while no request does (see [`watch`]).
    watcher: Option<Waker>,
    /// The deadline keeper, while it sleeps for want of commands (see
    /// [`keep_deadlines`]).
    keeper: Option<Waker>,
}

struct Waiting {
    id: u64,
    left: usize,
    replies: Vec<Value>,
    waker: Option<Waker>,
    /// Its request gave up: the replies are read and dropped.
    abandoned: bool,
    /// When it gives up unanswered.
    deadline: Instant,
}

enum Sock {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Wire {
    /// Connects now, so that a wrong address or password is reported by the
    /// store's constructor rather than by the first request; in RESP3 when
    /// `info` asks for it. Gives up after [`CONNECT_TIMEOUT`] (or `timeout`,
    /// if longer), as later connects give up with their command.
    pub(crate) async fn connect(
        info: ConnectionInfo,
        on_push: Option<PushSender>,
        timeout: Duration,
    ) -> RedisResult<Wire> {
        let wire = Wire(Arc::new(Shared {
            info,
            on_push,
            timeout,
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }));
        match tokio::time::timeout(CONNECT_TIMEOUT.max(timeout), wire.link()).await {
            Ok(link) => link.map(|_| wire),
            Err(_) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer the connection in time").into())
            }
        }
    }

    /// Sends `cmds` as one pipeline and returns their replies, in order; a
    /// reply may be `Value::ServerError`. Fails with a timeout when Redis
    /// has not answered in time.
    pub(crate) async fn send(&self, cmds: &(impl Commands + ?Sized)) -> RedisResult<Vec<Value>> {
        if cmds.count() == 0 {
            // No reply would ever complete it.
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + self.0.timeout;
        // The usual case, a live socket: the link's keeper (see
        // [`keep_deadlines`]) fails the command at its deadline, which costs
        // far less than a timer of its own for each command.
        if let Some(link) = self.live() {
            match Self::on(&link, cmds, deadline).await {
                Err(e) if e.is_connection_dropped() => {}
                result => return result,
            }
        }
        // Connecting (again), with a timer for the time left: a connect can
        // hang before any keeper exists.
        let retry = async {
            let link = self.link().await?;
            Self::on(&link, cmds, deadline).await
        };
        match tokio::time::timeout_at(deadline.into(), retry).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        }
    }

    async fn on(link: &Link, cmds: &(impl Commands + ?Sized), deadline: Instant) -> RedisResult<Vec<Value>> {
        let id = link.enqueue(cmds, deadline)?;
        // A link that failed is marked broken, and `live` passes it over.
        Answer { link, id, finished: false }.await
    }

    /// The live socket, connected first when there is none.
    async fn link(&self) -> RedisResult<Arc<Link>> {
        if let Some(link) = self.live() {
            return Ok(link);
        }
        let _one = self.0.connecting.lock().await;
        if let Some(link) = self.live() {
            return Ok(link);
        }
        // Boxed: connecting is rare, and inline its future would make every
        // command's future (and the store's, which holds it) several times
        // larger, copied and allocated on each request.
        let link = Box::pin(Link::connect(&self.0.info, self.0.on_push.clone(), self.0.timeout)).await?;
        *self.0.link.lock().unwrap_or_else(PoisonError::into_inner) = Some(link.clone());
        Ok(link)
    }

    fn live(&self) -> Option<Arc<Link>> {
        let slot = self.0.link.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().filter(|l| !l.broken.load(Ordering::Acquire)).cloned()
    }
}

impl ConnectionLike for Wire {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let replies = self.send(std::slice::from_ref(cmd)).await?;
            let first = replies.into_iter().next().ok_or_else(|| failure("Redis sent no reply"))?;
            reply(first)
        })
    }

    /// Plain pipelines only. redis-rs asks for a transaction's replies from
    /// an offset past its commands; its `MULTI` and `EXEC` are not among the
    /// commands this connection sees, so it is refused rather than sent
    /// without them, silently not atomic. This store sends none.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if offset != 0 {
                return Err(failure("the Redis session store's connection does not send MULTI/EXEC pipelines"));
            }
            let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
            let replies = self.send(&cmds[..]).await?;
            Ok(replies.into_iter().skip(offset).take(count).collect())
        })
    }

    fn get_db(&self) -> i64 {
        self.0.info.redis_settings().db()
    }
}

/// A reply as a result: Redis' error replies become errors.
pub(crate) fn reply(value: Value) -> RedisResult<Value> {
    match value {
        Value::ServerError(e) => Err(e.into()),
        value => Ok(value),
    }
}

/// An error of this connection (not Redis' own), with what happened.
pub(crate) fn failure(what: impl Into<String>) -> RedisError {
    RedisError::from(io::Error::other(what.into()))
}

fn timed_out() -> RedisError {
    io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer in time").into()
}

fn dropped(what: &str) -> RedisError {
    RedisError::from(io::Error::new(io::ErrorKind::ConnectionReset, what.to_owned()))
}

impl Link {
    async fn connect(info: &ConnectionInfo, on_push: Option<PushSender>, timeout: Duration) -> RedisResult<Arc<Link>> {
        let mut sock = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Sock::Tcp(stream)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Sock::Unix(tokio::net::UnixStream::connect(path).await?),
            other => return Err(failure(format!("the Redis store cannot connect to {other} (no TLS support)"))),
        };
        let settings = info.redis_settings();
        let mut hello = Vec::new();
        if settings.protocol() == redis::ProtocolVersion::RESP3 {
            let mut cmd = redis::cmd("HELLO");
            cmd.arg(3);
            if let Some(password) = settings.password() {
                cmd.arg("AUTH").arg(settings.username().unwrap_or("default")).arg(password);
            }
            hello.push(cmd);
        } else if let Some(password) = settings.password() {
            let mut cmd = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                cmd.arg(user);
            }
            hello.push(cmd.arg(password).clone());
        }
        if settings.db() != 0 {
            hello.push(redis::cmd("SELECT").arg(settings.db()).clone());
        }
        sock.handshake(&hello).await?;
        let watched = on_push.is_some();
        let link = Arc::new(Link {
            sock,
            broken: AtomicBool::new(false),
            on_push,
            closed: tokio::sync::Notify::new(),
            queue: Mutex::new(Queue::default()),
        });
        if watched {
            tokio::spawn(watch(link.clone()));
        }
        tokio::spawn(keep_deadlines(Arc::downgrade(&link), keeper_tick(timeout)));
        Ok(link)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `cmds` for writing; the id their answer will carry.
    fn enqueue(&self, cmds: &(impl Commands + ?Sized), deadline: Instant) -> RedisResult<u64> {
        let mut q = self.lock();
        if self.broken.load(Ordering::Acquire) {
            return Err(dropped("the Redis connection was closed"));
        }
        cmds.write(&mut q.out);
        let left = cmds.count();
        let id = q.next_id;
        q.next_id += 1;
        q.waiting.push_back(Waiting {
            id,
            left,
            replies: Vec::with_capacity(left),
            waker: None,
            abandoned: false,
            deadline,
        });
        if let Some(keeper) = q.keeper.take() {
            keeper.wake();
        }
        Ok(id)
    }

    /// Fails the commands whose deadline has passed, as a timer of their
    /// own would: they give up, and their replies are read and dropped.
    fn expire(&self, q: &mut Queue, now: Instant) {
        let Queue { waiting, done, .. } = q;
        for w in waiting.iter_mut().filter(|w| !w.abandoned && w.deadline <= now) {
            w.abandoned = true;
            done.push((w.id, Err(timed_out())));
            if let Some(waker) = w.waker.take() {
                waker.wake();
            }
        }
    }

    /// Fails every waiting request: the socket is closed or unusable.
    fn break_all(&self, q: &mut Queue, error: &RedisError) {
        if self.broken.swap(true, Ordering::AcqRel) {
            return;
        }
        q.reader = None;
        q.out.clear();
        for w in q.waiting.drain(..) {
            if !w.abandoned {
                let e = if error.is_connection_dropped() {
                    dropped(&error.to_string())
                } else {
                    failure(error.to_string())
                };
                q.done.push((w.id, Err(e)));
                if let Some(waker) = w.waker {
                    waker.wake();
                }
            }
        }
        if let Some(on_push) = &self.on_push {
            on_push(PushInfo { kind: PushKind::Disconnection, data: Vec::new() });
        }
    }

    /// Hands out the whole replies at the start of the input.
    fn dispatch(&self, q: &mut Queue, me: u64) -> RedisResult<()> {
        let mut at = 0;
        while let Some((value, used)) = parse(&q.input[at..])? {
            at += used;
            if let Value::Push { kind, data } = value {
                if let Some(on_push) = &self.on_push {
                    on_push(PushInfo { kind, data });
                }
                continue;
            }
            let Some(front) = q.waiting.front_mut() else {
                return Err(failure("Redis sent a reply to no command"));
            };
            front.replies.push(value);
            front.left -= 1;
            if front.left == 0
                && let Some(w) = q.waiting.pop_front()
                && !w.abandoned
            {
                if w.id != me
                    && let Some(waker) = &w.waker
                {
                    waker.wake_by_ref();
                }
                q.done.push((w.id, Ok(w.replies)));
            }
        }
        q.input.drain(..at);
        Ok(())
    }

    /// Passes the reading on to a request that waits, and wakes it.
    /// With no request left waiting (replies still due to requests that
    /// gave up are read and dropped by whoever reads next), the socket is
    /// read until empty and its readiness handed to the watching task, if
    /// there is one.
    fn hand_over(&self, q: &mut Queue) {
        q.reader = None;
        match q.waiting.iter().find(|w| !w.abandoned) {
            Some(w) => {
                if let Some(waker) = &w.waker {
                    waker.wake_by_ref();
                }
            }
            None => {
                if let Some(watcher) = q.watcher.clone() {
                    let _ = self.read_idle(q, &mut Context::from_waker(&watcher));
                }
            }
        }
    }

    /// Reads what arrives while no request waits (pushes, or the end of
    /// the connection) until nothing is left, then has `cx` woken when more
    /// comes. `Ready` once the connection is broken.
    fn read_idle(&self, q: &mut Queue, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.read_some(q, u64::MAX, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.break_all(q, &e);
                    return Poll::Ready(());
                }
            }
        }
    }

    /// Reads what has arrived, when the socket's readiness says something
    /// has: no system call only to learn that nothing came. `Ready(Ok)`
    /// after a read (or a readiness found stale, which the next call
    /// registers anew); `Pending` when nothing is known to wait, `cx` then
    /// being woken when it comes.
    fn read_some(&self, q: &mut Queue, me: u64, cx: &mut Context<'_>) -> Poll<RedisResult<()>> {
        if let Err(e) = std::task::ready!(self.sock.poll_read_ready(cx)) {
            return Poll::Ready(Err(e.into()));
        }
        q.input.reserve(READ_CHUNK);
        Poll::Ready(match self.sock.try_read_buf(&mut q.input) {
            Ok(0) => Err(dropped("Redis closed the connection")),
            Ok(_) => self.dispatch(q, me),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        })
    }

    /// One pass as the reader: writes what is queued, reads what came.
    /// `Ready(())` when something moved and another pass may find more.
    fn pass(&self, q: &mut Queue, me: u64, cx: &mut Context<'_>) -> Poll<RedisResult<()>> {
        let mut moved = false;
        if !q.out.is_empty() {
            match self.sock.try_write(&q.out) {
                Ok(n) => {
                    q.out.drain(..n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => moved |= self.sock.poll_write_ready(cx).is_ready(),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        match self.read_some(q, me, cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => moved = true,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        }
        if moved { Poll::Ready(Ok(())) } else { Poll::Pending }
    }
}

/// A request's answer: taken when another request has read it, or read by
/// this one when no other is reading.
struct Answer<'a> {
    link: &'a Link,
    id: u64,
    finished: bool,
}

impl Future for Answer<'_> {
    type Output = RedisResult<Vec<Value>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let link = self.link;
        let me = self.id;
        let mut q = link.lock();
        loop {
            if let Some(i) = q.done.iter().position(|(id, _)| *id == me) {
                let (_, answer) = q.done.swap_remove(i);
                if q.reader == Some(me) {
                    link.hand_over(&mut q);
                }
                drop(q);
                self.finished = true;
                return Poll::Ready(answer);
            }
            // Registered by the reader too: the keeper wakes it at its deadline.
            if let Some(w) = q.waiting.iter_mut().find(|w| w.id == me)
                && !w.waker.as_ref().is_some_and(|k| k.will_wake(cx.waker()))
            {
                w.waker = Some(cx.waker().clone());
            }
            if q.reader.is_some_and(|r| r != me) {
                return Poll::Pending;
            }
            q.reader = Some(me);
            match link.pass(&mut q, me, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => link.break_all(&mut q, &e),
                Poll::Pending => {
                    // The socket's readiness wakes this task.
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut q = self.link.lock();
        let me = self.id;
        q.done.retain(|(id, _)| *id != me);
        if let Some(w) = q.waiting.iter_mut().find(|w| w.id == me) {
            w.abandoned = true;
            w.waker = None;
        }
        if q.reader == Some(me) {
            self.link.hand_over(&mut q);
        }
    }
}

/// How often a link's keeper looks for commands past their deadline: an
/// eighth of the timeout, so a command gives up at most an eighth late.
fn keeper_tick(timeout: Duration) -> Duration {
    (timeout / 8).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// Fails a link's commands at their deadline, in place of a timer for each
/// (the timer's setting and clearing, and the clock reads around them, were
/// about a tenth of a round trip's cost to the server). Looks every `tick`
/// while commands are sent, sleeps without a timer once a tick passed with
/// none (the next command wakes it), and ends with the link.
async fn keep_deadlines(link: std::sync::Weak<Link>, tick: Duration) {
    let mut seen = u64::MAX;
    loop {
        let busy = std::future::poll_fn(|cx| {
            let Some(link) = link.upgrade() else { return Poll::Ready(false) };
            if link.broken.load(Ordering::Acquire) {
                return Poll::Ready(false);
            }
            let mut q = link.lock();
            if q.next_id != seen || q.waiting.iter().any(|w| !w.abandoned) {
                return Poll::Ready(true);
            }
            q.keeper = Some(cx.waker().clone());
            Poll::Pending
        });
        if !busy.await {
            return;
        }
        tokio::time::sleep(tick).await;
        let Some(link) = link.upgrade() else { return };
        let mut q = link.lock();
        seen = q.next_id;
        link.expire(&mut q, Instant::now());
    }
}

impl Drop for Link {
    /// A keeper asleep would otherwise never learn that its link is gone.
    fn drop(&mut self) {
        if let Some(keeper) = self.queue.get_mut().unwrap_or_else(PoisonError::into_inner).keeper.take() {
            keeper.wake();
        }
    }
}

/// Reads a connection that pushes while no request reads it, so that its
/// loss (and a `tracking-redir-broken` push) is told at once: the local
/// cache serves hits without touching this connection, and must empty
/// itself as soon as the invalidations it relies on may have been lost.
///
/// The task is woken only when something arrives while no request waits:
/// the last request to read registers this task's waker with the socket as
/// it leaves (see [`Link::hand_over`]), and the next request to read takes
/// the registration back. Ends with the connection.
async fn watch(link: Arc<Link>) {
    let idle = std::future::poll_fn(|cx| {
        let mut q = link.lock();
        if link.broken.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !q.watcher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            q.watcher = Some(cx.waker().clone());
        }
        if q.reader.is_some() || q.waiting.iter().any(|w| !w.abandoned) {
            return Poll::Pending;
        }
        link.read_idle(&mut q, cx)
    });
    tokio::select! {
        () = idle => {}
        () = link.closed.notified() => {}
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(link) = self.link.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            link.closed.notify_one();
        }
    }
}

impl Sock {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.try_write(buf),
            #[cfg(unix)]
            Sock::Unix(s) => s.try_write(buf),
        }
    }

    fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.try_read_buf(buf),
            #[cfg(unix)]
            Sock::Unix(s) => s.try_read_buf(buf),
        }
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Sock::Tcp(s) => s.poll_read_ready(cx),
            #[cfg(unix)]
            Sock::Unix(s) => s.poll_read_ready(cx),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Sock::Tcp(s) => s.poll_write_ready(cx),
            #[cfg(unix)]
            Sock::Unix(s) => s.poll_write_ready(cx),
        }
    }

    /// Sends the connection's first commands and checks their replies,
    /// before the socket is shared.
    async fn handshake(&mut self, cmds: &[Cmd]) -> RedisResult<()> {
        if cmds.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        for cmd in cmds {
            cmd.write_packed_command(&mut out);
        }
        match self {
            Sock::Tcp(s) => s.write_all(&out).await?,
            #[cfg(unix)]
            Sock::Unix(s) => s.write_all(&out).await?,
        }
        let mut input = Vec::new();
        let mut seen = 0;
        while seen < cmds.len() {
            let read = match self {
                Sock::Tcp(s) => s.read_buf(&mut input).await?,
                #[cfg(unix)]
                Sock::Unix(s) => s.read_buf(&mut input).await?,
            };
            if read == 0 {
                return Err(dropped("Redis closed the connection during the handshake"));
            }
            let mut at = 0;
            while let Some((value, used)) = parse(&input[at..])? {
                at += used;
                seen += 1;
                reply(value)?;
            }
            input.drain(..at);
        }
        Ok(())
    }
}

/// The first whole reply in `buf` and its length; `None` when it has not
/// all arrived. The common types are built here; the rest (RESP3's maps,
/// sets, doubles, pushes, and errors) are measured here and handed to
/// redis-rs' own parser, so that they come out exactly as it makes them.
fn parse(buf: &[u8]) -> RedisResult<Option<(Value, usize)>> {
    parse_nested(buf, 0)
}

/// Deeper than any reply this store asks for; a stream nested deeper is not
/// Redis, and is refused rather than allowed to exhaust the stack.
const MAX_DEPTH: usize = 32;

fn parse_nested(buf: &[u8], depth: usize) -> RedisResult<Option<(Value, usize)>> {
    if depth > MAX_DEPTH {
        return Err(protocol("replies nested too deep"));
    }
    let Some(end) = line_end(buf) else { return Ok(None) };
    let line = &buf[1..end];
    let after = end + 2;
    let value = match buf[0] {
        b'+' if line == b"OK" => Value::Okay,
        b'+' => Value::SimpleString(String::from_utf8_lossy(line).into_owned()),
        b':' => Value::Int(number(line)?),
        b'_' => Value::Nil,
        b'$' => {
            let len = number(line)?;
            if len < 0 {
                return Ok(Some((Value::Nil, after)));
            }
            let whole = usize::try_from(len).ok().and_then(|len| len.checked_add(after + 2));
            let whole = whole.ok_or_else(|| protocol("a bulk string's length"))?;
            if buf.len() < whole {
                return Ok(None);
            }
            return Ok(Some((Value::BulkString(buf[after..whole - 2].to_vec()), whole)));
        }
        b'*' => {
            let len = number(line)?;
            if len < 0 {
                return Ok(Some((Value::Nil, after)));
            }
            let len = usize::try_from(len).map_err(|_| protocol("an array's length"))?;
            let mut items = Vec::with_capacity(len.min(1024));
            let mut at = after;
            for _ in 0..len {
                let Some((item, used)) = parse_nested(&buf[at..], depth + 1)? else { return Ok(None) };
                items.push(item);
                at += used;
            }
            return Ok(Some((Value::Array(items), at)));
        }
        _ => {
            let Some(len) = extent(buf, depth)? else { return Ok(None) };
            return Ok(Some((redis::parse_redis_value(&buf[..len])?, len)));
        }
    };
    Ok(Some((value, after)))
}

/// The length of the first whole frame in `buf`, of any RESP2 or RESP3
/// type; `None` when it has not all arrived.
fn extent(buf: &[u8], depth: usize) -> RedisResult<Option<usize>> {
    if depth > MAX_DEPTH {
        return Err(protocol("replies nested too deep"));
    }
    let Some(end) = line_end(buf) else { return Ok(None) };
    let after = end + 2;
    let items = match buf[0] {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => return Ok(Some(after)),
        b'$' | b'!' | b'=' => {
            let len = number(&buf[1..end])?;
            if len < 0 {
                return Ok(Some(after));
            }
            let whole = usize::try_from(len).ok().and_then(|len| len.checked_add(after + 2));
            let whole = whole.ok_or_else(|| protocol("a string's length"))?;
            return Ok((buf.len() >= whole).then_some(whole));
        }
        b'*' | b'~' | b'>' => number(&buf[1..end])?,
        b'%' | b'|' => number(&buf[1..end])?.saturating_mul(2),
        other => return Err(protocol(&format!("a reply starting with byte {other:#04x}"))),
    };
    let mut at = after;
    for _ in 0..items.max(0) {
        let Some(used) = extent(&buf[at..], depth + 1)? else { return Ok(None) };
        at += used;
    }
    if buf[0] == b'|' {
        // An attribute comes before the reply it describes.
        let Some(used) = extent(&buf[at..], depth + 1)? else { return Ok(None) };
        at += used;
    }
    Ok(Some(at))
}

/// Where the first line's `\r\n` starts.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n").filter(|&end| end >= 1)
}

/// A decimal integer, as `str::parse::<i64>` reads one (sign included),
/// read from the bytes directly: every reply has one or more, and the UTF-8
/// check and generic parse cost about 75 instructions each.
fn number(text: &[u8]) -> RedisResult<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(protocol("a number"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(protocol("a number"));
        }
        // Built negative, so that i64::MIN fits.
        n = n.checked_mul(10).and_then(|n| n.checked_sub(i64::from(d - b'0'))).ok_or_else(|| protocol("a number"))?;
    }
    if negative { Ok(n) } else { n.checked_neg().ok_or_else(|| protocol("a number")) }
}

fn protocol(what: &str) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, "Redis sent something that is not RESP", format!("unreadable: {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Value {
        let (value, used) = parse(bytes).unwrap().expect("whole");
        assert_eq!(used, bytes.len(), "{:?}", String::from_utf8_lossy(bytes));
        value
    }

    #[test]
    fn replies_parse_as_redis_rs_parses_them_and_not_before_they_are_whole() {
        let frames: &[&[u8]] = &[
            b"+OK\r\n",
            b"+QUEUED\r\n",
            b":-42\r\n",
            b"$5\r\nhe\r\no\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"_\r\n",
            b"*3\r\n:1\r\n$2\r\nab\r\n*1\r\n+x\r\n",
            b"-NOSCRIPT No matching script\r\n",
            b"%1\r\n+a\r\n:1\r\n",
            b"~2\r\n:1\r\n:2\r\n",
            b"#t\r\n",
            b",1.5\r\n",
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nkey\r\n",
            b"|1\r\n+ttl\r\n:3\r\n:7\r\n",
        ];
        for frame in frames {
            assert_eq!(whole(frame), redis::parse_redis_value(frame).unwrap(), "{:?}", String::from_utf8_lossy(frame));
            for cut in 0..frame.len() {
                assert!(parse(&frame[..cut]).unwrap().is_none(), "{:?} cut at {cut}", String::from_utf8_lossy(frame));
            }
        }
        assert!(parse(b"?1\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        assert!(parse(b"$18446744073709551615\r\n").is_err(), "a length past any i64");
        assert!(parse(&b"*1\r\n".repeat(100)).is_err(), "nested too deep");
        assert!(parse(&b"~1\r\n".repeat(100)).is_err(), "nested too deep");
    }

    /// Whatever a server sends, the parser answers a value, "not yet" or an
    /// error: never a panic, and never a length past the input.
    #[test]
    fn any_bytes_parse_without_panicking() {
        let pieces: &[&[u8]] = &[
            b"*",
            b"$",
            b"%",
            b"~",
            b">",
            b"|",
            b"+",
            b"-",
            b":",
            b"_",
            b"#",
            b",",
            b"(",
            b"!",
            b"=",
            b"1",
            b"2",
            b"-1",
            b"99999999999999999999",
            b"\r\n",
            b"\r",
            b"\n",
            b"OK",
            b"t",
            b"1.5",
            b"txt:",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..50_000 {
            let mut input = Vec::new();
            for _ in 0..(rng(&mut seed) % 24) {
                input.extend_from_slice(pieces[(rng(&mut seed) % pieces.len() as u64) as usize]);
            }
            if let Ok(Some((_, used))) = parse(&input) {
                assert!(used <= input.len());
            }
        }
    }

    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// A Redis of the test's own on loopback: answers each command with its
    /// first argument, after `delay` when that argument is `slow`; records
    /// how many commands each read of its socket brought; closes the first
    /// `drop_first` connections without answering.
    struct Fake {
        url: String,
        reads: Arc<Mutex<Vec<usize>>>,
    }

    async fn fake(delay: Duration, drop_first: usize) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let reads = Arc::new(Mutex::new(Vec::new()));
        let seen = reads.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let (mut sock, _) = listener.accept().await.unwrap();
                if n < drop_first {
                    drop(sock);
                    continue;
                }
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut input = Vec::with_capacity(64 * 1024);
                    while sock.read_buf(&mut input).await.unwrap_or(0) > 0 {
                        let (mut at, mut count, mut out) = (0, 0, Vec::new());
                        while let Some((Value::Array(args), used)) = parse(&input[at..]).unwrap() {
                            at += used;
                            count += 1;
                            let Some(Value::BulkString(first)) = args.get(1) else { continue };
                            if first == b"slow" {
                                tokio::time::sleep(delay).await;
                            }
                            out.extend_from_slice(format!("${}\r\n", first.len()).as_bytes());
                            out.extend_from_slice(first);
                            out.extend_from_slice(b"\r\n");
                        }
                        input.drain(..at);
                        input.reserve(64 * 1024);
                        seen.lock().unwrap().push(count);
                        sock.write_all(&out).await.unwrap();
                    }
                });
            }
        });
        Fake { url, reads }
    }

    async fn wire_to(fake: &Fake, timeout: Duration) -> Wire {
        let info = redis::IntoConnectionInfo::into_connection_info(fake.url.as_str()).unwrap();
        Wire::connect(info, None, timeout).await.unwrap()
    }

    fn echo(arg: &str) -> Cmd {
        redis::cmd("ECHO").arg(arg).clone()
    }

    async fn answer(wire: &Wire, arg: &str) -> RedisResult<Vec<u8>> {
        match wire.send(&[echo(arg)][..]).await?.pop() {
            Some(Value::BulkString(bytes)) => Ok(bytes),
            other => panic!("{other:?}"),
        }
    }

    // One worker, as a server pinned to one core runs.
    #[tokio::test(flavor = "current_thread")]
    async fn requests_that_come_while_others_wait_share_one_write_and_get_their_own_replies() {
        let fake = fake(Duration::ZERO, 0).await;
        let wire = wire_to(&fake, Duration::from_secs(5)).await;
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let wire = wire.clone();
                tokio::spawn(async move { (i, answer(&wire, &i.to_string()).await.unwrap()) })
            })
            .collect();
        for task in tasks {
            let (i, got) = task.await.unwrap();
            assert_eq!(got, i.to_string().into_bytes());
        }
        // The first request found the socket idle and wrote at once; the other
        // 39 queued behind it and went out together with its reply's read.
        let reads = fake.reads.lock().unwrap().clone();
        assert_eq!(reads.iter().sum::<usize>(), 40);
        assert!(reads.len() <= 3, "{reads:?}");
    }

    /// A server that answers in order but at its own pace, and now and then
    /// closes a connection with commands unanswered: seeded, so a failure
    /// can be replayed.
    async fn unsteady(seed: u64) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for n in 0.. {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut state = seed ^ (n + 1);
                tokio::spawn(async move {
                    let mut input = Vec::with_capacity(64 * 1024);
                    while sock.read_buf(&mut input).await.unwrap_or(0) > 0 {
                        let mut at = 0;
                        while let Some((Value::Array(args), used)) = parse(&input[at..]).unwrap() {
                            at += used;
                            let roll = rng(&mut state) % 100;
                            if roll == 0 {
                                return; // closed, whatever was sent
                            }
                            if roll < 5 {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            let Some(Value::BulkString(first)) = args.get(1) else { return };
                            let mut out = format!("${}\r\n", first.len()).into_bytes();
                            out.extend_from_slice(first);
                            out.extend_from_slice(b"\r\n");
                            if sock.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        input.drain(..at);
                        input.reserve(64 * 1024);
                    }
                });
            }
        });
        url
    }

    /// Whatever the server's pace, its closed connections and the requests
    /// that give up: a request that is answered gets exactly its own
    /// replies, in order, and the connection serves again afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_random_delays_drops_and_give_ups_every_answer_is_the_requests_own() {
        for seed in [1_u64, 2, 3] {
            let url = unsteady(seed).await;
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
            let wire = Wire::connect(info, None, Duration::from_secs(5)).await.unwrap();
            let tasks: Vec<_> = (0..8_u64)
                .map(|task| {
                    let wire = wire.clone();
                    tokio::spawn(async move {
                        let (mut state, mut answered) = (seed * 1000 + task + 1, 0);
                        for i in 0..100 {
                            let count = 1 + (rng(&mut state) % 3) as usize;
                            let args: Vec<String> = (0..count).map(|j| format!("{task}-{i}-{j}")).collect();
                            let cmds: Vec<Cmd> = args.iter().map(|a| echo(a)).collect();
                            let patience = if rng(&mut state).is_multiple_of(5) { 1 } else { 5_000 };
                            let sent =
                                tokio::time::timeout(Duration::from_millis(patience), wire.send(&cmds[..])).await;
                            if let Ok(Ok(replies)) = sent {
                                let want: Vec<Value> =
                                    args.iter().map(|a| Value::BulkString(a.clone().into_bytes())).collect();
                                assert_eq!(replies, want, "seed {seed}");
                                answered += 1;
                            }
                        }
                        answered
                    })
                })
                .collect();
            let mut answered = 0;
            for task in tasks {
                answered += task.await.unwrap();
            }
            assert!(answered > 200, "most requests are answered: {answered} of 800 (seed {seed})");
            // Served again once the storm is over (a close may still cut one).
            let mut again = false;
            for _ in 0..5 {
                if answer(&wire, "after").await.is_ok_and(|b| b == b"after") {
                    again = true;
                    break;
                }
            }
            assert!(again, "seed {seed}");
        }
    }

    /// redis-rs' own calls through this connection: a command, a plain
    /// pipeline, and a transaction, which is refused rather than sent
    /// without its `MULTI` and `EXEC`.
    #[tokio::test(flavor = "current_thread")]
    async fn redis_rs_commands_and_pipelines_go_through_and_transactions_are_refused() {
        let fake = fake(Duration::ZERO, 0).await;
        let mut wire = wire_to(&fake, Duration::from_secs(5)).await;
        let one: Vec<u8> = redis::cmd("ECHO").arg("one").query_async(&mut wire).await.unwrap();
        assert_eq!(one, b"one");
        let (a, b): (Vec<u8>, Vec<u8>) =
            redis::pipe().cmd("ECHO").arg("a").cmd("ECHO").arg("b").query_async(&mut wire).await.unwrap();
        assert_eq!((a, b), (b"a".to_vec(), b"b".to_vec()));
        let atomic: RedisResult<(Vec<u8>,)> = redis::pipe().atomic().cmd("ECHO").arg("t").query_async(&mut wire).await;
        let error = atomic.expect_err("not sent");
        assert!(error.to_string().contains("MULTI/EXEC"), "{error}");
        assert_eq!(answer(&wire, "still").await.unwrap(), b"still", "nothing was sent");
        assert_eq!(wire.get_db(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_that_gave_up_leaves_the_next_ones_their_own_replies() {
        // Given up at 250 ms, answered at 300 ms, then the next at once.
        let fake = fake(Duration::from_millis(300), 0).await;
        let wire = wire_to(&fake, Duration::from_millis(250)).await;
        let late = answer(&wire, "slow").await.unwrap_err();
        assert!(late.is_timeout(), "{late:?}");
        // Its reply comes first and is dropped; this one gets its own.
        assert_eq!(answer(&wire, "next").await.unwrap(), b"next");
        assert_eq!(answer(&wire, "after").await.unwrap(), b"after");
    }

    proptest::proptest! {
        #[test]
        fn numbers_read_as_str_parse_reads_them(text in "[-+]?[0-9]{0,21}|[ -~]{0,6}") {
            let want: Option<i64> = text.parse().ok();
            proptest::prop_assert_eq!(number(text.as_bytes()).ok(), want);
        }
    }

    #[test]
    fn numbers_at_the_edges_of_i64() {
        for text in ["-9223372036854775808", "9223372036854775807", "+0", "-0", "007"] {
            assert_eq!(number(text.as_bytes()).ok(), text.parse().ok(), "{text}");
        }
        for text in ["-9223372036854775809", "9223372036854775808", "", "-", "+", "1 ", "--1", "+-1", "1e3"] {
            assert!(number(text.as_bytes()).is_err(), "{text}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_keeper_fails_every_late_command_including_the_reader_and_after_a_quiet_spell() {
        // Answered at 400 ms, given up at 200: the reader and those waiting
        // behind it all fail, none before their deadline.
        let fake = fake(Duration::from_millis(400), 0).await;
        let timeout = Duration::from_millis(200);
        let wire = wire_to(&fake, timeout).await;
        let started = Instant::now();
        let (a, b, c) = tokio::join!(answer(&wire, "slow"), answer(&wire, "a"), answer(&wire, "b"));
        for late in [a, b, c] {
            assert!(late.unwrap_err().is_timeout());
        }
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        // The late replies are dropped as they come; the next is its own.
        assert_eq!(answer(&wire, "next").await.unwrap(), b"next");
        // A quiet spell of several ticks puts the keeper to sleep; the next
        // command wakes it, and still fails in time rather than hang.
        tokio::time::sleep(keeper_tick(timeout) * 4).await;
        let late = tokio::time::timeout(Duration::from_secs(5), answer(&wire, "slow")).await;
        assert!(late.expect("failed by the keeper").unwrap_err().is_timeout());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_connection_is_replaced_and_the_command_sent_again_once() {
        // A link found broken is not used again.
        let fake_ok = fake(Duration::ZERO, 0).await;
        let wire = wire_to(&fake_ok, Duration::from_secs(5)).await;
        let link = wire.live().unwrap();
        link.break_all(&mut link.lock(), &dropped("cut by the test"));
        assert_eq!(answer(&wire, "again").await.unwrap(), b"again");
        // The connection `connect` made is closed by the server: the command
        // fails on it and goes out again on a new one.
        let closing = fake(Duration::ZERO, 1).await;
        let wire = wire_to(&closing, Duration::from_secs(5)).await;
        assert_eq!(answer(&wire, "retried").await.unwrap(), b"retried");
        // Two closed in a row: sent once more, not a third time.
        let closing = fake(Duration::ZERO, 2).await;
        let wire = wire_to(&closing, Duration::from_secs(5)).await;
        let error = answer(&wire, "lost").await.unwrap_err();
        assert!(error.is_connection_dropped(), "{error:?}");
        assert_eq!(answer(&wire, "later").await.unwrap(), b"later");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_watched_connection_tells_its_loss_while_no_request_runs() {
        for gave_up_first in [false, true] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("redis://{}", listener.local_addr().unwrap());
            let server = tokio::spawn(async move { listener.accept().await.unwrap().0 });
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let on_push: PushSender = Arc::new(move |push: PushInfo| drop(tx.send(push.kind)));
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
            let wire = Wire::connect(info, Some(on_push), Duration::from_millis(100)).await.unwrap();
            let mut sock = server.await.unwrap();
            if gave_up_first {
                // A command this server never answers: its request gives up,
                // and no request is left to read the socket.
                assert!(answer(&wire, "unanswered").await.unwrap_err().is_timeout());
            }
            sock.write_all(b">2\r\n$9\r\ntracking-\r\n$1\r\nx\r\n").await.unwrap();
            let pushed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
            assert_eq!(pushed, Some(PushKind::Other("tracking-".into())));
            drop(sock);
            let lost = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
            assert_eq!(lost, Some(PushKind::Disconnection), "gave up first: {gave_up_first}");
            drop(wire);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_commands_need_no_reply_and_a_silent_server_fails_the_constructor_in_time() {
        let fake = fake(Duration::ZERO, 0).await;
        let wire = wire_to(&fake, Duration::from_secs(5)).await;
        let none: [Cmd; 0] = [];
        assert!(wire.send(&none[..]).await.unwrap().is_empty());
        // Accepts, never answers the handshake (`AUTH`, for the password).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://:secret@{}", listener.local_addr().unwrap());
        let _held = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(sock);
        });
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        let error = Wire::connect(info, None, Duration::from_millis(50)).await.err().expect("no answer, no store");
        assert!(error.is_timeout(), "{error:?}");
    }
}
