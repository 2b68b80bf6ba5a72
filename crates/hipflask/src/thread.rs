//! A thread of its own for a store over a blocking API.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, ErrorKind};
use crate::store::StoreFuture;

/// One call, run on the thread.
type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread that owns what a store works on (a database connection, a
/// directory) and runs the store's calls on it one after another, in the
/// order they were queued. Stores over blocking APIs use it instead of an
/// async runtime's blocking pool: a queue drained by one thread costs a
/// thread switch per batch of calls, where a pool wakes a thread per call
/// and lets them all contend for the one connection. It needs no runtime.
///
/// The thread ends when the last clone is dropped.
///
/// ```
/// # fn main() -> Result<(), hipflask::Error> {
/// let counter = hipflask::StoreThread::start("counter", 0u64)?;
/// let next = counter.call(|n| {
///     *n += 1;
///     Ok(*n)
/// });
/// # let _ = next; Ok(()) }
/// ```
pub struct StoreThread<S> {
    jobs: mpsc::Sender<Job<S>>,
}

impl<S> Clone for StoreThread<S> {
    fn clone(&self) -> Self {
        StoreThread { jobs: self.jobs.clone() }
    }
}

impl<S> std::fmt::Debug for StoreThread<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreThread").finish_non_exhaustive()
    }
}

impl<S: Send + 'static> StoreThread<S> {
    /// Starts the thread, named `name`, owning `state`.
    pub fn start(name: &str, mut state: S) -> Result<StoreThread<S>, Error> {
        let (jobs, queue) = mpsc::channel::<Job<S>>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // A call that panics fails alone: its caller gets an
                    // error and the next call runs.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut state)));
                }
            })
            .map_err(|e| Error::new(ErrorKind::Backend, "cannot start the store's thread").with_source(e))?;
        Ok(StoreThread { jobs })
    }

    /// Runs `f` on the thread once the returned future is first polled, and
    /// resolves to its result.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> Result<T, Error> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let jobs = self.jobs.clone();
        Box::pin(async move {
            let slot = Arc::new(Mutex::new(Slot { answer: None, waker: None, closed: false }));
            let reply = Reply(slot.clone());
            jobs.send(Box::new(move |state| reply.send(f(state))))
                .map_err(|_| Error::new(ErrorKind::Backend, "the store's thread has stopped"))?;
            Answer(slot).await
        })
    }
}

struct Slot<T> {
    answer: Option<Result<T, Error>>,
    waker: Option<Waker>,
    /// The call ended without an answer (it panicked).
    closed: bool,
}

fn lock<T>(slot: &Mutex<Slot<T>>) -> MutexGuard<'_, Slot<T>> {
    // A slot's fields are each set in one step: never inconsistent.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The thread's end of one call.
struct Reply<T>(Arc<Mutex<Slot<T>>>);

impl<T> Reply<T> {
    fn send(self, answer: Result<T, Error>) {
        lock(&self.0).answer = Some(answer);
        // Drop wakes the caller.
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.0);
            slot.closed = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The caller's end of one call.
struct Answer<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for Answer<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.0);
        if let Some(answer) = slot.answer.take() {
            return Poll::Ready(answer);
        }
        if slot.closed {
            return Poll::Ready(Err(Error::new(ErrorKind::Backend, "the store's call failed")));
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `f` to completion on this thread, parking between polls.
    fn block_on<T>(mut f: StoreFuture<'static, T>) -> Result<T, Error> {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn calls_run_in_order_on_one_thread_and_return_their_results() {
        let thread = StoreThread::start("test-store", Vec::new()).unwrap();
        let calls: Vec<_> = (0..100)
            .map(|i| {
                thread.call(move |seen: &mut Vec<i32>| {
                    seen.push(i);
                    Ok((seen.len(), std::thread::current().name().map(str::to_owned)))
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            // Queued when first polled: in this order.
            assert_eq!(block_on(call).unwrap(), (i + 1, Some("test-store".to_owned())));
        }
    }

    #[test]
    fn errors_come_back_and_a_panicking_call_fails_alone() {
        let thread = StoreThread::start("test-store", 0u32).unwrap();
        let err = block_on(thread.call(|_| Err::<(), _>(Error::new(ErrorKind::Conflict, "taken")))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        // Prints the panic: the hook is global, and other tests run meanwhile.
        let failed =
            block_on(thread.call(|_: &mut u32| -> Result<(), Error> { panic!("a bug in a store (expected)") }));
        assert_eq!(failed.unwrap_err().kind(), ErrorKind::Backend);
        assert_eq!(
            block_on(thread.call(|n| {
                *n += 1;
                Ok(*n)
            }))
            .unwrap(),
            1,
            "the thread goes on"
        );
    }
}
