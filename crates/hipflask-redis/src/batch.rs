//! Commands from concurrent requests sent to Redis together.
//!
//! redis-rs writes each command to the socket as soon as it is queued: on
//! tokio's scheduler the connection's task runs right after the request task
//! that woke it, so every save and every uncached load was a `writev` of its
//! own, and the kernel's work for those writes (and for waking Redis) was an
//! eighth of the server's CPU per request on the benchmark. Here the first
//! request to queue a command starts a flush that runs once the tasks
//! already ready have run, and every command queued by then goes out as one
//! pipeline: one write, one wake-up of Redis, replies read in one go.
//!
//! Only the order of replies is relied on (Redis answers a connection's
//! commands in order), so each request gets exactly its own replies, and a
//! server error answers only the command that caused it.
//!
//! A request that finds no other waiting for Redis is sent at once, from its
//! own task: there is nothing to batch it with, and the flush task would only
//! add a hop (about 4k instructions and a pass of the scheduler per request
//! when requests come one at a time). Under load some request is nearly
//! always waiting for its replies, so the rest are batched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisError, RedisResult, Value as RValue};
use tokio::sync::oneshot;

/// The queue of one connection.
pub(crate) struct Batcher<C> {
    conn: C,
    queue: Mutex<Vec<Queued>>,
    /// Requests inside `send`: queued, or waiting for their replies.
    in_flight: AtomicUsize,
}

/// One request's commands and where their replies go.
struct Queued {
    cmds: Vec<Cmd>,
    reply: oneshot::Sender<RedisResult<Vec<RValue>>>,
}

impl<C> Batcher<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    pub(crate) fn new(conn: C) -> Arc<Batcher<C>> {
        Arc::new(Batcher { conn, queue: Mutex::new(Vec::new()), in_flight: AtomicUsize::new(0) })
    }

    /// Sends `cmds` (at once when no other request is in flight, else with
    /// whatever else is queued) and returns their replies, in order; a reply
    /// may be `Value::ServerError` (see [`reply`]).
    pub(crate) async fn send(self: &Arc<Self>, cmds: Vec<Cmd>) -> RedisResult<Vec<RValue>> {
        let (_flight, others) = Flight::enter(&self.in_flight);
        if others == 0 {
            // Alone: nothing to batch with. (Commands left queued by a request
            // that gave up still go out with the flush already spawned for them.)
            return execute(&mut self.conn.clone(), cmds).await;
        }
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.push(Queued { cmds, reply: tx });
            queue.len() == 1
        };
        if first {
            // A task of its own, so that a request that gives up (a timeout)
            // cannot strand the commands queued behind its own.
            let mut pending = Pending(Some(self.clone()));
            tokio::spawn(async move {
                // Yielding puts the flush after the tasks that are ready now:
                // their commands join this one.
                tokio::task::yield_now().await;
                if let Some(batcher) = pending.0.take() {
                    batcher.flush().await;
                }
            });
        }
        rx.await.unwrap_or_else(|_| Err(failure("the Redis batch was dropped")))
    }

    async fn flush(&self) {
        let mut batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        let mut conn = self.conn.clone();
        if batch.len() == 1
            && let Some(one) = batch.pop()
        {
            let _ = one.reply.send(execute(&mut conn, one.cmds).await);
            return;
        }
        let mut pipe = redis::pipe();
        let mut counts = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for queued in batch {
            counts.push(queued.cmds.len());
            replies.push(queued.reply);
            for cmd in queued.cmds {
                pipe.add_command(cmd);
            }
        }
        let total = counts.iter().sum();
        match pipelined(&mut conn, &pipe, total).await {
            Ok(values) => {
                let mut values = values.into_iter();
                for (count, reply) in counts.into_iter().zip(replies) {
                    let _ = reply.send(Ok(values.by_ref().take(count).collect()));
                }
            }
            Err(e) => replies.into_iter().for_each(|r| drop(r.send(Err(e.clone())))),
        }
    }
}

