//! The dict-like session of one request.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};
use crate::memory::{Compact, Key, MemoryStore};
use crate::sid::SessionId;
use crate::store::{Changes, Updated};
use crate::value::{Dict, Value};

/// The key Flask stores permanence under.
pub const PERMANENT_KEY: &str = "_permanent";
/// The key Flask stores flashed messages under.
pub const FLASHES_KEY: &str = "_flashes";

/// The session of one request: Flask's `session`, as a cheap, cloneable handle.
///
/// Every clone refers to the same data, so a handle can be moved into tasks
/// and held across `.await`; each method takes an internal lock only for the
/// duration of the call.
///
/// Change tracking follows Flask exactly: `insert`, `remove` of a present key,
/// `clear` (always), `set_permanent` and `mark_modified` set
/// [`is_modified`](Session::is_modified); reading never does. Changing a nested
/// value in place through [`with_value_mut`](Session::with_value_mut) is not
/// detected, just as `session["cart"].append(x)` is not in Flask: call
/// [`mark_modified`](Session::mark_modified) afterwards.
///
/// ```
/// use hipflask::Session;
///
/// let session = Session::new();
/// session.insert("user", "poloyy")?;
/// session.insert("visits", 3)?;
/// assert_eq!(session.get::<String>("user").as_deref(), Some("poloyy"));
/// assert_eq!(session.get::<u32>("missing"), None);
/// assert!(session.require::<u32>("user").is_err()); // a str, not an int
/// assert_eq!(session.remove_as::<u32>("visits")?, Some(3));
/// assert!(session.is_modified());
/// # Ok::<(), hipflask::Error>(())
/// ```
#[derive(Clone)]
pub struct Session(Arc<Mutex<Inner>>);

struct Inner {
    /// The entries, unless `layer` holds them.
    map: Data,
    /// A memory store's session, until something beyond reads, sets and
    /// removes (see [`Layered`]).
    layer: Option<Layered>,
    modified: bool,
    accessed: bool,
    new: bool,
    /// Messages taken out of `_flashes` by the first `get_flashed_messages`
    /// call, kept for later calls in the same request as Flask does.
    flashes: Option<Vec<Flash>>,
    /// The keys this request changed, and with conflict detection on the
    /// values they had in the store, in key order (see `Note`).
    notes: Vec<Note>,
    /// Conflict detection is on: note each key's stored value.
    keep_originals: bool,
    /// No notes are kept: a cookie session opened by [`Config`](crate::Config)
    /// is written whole, so a note per changed key (an allocation on the
    /// first write of every request) would only be thrown away.
    untracked: bool,
    cleared: bool,
    /// Server-side state; `None` for cookie sessions.
    server: Option<Server>,
}

/// The session's entries: its own, or shared with the cookie codec's cache
/// of verified cookies until the first change. A read of a cached cookie
/// then copies nothing; the copy happens at the first write, which was going
/// to copy anyway.
enum Data {
    Owned(Dict),
    Shared(Arc<Dict>),
}

/// A [`MemoryStore`] session: the stored record, shared with the store
/// rather than copied into a map, and the keys this request set or removed.
/// A request that reads copies nothing, and one that sets a key or two
/// copies only those; at the save the store changes its record in place
/// (see [`MemoryStore::update_shared`]).
///
/// The record never changes while a session holds it, so it is also the
/// session as loaded: the values conflicts are checked against, with no
/// notes kept. Any use beyond reading, setting, removing and the save
/// turns the session into an owned map with notes (see `Inner::unlayer`);
/// while a session is layered, its `map` is an empty map that nothing reads.
struct Layered {
    base: Compact,
    /// Each key set (`Some`) or removed (`None`), in key order; a key of
    /// `base` is named by its position there.
    over: Over,
}

/// One key a layered session set (`Some`) or removed (`None`).
type Change = (Key, Option<Value>);

/// The changes of a layered session, held inline while there is one: the
/// usual write sets one key, and a vector for it cost an allocation on
/// every such request.
enum Over {
    Inline(Option<Change>),
    Heap(Vec<Change>),
}

