//! Flask-compatible sessions as tower middleware.
//!
//! [`SessionLayer`] wraps any tower service. Handlers get the session with
//! the [`Session`] extractor (axum, feature `axum`, on by default) or, in
//! plain tower services, through [`LazySession`] in the request extensions.
//! After the handler, the layer writes `Set-Cookie` and `Vary: Cookie`
//! exactly as Flask's `save_session` does.
//!
//! ```
//! use axum::{Router, routing::get};
//! use hipflask_tower::{Session, SessionLayer};
//!
//! async fn visits(session: Session) -> String {
//!     let n = session.get::<u64>("visits").unwrap_or(0) + 1;
//!     session.insert("visits", n).expect("an integer always fits");
//!     format!("Total visits: {n}")
//! }
//!
//! let config = hipflask::Config::builder().secret_key("change me").build()?;
//! let app: Router = Router::new().route("/", get(visits)).layer(SessionLayer::new(config));
//! # Ok::<(), hipflask::Error>(())
//! ```
//!
//! # Cost
//!
//! The cookie is parsed and verified only when a handler asks for the
//! session. A request that never touches it costs one small allocation,
//! except that a permanent session's cookie is read once more at the end of
//! the request when `SESSION_REFRESH_EACH_REQUEST` is on, because Flask
//! re-issues permanent cookies on every response.
//!
//! `Router::layer` wraps each route in the layer on its own, and each
//! request then also pays for a clone of the boxed route and one more boxed
//! future. Wrapping the whole router once saves that (about a thousand
//! instructions and five allocations per request on the benchmark); the
//! session is then also there for the router's fallback. Finish the router
//! with `with_state` (`with_state(())` without state) before wrapping it:
//! that turns each route into its final service once, which `axum::serve`
//! does by itself for a bare router but not for one inside a layer, where a
//! route otherwise rebuilds its service from the handler on every request.
//!
//! ```
//! use axum::{Router, ServiceExt, extract::Request, routing::get};
//! use hipflask_tower::{Session, SessionLayer};
//! use tower_layer::Layer as _;
//!
//! # async fn index(_: Session) {}
//! let config = hipflask::Config::builder().secret_key("change me").build()?;
//! let router: Router = Router::new().route("/", get(index)).with_state(());
//! let app = SessionLayer::new(config).layer(router);
//! // For axum::serve(listener, make_service):
//! let make_service = ServiceExt::<Request>::into_make_service(app);
//! # let _ = make_service;
//! # Ok::<(), hipflask::Error>(())
//! ```
//!
//! # Errors
//!
//! A bad cookie never fails a request: it gives an empty session and a
//! `tracing` warning. The only error the layer itself produces is in strict
//! cookie-size mode, where an oversized session answers 500 with an empty
//! body and the detail goes to `tracing`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use hipflask::{Config, ErrorKind, SaveOutcome};
use http::header::{COOKIE, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

#[cfg(feature = "axum")]
mod deadline;
mod extract;

// The README's examples are compiled as doctests so they cannot rot.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
#[cfg(feature = "axum")]
pub use extract::{Session, SessionRejection};

/// Adds Flask-compatible sessions to a service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionLayer {
    config: Config,
}

impl SessionLayer {
    /// A layer using `config`, which was validated when it was built (a
    /// missing or empty secret key already failed there).
    pub fn new(config: Config) -> SessionLayer {
        SessionLayer { config }
    }
}

impl<S> tower_layer::Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> SessionService<S> {
        let shared = Shared { config: self.config.clone(), metrics: OnceLock::new(), deadlines: Arc::default() };
        SessionService { inner, shared: Arc::new(shared) }
    }
}

/// The service made by [`SessionLayer`].
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What every request of one service shares.
#[derive(Debug)]
struct Shared {
    config: Config,
    /// Registered on the first request, not when the layer is built: an app
    /// may install its metrics recorder after building its router.
    metrics: OnceLock<Metrics>,
    /// The store timeout of the operations that wait.
    deadlines: Arc<deadline::Deadlines>,
}

/// Handles of the per-request metrics: looking a metric up by name costs a
/// hash and a lock on every use, a handle only the increment.
#[derive(Debug)]
struct Metrics {
    loaded: metrics::Counter,
    saved: metrics::Counter,
    destroyed: metrics::Counter,
    load: StoreOp,
    save: StoreOp,
}

