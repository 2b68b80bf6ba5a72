//! Server-side sessions: the [`Store`] trait and the change set that makes
//! concurrent requests lose nothing.
//!
//! # No lost updates
//!
//! A request does not write back the whole session it loaded. It records
//! which keys it set or removed, and whether it cleared the session, and the
//! store applies exactly those [`Changes`] to the session **as stored now**,
//! atomically ([`apply_changes`] is the one merge every store uses). So:
//!
//! - two requests that change different keys both keep their changes;
//! - a request that changes a session another request destroyed (logout)
//!   does not bring it back: [`Store::update`] reports it gone;
//! - two requests that set the same key: the later save wins, or, with
//!   [`ConflictPolicy::Reject`], the later one fails with
//!   [`ErrorKind::Conflict`](crate::ErrorKind::Conflict).
//!
//! The cookie backend cannot offer this: each response carries the whole
//! session and the browser keeps whichever arrives last.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::error::{Error, ErrorKind};
use crate::sid::SessionId;
use crate::value::{Dict, Value};

/// The boxed future every [`Store`] method returns, so that stores can be
/// chosen at run time (`Arc<dyn Store>`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// A stored session.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The session's data.
    pub data: Dict,
    /// When the session was created (Unix seconds), for the absolute timeout.
    pub created_at: u64,
    /// When the session expires (Unix seconds).
    pub expires_at: u64,
}

/// What one request changed, key by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// The request cleared the session before the changes below.
    pub cleared: bool,
    /// Final value of each key the request set or removed (`None` = removed).
    pub keys: Vec<(String, Option<Value>)>,
}

impl Changes {
    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        !self.cleared && self.keys.is_empty()
    }
}

/// What to do when two requests set the same key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The later save wins (the default).
    #[default]
    LastWriteWins,
    /// The later save fails with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict)
    /// and writes nothing.
    Reject,
}

/// An update of an existing session.
#[derive(Clone, Debug)]
pub struct Update {
    /// The changes to apply.
    pub changes: Changes,
    /// The new expiry (Unix seconds).
    pub expires_at: u64,
    /// With [`ConflictPolicy::Reject`]: each changed key's value as the
    /// request loaded it, one per entry of `changes.keys` and in its order
    /// (`None`: the key was absent); a key whose stored value differs now is
    /// a conflict.
    pub loaded: Option<Vec<Option<Value>>>,
}

impl Update {
    /// [`loaded`](Update::loaded), checked to hold one value per changed key:
    /// for a store that compares without [`apply_changes`].
    ///
    /// ```
    /// use hipflask::{Changes, ErrorKind, Update, Value};
    /// let changes = Changes { cleared: false, keys: vec![("n".into(), Some(Value::from(2)))] };
    /// // `n` was 1 when the request loaded the session.
    /// let update = Update { changes: changes.clone(), expires_at: 0, loaded: Some(vec![Some(Value::from(1))]) };
    /// assert_eq!(update.loaded_values().unwrap(), Some(&[Some(Value::from(1))][..]));
    /// // One changed key, no loaded value: a caller's mistake, refused.
    /// let lopsided = Update { changes, expires_at: 0, loaded: Some(vec![]) };
    /// assert_eq!(lopsided.loaded_values().unwrap_err().kind(), ErrorKind::Encode);
    /// ```
    pub fn loaded_values(&self) -> Result<Option<&[Option<Value>]>, Error> {
        matched(&self.changes, self.loaded.as_deref())
    }
}

/// The result of [`Store::update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Updated {
    /// Applied.
    Applied,
    /// The session no longer exists (destroyed or expired); nothing was written.
    Gone,
}

/// Applies `changes` to `current`, the session as stored now. With `loaded`
/// (see [`Update::loaded`]), any changed key whose current value is not the
/// loaded one is a conflict and nothing is changed.
///
/// ```
/// use hipflask::{Changes, Dict, Value, apply_changes};
/// let mut stored: Dict = [("a".into(), Value::from(1)), ("b".into(), Value::from(2))].into();
/// let changes = Changes { cleared: false, keys: vec![("a".into(), Some(Value::from(10))), ("b".into(), None)] };
/// // Loaded as a = 1, b = 2: nothing changed them since, so the save applies.
/// let loaded = [Some(Value::from(1)), Some(Value::from(2))];
/// apply_changes(&mut stored, &changes, Some(&loaded)).unwrap();
/// assert_eq!(stored, Dict::from([("a".into(), Value::from(10))]));
/// ```
pub fn apply_changes(current: &mut Dict, changes: &Changes, loaded: Option<&[Option<Value>]>) -> Result<(), Error> {
    check_loaded(changes, loaded, |key| current.get(key))?;
    if changes.cleared {
        current.clear();
    }
    for (key, value) in &changes.keys {
        match value {
            Some(v) => {
                current.insert(key.clone(), v.clone());
            }
            None => {
                current.remove(key);
            }
        }
    }
    Ok(())
}