impl Over {
    fn as_slice(&self) -> &[Change] {
        match self {
            Over::Inline(one) => one.as_slice(),
            Over::Heap(all) => all,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Change] {
        match self {
            Over::Inline(one) => one.as_mut_slice(),
            Over::Heap(all) => all,
        }
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Inserts `change` at position `i` (at most the length).
    fn insert(&mut self, i: usize, change: Change) {
        match self {
            Over::Inline(one) => match one.take() {
                None => *one = Some(change),
                Some(first) => {
                    let mut all = Vec::with_capacity(4);
                    all.push(first);
                    all.insert(i.min(1), change);
                    *self = Over::Heap(all);
                }
            },
            Over::Heap(all) => all.insert(i, change),
        }
    }

    fn clear(&mut self) {
        *self = Over::Inline(None);
    }

    fn into_vec(self) -> Vec<Change> {
        match self {
            Over::Inline(one) => one.into_iter().collect(),
            Over::Heap(all) => all,
        }
    }
}

impl Layered {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.over.as_slice().binary_search_by(|(k, _)| self.base.name(k).cmp(key))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        match self.find(key) {
            Ok(i) => self.over.as_slice()[i].1.as_ref(),
            Err(_) => self.base.get(key),
        }
    }

    /// Sets `key` to `value`; its name is copied only if `base` lacks it.
    fn set(&mut self, key: impl AsRef<str> + Into<String>, value: Value) {
        match self.find(key.as_ref()) {
            Ok(i) => self.over.as_mut_slice()[i].1 = Some(value),
            Err(i) => {
                let key = self.base.position(key.as_ref()).map_or_else(|| Key::New(key.into()), Key::Stored);
                self.over.insert(i, (key, Some(value)));
            }
        }
    }

    /// Removes `key`, returning its value: a change like any other.
    fn remove(&mut self, key: &str) -> Option<Value> {
        match self.find(key) {
            Ok(i) => self.over.as_mut_slice()[i].1.take(),
            Err(i) => {
                let at = self.base.position(key)?;
                let value = self.base.at(at).cloned();
                self.over.insert(i, (Key::Stored(at), None));
                value
            }
        }
    }

    /// Each change with its key's name, in key order.
    fn changes(&self) -> impl Iterator<Item = (&str, Option<&Value>)> {
        self.over.as_slice().iter().map(|(k, v)| (self.base.name(k), v.as_ref()))
    }

    /// The entries as one map.
    fn to_dict(&self) -> Dict {
        let mut dict = self.base.to_dict();
        for (key, value) in self.changes() {
            match value {
                Some(v) => dict.insert(key.to_owned(), v.clone()),
                None => dict.remove(key),
            };
        }
        dict
    }

    /// Whether no key but `_permanent` is present.
    fn falsy(&self) -> bool {
        let over = self.over.as_slice();
        let over_falsy = self.changes().all(|(k, v)| v.is_none() || k == PERMANENT_KEY);
        over_falsy
            && self.base.keys().all(|k| k == PERMANENT_KEY || matches!(self.find(k), Ok(i) if over[i].1.is_none()))
    }
}

impl Data {
    /// The entries for changing: a shared map is copied first.
    fn to_mut(&mut self) -> &mut Dict {
        if let Data::Shared(shared) = self {
            *self = Data::Owned(Dict::clone(shared));
        }
        match self {
            Data::Owned(dict) => dict,
            // Made owned just above; `make_mut` keeps this arm panic-free.
            Data::Shared(shared) => Arc::make_mut(shared),
        }
    }

    fn into_dict(self) -> Dict {
        match self {
            Data::Owned(dict) => dict,
            Data::Shared(shared) => Arc::unwrap_or_clone(shared),
        }
    }
}

impl std::ops::Deref for Data {
    type Target = Dict;

    fn deref(&self) -> &Dict {
        match self {
            Data::Owned(dict) => dict,
            Data::Shared(shared) => shared,
        }
    }
}

/// One key a request changed (or, after `clear`, that it dropped).
///
/// One list for both facts: a request usually changes a key or two, and a
/// set of changed keys beside a map of stored values cost four allocations
/// for the first changed key where this costs two (the list and the key).
struct Note {
    key: String,
    /// Changed since the last save: part of `changes()`.
    touched: bool,
    /// With conflict detection on: the value the store held (`None`:
    /// absent), noted just before the first change. Only changed keys are
    /// ever compared, so copying the whole session at load would be work
    /// thrown away on every request.
    original: Option<Option<Value>>,
}

impl Inner {
    fn get(&self, key: &str) -> Option<&Value> {
        match &self.layer {
            Some(layered) => layered.get(key),
            None => self.map.get(key),
        }
    }

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Turns a layered session into an owned map with a note for each
    /// changed key, as if it had been loaded into a map: for every use but
    /// reading, setting, removing and saving, which are rare enough to pay
    /// the copy.
    fn unlayer(&mut self) {
        let Some(layered) = self.layer.take() else { return };
        self.map = Data::Owned(layered.to_dict());
        let keep = self.keep_originals;
        let Layered { base, over } = layered;
        // A layered session keeps no notes: its record is what it loaded.
        self.notes = over
            .into_vec()
            .into_iter()
            .map(|(key, _)| {
                let key = base.name(&key).to_owned();
                let original = keep.then(|| base.get(&key).cloned());
                Note { key, touched: true, original }
            })
            .collect();
    }

    /// The entries as a map (a layered session becomes one).
    fn dict(&mut self) -> &Dict {
        self.unlayer();
        &self.map
    }

    /// The entries for changing (a layered or shared session is copied).
    fn dict_mut(&mut self) -> &mut Dict {
        self.unlayer();
        self.map.to_mut()
    }

    /// Records that `key` is about to change: call before changing it.
    fn will_change(&mut self, key: &str) {
        self.unlayer();
        if self.untracked {
            return;
        }
        match self.notes.binary_search_by(|n| n.key.as_str().cmp(key)) {
            // A key noted earlier already has its stored value.
            Ok(i) => self.notes[i].touched = true,
            Err(i) => {
                let original = self.keep_originals.then(|| self.map.get(key).cloned());
                self.notes.insert(i, Note { key: key.to_owned(), touched: true, original });
            }
        }
    }

    /// Sets `key` to `value`, noting the change as [`will_change`] does.
    /// The key moves into whichever of the note and the map needs a copy, and
    /// the stored value being replaced becomes the note's original: overwriting
    /// a key (the usual write) copies neither. Where nothing keeps the key
    /// (a layered or untracked session that has it already), it is never
    /// made a `String`.
    ///
    /// [`will_change`]: Inner::will_change
    fn set(&mut self, key: impl AsRef<str> + Into<String>, value: Value) {
        if let Some(layered) = &mut self.layer {
            layered.set(key, value);
            return;
        }
        if self.untracked {
            match self.map.to_mut().get_mut(key.as_ref()) {
                Some(slot) => *slot = value,
                None => {
                    self.map.to_mut().insert(key.into(), value);
                }
            }
            return;
        }
        self.set_noted(key.into(), value);
    }