/// The metrics of one kind of store operation.
#[derive(Debug)]
struct StoreOp {
    name: &'static str,
    /// The time spent waiting, for the operations that waited.
    waited: metrics::Histogram,
    /// The operations answered on their first poll: no wait to time.
    in_place: metrics::Counter,
}

impl StoreOp {
    fn new(name: &'static str) -> StoreOp {
        StoreOp {
            name,
            waited: metrics::histogram!("hipflask_store_seconds", "op" => name),
            in_place: metrics::counter!("hipflask_store_in_place_total", "op" => name),
        }
    }
}

impl Shared {
    fn metrics(&self) -> &Metrics {
        self.metrics.get_or_init(|| Metrics {
            loaded: metrics::counter!("hipflask_sessions_loaded_total"),
            saved: metrics::counter!("hipflask_sessions_saved_total"),
            destroyed: metrics::counter!("hipflask_sessions_destroyed_total"),
            load: StoreOp::new("load"),
            save: StoreOp::new("save"),
        })
    }
}

/// The request's `Cookie` headers, kept unparsed until the session is needed.
#[derive(Debug)]
enum Cookies {
    None,
    One(HeaderValue),
    Many(Vec<HeaderValue>),
}

impl Cookies {
    fn from_headers(headers: &HeaderMap) -> Cookies {
        let mut all = headers.get_all(COOKIE).iter();
        match (all.next(), all.next()) {
            (None, _) => Cookies::None,
            (Some(one), None) => Cookies::One(one.clone()),
            (Some(_), Some(_)) => Cookies::Many(headers.get_all(COOKIE).iter().cloned().collect()),
        }
    }

    fn values(&self) -> impl Iterator<Item = &[u8]> {
        let slice: &[HeaderValue] = match self {
            Cookies::None => &[],
            Cookies::One(v) => std::slice::from_ref(v),
            Cookies::Many(v) => v,
        };
        slice.iter().map(HeaderValue::as_bytes)
    }
}

/// Per-request state shared by the extractor and the response path.
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    cookies: Cookies,
    session: OnceLock<hipflask::Session>,
    /// What an explicit `Session::save` inside the handler produced; the
    /// response gets its cookie unless a later save replaces it.
    saved: std::sync::Mutex<Option<SaveOutcome>>,
    /// Whether `saved` was ever set: most handlers never save explicitly,
    /// and the response then skips the lock.
    explicit: AtomicBool,
}

impl Slot {
    fn config(&self) -> &Config {
        &self.shared.config
    }

    fn remember(&self, outcome: SaveOutcome) {
        let mut saved = self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *saved = Some(merge(saved.take(), outcome));
        self.explicit.store(true, Ordering::Release);
    }

    /// The final outcome, folded over any explicit saves.
    fn finish(&self, last: Option<SaveOutcome>) -> Option<SaveOutcome> {
        if !self.explicit.load(Ordering::Acquire) {
            return last;
        }
        let earlier = self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        match (earlier, last) {
            (None, last) => last,
            (Some(e), None) => Some(e),
            (Some(e), Some(l)) => Some(merge(Some(e), l)),
        }
    }
}

/// A later outcome over an earlier one: the later cookie wins, `Vary` is kept.
fn merge(earlier: Option<SaveOutcome>, later: SaveOutcome) -> SaveOutcome {
    let Some(e) = earlier else { return later };
    SaveOutcome {
        vary_cookie: e.vary_cookie || later.vary_cookie,
        vary_first: e.vary_first || later.vary_first,
        set_cookie: later.set_cookie.or(e.set_cookie),
    }
}

/// The request's session, not yet loaded; found in the request extensions.
///
/// Plain tower services call [`load`](LazySession::load); axum
/// handlers use the [`Session`] extractor instead.
#[derive(Clone, Debug)]
pub struct LazySession(Arc<Slot>);

impl LazySession {
    pub(crate) fn slot(&self) -> Arc<Slot> {
        self.0.clone()
    }

    /// The session, reading the cookie (and the store, for server-side
    /// sessions) on the first call. Fails only when the store fails.
    pub async fn load(&self) -> Result<hipflask::Session, hipflask::Error> {
        Load::new(self.slot()).await
    }
}

/// A request's session being loaded: the future behind both
/// [`LazySession::load`] and the [`Session`] extractor.
///
/// A few words while the answer is in place (a cookie session, the memory
/// store, a local cache hit), and one boxed future once the store must be
/// waited for. It is part of every handler future that takes a [`Session`],
/// which axum boxes and moves: as an `async fn`, the load made that future
/// 280 bytes larger on every request, for a state only a waiting store needs.
pub(crate) struct Load {
    slot: Arc<Slot>,
    wait: Option<Waiting>,
}

