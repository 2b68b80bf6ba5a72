//! Opening and saving server-side sessions: the cookie holds only the id.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::config::{Config, SaveOutcome};
use crate::error::Error;
use crate::memory::MemoryStore;
use crate::session::{PERMANENT_KEY, SaveState, Session};
use crate::sid::{SessionId, SidSigner};
use crate::store::{Changes, ConflictPolicy, Record, Store, Update, Updated, apply_changes};
use crate::value::{Dict, Value};

/// Settings of server-side sessions.
#[derive(Clone, Debug)]
pub(crate) struct ServerSide {
    pub(crate) store: Arc<dyn Store>,
    /// `store`, when it is a [`MemoryStore`]: its sessions read through the
    /// stored record instead of a copy (see `Session::layered`).
    pub(crate) memory: Option<Arc<MemoryStore>>,
    pub(crate) signer: Option<SidSigner>,
    pub(crate) permanent_default: bool,
    /// Seconds after its last refresh before an unchanged session's expiry
    /// is pushed back again.
    pub(crate) refresh_after: u64,
    pub(crate) absolute_timeout: Option<u64>,
    pub(crate) conflict: ConflictPolicy,
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) fail_open: bool,
}

impl ServerSide {
    fn cookie_value<'a>(&self, id: &'a SessionId) -> std::borrow::Cow<'a, str> {
        match &self.signer {
            Some(s) => s.sign(id.as_str()).into(),
            None => id.as_str().into(),
        }
    }

    /// The id a cookie names, or `None` (with a warning) when it is malformed
    /// or its signature is bad.
    fn parse_cookie(&self, raw: &[u8]) -> Option<SessionId> {
        let id = match &self.signer {
            Some(signer) => {
                std::str::from_utf8(raw).ok().and_then(|text| signer.unsign(text)).and_then(SessionId::parse)
            }
            None => SessionId::parse_bytes(raw),
        };
        if id.is_none() {
            tracing::warn!(reason = "bad_session_id", "rejected session cookie; starting a new session");
        }
        id
    }

    /// Whether a session created at `created_at` is past the absolute
    /// timeout at `now`, however active it was.
    fn expired(&self, created_at: u64, now: u64) -> bool {
        self.absolute_timeout.is_some_and(|t| now >= created_at.saturating_add(t))
    }

    /// Whether saves refuse to overwrite keys changed since the load, so a
    /// loaded session keeps what it loaded to compare against.
    fn rejects_conflicts(&self) -> bool {
        self.conflict == ConflictPolicy::Reject
    }

    fn new_session(&self) -> Session {
        let mut data = Dict::new();
        if self.permanent_default {
            // Flask-Session marks new sessions permanent when they are made.
            data.insert(PERMANENT_KEY.to_owned(), Value::Bool(true));
        }
        Session::server(data, SessionId::generate(), None, false)
    }
}

/// The session a store's answer to a load gives.
fn opened(server: &Arc<ServerSide>, id: SessionId, now: u64, answer: Result<Option<Record>, Error>) -> LoadSession {
    let record = match answer {
        Ok(Some(record)) => record,
        Ok(None) => return LoadSession::ready(Ok(server.new_session())),
        Err(e) => return LoadSession::ready(Err(e)),
    };
    if server.expired(record.created_at, now) {
        return end_for_good(server, id);
    }
    let keep = server.rejects_conflicts();
    LoadSession::ready(Ok(Session::server(record.data, id, Some((record.created_at, record.expires_at)), keep)))
}

/// A session past the absolute timeout however active: deleted for good,
/// and a new one in its place.
fn end_for_good(server: &Arc<ServerSide>, id: SessionId) -> LoadSession {
    let server = Arc::clone(server);
    LoadSession::waiting(async move {
        server.store.delete(&id).await?;
        Ok(server.new_session())
    })
}

/// A store's answer, either given when the future was made or behind one
/// boxed future that owns what it needs.
///
/// Loads and saves that the store answers in place (the memory store, a
/// local cache hit, a request that only read) are the common case: they get
/// no boxed future, and the future that carries them is a few words. Axum
/// moves the future that loads the session into a box of its own with the
/// whole handler, so its size is paid on every request.
enum Answer<T> {
    Ready(Option<Result<T, Error>>),
    Waiting(Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>),
}

impl<T> Answer<T> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        match self {
            Answer::Ready(result) => Poll::Ready(result.take().expect("session future polled after completion")),
            Answer::Waiting(wait) => wait.as_mut().poll(cx),
        }
    }

    fn state(&self) -> &'static str {
        match self {
            Answer::Ready(_) => "ready",
            Answer::Waiting(_) => "waiting for the store",
        }
    }
}

