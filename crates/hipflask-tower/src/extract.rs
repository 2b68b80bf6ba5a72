//! The axum extractor.

use std::ops::Deref;

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::LazySession;

/// The request's session, as an axum extractor. It dereferences to
/// [`hipflask::Session`], so every dict-like method is available directly.
///
/// Extracting it reads and verifies the cookie; using it marks the session
/// accessed, which adds `Vary: Cookie` to the response.
#[derive(Clone, Debug)]
pub struct Session(hipflask::Session);

impl Session {
    /// The underlying [`hipflask::Session`] handle.
    pub fn into_inner(self) -> hipflask::Session {
        self.0
    }
}

impl Deref for Session {
    type Target = hipflask::Session;

    fn deref(&self) -> &hipflask::Session {
        &self.0
    }
}

impl From<Session> for hipflask::Session {
    fn from(s: Session) -> Self {
        s.0
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

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let lazy = parts.extensions.get::<LazySession>().ok_or(SessionRejection::Missing)?;
        lazy.load().await.map(Session).map_err(SessionRejection::Unavailable)
    }
}

impl<S: Send + Sync> axum_core::extract::OptionalFromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        match parts.extensions.get::<LazySession>() {
            None => Ok(None),
            Some(lazy) => lazy.load().await.map(|s| Some(Session(s))).map_err(SessionRejection::Unavailable),
        }
    }
}