/// A load that waits for the store, with what it needs owned.
type Waiting = Pin<Box<dyn Future<Output = Result<hipflask::Session, hipflask::Error>> + Send>>;

impl Load {
    pub(crate) fn new(slot: Arc<Slot>) -> Load {
        Load { slot, wait: None }
    }

    pub(crate) fn into_slot(self) -> Arc<Slot> {
        self.slot
    }
}

impl Future for Load {
    type Output = Result<hipflask::Session, hipflask::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(wait) = &mut this.wait {
            return wait.as_mut().poll(cx);
        }
        let slot = &this.slot;
        if let Some(s) = slot.session.get() {
            return Poll::Ready(Ok(s.clone()));
        }
        let config = slot.config();
        // The load owns what it needs from the headers: nothing borrowed from
        // them lives across the wait.
        let mut loading = match &slot.cookies {
            Cookies::None => config.load_session(&[]),
            // One Cookie header is the rule: no list to build for it.
            Cookies::One(v) => config.load_session(&[v.as_bytes()]),
            Cookies::Many(_) => config.load_session(&slot.cookies.values().collect::<Vec<_>>()),
        };
        if let Poll::Ready(result) = Pin::new(&mut loading).poll(cx) {
            if config.is_server_side() {
                record(&slot.shared.metrics().load, &result, None);
            }
            return Poll::Ready(settle(slot, result));
        }
        let slot = Arc::clone(slot);
        let mut wait = Box::pin(async move {
            let config = slot.config();
            let result = if config.is_server_side() {
                let metrics = &slot.shared.metrics().load;
                waited(&slot.shared.deadlines, metrics, config.store_timeout(), Pin::new(&mut loading)).await
            } else {
                loading.await
            };
            settle(&slot, result)
        });
        let first = wait.as_mut().poll(cx);
        this.wait = Some(wait);
        first
    }
}