    /// [`set`](Inner::set) for a session that keeps change notes; not
    /// generic, so every key type shares one copy of it.
    fn set_noted(&mut self, key: String, value: Value) {
        let unnoted = match self.notes.binary_search_by(|n| n.key.as_str().cmp(&key)) {
            Ok(i) => {
                self.notes[i].touched = true;
                None
            }
            Err(i) => Some(i),
        };
        let (key, original) = match self.map.to_mut().get_mut(&key) {
            Some(slot) => (key, Some(std::mem::replace(slot, value))),
            None => {
                let noted = unnoted.map(|_| key.clone());
                self.map.to_mut().insert(key, value);
                match noted {
                    Some(key) => (key, None),
                    None => return,
                }
            }
        };
        if let Some(i) = unnoted {
            let original = self.keep_originals.then_some(original);
            self.notes.insert(i, Note { key, touched: true, original });
        }
    }

    fn touched(&self) -> impl Iterator<Item = &Note> {
        self.notes.iter().filter(|n| n.touched)
    }

    fn untouch_all(&mut self) {
        for note in &mut self.notes {
            note.touched = false;
        }
    }
}

/// Server-side session state: which stored session this is.
#[derive(Clone, Debug)]
pub(crate) struct Server {
    pub(crate) id: SessionId,
    /// The stored record's times, when it was loaded from the store.
    pub(crate) stored: Option<(u64, u64)>,
    pub(crate) regenerate: bool,
    pub(crate) destroy: bool,
    /// Served while the store was failing (fail-open): never saved, so it
    /// cannot replace the visitor's real session once the store is back.
    pub(crate) read_only: bool,
}

/// What a server-side save looks at (see [`Session::save_state`]). Reading
/// a layered session for it leaves the session layered.
#[derive(Debug)]
pub(crate) struct SaveState {
    pub(crate) server: Server,
    pub(crate) modified: bool,
    pub(crate) accessed: bool,
    pub(crate) permanent: bool,
    /// "Falsy" as Flask-Session says: no key but `_permanent`, which ends
    /// the session.
    pub(crate) empty: bool,
    /// For a layered session, whether it has changes for the store (`None`:
    /// not layered).
    pub(crate) layered_changes: Option<bool>,
}

/// One flashed message with its category.
#[derive(Clone, Debug, PartialEq)]
pub struct Flash {
    /// The category (`"message"` unless another was given).
    pub category: String,
    /// The message: usually a string, but any value Flask can flash.
    pub message: Value,
}

impl Flash {
    /// The message as text (also for `Markup`); `None` for other values.
    pub fn text(&self) -> Option<&str> {
        self.message.as_str()
    }
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl fmt::Debug for Session {
    /// Shows the state and the keys, never the values: sessions hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut inner = self.raw();
        f.debug_struct("Session")
            .field("keys", &inner.dict().keys().collect::<Vec<_>>())
            .field("modified", &inner.modified)
            .field("accessed", &inner.accessed)
            .field("new", &inner.new)
            .finish()
    }
}

impl Session {
    /// A new, empty session.
    pub fn new() -> Session {
        Session::with_state(Dict::new(), true)
    }

    /// A session loaded from stored data (not new, not modified).
    pub fn from_dict(data: Dict) -> Session {
        Session::with_state(data, false)
    }

    fn with_state(data: Dict, new: bool) -> Session {
        Session::build(Data::Owned(data), None, new, None, false, false)
    }

    /// A new cookie session opened by [`Config`](crate::Config): keeps no
    /// notes of its changes (see `Inner::untracked`).
    pub(crate) fn new_cookie() -> Session {
        Session::build(Data::Owned(Dict::new()), None, true, None, false, true)
    }

    /// A cookie session read from the codec's cache: shares the cached
    /// entries until its first change, and keeps no notes of its changes.
    pub(crate) fn from_shared(data: Arc<Dict>) -> Session {
        Session::build(Data::Shared(data), None, false, None, false, true)
    }

    fn build(
        map: Data,
        layer: Option<Layered>,
        new: bool,
        server: Option<Server>,
        keep_originals: bool,
        untracked: bool,
    ) -> Session {
        Session(Arc::new(Mutex::new(Inner {
            untracked,
            map,
            layer,
            modified: false,
            accessed: false,
            new,
            flashes: None,
            notes: Vec::new(),
            keep_originals,
            cleared: false,
            server,
        })))
    }

    /// A server-side session: loaded (`stored` = its times) or new.
    pub(crate) fn server(data: Dict, id: SessionId, stored: Option<(u64, u64)>, keep_loaded: bool) -> Session {
        let server = Server { id, stored, regenerate: false, destroy: false, read_only: false };
        Session::build(Data::Owned(data), None, stored.is_none(), Some(server), keep_loaded, false)
    }

