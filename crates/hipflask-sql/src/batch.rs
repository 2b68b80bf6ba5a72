//! Loads and compare-and-set saves of concurrent requests, sent to the
//! database together.
//!
//! Why: a statement of its own per load and per save was most of a write's
//! cost in the benchmark. PostgreSQL spent about 150 us of CPU per write
//! (a load and an autocommitted `UPDATE`, mostly the commit), and sqlx
//! another 70 us in the server for the two round trips. One statement for
//! ten sessions cost PostgreSQL about 43 us a session in pgbench, against
//! 166 us with a statement each.
//!
//! How: each kind of statement has a task. It takes every request queued
//! while its previous statement ran and sends them as one statement, then
//! hands each request its own answer. A request alone waits for one
//! statement, as before; under load the statement serves all that came
//! meanwhile. One statement of each kind runs at a time: saves lock their
//! rows in one statement, and two of them locking rows in different orders
//! could deadlock.
//!
//! A request that gave up before its statement went out is left out of it.
//! When the database rejects a statement (a value it refuses, say), nothing
//! of it was applied and every request in it runs its own statement instead,
//! so one bad session cannot fail the others. Any other error (a lost
//! connection, the pool's timeout) is everyone's error: a save may or may
//! not have been applied then, and sending it again could apply it twice.

use std::{fmt, future::Future, sync::Arc};

use hipflask::{Error, ErrorKind};
use tokio::sync::{mpsc, oneshot};

/// At most this many requests in one statement: PostgreSQL allows 65,535
/// bound values, MySQL's `IN` lists and the packet size have limits, and past
/// a few dozen rows a batch saves little more.
const MOST: usize = 64;

/// What a request in a batch gets.
pub(crate) enum Outcome<T> {
    Done(T),
    /// Run the request's own statement (the batch's was rejected, or the
    /// batching task is gone).
    Alone,
    Failed(Arc<sqlx::Error>),
}

/// A load: the stored key and the request's clock.
pub(crate) struct Load {
    pub(crate) key: String,
    pub(crate) now: i64,
}

/// A stored row: data, creation and expiry times.
pub(crate) type Row = (String, i64, i64);

/// A compare-and-set save: `data` replaces the row only if it still holds
/// exactly `expected` and has not expired.
pub(crate) struct Swap {
    pub(crate) key: String,
    pub(crate) expected: String,
    pub(crate) data: String,
    pub(crate) expires_at: i64,
    pub(crate) user: Option<String>,
    pub(crate) now: i64,
}

type Job<J, R> = (J, oneshot::Sender<Outcome<R>>);

/// A queue of one kind of request and the task that sends them.
pub(crate) struct Batcher<J, R> {
    jobs: mpsc::UnboundedSender<Job<J, R>>,
}

impl<J, R> Clone for Batcher<J, R> {
    fn clone(&self) -> Batcher<J, R> {
        Batcher { jobs: self.jobs.clone() }
    }
}

impl<J: Send + 'static, R: Send + 'static> Batcher<J, R> {
    /// Starts the task; `None` outside a tokio runtime, where each request
    /// runs its own statement. `run` answers the jobs in their order.
    pub(crate) fn start<F, Fut>(run: F) -> Option<Batcher<J, R>>
    where
        F: FnMut(Vec<J>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, sqlx::Error>> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (jobs, queue) = mpsc::unbounded_channel();
        runtime.spawn(serve(queue, run));
        Some(Batcher { jobs })
    }

    /// Queues `job` and waits for its answer.
    pub(crate) async fn call(&self, job: J) -> Outcome<R> {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send((job, reply)).is_err() {
            return Outcome::Alone;
        }
        answer.await.unwrap_or(Outcome::Alone)
    }
}

