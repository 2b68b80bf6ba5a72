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
//! # Errors
//!
//! A bad cookie never fails a request: it gives an empty session and a
//! `tracing` warning. The only error the layer itself produces is in strict
//! cookie-size mode, where an oversized session answers 500 with an empty
//! body and the detail goes to `tracing`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use hipflask::Config;
use http::header::{COOKIE, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

#[cfg(feature = "axum")]
mod extract;

// The README's examples are compiled as doctests so they cannot rot.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
#[cfg(feature = "axum")]
pub use extract::{Session, SessionMissing};

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
        SessionService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`SessionLayer`].
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    config: Config,
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
    config: Config,
    cookies: Cookies,
    session: OnceLock<hipflask::Session>,
}

/// The request's session, not yet loaded; found in the request extensions.
///
/// Plain tower services call [`session`](LazySession::session); axum
/// handlers use the [`Session`] extractor instead.
#[derive(Clone, Debug)]
pub struct LazySession(Arc<Slot>);

impl LazySession {
    /// The session, reading and verifying the cookie on the first call.
    pub fn session(&self) -> hipflask::Session {
        let slot = &self.0;
        slot.session
            .get_or_init(|| slot.config.open(slot.cookies.values()))
            .clone()
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for SessionService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let slot = Arc::new(Slot {
            config: self.config.clone(),
            cookies: Cookies::from_headers(req.headers()),
            session: OnceLock::new(),
        });
        req.extensions_mut().insert(LazySession(slot.clone()));
        ResponseFuture {
            inner: self.inner.call(req),
            slot: Some(slot),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`SessionService`]: saves the session once the
    /// inner service has answered.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        slot: Option<Arc<Slot>>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(slot) = this.slot.take() {
            if let Err(status) = save(&slot, response.headers_mut()) {
                // Only strict cookie-size mode gets here; the detail is logged.
                response = Response::new(B::default());
                *response.status_mut() = status;
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// Flask's `save_session`, applied to the response headers.
fn save(slot: &Slot, headers: &mut HeaderMap) -> Result<(), StatusCode> {
    let config = &slot.config;
    let session = match slot.session.get() {
        Some(s) => s.clone(),
        // Untouched: only a permanent cookie with refresh on is re-issued, and
        // only reading the cookie tells whether it is permanent.
        None if config.refresh_each_request() && !matches!(slot.cookies, Cookies::None) => {
            config.open(slot.cookies.values())
        }
        None => return Ok(()),
    };
    let outcome = config.save(&session).map_err(|e| {
        tracing::error!(error = %e, "could not save the session");
        StatusCode::INTERNAL_SERVER_ERROR
    })?;
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
    let existing: Vec<&HeaderValue> = headers.get_all(VARY).iter().collect();
    if existing.is_empty() {
        headers.insert(VARY, HeaderValue::from_static("Cookie"));
        return;
    }
    let mut merged = Vec::new();
    for value in &existing {
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
    merged.extend_from_slice(b", Cookie");
    if let Ok(v) = HeaderValue::from_bytes(&merged) {
        headers.insert(VARY, v);
    }
}