    /// A loaded [`MemoryStore`] session reading through the stored record
    /// (see [`Layered`]).
    pub(crate) fn layered(base: Compact, id: SessionId, stored: (u64, u64), keep_loaded: bool) -> Session {
        let server = Server { id, stored: Some(stored), regenerate: false, destroy: false, read_only: false };
        let layer = Layered { base, over: Over::Inline(None) };
        Session::build(Data::Owned(Dict::new()), Some(layer), false, Some(server), keep_loaded, false)
    }

    /// The lock without marking access: for the middleware's own reads.
    fn raw(&self) -> MutexGuard<'_, Inner> {
        // A panic in another holder cannot leave the map half-updated (every
        // change is a single map operation), so a poisoned lock is still sound.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock, marking the session accessed as any use of Flask's proxy does.
    fn touch(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.raw();
        inner.accessed = true;
        inner
    }

    /// Stores `value` under `key` (`session[key] = value`). Marks the session
    /// modified even when the value is unchanged, as Flask does.
    ///
    /// Fails only when `value` cannot be represented (e.g. a map whose keys
    /// are not strings, integers or bools); the session is then unchanged.
    pub fn insert<T: Serialize>(&self, key: impl AsRef<str> + Into<String>, value: T) -> Result<(), Error> {
        let value = crate::to_value(&value)?;
        self.insert_value(key, value);
        Ok(())
    }

    /// Stores a [`Value`] under `key`; infallible.
    pub fn insert_value(&self, key: impl AsRef<str> + Into<String>, value: Value) {
        let mut inner = self.touch();
        inner.set(key, value);
        inner.modified = true;
    }

    /// The value under `key` as `T` (`session.get(key)`): `None` when the key
    /// is missing or holds another type. Use [`require`](Session::require) to
    /// tell those apart.
    pub fn get<T: DeserializeOwned + 'static>(&self, key: &str) -> Option<T> {
        self.require(key).ok()
    }