/// The task: ends when the last clone of the store is dropped.
async fn serve<J, R, F, Fut>(mut queue: mpsc::UnboundedReceiver<Job<J, R>>, mut run: F)
where
    F: FnMut(Vec<J>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, sqlx::Error>>,
{
    let mut jobs = Vec::new();
    let mut replies = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some((job, reply)) = next.take() {
            if !reply.is_closed() {
                jobs.push(job);
                replies.push(reply);
            }
            if jobs.len() < MOST {
                next = queue.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        match run(std::mem::take(&mut jobs)).await {
            Ok(answers) => {
                for (reply, answer) in replies.drain(..).zip(answers) {
                    let _ = reply.send(Outcome::Done(answer));
                }
            }
            Err(e) => {
                let rejected = matches!(e, sqlx::Error::Database(_));
                if !rejected {
                    tracing::warn!(error = %e, "batched SQL session statement failed");
                }
                let e = Arc::new(e);
                for reply in replies.drain(..) {
                    let _ = reply.send(if rejected { Outcome::Alone } else { Outcome::Failed(e.clone()) });
                }
            }
        }
    }
}

/// The error of a failed batch, shared by every request in it.
pub(crate) fn failed(e: Arc<sqlx::Error>) -> Error {
    let kind = match *e {
        sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Backend,
    };
    Error::new(kind, "SQL session store failed").with_source(Shared(e))
}

struct Shared(Arc<sqlx::Error>);

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Each load's row from the rows found, which hold each key at most once.
pub(crate) fn answer_loads(jobs: &[Load], rows: Vec<(String, String, i64, i64)>) -> Vec<Option<Row>> {
    let rows: std::collections::HashMap<String, Row> =
        rows.into_iter().map(|(key, data, created, expires)| (key, (data, created, expires))).collect();
    // Compared here, not in the statement, because each request has a clock of its own.
    jobs.iter().map(|job| rows.get(&job.key).filter(|row| row.2 > job.now).cloned()).collect()
}

/// PostgreSQL: one statement for any number of rows, the rows as arrays.
pub(crate) mod postgres {
    use sqlx::{PgPool, Row as _};

    use super::{Load, Row, Swap};

    const LOAD: &str = "SELECT id, data, created_at, expires_at FROM hipflask_sessions WHERE id = ANY($1)";

    // `n` tells which request each updated row was for. Two requests for
    // one session in a batch expect the same data: one is applied and the
    // other, not returned, takes the locked path and applies its changes on
    // top. TEXT equality is byte equality under deterministic collations.
    //
    // Rows another transaction has locked are skipped, not waited for: their
    // requests take the locked path, each waiting on its own row as a
    // request alone would. Waiting here would hold every save queued behind
    // this statement for as long as anyone holds any one row.
    // The locking runs once, before the update: as an `IN (...)` subquery,
    // PostgreSQL ran it again for every row (pgbench, 16 rows a statement:
    // 57 us of its CPU a row, against 43 us this way and 32 us unlocked).
    const SWAP: &str = "WITH free AS MATERIALIZED (
            SELECT id FROM hipflask_sessions WHERE id = ANY($2) FOR UPDATE SKIP LOCKED)
        UPDATE hipflask_sessions AS s
        SET data = v.data, expires_at = v.expires_at, user_id = v.user_id
        FROM UNNEST($1::int4[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::int8[])
            AS v(n, id, expected, data, expires_at, user_id, now), free
        WHERE s.id = free.id AND s.id = v.id AND s.data = v.expected AND s.expires_at > v.now
        RETURNING v.n";

    pub(crate) async fn load_many(pool: PgPool, jobs: Vec<Load>) -> Result<Vec<Option<Row>>, sqlx::Error> {
        let keys: Vec<&str> = jobs.iter().map(|job| job.key.as_str()).collect();
        let rows = sqlx::query_as(LOAD).bind(&keys).fetch_all(&pool).await?;
        Ok(super::answer_loads(&jobs, rows))
    }

    pub(crate) async fn swap_many(pool: PgPool, jobs: Vec<Swap>) -> Result<Vec<bool>, sqlx::Error> {
        let count = jobs.len();
        let mut ids = Vec::with_capacity(count);
        let mut expected = Vec::with_capacity(count);
        let mut data = Vec::with_capacity(count);
        let mut expires_at = Vec::with_capacity(count);
        let mut users = Vec::with_capacity(count);
        let mut nows = Vec::with_capacity(count);
        for job in jobs {
            ids.push(job.key);
            expected.push(job.expected);
            data.push(job.data);
            expires_at.push(job.expires_at);
            users.push(job.user);
            nows.push(job.now);
        }
        let ns: Vec<i32> = (0..count as i32).collect();
        let rows = sqlx::query(SWAP)
            .bind(ns)
            .bind(ids)
            .bind(expected)
            .bind(data)
            .bind(expires_at)
            .bind(users)
            .bind(nows)
            .fetch_all(&pool)
            .await?;
        let mut applied = vec![false; count];
        for row in rows {
            if let Some(done) = usize::try_from(row.try_get::<i32, _>(0)?).ok().and_then(|n| applied.get_mut(n)) {
                *done = true;
            }
        }
        Ok(applied)
    }
}

/// MySQL and MariaDB: loads in one `IN` list; saves in one transaction of
/// three statements for the whole batch (MySQL has no `UPDATE ... RETURNING`
/// to tell which rows a compare-and-set changed): lock and read the rows,
/// compare here, write the rows that match.
pub(crate) mod mysql {
    use std::collections::HashMap;

    use sqlx::MySqlPool;

    use super::{Load, Row, Swap};

    /// `head` followed by `count` copies of `each`, comma-separated, and `tail`.
    fn repeated(head: &str, each: &str, count: usize, tail: &str) -> String {
        let mut sql = String::with_capacity(head.len() + (each.len() + 2) * count + tail.len());
        sql.push_str(head);
        for i in 0..count {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(each);
        }
        sql.push_str(tail);
        sql
    }

    /// The distinct keys of a batch.
    fn keys<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let mut keys: Vec<&str> = keys.collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    pub(crate) async fn load_many(pool: MySqlPool, jobs: Vec<Load>) -> Result<Vec<Option<Row>>, sqlx::Error> {
        let keys = keys(jobs.iter().map(|job| job.key.as_str()));
        let sql = repeated(
            "SELECT id, data, created_at, expires_at FROM hipflask_sessions WHERE id IN (",
            "?",
            keys.len(),
            ")",
        );
        let mut query = sqlx::query_as(&sql);
        for key in keys {
            query = query.bind(key);
        }
        let rows = query.fetch_all(&pool).await?;
        Ok(super::answer_loads(&jobs, rows))
    }

    pub(crate) async fn swap_many(pool: MySqlPool, jobs: Vec<Swap>) -> Result<Vec<bool>, sqlx::Error> {
        let keys = keys(jobs.iter().map(|job| job.key.as_str()));
        // Rows another transaction holds are skipped, not waited for: their
        // requests take the locked path, each waiting for its own row, where
        // waiting here would hold up every save behind this batch.
        let sql = repeated(
            "SELECT id, data, expires_at FROM hipflask_sessions WHERE id IN (",
            "?",
            keys.len(),
            ") FOR UPDATE SKIP LOCKED",
        );
        let mut tx = pool.begin().await?;
        let mut lock = sqlx::query_as::<_, (String, String, i64)>(&sql);
        for key in keys {
            lock = lock.bind(key);
        }
        // Keyed by the stored id exactly: a case-insensitive collation may
        // find a row whose id differs from the request's in case.
        let mut rows: HashMap<String, (String, i64)> =
            lock.fetch_all(&mut *tx).await?.into_iter().map(|(id, data, expires)| (id, (data, expires))).collect();
        // In the batch's order, each compared with the row as the requests
        // before it left it: of two requests expecting the same data, the
        // first is applied and the second, changed under it, merges.
        let mut applied = vec![false; jobs.len()];
        let mut last = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            if let Some((data, expires)) = rows.get_mut(&job.key)
                && data.as_bytes() == job.expected.as_bytes()
                && *expires > job.now
            {
                applied[i] = true;
                data.clone_from(&job.data);
                *expires = job.expires_at;
                last.insert(job.key.as_str(), i);
            }
        }
        if !last.is_empty() {
            // Every row written is locked by this transaction, so it exists
            // and the insert always takes its update branch.
            let sql = repeated(
                "INSERT INTO hipflask_sessions (id, data, created_at, expires_at, user_id) VALUES ",
                "(?, ?, 0, ?, ?)",
                last.len(),
                " ON DUPLICATE KEY UPDATE data = VALUES(data), expires_at = VALUES(expires_at),
                  user_id = VALUES(user_id)",
            );
            let mut write = sqlx::query(&sql);
            for &i in last.values() {
                let job = &jobs[i];
                write = write.bind(&job.key).bind(&job.data).bind(job.expires_at).bind(&job.user);
            }
            write.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::Semaphore;

    use super::*;

    /// A batcher whose statements double each job, record the batches they
    /// were given, and each wait for a permit of `gate`.
    fn doubling(gate: Arc<Semaphore>, seen: Arc<Mutex<Vec<Vec<u32>>>>) -> Batcher<u32, u32> {
        Batcher::start(move |jobs: Vec<u32>| {
            let (gate, seen) = (gate.clone(), seen.clone());
            async move {
                seen.lock().unwrap().push(jobs.clone());
                gate.acquire().await.unwrap().forget();
                if jobs.contains(&13) {
                    return Err(sqlx::Error::Protocol("the connection broke".into()));
                }
                Ok(jobs.iter().map(|j| j * 2).collect())
            }
        })
        .unwrap()
    }

    /// `batcher.call(job)` on a task of its own.
    fn spawn_call(batcher: &Batcher<u32, u32>, job: u32) -> tokio::task::JoinHandle<Outcome<u32>> {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.call(job).await })
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn requests_queued_during_a_statement_share_the_next_one_and_get_their_own_answers() {
        let (gate, seen) = (Arc::new(Semaphore::new(0)), Arc::new(Mutex::new(Vec::new())));
        let batcher = doubling(gate.clone(), seen.clone());
        let mut tasks = Vec::new();
        for j in 1..=11 {
            tasks.push(spawn_call(&batcher, j));
            if j == 1 {
                // The first statement is out; the others queue behind it.
                settle().await;
            }
        }
        settle().await;
        gate.add_permits(2);
        for (j, task) in (1..=11).zip(tasks) {
            assert!(matches!(task.await.unwrap(), Outcome::Done(a) if a == j * 2));
        }
        assert_eq!(*seen.lock().unwrap(), vec![vec![1], (2..=11).collect::<Vec<_>>()]);
    }

    #[tokio::test]
    async fn a_request_that_gave_up_before_its_statement_is_left_out_of_it() {
        let (gate, seen) = (Arc::new(Semaphore::new(0)), Arc::new(Mutex::new(Vec::new())));
        let batcher = doubling(gate.clone(), seen.clone());
        let first = spawn_call(&batcher, 1);
        settle().await;
        let gave_up = spawn_call(&batcher, 2);
        let stays = spawn_call(&batcher, 3);
        settle().await;
        gave_up.abort();
        settle().await;
        gate.add_permits(2);
        assert!(matches!(first.await.unwrap(), Outcome::Done(2)));
        assert!(matches!(stays.await.unwrap(), Outcome::Done(6)));
        assert_eq!(*seen.lock().unwrap(), vec![vec![1], vec![3]]);
    }

    #[tokio::test]
    async fn a_failed_statement_fails_every_request_in_it_and_only_those() {
        let (gate, seen) = (Arc::new(Semaphore::new(0)), Arc::new(Mutex::new(Vec::new())));
        let batcher = doubling(gate.clone(), seen.clone());
        let first = spawn_call(&batcher, 1);
        settle().await;
        let failing: Vec<_> = [12, 13].into_iter().map(|j| spawn_call(&batcher, j)).collect();
        settle().await;
        gate.add_permits(3);
        assert!(matches!(first.await.unwrap(), Outcome::Done(2)));
        for task in failing {
            match task.await.unwrap() {
                Outcome::Failed(e) => {
                    let e = failed(e);
                    assert_eq!(e.kind(), ErrorKind::Backend);
                    let source = std::error::Error::source(&e).unwrap().to_string();
                    assert!(source.contains("the connection broke"), "{source}");
                }
                _ => panic!("a failed statement was reported as answered"),
            }
        }
        let after = batcher.call(5).await;
        assert!(matches!(after, Outcome::Done(10)), "the batcher stopped serving after a failure");
    }

    #[test]
    fn outside_a_runtime_there_is_no_batcher_and_no_panic() {
        let batcher = Batcher::<u32, u32>::start(|jobs: Vec<u32>| async move { Ok(jobs) });
        assert!(batcher.is_none());
    }

    #[test]
    fn a_batcher_whose_runtime_is_gone_sends_requests_alone() {
        let runtime = || tokio::runtime::Builder::new_current_thread().build().unwrap();
        let first = runtime();
        let batcher = first.block_on(async { Batcher::<u32, u32>::start(|jobs: Vec<u32>| async move { Ok(jobs) }) });
        drop(first);
        let outcome = runtime().block_on(batcher.unwrap().call(1));
        assert!(matches!(outcome, Outcome::Alone));
    }

    #[test]
    fn loads_are_answered_by_key_and_each_request_s_own_clock() {
        let jobs = vec![
            Load { key: "a".into(), now: 10 },
            Load { key: "b".into(), now: 10 },
            Load { key: "a".into(), now: 30 },
            Load { key: "c".into(), now: 10 },
        ];
        let rows = vec![("b".into(), "{}".into(), 1, 50), ("a".into(), "{\"x\":1}".into(), 2, 20)];
        let answers = answer_loads(&jobs, rows);
        assert_eq!(answers, vec![Some(("{\"x\":1}".into(), 2, 20)), Some(("{}".into(), 1, 50)), None, None]);
    }
}