/// The future of [`Config::load_session`].
///
/// Ready on its first poll, with no boxed future behind it, when the session
/// needs no store call (a cookie session, a new session) or the store
/// answers in place (the memory store, a local cache hit); otherwise it waits
/// for the store behind one boxed future.
#[must_use = "a load does nothing unless awaited"]
pub struct LoadSession(Answer<Session>);

impl LoadSession {
    pub(crate) fn ready(result: Result<Session, Error>) -> LoadSession {
        LoadSession(Answer::Ready(Some(result)))
    }

    fn waiting(load: impl Future<Output = Result<Session, Error>> + Send + 'static) -> LoadSession {
        LoadSession(Answer::Waiting(Box::pin(load)))
    }
}

impl Future for LoadSession {
    type Output = Result<Session, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll(cx)
    }
}

impl std::fmt::Debug for LoadSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LoadSession").field(&self.0.state()).finish()
    }
}

/// The future of [`Config::save_session`].
///
/// A save that needs no store call, or that the store answered in place, is
/// done when this is made and is ready on the first poll, with no boxed
/// future behind it: every request that only read, and most writes to the
/// memory store. Other saves wait for the store behind one boxed future
/// that owns what it needs (the configuration and a handle to the session).
#[must_use = "a save does nothing unless awaited"]
pub struct SaveSession(Answer<SaveOutcome>);

impl SaveSession {
    pub(crate) fn ready(result: Result<SaveOutcome, Error>) -> SaveSession {
        SaveSession(Answer::Ready(Some(result)))
    }

    pub(crate) fn waiting(save: impl Future<Output = Result<SaveOutcome, Error>> + Send + 'static) -> SaveSession {
        SaveSession(Answer::Waiting(Box::pin(save)))
    }
}

impl Future for SaveSession {
    type Output = Result<SaveOutcome, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll(cx)
    }
}

impl std::fmt::Debug for SaveSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SaveSession").field(&self.0.state()).finish()
    }
}

/// How far a save got without waiting for the store.
pub(crate) enum SaveStep {
    /// Finished: nothing to wait for.
    Done(Result<SaveOutcome, Error>),
    /// Everything is decided but the store's answer to the update.
    Update(PendingUpdate),
    /// A record is created, deleted or moved: the whole save waits.
    Wait(Slow),
}

/// The saves that create, delete or move a record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Slow {
    /// The session was destroyed or emptied.
    Destroy,
    /// A new session's first save.
    Create,
    /// The session moves to a new id.
    Regenerate,
}

/// An update sent to a store that could not answer in place, with what the
/// response needs once it does.
pub(crate) struct PendingUpdate {
    id: SessionId,
    update: Update,
    now: u64,
    created_at: u64,
    out: SaveOutcome,
    /// Whether the response carries the cookie again (a changed or permanent
    /// session).
    reissue: bool,
    cookie_expires: Option<i64>,
}

impl Config {
    /// Opens the session named by the request's cookie from the store. A
    /// missing, malformed, badly signed, unknown or expired id gives a new
    /// session with a **new** id (a client's id is never adopted).
    pub(crate) fn open_server(&self, server: &Arc<ServerSide>, cookie: Option<&[u8]>) -> LoadSession {
        let Some(id) = cookie.filter(|c| !c.is_empty()).and_then(|c| server.parse_cookie(c)) else {
            return LoadSession::ready(Ok(server.new_session()));
        };
        let now = self.now();
        if let Some(memory) = &server.memory {
            return match memory.load_shared(&id, now) {
                Some((record, created_at, expires_at)) if !server.expired(created_at, now) => {
                    let keep = server.rejects_conflicts();
                    LoadSession::ready(Ok(Session::layered(record, id, (created_at, expires_at), keep)))
                }
                Some(_) => end_for_good(server, id),
                None => LoadSession::ready(Ok(server.new_session())),
            };
        }
        if let Some(answer) = server.store.load_now(&id, now) {
            return opened(server, id, now, answer);
        }
        let server = Arc::clone(server);
        LoadSession::waiting(async move {
            let answer = server.store.load(&id, now).await;
            opened(&server, id, now, answer).await
        })
    }

    /// The save of a server-side session that needs no store call: nothing
    /// changed and no expiry refresh is due. `None` means call `save_server`.
    pub(crate) fn save_server_in_place(&self, server: &ServerSide, session: &Session) -> Option<SaveOutcome> {
        let (accessed, stored) = session.unchanged_server()?;
        if self.unchanged_refresh_due(server, stored) {
            return None;
        }
        Some(SaveOutcome { vary_cookie: accessed, vary_first: accessed, set_cookie: None })
    }

