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

/// The rejection when [`SessionLayer`](crate::SessionLayer) is not installed
/// in front of the handler: a programming error, answered with an empty 500
/// and logged.
#[derive(Debug)]
pub struct SessionMissing;

impl IntoResponse for SessionMissing {
    fn into_response(self) -> Response {
        tracing::error!(
            "the Session extractor was used on a route without hipflask_tower::SessionLayer"
        );
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionMissing;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let lazy = parts
            .extensions
            .get::<LazySession>()
            .ok_or(SessionMissing)?;
        Ok(Session(lazy.session()))
    }
}

impl<S: Send + Sync> axum_core::extract::OptionalFromRequestParts<S> for Session {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<LazySession>()
            .map(|lazy| Session(lazy.session())))
    }
}