/// The conflict check of a save: with `loaded`, fails on the first changed
/// key whose value in the stored session (`stored` looks it up) is not the
/// one the request loaded.
pub(crate) fn check_loaded<'a>(
    changes: &Changes,
    loaded: Option<&[Option<Value>]>,
    stored: impl Fn(&str) -> Option<&'a Value>,
) -> Result<(), Error> {
    let Some(loaded) = matched(changes, loaded)? else {
        return Ok(());
    };
    match changes.keys.iter().zip(loaded).find(|((key, _), was)| stored(key) != was.as_ref()) {
        Some(((key, _), _)) => Err(conflict(key)),
        None => Ok(()),
    }
}

/// `loaded`, if it holds one value per changed key. Values that do not go
/// with the changes are a caller's bug, reported before anything is written.
fn matched<'a>(changes: &Changes, loaded: Option<&'a [Option<Value>]>) -> Result<Option<&'a [Option<Value>]>, Error> {
    match loaded {
        Some(values) if values.len() != changes.keys.len() => {
            let what = format!("Update::loaded holds {} values for {} changed keys", values.len(), changes.keys.len());
            Err(Error::new(ErrorKind::Encode, format!("{what}: give one per entry of Changes::keys, in its order")))
        }
        loaded => Ok(loaded),
    }
}

/// The error of a save refused because `key` changed since it was loaded.
pub(crate) fn conflict(key: &str) -> Error {
    Error::new(ErrorKind::Conflict, format!("session key {key:?} was changed by another request"))
}

/// A place to keep server-side sessions.
///
/// Every method is atomic with respect to the others on the same id. Ids
/// reaching a store have been validated ([`SessionId`]); expired sessions
/// are never returned by [`load`](Store::load). The conformance suite
/// (`hipflask-conformance`) checks all of this for each implementation.
pub trait Store: Send + Sync + fmt::Debug + std::any::Any {
    /// The session, if it exists and has not expired at `now`.
    fn load<'a>(&'a self, id: &'a SessionId, now: u64) -> StoreFuture<'a, Option<Record>>;

    /// Stores a new session. `record.created_at` is the current time, so
    /// stores with native expiry set a TTL of `expires_at - created_at`.
    /// Fails with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) if the
    /// id is taken (which with 256-bit random ids means a bug).
    fn create<'a>(&'a self, id: &'a SessionId, record: Record) -> StoreFuture<'a, ()>;

    /// Applies an update atomically with [`apply_changes`] to the session as
    /// stored now. A session that no longer exists is not recreated.
    fn update<'a>(&'a self, id: &'a SessionId, update: &'a Update, now: u64) -> StoreFuture<'a, Updated>;

    /// [`load`](Store::load) answered without waiting, when this store can:
    /// an in-process store always, a store with a local cache on a hit.
    /// `None` (the default) means call `load`. When `Some`, it is exactly
    /// what `load` would give, so callers skip `load`'s boxed future.
    fn load_now(&self, id: &SessionId, now: u64) -> Option<Result<Option<Record>, Error>> {
        let _ = (id, now);
        None
    }

    /// [`update`](Store::update) done without waiting, when this store can
    /// (an in-process store); `None` (the default) means call `update`, and
    /// then nothing was written.
    fn update_now(&self, id: &SessionId, update: &Update, now: u64) -> Option<Result<Updated, Error>> {
        let _ = (id, update, now);
        None
    }

    /// Deletes a session; `true` if it existed.
    fn delete<'a>(&'a self, id: &'a SessionId) -> StoreFuture<'a, bool>;

    /// Deletes every session expired at `now`; returns how many.
    fn delete_expired(&self, now: u64) -> StoreFuture<'_, u64>;

    /// The ids of all live sessions at `now` (for admin tools).
    fn list(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>>;

    /// The ids of the live sessions whose user key holds `user`.
    fn sessions_of_user<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, Vec<SessionId>>;

    /// Deletes every session of `user` ("log out everywhere"); returns how many.
    fn delete_user<'a>(&'a self, user: &'a str) -> StoreFuture<'a, u64>;
}

/// The user a session belongs to for the per-user index: the text of the
/// value under `user_key` (a string, or an integer as Flask-Login stores ids).
pub fn user_of(data: &Dict, user_key: &str) -> Option<String> {
    user_of_value(data.get(user_key)?)
}

/// [`user_of`] for the value already looked up.
pub(crate) fn user_of_value(value: &Value) -> Option<String> {
    match value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::BigInt(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A SQL `LIKE` pattern matching keys that start with `prefix`, taken
/// literally (`%`, `_` and `\\` escaped with `\\`, the default escape of
/// PostgreSQL, MySQL and SQLite with `ESCAPE '\\'`). For SQL stores that keep
/// `SESSION_KEY_PREFIX + id` as the key.
///
/// ```
/// assert_eq!(hipflask::sql_like_prefix("app_%:"), "app\\_\\%:%");
/// ```
pub fn sql_like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}