    /// Whether an unchanged session is written anyway, for its expiry:
    /// `stored` is its stored times, `None` when it is not stored or is
    /// read-only (never written).
    fn unchanged_refresh_due(&self, server: &ServerSide, stored: Option<(u64, u64)>) -> bool {
        stored.is_some_and(|(_, stored_expires)| self.refresh_due(server, stored_expires, self.now()))
    }

    /// Whether an unchanged session's expiry is rewritten now: once the
    /// refresh fraction of its lifetime has passed since the last write.
    fn refresh_due(&self, server: &ServerSide, stored_expires: u64, now: u64) -> bool {
        let last_refresh = stored_expires.saturating_sub(self.lifetime_secs());
        self.refresh_each_request() && now.saturating_sub(last_refresh) >= server.refresh_after
    }

    /// Saves a server-side session as far as it can without waiting: every
    /// save that needs no store call, and an update the store answers in
    /// place. An update that must wait is handed back with the work done so
    /// far; a save that creates, deletes or moves a record is handed back as
    /// a [`Slow`] kind and starts over in `save_server_slow`, where its store
    /// calls outweigh looking at the session again.
    pub(crate) fn save_server_now(&self, server: &ServerSide, session: &Session) -> SaveStep {
        // One look at the session under one lock, which a caller that already
        // tried `save_server_in_place` does not repeat. Most requests only
        // read: the data is looked at in place, and copied out only on the
        // paths that create a record.
        let Some(SaveState { server: state, modified, accessed, permanent, empty, layered_changes }) =
            session.save_state()
        else {
            return SaveStep::Done(self.save(session));
        };
        let out = SaveOutcome { vary_cookie: accessed, vary_first: accessed, set_cookie: None };
        if !modified && !state.destroy && !state.regenerate {
            // What `save_server_in_place` answers: nothing to write unless the
            // expiry refresh is due (never for a read-only session).
            let stored = if state.read_only { None } else { state.stored };
            if !self.unchanged_refresh_due(server, stored) {
                return SaveStep::Done(Ok(out));
            }
        }
        if state.read_only {
            if modified {
                tracing::warn!("changes to a session served while the store was failing are not saved");
            }
            return SaveStep::Done(Ok(out));
        }
        if state.destroy || (modified && empty) {
            return SaveStep::Wait(Slow::Destroy);
        }
        if empty {
            return SaveStep::Done(Ok(out));
        }
        let Some((_, stored_expires)) = state.stored else {
            return if modified { SaveStep::Wait(Slow::Create) } else { SaveStep::Done(Ok(out)) };
        };
        if state.regenerate {
            return SaveStep::Wait(Slow::Regenerate);
        }
        let (now, created_at, expires_at) = self.save_times(server, state.stored);
        let refresh_due = || self.refresh_due(server, stored_expires, now);
        // A memory store's session saves through the record it reads.
        let layered = server.memory.as_ref().and_then(|memory| Some((memory, layered_changes?)));
        let answered = match layered {
            Some((_, false)) if !refresh_due() => return SaveStep::Done(Ok(out)),
            // `None` only if another handle just made it a map: saved below.
            Some((memory, _)) => session.update_layered(memory, &state.id, expires_at, now),
            None => None,
        };
        let (changes, loaded) = match answered {
            // Taken by the store already: only the expiry is read after.
            Some(_) => (Changes::default(), None),
            None => session.changes_and_loaded(server.rejects_conflicts()),
        };
        if answered.is_none() && changes.is_empty() && !refresh_due() {
            return SaveStep::Done(Ok(out));
        }
        let pending = PendingUpdate {
            id: state.id,
            update: Update { changes, expires_at, loaded },
            now,
            created_at,
            out,
            reissue: modified || permanent,
            cookie_expires: permanent.then_some(expires_at as i64),
        };
        match answered.or_else(|| server.store.update_now(&pending.id, &pending.update, now)) {
            Some(answer) => SaveStep::Done(self.updated(server, session, pending, answer)),
            None => SaveStep::Update(pending),
        }
    }

    /// Finishes a save that [`save_server_now`](Config::save_server_now)
    /// could not.
    pub(crate) async fn save_server_later(
        &self,
        server: &ServerSide,
        session: &Session,
        step: SaveStep,
    ) -> Result<SaveOutcome, Error> {
        match step {
            SaveStep::Done(result) => result,
            SaveStep::Update(pending) => {
                let answer = server.store.update(&pending.id, &pending.update, pending.now).await;
                self.updated(server, session, pending, answer)
            }
            SaveStep::Wait(slow) => self.save_server_slow(server, session, slow).await,
        }
    }

    /// When a save happens, when the session was created (now for one not
    /// stored yet) and when the saved session expires: a lifetime from now,
    /// but never past the absolute timeout.
    fn save_times(&self, server: &ServerSide, stored: Option<(u64, u64)>) -> (u64, u64, u64) {
        let now = self.now();
        let created_at = stored.map_or(now, |(created, _)| created);
        let mut expires_at = now.saturating_add(self.lifetime_secs());
        if let Some(t) = server.absolute_timeout {
            expires_at = expires_at.min(created_at.saturating_add(t));
        }
        (now, created_at, expires_at)
    }