/// The load's answer made the request's session: a store failure goes
/// through the configured fallback, and of two loads racing within one
/// request the first one stored wins.
fn settle(
    slot: &Slot,
    result: Result<hipflask::Session, hipflask::Error>,
) -> Result<hipflask::Session, hipflask::Error> {
    let loaded = match result {
        Ok(s) => s,
        Err(e) => slot.config().on_load_failure(e)?,
    };
    slot.shared.metrics().loaded.increment(1);
    Ok(slot.session.get_or_init(|| loaded).clone())
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for SessionService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let slot = Arc::new(Slot {
            shared: self.shared.clone(),
            cookies: Cookies::from_headers(req.headers()),
            session: OnceLock::new(),
            saved: std::sync::Mutex::new(None),
            explicit: AtomicBool::new(false),
        });
        req.extensions_mut().insert(LazySession(slot.clone()));
        ResponseFuture { state: State::Running { inner: self.inner.call(req), slot: Some(slot) } }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`SessionService`]: saves the session once the
    /// inner service has answered (awaiting the store for server-side sessions).
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Running { #[pin] inner: F, slot: Option<Arc<Slot>> },
        // A save the store did not answer on its first poll: timed from
        // then, and bounded by the store timeout.
        Saving {
            save: hipflask::SaveSession,
            deadline: Option<deadline::Deadline>,
            started: std::time::Instant,
            slot: Arc<Slot>,
            response: Option<Response<B>>,
        },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Running { inner, slot } => {
                    let mut response = ready!(inner.poll(cx))?;
                    let Some(slot) = slot.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    let config = slot.config();
                    if !config.is_server_side() {
                        let outcome = cookie_outcome(&slot).map(|o| slot.finish(o));
                        finish(outcome, &mut response);
                        return Poll::Ready(Ok(response));
                    }
                    // A handler that never loaded the session never reaches the store.
                    let Some(session) = slot.session.get() else {
                        return Poll::Ready(Ok(response));
                    };
                    // A request that only read: answered now, no store call.
                    if let Some(outcome) = config.save_session_in_place(session) {
                        finish(Ok(slot.finish(Some(outcome))), &mut response);
                        return Poll::Ready(Ok(response));
                    }
                    let mut save = config.save_session(session);
                    // An in-process store answers on this first poll, and then
                    // nothing is kept for later.
                    if let Poll::Ready(result) = Pin::new(&mut save).poll(cx) {
                        record(&slot.shared.metrics().save, &result, None);
                        finish(result.map(|o| slot.finish(Some(o))), &mut response);
                        return Poll::Ready(Ok(response));
                    }
                    let started = std::time::Instant::now();
                    let deadline = limit(config.store_timeout()).map(|l| slot.shared.deadlines.start(started + l, l));
                    // Polled again at once, which registers the task's waker.
                    state.set(State::Saving { save, deadline, started, slot, response: Some(response) });
                }
                StateProj::Saving { save, deadline, started, slot, response } => {
                    let result = match Pin::new(save).poll(cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending => {
                            if !deadline.as_ref().is_some_and(|d| d.poll_passed(cx)) {
                                return Poll::Pending;
                            }
                            Err(timed_out(slot.config().store_timeout().unwrap_or_default()))
                        }
                    };
                    record(&slot.shared.metrics().save, &result, Some(started.elapsed()));
                    let mut response = response.take().expect("polled after completion");
                    finish(result.map(|o| slot.finish(Some(o))), &mut response);
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// Runs a store operation within the configured time limit, recording how
/// long it waited (`hipflask_store_seconds{op}`) and failures by kind.
///
/// An operation answered on its first poll (an in-process store, a local
/// cache hit) did not wait: it is only counted
/// (`hipflask_store_in_place_total{op}`), without reading the clock, and gets
/// no timer, as arming one costs more than such a store's whole answer.
/// Reading the clock around it was a tenth of the layer's own cost on a
/// memory-store request, and a histogram sample (the Prometheus exporter
/// reads a clock of its own for each) about 250 instructions with the
/// exporter's upkeep, against 20 for the count. Others are timed from the end
/// of that first poll, which only starts the I/O: the seconds are those spent
/// waiting. The response future and [`Load`] do the same without an `async`
/// block around the first poll, and this one serves [`Session::save`].
///
/// The caller pins the operation: holding it by value made the future that
/// awaits this one larger, copied each time it moved.
async fn within<T>(
    deadlines: &Arc<deadline::Deadlines>,
    metrics: &StoreOp,
    timeout: Option<std::time::Duration>,
    mut op: Pin<&mut impl Future<Output = Result<T, hipflask::Error>>>,
) -> Result<T, hipflask::Error> {
    let first = std::future::poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        record(metrics, &result, None);
        return result;
    }
    waited(deadlines, metrics, timeout, op).await
}

/// The rest of [`within`], for an operation that did not answer on its first
/// poll: timed from now, and bounded by the store timeout.
async fn waited<T>(
    deadlines: &Arc<deadline::Deadlines>,
    metrics: &StoreOp,
    timeout: Option<std::time::Duration>,
    mut op: Pin<&mut impl Future<Output = Result<T, hipflask::Error>>>,
) -> Result<T, hipflask::Error> {
    let started = std::time::Instant::now();
    let result = match limit(timeout) {
        None => op.await,
        Some(limit) => {
            let deadline = deadlines.start(started + limit, limit);
            std::future::poll_fn(|cx| match op.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(result),
                Poll::Pending if deadline.poll_passed(cx) => Poll::Ready(Err(timed_out(limit))),
                Poll::Pending => Poll::Pending,
            })
            .await
        }
    };
    record(metrics, &result, Some(started.elapsed()));
    result
}

/// The store timeout, when there is a runtime to enforce it (see
/// [`deadline`]): outside a tokio runtime operations run unbounded.
fn limit(timeout: Option<std::time::Duration>) -> Option<std::time::Duration> {
    timeout.filter(|_| tokio::runtime::Handle::try_current().is_ok())
}

fn timed_out(limit: std::time::Duration) -> hipflask::Error {
    hipflask::Error::new(ErrorKind::Timeout, format!("the session store did not answer within {limit:?}"))
}

/// Records a store operation: the time it waited, or that it was answered
/// in place (`waited` is `None`), and, when it failed, its error kind.
fn record<T>(metrics: &StoreOp, result: &Result<T, hipflask::Error>, waited: Option<std::time::Duration>) {
    match waited {
        Some(waited) => metrics.waited.record(waited.as_secs_f64()),
        None => metrics.in_place.increment(1),
    }
    if let Err(e) = result {
        metrics::counter!("hipflask_store_errors_total", "op" => metrics.name, "kind" => format!("{:?}", e.kind()))
            .increment(1);
    }
}