/// Counts a request into `send` for as long as the guard lives, however the
/// request ends (answered, failed or dropped).
struct Flight<'a>(&'a AtomicUsize);

impl<'a> Flight<'a> {
    /// The guard, and how many requests were in flight before this one.
    fn enter(count: &'a AtomicUsize) -> (Flight<'a>, usize) {
        // Relaxed: the count only chooses between two correct ways to send.
        let others = count.fetch_add(1, Ordering::Relaxed);
        (Flight(count), others)
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's commands on the connection: a lone command as itself,
/// several as a pipeline.
async fn execute<C: ConnectionLike>(conn: &mut C, cmds: Vec<Cmd>) -> RedisResult<Vec<RValue>> {
    if let [cmd] = &cmds[..] {
        return conn.req_packed_command(cmd).await.map(|v| vec![v]);
    }
    let total = cmds.len();
    let mut pipe = redis::pipe();
    for cmd in cmds {
        pipe.add_command(cmd);
    }
    pipelined(conn, &pipe, total).await
}

/// Sends a pipeline of `total` commands; its replies, one per command.
async fn pipelined<C: ConnectionLike>(conn: &mut C, pipe: &redis::Pipeline, total: usize) -> RedisResult<Vec<RValue>> {
    let values = conn.req_packed_commands(pipe, 0, total).await?;
    if values.len() != total {
        return Err(failure(format!("Redis answered a pipeline of {total} commands with {} replies", values.len())));
    }
    Ok(values)
}

/// A flush not yet started. Dropped unstarted (its runtime shut down
/// first), it fails the queued commands instead of leaving them queued: a
/// queue that is not empty gets no new flush, so every later command on
/// this connection would wait forever.
struct Pending<C>(Option<Arc<Batcher<C>>>);

impl<C> Drop for Pending<C> {
    fn drop(&mut self) {
        if let Some(batcher) = self.0.take() {
            let queued = std::mem::take(&mut *batcher.queue.lock().unwrap_or_else(PoisonError::into_inner));
            for q in queued {
                let _ = q.reply.send(Err(failure("the runtime stopped before the send")));
            }
        }
    }
}

/// An error of this layer (not Redis' own), with what happened.
pub(crate) fn failure(what: impl Into<String>) -> RedisError {
    RedisError::from(std::io::Error::other(what.into()))
}

/// A reply as a result: Redis' error replies become errors.
pub(crate) fn reply(value: RValue) -> RedisResult<RValue> {
    match value {
        RValue::ServerError(e) => Err(e.into()),
        value => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{Pipeline, RedisFuture};

    /// Answers each command with its first argument, and records how many
    /// commands each write to the "socket" carried.
    #[derive(Clone, Default)]
    struct Echo {
        writes: Arc<Mutex<Vec<usize>>>,
        broken: bool,
    }

    fn first_arg(cmd: &Cmd) -> RValue {
        match cmd.args_iter().nth(1) {
            Some(redis::Arg::Simple(bytes)) => RValue::BulkString(bytes.to_vec()),
            _ => RValue::Nil,
        }
    }

    impl ConnectionLike for Echo {
        fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, RValue> {
            self.writes.lock().unwrap().push(1);
            let answer = if self.broken { Err(std::io::Error::other("down").into()) } else { Ok(first_arg(cmd)) };
            Box::pin(later(answer))
        }

        fn req_packed_commands<'a>(
            &'a mut self,
            pipe: &'a Pipeline,
            _: usize,
            n: usize,
        ) -> RedisFuture<'a, Vec<RValue>> {
            self.writes.lock().unwrap().push(n);
            let answer = if self.broken {
                Err(std::io::Error::other("down").into())
            } else {
                Ok(pipe.cmd_iter().map(first_arg).collect())
            };
            Box::pin(later(answer))
        }

        fn get_db(&self) -> i64 {
            0
        }
    }

    /// An answer after one pass of the scheduler, as a reply from Redis
    /// comes after the other ready tasks have run.
    async fn later<T>(answer: T) -> T {
        tokio::task::yield_now().await;
        answer
    }

    fn get(key: &str) -> Cmd {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        cmd
    }

    fn text(v: &RValue) -> String {
        match v {
            RValue::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
            other => format!("{other:?}"),
        }
    }

    // One worker, as a server pinned to one core runs: a task a request
    // task spawns or wakes runs right after it there (tokio's LIFO slot).
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn concurrent_requests_share_one_write_and_each_gets_its_own_replies() {
        let conn = Echo::default();
        let batcher = Batcher::new(conn.clone());
        let b = batcher.clone();
        // Spawned from a task on the worker, so all are queued before any runs.
        let results = tokio::spawn(async move {
            let tasks: Vec<_> = (0..40)
                .map(|i| {
                    let b = b.clone();
                    tokio::spawn(async move {
                        // Every fifth request sends two commands, as a load does.
                        let cmds = if i % 5 == 0 {
                            vec![get(&format!("{i}a")), get(&format!("{i}b"))]
                        } else {
                            vec![get(&i.to_string())]
                        };
                        b.send(cmds).await
                    })
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap().unwrap());
            }
            results
        })
        .await
        .unwrap();
        for (i, replies) in results.iter().enumerate() {
            let replies: Vec<String> = replies.iter().map(text).collect();
            let want = if i % 5 == 0 { vec![format!("{i}a"), format!("{i}b")] } else { vec![i.to_string()] };
            assert_eq!(replies, want);
        }
        // The first request to run found none in flight and went out at once;
        // the other 39 (46 or 47 commands) waited for one pipeline.
        let writes = conn.writes.lock().unwrap().clone();
        assert!(writes.len() == 2 && writes[1] >= 46 && writes.iter().sum::<usize>() == 48, "{writes:?}");
        // Alone, a command goes out as itself.
        assert_eq!(text(&batcher.send(vec![get("solo")]).await.unwrap()[0]), "solo");
        assert_eq!(conn.writes.lock().unwrap()[2..], [1]);
    }

    /// Polls `f` once.
    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn a_request_alone_is_written_at_once_not_by_a_flush_task() {
        let conn = Echo::default();
        let batcher = Batcher::new(conn.clone());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut lone = std::pin::pin!(batcher.send(vec![get("lone")]));
            assert!(poll_once(lone.as_mut()).is_pending(), "waiting for the reply");
            assert_eq!(*conn.writes.lock().unwrap(), [1], "written in its own first poll");
            assert_eq!(text(&lone.await.unwrap()[0]), "lone");
        });
    }

    #[test]
    fn a_runtime_stopped_before_the_flush_leaves_nothing_queued() {
        let conn = Echo::default();
        let batcher = Batcher::new(conn.clone());
        let first = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut held = Box::pin(batcher.send(vec![get("held")]));
        let mut lost = Box::pin(batcher.send(vec![get("lost")]));
        first.block_on(async {
            // `held` is in flight, so `lost` is queued, and its flush spawned
            // but not yet run.
            assert!(poll_once(held.as_mut()).is_pending());
            assert!(poll_once(lost.as_mut()).is_pending());
        });
        drop(first);
        assert_eq!(*conn.writes.lock().unwrap(), [1], "only the held request was sent");
        drop((held, lost));
        let second = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (other, next) = second
            .block_on(async {
                // Again with one in flight, so `next` takes the queue.
                let both = async { tokio::join!(batcher.send(vec![get("other")]), batcher.send(vec![get("next")])) };
                tokio::time::timeout(std::time::Duration::from_secs(5), both).await
            })
            .expect("a later send is flushed, not stuck behind the lost one");
        assert_eq!((text(&other.unwrap()[0]), text(&next.unwrap()[0])), ("other".into(), "next".into()));
        assert_eq!(*conn.writes.lock().unwrap(), [1, 1, 1]);
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_request_in_it() {
        let batcher = Batcher::new(Echo { broken: true, ..Echo::default() });
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.send(vec![get(&i.to_string())]).await })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_err());
        }
    }
}