    /// The value under `key` as `T` (`session[key]`), failing with
    /// [`ErrorKind::MissingKey`] or [`ErrorKind::Decode`].
    pub fn require<T: DeserializeOwned + 'static>(&self, key: &str) -> Result<T, Error> {
        let inner = self.touch();
        let value = inner
            .get(key)
            .ok_or_else(|| Error::new(ErrorKind::MissingKey, format!("the session has no key {key:?}")))?;
        convert(key, value)
    }

    /// A copy of the raw value under `key`.
    pub fn get_value(&self, key: &str) -> Option<Value> {
        self.touch().get(key).cloned()
    }

    /// Runs `f` on the value under `key` in place and returns its result.
    ///
    /// Like mutating a nested object in Flask, this does **not** mark the
    /// session modified: call [`mark_modified`](Session::mark_modified) when
    /// the change must be saved.
    pub fn with_value_mut<R>(&self, key: &str, f: impl FnOnce(&mut Value) -> R) -> Option<R> {
        let mut inner = self.touch();
        if !inner.contains_key(key) {
            return None;
        }
        // Saved only if the session is marked modified, as in Flask.
        inner.will_change(key);
        inner.dict_mut().get_mut(key).map(f)
    }

    /// `session.setdefault(key, default)`: the value under `key`, inserting
    /// `default` first when the key is missing (which marks the session modified).
    pub fn setdefault(&self, key: &str, default: impl Into<Value>) -> Value {
        let mut inner = self.touch();
        if let Some(v) = inner.get(key) {
            return v.clone();
        }
        let v = default.into();
        inner.will_change(key);
        inner.dict_mut().insert(key.to_owned(), v.clone());
        inner.modified = true;
        v
    }

    /// Removes `key` and returns its value (`session.pop(key, None)`). Marks
    /// the session modified only when the key was present.
    pub fn remove(&self, key: &str) -> Option<Value> {
        let mut inner = self.touch();
        if !inner.contains_key(key) {
            return None;
        }
        inner.modified = true;
        if let Some(layered) = &mut inner.layer {
            return layered.remove(key);
        }
        inner.will_change(key);
        inner.dict_mut().remove(key)
    }

    /// Removes `key` and returns its value as `T`. When the value is not a
    /// `T`, it stays in the session and the error says so; no data is lost.
    pub fn remove_as<T: DeserializeOwned + 'static>(&self, key: &str) -> Result<Option<T>, Error> {
        let mut inner = self.touch();
        let Some(value) = inner.get(key) else {
            return Ok(None);
        };
        let typed = convert(key, value)?;
        inner.will_change(key);
        inner.dict_mut().remove(key);
        inner.modified = true;
        Ok(Some(typed))
    }

    /// Whether `key` is in the session (`key in session`).
    pub fn contains_key(&self, key: &str) -> bool {
        self.touch().contains_key(key)
    }

    /// The keys, in sorted order.
    pub fn keys(&self) -> Vec<String> {
        self.touch().dict().keys().cloned().collect()
    }

    /// A snapshot of every entry, in key order.
    pub fn iter(&self) -> std::collections::btree_map::IntoIter<String, Value> {
        self.to_dict().into_iter()
    }

    /// A copy of the whole session.
    pub fn to_dict(&self) -> Dict {
        Dict::clone(self.touch().dict())
    }

    /// The number of keys (`_permanent` and `_flashes` included, as in Flask).
    pub fn len(&self) -> usize {
        self.touch().dict().len()
    }

    /// Whether the session has no keys.
    pub fn is_empty(&self) -> bool {
        self.touch().dict().is_empty()
    }

    /// Removes everything. Always marks the session modified, so the
    /// response deletes the cookie even when the session was already empty.
    pub fn clear(&self) {
        let mut inner = self.touch();
        let inner = &mut *inner;
        inner.unlayer();
        let data = std::mem::replace(&mut inner.map, Data::Owned(Dict::new())).into_dict();
        inner.untouch_all();
        if inner.keep_originals {
            // Every key present now is noted with its value; a key touched
            // later that is not noted was therefore absent when loaded.
            for (key, value) in data {
                if let Err(i) = inner.notes.binary_search_by(|n| n.key.cmp(&key)) {
                    inner.notes.insert(i, Note { key, touched: false, original: Some(Some(value)) });
                }
            }
        }
        inner.cleared = true;
        inner.modified = true;
    }

    /// Ends the session: server-side, the stored session is deleted when the
    /// response is sent and the cookie is deleted (call it at logout). With
    /// the cookie backend this is [`clear`](Session::clear).
    pub fn destroy(&self) {
        self.clear();
        if let Some(server) = self.raw().server.as_mut() {
            server.destroy = true;
        }
    }

    /// Gives the session a new id, keeping its data, and deletes the old
    /// one: call it at login against session fixation. Server-side only; with
    /// the cookie backend (which has no id) it only marks the session modified.
    pub fn regenerate(&self) {
        let mut inner = self.touch();
        inner.modified = true;
        if let Some(server) = inner.server.as_mut() {
            server.regenerate = true;
            server.destroy = false;
        }
    }

    /// The server-side session id (`None` with the cookie backend). A
    /// secret: never log it whole.
    pub fn id(&self) -> Option<SessionId> {
        self.raw().server.as_ref().map(|s| s.id.clone())
    }

    /// Whether the session outlives the browser session (`session.permanent`):
    /// the truthiness of the `_permanent` key.
    pub fn permanent(&self) -> bool {
        self.touch().get(PERMANENT_KEY).is_some_and(Value::is_truthy)
    }

    /// Sets `session.permanent`. Like Flask, `false` stores `"_permanent": false`
    /// rather than removing the key.
    pub fn set_permanent(&self, permanent: bool) {
        self.insert_value(PERMANENT_KEY, Value::Bool(permanent));
    }

    /// Whether no valid session came with the request. (Flask's cookie
    /// sessions always say `False`; this follows Flask-Session's meaning.)
    pub fn is_new(&self) -> bool {
        self.raw().new
    }

    /// Whether the session will be written back.
    pub fn is_modified(&self) -> bool {
        self.raw().modified
    }

    /// Whether the handler used the session at all (drives `Vary: Cookie`).
    pub fn is_accessed(&self) -> bool {
        self.raw().accessed
    }

    /// `session.modified = True`: save the session even though no key was
    /// assigned, e.g. after changing a nested value in place.
    pub fn mark_modified(&self) {
        self.touch().modified = true;
    }

    /// Flask's `flash(message, category)`: appends `(category, message)` to
    /// `_flashes`, shown by the next `get_flashed_messages`.
    ///
    /// ```
    /// let session = hipflask::Session::new();
    /// session.flash("Logged in", "message");
    /// session.flash("Bad thing", "error");
    /// let errors = session.get_flashed_messages(&["error"]);
    /// assert_eq!(errors[0].text(), Some("Bad thing"));
    /// assert!(!session.contains_key("_flashes")); // all were consumed
    /// ```
    pub fn flash(&self, message: impl Into<Value>, category: &str) {
        let entry = Value::Tuple(vec![Value::Str(category.to_owned()), message.into()]);
        let mut inner = self.touch();
        inner.will_change(FLASHES_KEY);
        match inner.dict_mut().get_mut(FLASHES_KEY) {
            Some(Value::List(list)) => list.push(entry),
            _ => {
                inner.dict_mut().insert(FLASHES_KEY.to_owned(), Value::List(vec![entry]));
            }
        }
        inner.modified = true;
    }

    /// Flask's `get_flashed_messages(category_filter=...)`: the flashed
    /// messages whose category is in `categories` (all when it is empty).
    ///
    /// The first call in a request removes **all** messages from the session,
    /// whatever the filter, and later calls in the same request see the same
    /// list, exactly as Flask behaves.
    pub fn get_flashed_messages(&self, categories: &[&str]) -> Vec<Flash> {
        let mut inner = self.touch();
        if inner.flashes.is_none() {
            // Looked up first: a session shared with the cookie cache is
            // copied only when there is something to take out.
            let taken = if inner.contains_key(FLASHES_KEY) {
                inner.will_change(FLASHES_KEY);
                inner.modified = true;
                inner.dict_mut().remove(FLASHES_KEY)
            } else {
                None
            };
            inner.flashes = Some(taken.as_ref().map(parse_flashes).unwrap_or_default());
        }
        let all = inner.flashes.as_deref().unwrap_or_default();
        all.iter().filter(|f| categories.is_empty() || categories.contains(&f.category.as_str())).cloned().collect()
    }

    /// What this request changed, key by key, with the final values: what a
    /// store applies to the stored session (see [`Changes`]). Empty unless
    /// the session is modified. A cookie session opened by
    /// [`Config::open`](crate::Config::open) is written whole and keeps no
    /// per-key notes: its changes are the whole session, `cleared` and every
    /// key set.
    pub fn changes(&self) -> Changes {
        self.changes_and_loaded(false).0
    }

    /// [`changes`](Session::changes), and with `loaded` and conflict
    /// detection on, each changed key's value as loaded (`None`: absent), in
    /// the order of the changes: what a store compares before writing (see
    /// [`Update::loaded`](crate::Update::loaded)).
    pub(crate) fn changes_and_loaded(&self, loaded: bool) -> (Changes, Option<Vec<Option<Value>>>) {
        let inner = self.raw();
        let loaded = loaded && inner.keep_originals;
        if !inner.modified {
            return (Changes::default(), loaded.then(Vec::new));
        }
        if inner.untracked {
            let keys = inner.map.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            return (Changes { cleared: true, keys }, loaded.then(Vec::new));
        }
        if let Some(layered) = &inner.layer {
            let originals = loaded.then(|| layered.changes().map(|(k, _)| layered.base.get(k).cloned()).collect());
            let keys = layered.changes().map(|(k, v)| (k.to_owned(), v.cloned())).collect();
            return (Changes { cleared: false, keys }, originals);
        }
        let mut keys = Vec::new();
        let mut originals = Vec::new();
        for note in inner.touched() {
            keys.push((note.key.clone(), inner.map.get(&note.key).cloned()));
            if loaded {
                // Every touched key was noted before its change (`will_change`),
                // with its original since `keep_originals` is on.
                originals.push(note.original.clone().flatten());
            }
        }
        (Changes { cleared: inner.cleared, keys }, loaded.then_some(originals))
    }

    /// For a server-side session this request did not change (no writes, no
    /// destroy or regenerate): whether it was accessed, and the stored
    /// record's times unless it is a read-only (fail-open) session, which is
    /// never written. `None` when a save has work to do, or for cookies.
    pub(crate) fn unchanged_server(&self) -> Option<(bool, Option<(u64, u64)>)> {
        let inner = self.raw();
        let server = inner.server.as_ref()?;
        if inner.modified || server.destroy || server.regenerate {
            return None;
        }
        Some((inner.accessed, if server.read_only { None } else { server.stored }))
    }

    /// An empty session that is never saved, for fail-open reads.
    pub(crate) fn read_only_server() -> Session {
        let s = Session::server(Dict::new(), SessionId::generate(), None, false);
        if let Some(server) = s.raw().server.as_mut() {
            server.read_only = true;
        }
        s
    }

    /// Everything a server-side save decides on, read under one lock.
    /// `None` for cookie sessions.
    pub(crate) fn save_state(&self) -> Option<SaveState> {
        let inner = self.raw();
        let server = inner.server.clone()?;
        let permanent = inner.get(PERMANENT_KEY).is_some_and(Value::is_truthy);
        let empty = match &inner.layer {
            Some(layered) => layered.falsy(),
            None => inner.map.keys().all(|k| k == PERMANENT_KEY),
        };
        let layered_changes = inner.layer.as_ref().map(|l| inner.modified && !l.over.is_empty());
        Some(SaveState {
            server,
            modified: inner.modified,
            accessed: inner.accessed,
            permanent,
            empty,
            layered_changes,
        })
    }

    /// Forgets this request's unsaved changes, so nothing is written when the
    /// response is sent (the values stay readable through this handle). Used
    /// after a save the store refused, so the handler's answer stands.
    pub fn discard_changes(&self) {
        let mut inner = self.raw();
        inner.unlayer();
        inner.modified = false;
        inner.cleared = false;
        inner.untouch_all();
        if let Some(server) = inner.server.as_mut() {
            server.regenerate = false;
            server.destroy = false;
        }
    }

    /// Records that the store now holds this session as it is (under `id`,
    /// with these times; `None` when it was deleted), so a later save in the
    /// same request applies only what changes after this point.
    pub(crate) fn mark_saved(&self, id: SessionId, stored: Option<(u64, u64)>) {
        let mut inner = self.raw();
        inner.modified = false;
        inner.cleared = false;
        inner.new = stored.is_none();
        // The store now holds the data as it is: later changes compare to that.
        // A layered session whose changes the store took in has nothing over
        // its record; one with changes left becomes a map holding them.
        if inner.layer.as_ref().is_some_and(|l| !l.over.is_empty()) {
            inner.unlayer();
        }
        inner.notes.clear();
        if let Some(server) = inner.server.as_mut() {
            server.id = id;
            server.stored = stored;
            server.regenerate = false;
            server.destroy = false;
        }
    }

    /// Runs `f` over the data and flags, for the middleware: without
    /// copying, except that a layered session becomes a map.
    pub(crate) fn inspect<R>(&self, f: impl FnOnce(&Dict, bool, bool) -> R) -> R {
        let mut inner = self.raw();
        let (modified, accessed) = (inner.modified, inner.accessed);
        f(inner.dict(), modified, accessed)
    }

    /// The save of a layered session, in place: hands the store this
    /// request's changes and the record the session reads through, and takes
    /// back the record to read through after (see
    /// [`MemoryStore::update_shared`]). `None` when the session is not
    /// layered. The session stays locked throughout, so no other handle sees
    /// it half saved.
    pub(crate) fn update_layered(
        &self,
        store: &MemoryStore,
        id: &SessionId,
        expires_at: u64,
        now: u64,
    ) -> Option<Result<Updated, Error>> {
        let mut inner = self.raw();
        let check = inner.keep_originals;
        let Layered { base, mut over } = inner.layer.take()?;
        // The changed values move to the store when it takes them in place.
        let (answer, base, folded) = store.update_shared(id, over.as_mut_slice(), expires_at, base, check, now);
        if folded {
            // The record now holds exactly this view.
            over.clear();
        }
        inner.layer = Some(Layered { base, over });
        Some(answer)
    }
}

