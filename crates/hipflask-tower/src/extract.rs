//! The axum extractor.

use std::ops::Deref;

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use crate::{LazySession, Load, Slot};

/// The request's session, as an axum extractor. It dereferences to
/// [`hipflask::Session`], so every dict-like method is available directly.
///
/// Extracting it reads and verifies the cookie; using it marks the session
/// accessed, which adds `Vary: Cookie` to the response.
#[derive(Clone, Debug)]
pub struct Session {
    inner: hipflask::Session,
    slot: Arc<Slot>,
}

impl Session {
    /// The underlying [`hipflask::Session`] handle.
    pub fn into_inner(self) -> hipflask::Session {
        self.inner
    }

    /// Saves the session now instead of after the handler, so the handler
    /// sees the store's answer: with `ConflictPolicy::Reject`, a key another
    /// request changed meanwhile is an [`ErrorKind::Conflict`](hipflask::ErrorKind::Conflict)
    /// error here, and nothing is written. The response still gets the
    /// session cookie; changes made after this call are saved at the end as usual.
    ///
    /// When the save fails, this request's changes are dropped, so the
    /// handler's own response stands (make new changes and save again to retry).
    pub async fn save(&self) -> Result<(), hipflask::Error> {
        let config = self.slot.config();
        let metrics = &self.slot.shared.metrics().save;
        let saving = std::pin::pin!(config.save_session(&self.inner));
        match crate::within(&self.slot.shared.deadlines, metrics, config.store_timeout(), saving).await {
            Ok(outcome) => {
                self.slot.remember(outcome);
                Ok(())
            }
            Err(e) => {
                self.inner.discard_changes();
                Err(e)
            }
        }
    }
}

impl Deref for Session {
    type Target = hipflask::Session;

    fn deref(&self) -> &hipflask::Session {
        &self.inner
    }
}

impl From<Session> for hipflask::Session {
    fn from(s: Session) -> Self {
        s.inner
    }
}

/// Why the [`Session`] extractor failed. Answered with an empty body; the
/// detail goes to `tracing`.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionRejection {
    /// [`SessionLayer`](crate::SessionLayer) is not installed in front of the
    /// handler: a programming error, answered with 500.
    Missing,
    /// The session store failed: 503.
    Unavailable(hipflask::Error),
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        match self {
            SessionRejection::Missing => {
                tracing::error!("the Session extractor was used on a route without hipflask_tower::SessionLayer");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
            SessionRejection::Unavailable(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "could not load the session");
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            }
        }
    }
}

/// The extractor's future: the [`Load`] of the request's session, or `None`
/// on a route without the layer. The load holds the request's shared state,
/// which the extracted [`Session`] keeps for its explicit saves.
struct Extract(Option<Load>);

impl Future for Extract {
    type Output = Result<Session, SessionRejection>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(load) = &mut self.0 else {
            return Poll::Ready(Err(SessionRejection::Missing));
        };
        let loaded = ready!(Pin::new(&mut *load).poll(cx));
        // The slot moves into the session: no count to raise and drop again.
        let slot = self.0.take().map(Load::into_slot);
        let inner = loaded.map_err(SessionRejection::Unavailable)?;
        Poll::Ready(slot.map(|slot| Session { inner, slot }).ok_or(SessionRejection::Missing))
    }
}

fn extract(parts: &Parts) -> Extract {
    Extract(parts.extensions.get::<LazySession>().map(|lazy| Load::new(lazy.slot())))
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    fn from_request_parts(parts: &mut Parts, _: &S) -> impl Future<Output = Result<Self, Self::Rejection>> + Send {
        extract(parts)
    }
}

impl<S: Send + Sync> axum_core::extract::OptionalFromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> impl Future<Output = Result<Option<Self>, Self::Rejection>> + Send {
        let extract = extract(parts);
        async move {
            match extract {
                Extract(None) => Ok(None),
                some => some.await.map(Some),
            }
        }
    }
}
