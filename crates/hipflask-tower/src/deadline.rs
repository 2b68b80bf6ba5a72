//! The store timeout, kept for all of a layer's operations by one task.
//!
//! A tokio timer for each load and save that waits cost the request about
//! 650 instructions (arming it, clearing it, the clock reads around them).
//! Here such an operation adds its deadline to a list, which one task checks
//! every eighth of the limit while operations come, waking those past theirs:
//! an operation gives up between its limit and an eighth more. Once a check
//! finds no operation and none started since the one before, the task sleeps
//! without a timer, and the next operation wakes it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The deadlines of a layer's operations in flight.
#[derive(Debug, Default)]
pub(crate) struct Deadlines(Mutex<List>);

#[derive(Debug, Default)]
struct List {
    ops: Vec<Op>,
    next_id: u64,
    keeper: Keeper,
}

#[derive(Debug)]
struct Op {
    id: u64,
    at: Instant,
    waker: Option<Waker>,
    passed: bool,
}

/// The task that wakes operations at their deadline.
#[derive(Debug, Default)]
enum Keeper {
    /// Not started, or gone with the runtime it ran on.
    #[default]
    None,
    Awake,
    /// Asleep for want of operations: the next one wakes it.
    Asleep(Waker),
}

/// One operation's deadline; it leaves the list when dropped.
#[derive(Debug)]
pub(crate) struct Deadline {
    list: Arc<Deadlines>,
    id: u64,
}

impl Deadlines {
    fn lock(&self) -> MutexGuard<'_, List> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters an operation that must end by `at`; `limit`, the layer's store
    /// timeout, sets how often the keeper looks. Must run on a tokio runtime
    /// (the keeper's sleep needs its timer).
    pub(crate) fn start(self: &Arc<Self>, at: Instant, limit: Duration) -> Deadline {
        let mut list = self.lock();
        let id = list.next_id;
        list.next_id += 1;
        list.ops.push(Op { id, at, waker: None, passed: false });
        match std::mem::replace(&mut list.keeper, Keeper::Awake) {
            Keeper::None => drop(tokio::spawn(keep(Arc::downgrade(self), tick(limit)))),
            Keeper::Asleep(keeper) => keeper.wake(),
            Keeper::Awake => {}
        }
        Deadline { list: Arc::clone(self), id }
    }
}

impl Drop for Deadlines {
    /// A keeper asleep would otherwise never learn that its list is gone.
    fn drop(&mut self) {
        let list = self.0.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Keeper::Asleep(keeper) = std::mem::take(&mut list.keeper) {
            keeper.wake();
        }
    }
}

impl Deadline {
    /// Whether the deadline has passed; until it has, `cx` is woken when it
    /// does.
    pub(crate) fn poll_passed(&self, cx: &mut Context<'_>) -> bool {
        let mut list = self.list.lock();
        let Some(op) = list.ops.iter_mut().find(|op| op.id == self.id) else { return true };
        if !op.passed && !op.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            op.waker = Some(cx.waker().clone());
        }
        op.passed
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let mut list = self.list.lock();
        if let Some(i) = list.ops.iter().position(|op| op.id == self.id) {
            list.ops.swap_remove(i);
        }
    }
}

/// How often the keeper looks: an eighth of the limit.
fn tick(limit: Duration) -> Duration {
    (limit / 8).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// The keeper: wakes the operations past their deadline, sleeps while none
/// comes, and ends with the list.
async fn keep(list: Weak<Deadlines>, tick: Duration) {
    // Dropped with the runtime too (a layer can outlive one): the next
    // operation then starts a keeper on its own.
    let _gone = Gone(list.clone());
    let mut seen = u64::MAX;
    loop {
        let busy = std::future::poll_fn(|cx| {
            let Some(deadlines) = list.upgrade() else { return Poll::Ready(false) };
            let mut list = deadlines.lock();
            if list.next_id != seen || !list.ops.is_empty() {
                return Poll::Ready(true);
            }
            list.keeper = Keeper::Asleep(cx.waker().clone());
            Poll::Pending
        });
        if !busy.await {
            return;
        }
        tokio::time::sleep(tick).await;
        let Some(deadlines) = list.upgrade() else { return };
        let mut list = deadlines.lock();
        seen = list.next_id;
        let now = Instant::now();
        for op in list.ops.iter_mut().filter(|op| !op.passed && op.at <= now) {
            op.passed = true;
            if let Some(waker) = op.waker.take() {
                waker.wake();
            }
        }
    }
}

struct Gone(Weak<Deadlines>);

impl Drop for Gone {
    fn drop(&mut self) {
        if let Some(deadlines) = self.0.upgrade() {
            deadlines.lock().keeper = Keeper::None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `deadline` until it has passed; the time that took. Fails when
    /// no keeper wakes it within 5 s.
    async fn passing(deadline: &Deadline) -> Duration {
        let started = Instant::now();
        let passed = std::future::poll_fn(|cx| if deadline.poll_passed(cx) { Poll::Ready(()) } else { Poll::Pending });
        tokio::time::timeout(Duration::from_secs(5), passed).await.expect("woken by the keeper");
        started.elapsed()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn operations_are_woken_past_their_deadline_and_not_before() {
        let deadlines = Arc::new(Deadlines::default());
        let limit = Duration::from_millis(80);
        let now = Instant::now();
        let late = deadlines.start(now + limit, limit);
        let later = deadlines.start(now + limit * 2, limit);
        let ended = deadlines.start(now + limit, limit);
        drop(ended);
        assert!(passing(&late).await >= limit);
        assert!(passing(&later).await >= limit / 2, "the second waits for its own deadline");
        assert_eq!(deadlines.lock().ops.len(), 2, "a dropped deadline leaves the list");
        drop((late, later));
        assert!(deadlines.lock().ops.is_empty());
        // Quiet for several ticks, the keeper sleeps; a new operation wakes it.
        tokio::time::sleep(tick(limit) * 4).await;
        assert!(matches!(deadlines.lock().keeper, Keeper::Asleep(_)));
        let next = deadlines.start(Instant::now() + limit, limit);
        assert!(passing(&next).await >= limit);
    }

    #[test]
    fn a_keeper_gone_with_its_runtime_is_started_again_on_the_next() {
        let deadlines = Arc::new(Deadlines::default());
        let limit = Duration::from_millis(20);
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            rt.block_on(async {
                let op = deadlines.start(Instant::now() + limit, limit);
                assert!(passing(&op).await >= limit);
            });
        }
    }
}