/// Flask's `save_session` for cookie sessions, done in place: nothing to await.
fn cookie_outcome(slot: &Slot) -> Result<Option<SaveOutcome>, hipflask::Error> {
    let config = slot.config();
    let session = match slot.session.get() {
        Some(s) => s.clone(),
        // Untouched: only a permanent cookie with refresh on is re-issued, and
        // only reading the cookie tells whether it is permanent.
        None if config.refresh_each_request() && !matches!(slot.cookies, Cookies::None) => {
            config.open(slot.cookies.values())
        }
        None => return Ok(None),
    };
    let outcome = config.save(&session)?;
    if let Some(cookie) = &outcome.set_cookie {
        // A deletion cookie has an empty value.
        let deleted = cookie.as_bytes().get(config.cookie_name().len() + 1) == Some(&b';');
        let metrics = slot.shared.metrics();
        (if deleted { &metrics.destroyed } else { &metrics.saved }).increment(1);
    }
    Ok(Some(outcome))
}

/// Applies a save's outcome to the response, or replaces the response with
/// an empty error one: clients get the status, `tracing` gets the detail.
fn finish<B: Default>(outcome: Result<Option<SaveOutcome>, hipflask::Error>, response: &mut Response<B>) {
    let status = match outcome {
        Ok(None) => return,
        Ok(Some(outcome)) => match apply(outcome, response.headers_mut()) {
            Ok(()) => return,
            Err(status) => status,
        },
        Err(e) => {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "could not save the session");
            match e.kind() {
                ErrorKind::CookieTooLarge => StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Conflict => StatusCode::CONFLICT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            }
        }
    };
    *response = Response::new(B::default());
    *response.status_mut() = status;
}