    /// What the response needs once the store answered an update.
    fn updated(
        &self,
        server: &ServerSide,
        session: &Session,
        pending: PendingUpdate,
        answer: Result<Updated, Error>,
    ) -> Result<SaveOutcome, Error> {
        let PendingUpdate { id, update, created_at, mut out, reissue, cookie_expires, .. } = pending;
        let updated = answer.inspect_err(|e| {
            if e.kind() == crate::ErrorKind::Conflict {
                metrics::counter!("hipflask_session_conflicts_total").increment(1);
            }
        })?;
        match updated {
            Updated::Gone => {
                metrics::counter!("hipflask_sessions_gone_total").increment(1);
                session.mark_saved(SessionId::generate(), None);
                Ok(self.gone(out))
            }
            Updated::Applied => {
                self.saved_counter().increment(1);
                if reissue {
                    let value = server.cookie_value(&id);
                    out.set_cookie = Some(self.server_cookie_header(&value, cookie_expires, false));
                    out.vary_cookie = true;
                }
                session.mark_saved(id, Some((created_at, update.expires_at)));
                Ok(out)
            }
        }
    }

    /// The saves that create, delete or move a record: destroyed and
    /// regenerated sessions, and the first save of a new one.
    async fn save_server_slow(&self, server: &ServerSide, session: &Session, slow: Slow) -> Result<SaveOutcome, Error> {
        let Some(SaveState { server: state, modified, accessed, permanent, empty, .. }) = session.save_state() else {
            return self.save(session);
        };
        let data = || session.inspect(|d, _, _| d.clone());
        let mut out = SaveOutcome { vary_cookie: accessed, vary_first: accessed, set_cookie: None };
        let (now, _, expires_at) = self.save_times(server, state.stored);
        let store = &server.store;

        let cookie_expires = permanent.then_some(expires_at as i64);
        match slow {
            Slow::Destroy => {
                if state.stored.is_some() {
                    store.delete(&state.id).await?;
                    metrics::counter!("hipflask_sessions_destroyed_total").increment(1);
                }
                if state.destroy && !empty {
                    // Written to after destroy() (a "Logged out" flash, say): that
                    // is a new session under a new id, never the old one back.
                    let id = SessionId::generate();
                    store.create(&id, Record { data: data(), created_at: now, expires_at }).await?;
                    metrics::counter!("hipflask_sessions_created_total").increment(1);
                    out.set_cookie = Some(self.server_cookie_header(&server.cookie_value(&id), cookie_expires, false));
                    out.vary_cookie = true;
                    session.mark_saved(id, Some((now, expires_at)));
                    return Ok(out);
                }
                if state.stored.is_some() || modified {
                    out.set_cookie = Some(self.server_cookie_header("", None, true));
                    out.vary_cookie = true;
                }
                session.mark_saved(SessionId::generate(), None);
                Ok(out)
            }
            Slow::Create => {
                store.create(&state.id, Record { data: data(), created_at: now, expires_at }).await?;
                metrics::counter!("hipflask_sessions_created_total").increment(1);
                let value = server.cookie_value(&state.id);
                out.set_cookie = Some(self.server_cookie_header(&value, cookie_expires, false));
                out.vary_cookie = true;
                session.mark_saved(state.id, Some((now, expires_at)));
                Ok(out)
            }
            Slow::Regenerate => {
                // Move the session, with this request's changes, to a fresh id.
                let Some(mut current) = store.load(&state.id, now).await? else {
                    return Ok(self.gone(out));
                };
                let (changes, loaded) = session.changes_and_loaded(true);
                apply_changes(&mut current.data, &changes, loaded.as_deref())?;
                let new_id = SessionId::generate();
                // A new id is a new session: its absolute timeout starts now.
                store.create(&new_id, Record { data: current.data, created_at: now, expires_at }).await?;
                store.delete(&state.id).await?;
                let value = server.cookie_value(&new_id);
                out.set_cookie = Some(self.server_cookie_header(&value, cookie_expires, false));
                out.vary_cookie = true;
                session.mark_saved(new_id, Some((now, expires_at)));
                Ok(out)
            }
        }
    }

    /// The session was destroyed by another request: tell the browser too.
    fn gone(&self, mut out: SaveOutcome) -> SaveOutcome {
        tracing::info!("session was destroyed by a concurrent request; its changes are dropped");
        out.set_cookie = Some(self.server_cookie_header("", None, true));
        out.vary_cookie = true;
        out
    }
}
