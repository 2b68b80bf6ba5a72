//! Opening and saving server-side sessions: the cookie holds only the id.

use std::sync::Arc;

use crate::config::{Config, SaveOutcome};
use crate::error::Error;
use crate::session::{PERMANENT_KEY, Session};
use crate::sid::{SessionId, SidSigner};
use crate::store::{ConflictPolicy, Record, Store, Update, Updated, apply_changes};
use crate::value::{Dict, Value};

/// Settings of server-side sessions.
#[derive(Clone, Debug)]
pub(crate) struct ServerSide {
    pub(crate) store: Arc<dyn Store>,
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
        let text = std::str::from_utf8(raw).ok()?;
        let sid = match &self.signer {
            Some(signer) => signer.unsign(text),
            None => Some(text),
        };
        let id = sid.and_then(SessionId::parse);
        if id.is_none() {
            tracing::warn!(reason = "bad_session_id", "rejected session cookie; starting a new session");
        }
        id
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

/// [`Store::load`], without its boxed future when the store answers in place.
async fn load(store: &dyn Store, id: &SessionId, now: u64) -> Result<Option<Record>, Error> {
    match store.load_now(id, now) {
        Some(answer) => answer,
        None => store.load(id, now).await,
    }
}

/// [`Store::update`], without its boxed future when the store answers in place.
async fn update_session(store: &dyn Store, id: &SessionId, update: &Update, now: u64) -> Result<Updated, Error> {
    match store.update_now(id, update, now) {
        Some(answer) => answer,
        None => store.update(id, update, now).await,
    }
}

/// Flask-Session's "falsy": no keys, or only `_permanent`.
fn falsy(data: &Dict) -> bool {
    data.keys().all(|k| k == PERMANENT_KEY)
}

impl Config {
    /// Opens the session named by the request's cookie from the store. A
    /// missing, malformed, badly signed, unknown or expired id gives a new
    /// session with a **new** id (a client's id is never adopted).
    pub(crate) async fn open_server(&self, server: &ServerSide, cookie: Option<&[u8]>) -> Result<Session, Error> {
        let Some(id) = cookie.filter(|c| !c.is_empty()).and_then(|c| server.parse_cookie(c)) else {
            return Ok(server.new_session());
        };
        let now = self.now();
        let Some(record) = load(&*server.store, &id, now).await? else {
            return Ok(server.new_session());
        };
        if server.absolute_timeout.is_some_and(|t| now >= record.created_at.saturating_add(t)) {
            // Past the absolute timeout however active: end it for good.
            server.store.delete(&id).await?;
            return Ok(server.new_session());
        }
        let keep = server.conflict == ConflictPolicy::Reject;
        Ok(Session::server(record.data, id, Some((record.created_at, record.expires_at)), keep))
    }

    /// The save of a server-side session that needs no store call: nothing
    /// changed and no expiry refresh is due. `None` means call `save_server`.
    pub(crate) fn save_server_in_place(&self, server: &ServerSide, session: &Session) -> Option<SaveOutcome> {
        let (accessed, stored) = session.unchanged_server()?;
        if let Some((_, stored_expires)) = stored
            && self.refresh_due(server, stored_expires, self.now())
        {
            return None;
        }
        Some(SaveOutcome { vary_cookie: accessed, vary_first: accessed, set_cookie: None })
    }

    /// Whether an unchanged session's expiry is rewritten now: once the
    /// refresh fraction of its lifetime has passed since the last write.
    fn refresh_due(&self, server: &ServerSide, stored_expires: u64, now: u64) -> bool {
        let last_refresh = stored_expires.saturating_sub(self.lifetime_secs());
        self.refresh_each_request() && now.saturating_sub(last_refresh) >= server.refresh_after
    }

    /// Saves a server-side session and says what the response needs.
    pub(crate) async fn save_server(&self, server: &ServerSide, session: &Session) -> Result<SaveOutcome, Error> {
        let Some(state) = session.server_state() else {
            return self.save(session);
        };
        // Most requests only read: look at the data in place, and copy it out
        // only on the paths that create a record.
        let (modified, accessed, permanent, empty) =
            session.inspect(|d, m, a| (m, a, d.get(PERMANENT_KEY).is_some_and(Value::is_truthy), falsy(d)));
        let data = || session.inspect(|d, _, _| d.clone());
        let mut out = SaveOutcome { vary_cookie: accessed, vary_first: accessed, set_cookie: None };
        if state.read_only {
            if modified {
                tracing::warn!("changes to a session served while the store was failing are not saved");
            }
            return Ok(out);
        }
        let now = self.now();
        let lifetime = self.lifetime_secs();
        let created_at = state.stored.map_or(now, |(created, _)| created);
        let mut expires_at = now.saturating_add(lifetime);
        if let Some(t) = server.absolute_timeout {
            expires_at = expires_at.min(created_at.saturating_add(t));
        }
        let store = &server.store;

        if state.destroy || (modified && empty) {
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
                let expires = permanent.then_some(expires_at as i64);
                out.set_cookie = Some(self.server_cookie_header(&server.cookie_value(&id), expires, false));
                out.vary_cookie = true;
                session.mark_saved(id, Some((now, expires_at)));
                return Ok(out);
            }
            if state.stored.is_some() || modified {
                out.set_cookie = Some(self.server_cookie_header("", None, true));
                out.vary_cookie = true;
            }
            session.mark_saved(SessionId::generate(), None);
            return Ok(out);
        }
        if empty {
            return Ok(out);
        }
        let cookie_expires = permanent.then_some(expires_at as i64);
        let Some((_, stored_expires)) = state.stored else {
            if modified {
                store.create(&state.id, Record { data: data(), created_at: now, expires_at }).await?;
                metrics::counter!("hipflask_sessions_created_total").increment(1);
                out.set_cookie =
                    Some(self.server_cookie_header(&server.cookie_value(&state.id), cookie_expires, false));
                out.vary_cookie = true;
                session.mark_saved(state.id, Some((now, expires_at)));
            }
            return Ok(out);
        };
        let changes = session.changes();
        if state.regenerate {
            // Move the session, with this request's changes, to a fresh id.
            let Some(mut current) = load(&**store, &state.id, now).await? else {
                return Ok(self.gone(out));
            };
            apply_changes(&mut current.data, &changes, session.loaded_values().as_ref())?;
            let new_id = SessionId::generate();
            // A new id is a new session: its absolute timeout starts now.
            store.create(&new_id, Record { data: current.data, created_at: now, expires_at }).await?;
            store.delete(&state.id).await?;
            out.set_cookie = Some(self.server_cookie_header(&server.cookie_value(&new_id), cookie_expires, false));
            out.vary_cookie = true;
            session.mark_saved(new_id, Some((now, expires_at)));
            return Ok(out);
        }
        let refresh = self.refresh_due(server, stored_expires, now);
        if changes.is_empty() && !refresh {
            return Ok(out);
        }
        let loaded = if server.conflict == ConflictPolicy::Reject { session.loaded_values() } else { None };
        let update = Update { changes, expires_at, loaded };
        let updated = update_session(&**store, &state.id, &update, now).await.inspect_err(|e| {
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
                session.mark_saved(state.id.clone(), Some((created_at, expires_at)));
                if modified || permanent {
                    let value = server.cookie_value(&state.id);
                    out.set_cookie = Some(self.server_cookie_header(&value, cookie_expires, false));
                    out.vary_cookie = true;
                }
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