/// Writes `Vary` and `Set-Cookie` in Flask's order.
fn apply(outcome: SaveOutcome, headers: &mut HeaderMap) -> Result<(), StatusCode> {
    if outcome.vary_cookie && outcome.vary_first {
        add_vary_cookie(headers);
    }
    if let Some(cookie) = outcome.set_cookie {
        match HeaderValue::try_from(cookie) {
            Ok(v) => {
                headers.append(SET_COOKIE, v);
            }
            Err(e) => {
                tracing::error!(error = %e, "the session cookie is not a valid header value");
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
    }
    if outcome.vary_cookie && !outcome.vary_first {
        add_vary_cookie(headers);
    }
    Ok(())
}

/// Adds `Cookie` to `Vary` as Werkzeug's header set does: once, keeping
/// what is there (`Accept-Encoding` becomes `Accept-Encoding, Cookie`).
fn add_vary_cookie(headers: &mut HeaderMap) {
    // One lookup through the entry: a lookup then an insert hashed the name twice.
    let mut existing = match headers.entry(VARY) {
        http::header::Entry::Vacant(slot) => {
            slot.insert(HeaderValue::from_static("Cookie"));
            return;
        }
        http::header::Entry::Occupied(values) => values,
    };
    let mut merged = Vec::new();
    for value in existing.iter() {
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"cookie") {
                return;
            }
            if !token.is_empty() {
                if !merged.is_empty() {
                    merged.extend_from_slice(b", ");
                }
                merged.extend_from_slice(token);
            }
        }
    }
    if !merged.is_empty() {
        merged.extend_from_slice(b", ");
    }
    merged.extend_from_slice(b"Cookie");
    if let Ok(v) = HeaderValue::from_bytes(&merged) {
        existing.insert(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hipflask::{MemoryStore, Record, SessionId, Store, StoreFuture, Update, Updated};

    /// A memory store whose calls wait until the test opens its gate, as a
    /// store across a network waits for its answer.
    #[derive(Debug, Default)]
    struct Waits {
        inner: MemoryStore,
        open: std::sync::atomic::AtomicBool,
    }

    impl Waits {
        fn after_the_gate<'a, T: Send + 'a>(&'a self, op: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
            Box::pin(async move {
                std::future::poll_fn(|_| match self.open.load(std::sync::atomic::Ordering::SeqCst) {
                    true => Poll::Ready(()),
                    false => Poll::Pending,
                })
                .await;
                op.await
            })
        }
    }

    impl Store for Waits {
        fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>> {
            self.after_the_gate(self.inner.load(id, now))
        }
        fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()> {
            self.after_the_gate(self.inner.create(id, record))
        }
        fn update<'a>(&'a self, id: &'a SessionId, update: &'a Update, now: u64) -> StoreFuture<'a, Updated> {
            self.after_the_gate(self.inner.update(id, update, now))
        }
        fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool> {
            self.after_the_gate(self.inner.delete(id))
        }
        fn delete_expired(&self, now: u64) -> StoreFuture<'_, u64> {
            self.after_the_gate(self.inner.delete_expired(now))
        }
        fn list(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>> {
            self.after_the_gate(self.inner.list(now))
        }
        fn sessions_of_user<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, Vec<SessionId>> {
            self.after_the_gate(self.inner.sessions_of_user(user, now))
        }
        fn delete_user<'a>(&'a self, user: &'a str) -> StoreFuture<'a, u64> {
            self.after_the_gate(self.inner.delete_user(user))
        }
    }

    /// A request's slot whose cookie names a stored session holding `n = 7`.
    fn slot_for_stored_session(memory: &MemoryStore, store: Arc<dyn Store>) -> Arc<Slot> {
        let id = SessionId::generate();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let data = [("n".to_owned(), hipflask::Value::Int(7))].into_iter().collect();
        let created = memory.create(&id, Record { data, created_at: now, expires_at: now + 3600 });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(std::pin::pin!(created).poll(&mut cx).is_ready());
        let config = Config::builder().secret_key("k").store(store).build().unwrap();
        let cookie = HeaderValue::from_str(&format!("session={}", id.as_str())).unwrap();
        Arc::new(Slot {
            shared: Arc::new(Shared { config, metrics: OnceLock::new(), deadlines: Arc::default() }),
            cookies: Cookies::One(cookie),
            session: OnceLock::new(),
            saved: std::sync::Mutex::new(None),
            explicit: AtomicBool::new(false),
        })
    }

    /// A load the store answers in place is ready on its first poll with no
    /// boxed future; one that waits boxes what it needs, finishes on a later
    /// poll, and the request's other loads then share its session.
    #[test]
    fn loads_box_only_a_wait_for_the_store() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let memory = Arc::new(MemoryStore::new());
        let slot = slot_for_stored_session(&memory, memory.clone());
        let mut load = Load::new(slot);
        let Poll::Ready(Ok(session)) = Pin::new(&mut load).poll(&mut cx) else { panic!("the memory store waited") };
        assert!(load.wait.is_none());
        assert_eq!(session.get::<i64>("n"), Some(7));

        let waits = Arc::new(Waits::default());
        let slot = slot_for_stored_session(&waits.inner, waits.clone());
        let mut load = Load::new(Arc::clone(&slot));
        assert!(Pin::new(&mut load).poll(&mut cx).is_pending());
        assert!(load.wait.is_some());
        assert!(Pin::new(&mut load).poll(&mut cx).is_pending());
        waits.open.store(true, std::sync::atomic::Ordering::SeqCst);
        let Poll::Ready(Ok(session)) = Pin::new(&mut load).poll(&mut cx) else { panic!("the open gate still waited") };
        assert_eq!(session.get::<i64>("n"), Some(7));
        session.insert("n", 8).unwrap();
        let mut again = Load::new(slot);
        let Poll::Ready(Ok(same)) = Pin::new(&mut again).poll(&mut cx) else { panic!("a second load waited") };
        assert_eq!(same.get::<i64>("n"), Some(8), "one session per request");
    }

    fn vary_after(existing: &[&'static str]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for value in existing {
            headers.append(VARY, HeaderValue::from_static(value));
        }
        add_vary_cookie(&mut headers);
        headers.get_all(VARY).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    }

    /// Werkzeug's header set: added once, case-insensitively, after what is
    /// there, all in one header; an empty `Vary` is an empty set.
    #[test]
    fn cookie_joins_vary_once() {
        assert_eq!(vary_after(&[]), ["Cookie"]);
        assert_eq!(vary_after(&["Accept-Encoding"]), ["Accept-Encoding, Cookie"]);
        assert_eq!(vary_after(&["Accept-Encoding", "Origin"]), ["Accept-Encoding, Origin, Cookie"]);
        assert_eq!(vary_after(&["accept-encoding, COOKIE"]), ["accept-encoding, COOKIE"]);
        assert_eq!(vary_after(&[""]), ["Cookie"]);
        assert_eq!(vary_after(&[" , Origin ,"]), ["Origin, Cookie"]);
    }
}