fn parse_flashes(value: &Value) -> Vec<Flash> {
    let Some(items) = value.as_list() else {
        tracing::warn!("ignoring `_flashes` that is not a list");
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item.as_list() {
            // Tuples from cookies, two-item lists from Flask-Session's msgpack.
            Some([Value::Str(category), message]) => {
                Some(Flash { category: category.clone(), message: message.clone() })
            }
            _ => {
                tracing::warn!("ignoring a malformed entry in `_flashes`");
                None
            }
        })
        .collect()
}

/// Reads a value as `T`, with a shortcut that makes `T = Value` exact.
fn convert<T: DeserializeOwned + 'static>(key: &str, value: &Value) -> Result<T, Error> {
    if let Some(v) = (value as &dyn Any).downcast_ref::<T>() {
        // T is Value itself: hand over a copy, with no serde round trip.
        return Ok(clone_any(v));
    }
    crate::from_value(value).map_err(|e| {
        Error::new(
            ErrorKind::Decode,
            format!(
                "session key {key:?} holds a {} that cannot be read as {}: {e}",
                value.type_name(),
                std::any::type_name::<T>()
            ),
        )
    })
}

fn clone_any<T: 'static>(v: &T) -> T {
    // Only reached when T is Value (checked by the caller's downcast).
    let any: &dyn Any = v;
    let value: &Value = any.downcast_ref().expect("T is Value");
    let boxed: Box<dyn Any> = Box::new(value.clone());
    *boxed.downcast::<T>().expect("T is Value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(pairs: &[(&str, i64)]) -> Session {
        let data: Dict = pairs.iter().map(|(k, v)| ((*k).to_owned(), Value::Int(*v))).collect();
        Session::server(data, SessionId::generate(), Some((0, 100)), true)
    }

    fn ints(pairs: &[(&str, i64)]) -> Dict {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), Value::Int(*v))).collect()
    }

    /// The changed keys, each with its value as loaded (an int, or `None`
    /// when it was absent); `None` without conflict detection.
    fn loaded_values(s: &Session) -> Option<Vec<(String, Option<i64>)>> {
        let (changes, loaded) = s.changes_and_loaded(true);
        let loaded = loaded?;
        assert_eq!(loaded.len(), changes.keys.len(), "one loaded value per change");
        let int = |v: Option<Value>| v.map(|v| v.as_i64().expect("an int"));
        Some(changes.keys.into_iter().zip(loaded).map(|((k, _), v)| (k, int(v))).collect())
    }

    fn was(pairs: &[(&str, Option<i64>)]) -> Option<Vec<(String, Option<i64>)>> {
        Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
    }

    /// Whatever path changes a key, the value compared for conflicts is the
    /// one the store held, and only changed keys are carried.
    #[test]
    fn loaded_values_are_the_stored_values_of_changed_keys() {
        let s = loaded(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        assert_eq!(loaded_values(&s), was(&[]), "nothing changed");
        s.insert_value("a", Value::Int(10));
        s.insert_value("a", Value::Int(11));
        assert_eq!(s.remove("b"), Some(Value::Int(2)));
        s.with_value_mut("c", |v| *v = Value::Int(30));
        s.setdefault("new", 5);
        s.flash("hi", "message");
        let flashes = ("_flashes", None);
        let new = ("new", None);
        assert_eq!(loaded_values(&s), was(&[flashes, ("a", Some(1)), ("b", Some(2)), ("c", Some(3)), new]));
        assert_eq!(s.remove_as::<i64>("d").unwrap(), Some(4));
        let all = [flashes, ("a", Some(1)), ("b", Some(2)), ("c", Some(3)), ("d", Some(4)), new];
        assert_eq!(loaded_values(&s), was(&all));
    }

    /// Setting a stored key and a new one: both are changes with their final
    /// values, both are readable, and only the stored one has an original.
    #[test]
    fn set_keys_are_changes_whether_they_were_stored_or_new() {
        for keep in [true, false] {
            let s = Session::server(ints(&[("a", 1)]), SessionId::generate(), Some((0, 100)), keep);
            s.insert_value("a", Value::Int(2));
            s.insert_value("n", Value::Int(3));
            s.insert_value("n", Value::Int(4));
            let changes = s.changes();
            assert_eq!(changes.keys, vec![("a".into(), Some(Value::Int(2))), ("n".into(), Some(Value::Int(4)))]);
            assert_eq!((s.get::<i64>("a"), s.get::<i64>("n")), (Some(2), Some(4)));
            assert_eq!(loaded_values(&s), was(&[("a", Some(1)), ("n", None)]).filter(|_| keep));
        }
    }

    #[test]
    fn after_clear_keys_compare_to_what_was_stored_before_it() {
        let s = loaded(&[("a", 1), ("b", 2)]);
        s.insert_value("a", Value::Int(10));
        s.clear();
        s.insert_value("a", Value::Int(20));
        s.insert_value("b", Value::Int(21));
        s.insert_value("z", Value::Int(22));
        // `a` keeps its value from before the first change, `z` was absent.
        assert_eq!(loaded_values(&s), was(&[("a", Some(1)), ("b", Some(2)), ("z", None)]));
        s.mark_saved(SessionId::generate(), Some((0, 100)));
        s.insert_value("z", Value::Int(23));
        assert_eq!(loaded_values(&s), was(&[("z", Some(22))]), "a save moves the baseline");
    }

    #[test]
    fn taking_flashes_notes_them_and_no_tracking_means_none() {
        let s = Session::server(Dict::new(), SessionId::generate(), Some((0, 100)), true);
        s.flash("one", "message");
        s.mark_saved(SessionId::generate(), Some((0, 100)));
        assert_eq!(s.get_flashed_messages(&[]).len(), 1);
        let (changes, noted) = s.changes_and_loaded(true);
        assert_eq!(changes.keys.len(), 1, "{changes:?}");
        assert_eq!(changes.keys[0].0, "_flashes");
        assert!(matches!(noted.as_deref(), Some([Some(Value::List(_))])), "{noted:?}");
        let untracked = Session::server(ints(&[("a", 1)]), SessionId::generate(), Some((0, 100)), false);
        untracked.insert_value("a", Value::Int(2));
        assert_eq!(loaded_values(&untracked), None);
    }

    /// One thing a handler can do to a session, for the layered test below.
    #[derive(Clone, Debug)]
    enum Op {
        Get(&'static str),
        Insert(&'static str, i64),
        Remove(&'static str),
        RemoveAs(&'static str),
        SetDefault(&'static str, i64),
        Nested(&'static str),
        Flash,
        TakeFlashes,
        Permanent(bool),
        Clear,
        Keys,
        Len,
        MarkModified,
        Discard,
        Saved,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let key = proptest::sample::select(vec!["a", "b", "c", PERMANENT_KEY, FLASHES_KEY]);
        let int = 0i64..3;
        prop_oneof![
            3 => key.clone().prop_map(Op::Get),
            4 => (key.clone(), int.clone()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => key.clone().prop_map(Op::Remove),
            1 => key.clone().prop_map(Op::RemoveAs),
            1 => (key.clone(), int).prop_map(|(k, v)| Op::SetDefault(k, v)),
            1 => key.prop_map(Op::Nested),
            1 => Just(Op::Flash),
            1 => Just(Op::TakeFlashes),
            1 => any::<bool>().prop_map(Op::Permanent),
            1 => Just(Op::Clear),
            1 => Just(Op::Keys),
            1 => Just(Op::Len),
            1 => Just(Op::MarkModified),
            1 => Just(Op::Discard),
            1 => Just(Op::Saved),
        ]
    }

    /// What `op` returned, and the session's state after it, as text.
    fn run(s: &Session, op: &Op) -> String {
        let answer = match op {
            Op::Get(k) => format!("{:?}", s.get_value(k)),
            Op::Insert(k, v) => format!("{:?}", s.insert_value(*k, Value::Int(*v))),
            Op::Remove(k) => format!("{:?}", s.remove(k)),
            Op::RemoveAs(k) => format!("{:?}", s.remove_as::<i64>(k).map_err(|e| e.kind())),
            Op::SetDefault(k, v) => format!("{:?}", s.setdefault(k, *v)),
            Op::Nested(k) => format!("{:?}", s.with_value_mut(k, |v| *v = Value::Int(9))),
            Op::Flash => format!("{:?}", s.flash("hi", "message")),
            Op::TakeFlashes => format!("{:?}", s.get_flashed_messages(&[])),
            Op::Permanent(on) => format!("{:?}", s.set_permanent(*on)),
            Op::Clear => format!("{:?}", s.clear()),
            Op::Keys => format!("{:?}", s.keys()),
            Op::Len => format!("{:?}", (s.len(), s.is_empty(), s.permanent())),
            Op::MarkModified => format!("{:?}", s.mark_modified()),
            Op::Discard => format!("{:?}", s.discard_changes()),
            Op::Saved => format!("{:?}", s.mark_saved(SessionId::generate(), Some((0, 100)))),
        };
        let (changes, loaded) = s.changes_and_loaded(true);
        let flags = s.save_state().map(|st| (st.modified, st.accessed, st.permanent, st.empty));
        format!("{answer} | {:?} {:?} {flags:?} {}", changes, loaded, s.is_modified())
    }

    fn stored() -> impl proptest::strategy::Strategy<Value = Dict> {
        use proptest::prelude::*;
        let key = proptest::sample::select(vec!["a", "b", "c", PERMANENT_KEY]).prop_map(str::to_owned);
        proptest::collection::btree_map(key, (0i64..3).prop_map(Value::Int), 0..4)
    }

    proptest::proptest! {
        /// A memory-store session that reads through the stored record
        /// answers every call, reports every change and every loaded value,
        /// exactly as one loaded into a map does, whatever the handler does.
        #[test]
        fn a_layered_session_behaves_as_a_loaded_map(
            data in stored(),
            ops in proptest::collection::vec(op(), 0..12),
            keep in proptest::bool::ANY,
        ) {
            let id = SessionId::generate();
            let map = Session::server(data.clone(), id.clone(), Some((0, 100)), keep);
            let layered = Session::layered(Compact::new(data), id, (0, 100), keep);
            for op in &ops {
                proptest::prop_assert_eq!(run(&layered, op), run(&map, op), "after {:?}", op);
            }
            proptest::prop_assert_eq!(layered.to_dict(), map.to_dict());
        }
    }
}
