//! The one error type of hipflask, with a kind to match on and the source kept.

use std::borrow::Cow;
use std::fmt;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, broadly. More kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A setting is missing or invalid; raised when the layer or config is built.
    Config,
    /// A value could not be stored in the session (e.g. a map with non-string keys).
    Encode,
    /// A stored value does not have the type it was read as.
    Decode,
    /// The key is not in the session (Python's `KeyError` of `session[key]`).
    MissingKey,
    /// The Set-Cookie header would exceed `MAX_COOKIE_SIZE` and strict size
    /// checking is on.
    CookieTooLarge,
    /// Another request changed the same session key (with
    /// `ConflictPolicy::Reject`), or a new session id was already taken.
    Conflict,
    /// The session store failed (unreachable, I/O error, corrupt data it
    /// cannot skip); the source holds the driver's error.
    Backend,
    /// The session store did not answer in time.
    Timeout,
}

/// A hipflask error: a [`ErrorKind`], a message saying what to do, and the
/// underlying error when there is one.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` with a message; for store implementations.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Error {
        Error { kind, message: message.into(), source: None }
    }

    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(ErrorKind::Config, message)
    }

    pub(crate) fn encode(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(ErrorKind::Encode, message)
    }

    /// Attaches the underlying error (kept as `source()`).
    pub fn with_source(mut self, source: impl Into<Source>) -> Error {
        self.source = Some(source.into());
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Error {
        Error::encode(msg.to_string())
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Error {
        Error::new(ErrorKind::Decode, msg.to_string())
    }
}
