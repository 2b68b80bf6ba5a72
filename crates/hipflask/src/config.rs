//! Session settings with Flask's names and defaults, and Flask's rules for
//! when a cookie is read, rewritten or deleted (spec section 4).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cookie::CookieCodec;
use crate::error::{Error, ErrorKind};
use crate::key::SecretKey;
use crate::server::{LoadSession, SaveSession, SaveStep, ServerSide};
use crate::session::{PERMANENT_KEY, Session};
use crate::sid::SidSigner;
use crate::store::{ConflictPolicy, Store};
use crate::value::Value;

/// Flask's default `PERMANENT_SESSION_LIFETIME`: 31 days.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(31 * 24 * 3600);
/// Flask's default `MAX_COOKIE_SIZE`.
pub const DEFAULT_MAX_COOKIE_SIZE: usize = 4093;

/// `SESSION_COOKIE_SAMESITE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=None` (browsers then require `Secure`).
    None,
}

impl SameSite {
    /// Parses `Strict`, `Lax` or `None` in any case, as Flask title-cases the setting.
    pub fn parse(text: &str) -> Option<SameSite> {
        match text.to_ascii_lowercase().as_str() {
            "strict" => Some(SameSite::Strict),
            "lax" => Some(SameSite::Lax),
            "none" => Some(SameSite::None),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// A clock returning Unix seconds; replaceable so tests can freeze time.
pub type Clock = fn() -> u64;

fn system_clock() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Validated session settings. Cheap to clone (one `Arc`).
///
/// Build one with [`Config::builder`] or from environment variables with
/// [`ConfigBuilder::from_env`]. Every default is Flask's, so an app moving
/// from Flask behaves the same; the docs of each setter say where a stricter
/// value is wiser.
///
/// ```
/// use hipflask::{Config, SameSite};
/// use std::time::Duration;
///
/// let config = Config::builder()
///     .secret_key("change me")
///     .cookie_samesite(Some(SameSite::Lax))
///     .permanent_session_lifetime(Duration::from_secs(7 * 24 * 3600))
///     .build()?;
/// assert_eq!(config.cookie_name(), "session");
/// # Ok::<(), hipflask::Error>(())
/// ```
#[derive(Clone)]
pub struct Config(Arc<Inner>);

struct Inner {
    codec: CookieCodec,
    cookie_name: String,
    domain: Option<String>,
    path: String,
    httponly: bool,
    secure: bool,
    samesite: Option<SameSite>,
    partitioned: bool,
    lifetime: u64,
    refresh_each_request: bool,
    max_cookie_size: usize,
    strict_cookie_size: bool,
    clock: Clock,
    server: Option<Arc<ServerSide>>,
    /// `; Domain=...` (or nothing) and the attributes after `Expires`,
    /// joined once: they are the same in every cookie of a kind.
    attributes: (String, Tails),
    /// `hipflask_sessions_saved_total` for server-side saves, registered on
    /// first use (after the app installed its recorder) and kept: a lookup by
    /// name on every save costs a hash and a lock.
    saved: std::sync::OnceLock<metrics::Counter>,
}

/// What follows `Expires` in each kind of `Set-Cookie`, in Werkzeug's
/// order: `Secure`, `HttpOnly`, `Path`, `SameSite`, `Partitioned`.
#[derive(Debug)]
struct Tails {
    /// Flask's signed-cookie sessions.
    cookie: String,
    /// Flask-Session's cookie: never `Partitioned`.
    server: String,
    /// Flask-Session's deletion cookie: `Path` only.
    bare: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0;
        f.debug_struct("Config")
            .field("secret_key", &"..")
            .field("cookie_name", &c.cookie_name)
            .field("domain", &c.domain)
            .field("path", &c.path)
            .field("httponly", &c.httponly)
            .field("secure", &c.secure)
            .field("samesite", &c.samesite)
            .field("partitioned", &c.partitioned)
            .field("lifetime", &c.lifetime)
            .field("refresh_each_request", &c.refresh_each_request)
            .field("max_cookie_size", &c.max_cookie_size)
            .field("store", &c.server.as_ref().map(|s| &s.store))
            .finish()
    }
}

/// Builds a [`Config`]; see each method for Flask's name and default.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    secret_key: Option<SecretKey>,
    fallbacks: Vec<SecretKey>,
    /// A key that could not be built, reported by `build`.
    key_error: Option<String>,
    cookie_name: String,
    domain: Option<String>,
    path: Option<String>,
    application_root: String,
    httponly: bool,
    secure: bool,
    samesite: Option<SameSite>,
    partitioned: bool,
    lifetime: Duration,
    refresh_each_request: bool,
    max_cookie_size: usize,
    strict_cookie_size: bool,
    clock: Clock,
    store: Option<Arc<dyn Store>>,
    use_signer: bool,
    session_permanent: bool,
    refresh_fraction: f64,
    absolute_timeout: Option<Duration>,
    conflict: ConflictPolicy,
    store_timeout: Option<Duration>,
    fail_open: bool,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            secret_key: None,
            fallbacks: Vec::new(),
            key_error: None,
            cookie_name: "session".into(),
            domain: None,
            path: None,
            application_root: "/".into(),
            httponly: true,
            secure: false,
            samesite: None,
            partitioned: false,
            lifetime: DEFAULT_LIFETIME,
            refresh_each_request: true,
            max_cookie_size: DEFAULT_MAX_COOKIE_SIZE,
            strict_cookie_size: false,
            clock: system_clock,
            store: None,
            use_signer: false,
            session_permanent: true,
            refresh_fraction: 0.1,
            absolute_timeout: None,
            conflict: ConflictPolicy::LastWriteWins,
            store_timeout: None,
            fail_open: false,
        }
    }
}

impl ConfigBuilder {
    /// `SECRET_KEY` (required): signs every cookie. Text is used as UTF-8
    /// bytes; raw bytes work too. Use a long random value.
    pub fn secret_key(mut self, key: impl AsRef<[u8]>) -> Self {
        match SecretKey::new(key) {
            Ok(k) => self.secret_key = Some(k),
            Err(e) => self.key_error = Some(e.to_string()),
        }
        self
    }

    /// A random secret key from the operating system, for development: every
    /// session becomes invalid when the process restarts.
    pub fn random_secret_key(mut self) -> Self {
        self.secret_key = Some(SecretKey::generate());
        self
    }

    /// Whether a secret key has been set.
    pub fn has_secret_key(&self) -> bool {
        self.secret_key.is_some()
    }

    /// `SECRET_KEY_FALLBACKS` (default none): older keys, oldest first, that
    /// still verify cookies but never sign. Rotate by moving the current key
    /// here and setting a new `SECRET_KEY`; drop it after one lifetime.
    pub fn secret_key_fallbacks<K: AsRef<[u8]>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.fallbacks.clear();
        for key in keys {
            match SecretKey::new(key) {
                Ok(k) => self.fallbacks.push(k),
                Err(_) => self.key_error = Some("SECRET_KEY_FALLBACKS holds an empty key".into()),
            }
        }
        self
    }

    /// `SESSION_COOKIE_NAME` (default `"session"`).
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// `SESSION_COOKIE_DOMAIN` (default none: the cookie is sent back only to
    /// the host that set it, which is the safest choice).
    pub fn cookie_domain(mut self, domain: Option<impl Into<String>>) -> Self {
        self.domain = domain.map(Into::into);
        self
    }

    /// `SESSION_COOKIE_PATH` (default none, meaning `APPLICATION_ROOT`).
    pub fn cookie_path(mut self, path: Option<impl Into<String>>) -> Self {
        self.path = path.map(Into::into);
        self
    }

    /// `APPLICATION_ROOT` (default `"/"`): the cookie path when
    /// `SESSION_COOKIE_PATH` is not set.
    pub fn application_root(mut self, root: impl Into<String>) -> Self {
        self.application_root = root.into();
        self
    }

    /// `SESSION_COOKIE_HTTPONLY` (default `true`): keeps the cookie away from
    /// page scripts. Leave it on.
    pub fn cookie_httponly(mut self, on: bool) -> Self {
        self.httponly = on;
        self
    }

    /// `SESSION_COOKIE_SECURE` (default `false`, as in Flask): send the cookie
    /// over HTTPS only. Turn it on for any site served over HTTPS.
    pub fn cookie_secure(mut self, on: bool) -> Self {
        self.secure = on;
        self
    }

    /// `SESSION_COOKIE_SAMESITE` (default none, as in Flask). `Lax` is the
    /// wiser choice for most sites: it blocks most cross-site request forgery.
    pub fn cookie_samesite(mut self, samesite: Option<SameSite>) -> Self {
        self.samesite = samesite;
        self
    }

    /// `SESSION_COOKIE_PARTITIONED` (default `false`): CHIPS partitioned
    /// cookie; implies `Secure`.
    pub fn cookie_partitioned(mut self, on: bool) -> Self {
        self.partitioned = on;
        self
    }

    /// `PERMANENT_SESSION_LIFETIME` (default 31 days): how long a permanent
    /// cookie lives, and the maximum age of **any** cookie the server accepts.
    pub fn permanent_session_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// `SESSION_REFRESH_EACH_REQUEST` (default `true`): re-issue permanent
    /// cookies on every response, giving them a sliding expiry.
    pub fn refresh_each_request(mut self, on: bool) -> Self {
        self.refresh_each_request = on;
        self
    }

    /// `MAX_COOKIE_SIZE` (default 4093; 0 turns the check off): a Set-Cookie
    /// header longer than this is logged as Flask warns, since browsers drop it.
    pub fn max_cookie_size(mut self, size: usize) -> Self {
        self.max_cookie_size = size;
        self
    }

    /// Fail the save with [`ErrorKind::CookieTooLarge`] instead of only
    /// warning when the cookie exceeds `MAX_COOKIE_SIZE` (default off, as in
    /// Flask). The middleware then answers 500 rather than letting the browser
    /// silently drop the session.
    pub fn strict_cookie_size(mut self, on: bool) -> Self {
        self.strict_cookie_size = on;
        self
    }

    /// Keep sessions server-side in `store`; the cookie then holds only a
    /// random session id, as with Flask-Session (default: none, the data
    /// lives in the signed cookie).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// `SESSION_USE_SIGNER` (default `false`, as Flask-Session): sign the
    /// session id in the cookie with `SECRET_KEY`.
    pub fn use_signer(mut self, on: bool) -> Self {
        self.use_signer = on;
        self
    }

    /// `SESSION_PERMANENT` (default `true`, as Flask-Session): new
    /// server-side sessions start permanent.
    pub fn session_permanent(mut self, on: bool) -> Self {
        self.session_permanent = on;
        self
    }

    /// How much of the lifetime must pass before an unchanged server-side
    /// session's expiry is pushed back again (default 0.1: a 31-day session
    /// is refreshed at most every 3.1 days, so reading it rarely writes).
    /// `0.0` refreshes on every request, as Flask-Session does.
    pub fn refresh_fraction(mut self, fraction: f64) -> Self {
        self.refresh_fraction = fraction.clamp(0.0, 1.0);
        self
    }

    /// An absolute timeout for server-side sessions: they end this long after
    /// creation however active they are (default none: only the idle timeout).
    pub fn absolute_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.absolute_timeout = timeout;
        self
    }

    /// What happens when two requests set the same key (default: the later
    /// save wins). With [`ConflictPolicy::Reject`] the later response is a
    /// 409 and its changes are not saved.
    pub fn conflict_policy(mut self, policy: ConflictPolicy) -> Self {
        self.conflict = policy;
        self
    }

    /// How long loading or saving a server-side session may take before the
    /// request is answered 503 (default: no limit; 1 to 5 seconds is a good
    /// choice). The middleware enforces it with one task on the tokio
    /// runtime, which needs tokio's timer (`#[tokio::main]` and axum's
    /// runtime enable it); the task looks every eighth of the limit, so an
    /// operation gives up between the limit and an eighth more.
    pub fn store_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// When the store fails or times out while loading, serve an empty
    /// session instead of answering 503 (default off). Such a session is
    /// never saved, so the visitor's real session is intact when the store
    /// is back: for teams that prefer availability over a consistent view.
    pub fn fail_open(mut self, on: bool) -> Self {
        self.fail_open = on;
        self
    }

    /// The clock (default: the system clock). For tests that freeze time.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Reads Flask's setting names from the environment, on top of the
    /// defaults. Durations are whole seconds; booleans are
    /// `true/false/1/0/yes/no/on/off`; `SECRET_KEY_FALLBACKS` is
    /// comma-separated. A bad value is an error naming the variable. A missing
    /// `SECRET_KEY` is reported by [`build`](ConfigBuilder::build).
    pub fn from_env() -> Result<ConfigBuilder, Error> {
        ConfigBuilder::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](ConfigBuilder::from_env), reading from any lookup.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<ConfigBuilder, Error> {
        let mut b = ConfigBuilder::default();
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        if let Some(v) = get("SECRET_KEY") {
            b = b.secret_key(v);
        }
        if let Some(v) = get("SECRET_KEY_FALLBACKS") {
            b = b.secret_key_fallbacks(v.split(',').map(str::trim).filter(|s| !s.is_empty()));
        }
        if let Some(v) = get("SESSION_COOKIE_NAME") {
            b = b.cookie_name(v);
        }
        b.domain = get("SESSION_COOKIE_DOMAIN");
        b.path = get("SESSION_COOKIE_PATH");
        if let Some(v) = get("APPLICATION_ROOT") {
            b.application_root = v;
        }
        if let Some(v) = get("SESSION_COOKIE_HTTPONLY") {
            b.httponly = parse_bool("SESSION_COOKIE_HTTPONLY", &v)?;
        }
        if let Some(v) = get("SESSION_COOKIE_SECURE") {
            b.secure = parse_bool("SESSION_COOKIE_SECURE", &v)?;
        }
        if let Some(v) = get("SESSION_COOKIE_SAMESITE") {
            b.samesite = Some(SameSite::parse(&v).ok_or_else(|| {
                Error::config(format!("SESSION_COOKIE_SAMESITE must be Strict, Lax or None, not {v:?}"))
            })?);
        }
        if let Some(v) = get("SESSION_COOKIE_PARTITIONED") {
            b.partitioned = parse_bool("SESSION_COOKIE_PARTITIONED", &v)?;
        }
        if let Some(v) = get("PERMANENT_SESSION_LIFETIME") {
            b.lifetime = Duration::from_secs(parse_num("PERMANENT_SESSION_LIFETIME", &v)?);
        }
        if let Some(v) = get("SESSION_REFRESH_EACH_REQUEST") {
            b.refresh_each_request = parse_bool("SESSION_REFRESH_EACH_REQUEST", &v)?;
        }
        if let Some(v) = get("MAX_COOKIE_SIZE") {
            b.max_cookie_size = parse_num("MAX_COOKIE_SIZE", &v)? as usize;
        }
        if let Some(v) = get("SESSION_USE_SIGNER") {
            b.use_signer = parse_bool("SESSION_USE_SIGNER", &v)?;
        }
        if let Some(v) = get("SESSION_PERMANENT") {
            b.session_permanent = parse_bool("SESSION_PERMANENT", &v)?;
        }
        // hipflask's own: whether a save that would overwrite a key another
        // request changed since this one loaded it is refused (409).
        if let Some(v) = get("SESSION_CONFLICTS") {
            b.conflict = match v.trim().to_ascii_lowercase().as_str() {
                "reject" => ConflictPolicy::Reject,
                "last-write-wins" => ConflictPolicy::LastWriteWins,
                _ => {
                    return Err(Error::config(format!(
                        "SESSION_CONFLICTS must be reject or last-write-wins, not {v:?}"
                    )));
                }
            };
        }
        Ok(b)
    }

    /// Validates the settings. Fails with [`ErrorKind::Config`] and a message
    /// saying what to set when the secret key is missing or empty, or a
    /// cookie attribute could not be sent as given.
    pub fn build(self) -> Result<Config, Error> {
        if let Some(e) = self.key_error {
            return Err(Error::config(e));
        }
        let secret = self.secret_key.ok_or_else(|| {
            Error::config(
                "SECRET_KEY is not set: sessions are signed with it. Set it to a long random value, \
                 e.g. the output of `python -c 'import secrets; print(secrets.token_hex())'`",
            )
        })?;
        if self.cookie_name.is_empty() || !self.cookie_name.bytes().all(is_token_byte) {
            return Err(Error::config(format!(
                "SESSION_COOKIE_NAME {:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)",
                self.cookie_name
            )));
        }
        let domain = match &self.domain {
            None => None,
            Some(d) => Some(normalize_domain(d)?),
        };
        let raw_path = self.path.filter(|p| !p.is_empty()).unwrap_or(self.application_root);
        let path = quote_path(&raw_path);
        let lifetime = self.lifetime.as_secs();
        let server = self.store.map(|store| {
            Arc::new(ServerSide {
                memory: (Arc::clone(&store) as Arc<dyn std::any::Any + Send + Sync>).downcast().ok(),
                store,
                signer: self.use_signer.then(|| SidSigner::new(&secret)),
                permanent_default: self.session_permanent,
                refresh_after: (lifetime as f64 * self.refresh_fraction) as u64,
                absolute_timeout: self.absolute_timeout.map(|d| d.as_secs()),
                conflict: self.conflict,
                timeout: self.store_timeout,
                fail_open: self.fail_open,
            })
        });
        let tail = |bare: bool, partitioned: bool| {
            let when = |on: bool, text: &'static str| if on { text } else { "" };
            let (samesite_attr, samesite) =
                self.samesite.filter(|_| !bare).map_or(("", ""), |s| ("; SameSite=", s.as_str()));
            [
                when(!bare && (self.secure || partitioned), "; Secure"),
                when(!bare && self.httponly, "; HttpOnly"),
                "; Path=",
                path.as_str(),
                samesite_attr,
                samesite,
                when(partitioned, "; Partitioned"),
            ]
            .concat()
        };
        let tails = Tails {
            cookie: tail(false, self.partitioned),
            // Flask-Session never writes `Partitioned`.
            server: tail(false, false),
            bare: tail(true, false),
        };
        let domain_attr = domain.as_deref().map_or_else(String::new, |d| format!("; Domain={d}"));
        Ok(Config(Arc::new(Inner {
            codec: CookieCodec::new(&secret, &self.fallbacks, lifetime),
            cookie_name: self.cookie_name,
            domain,
            path,
            httponly: self.httponly,
            secure: self.secure,
            samesite: self.samesite,
            partitioned: self.partitioned,
            lifetime,
            refresh_each_request: self.refresh_each_request,
            max_cookie_size: self.max_cookie_size,
            strict_cookie_size: self.strict_cookie_size,
            clock: self.clock,
            server,
            attributes: (domain_attr, tails),
            saved: std::sync::OnceLock::new(),
        })))
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool, Error> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::config(format!("{name} must be true or false, not {v:?}"))),
    }
}

fn parse_num(name: &str, v: &str) -> Result<u64, Error> {
    v.trim().parse().map_err(|e| {
        Error::config(format!("{name} must be a whole number of seconds or bytes, not {v:?}")).with_source(e)
    })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Werkzeug's domain handling: drop a `:port` and leading dots, then IDNA.
fn normalize_domain(domain: &str) -> Result<String, Error> {
    let host = domain.rsplit_once(':').map_or(domain, |(h, _)| h).trim_start_matches('.');
    let mut labels = Vec::new();
    for label in host.split('.') {
        let lower = label.to_lowercase();
        if lower.is_ascii() {
            labels.push(lower);
        } else {
            labels.push(format!("xn--{}", crate::punycode::encode(&lower)));
        }
    }
    let out = labels.join(".");
    if out.is_empty() || !out.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(Error::config(format!("SESSION_COOKIE_DOMAIN {domain:?} is not a valid domain")));
    }
    Ok(out)
}

/// Werkzeug's path quoting: percent-encode all but a safe set.
fn quote_path(path: &str) -> String {
    const SAFE: &[u8] = b"_.-~%!$&'()*+,/:=@";
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || SAFE.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a response must carry for the session, decided by Flask's rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaveOutcome {
    /// Add `Cookie` to `Vary`.
    pub vary_cookie: bool,
    /// A `Set-Cookie` header value to append (a new cookie or a deletion).
    pub set_cookie: Option<String>,
    /// Whether `Vary` was earned by an access before the cookie was written
    /// (Flask then puts `Vary` before `Set-Cookie`; a cosmetic detail).
    pub vary_first: bool,
}

impl Config {
    /// Starts a [`ConfigBuilder`] with Flask's defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The cookie name.
    pub fn cookie_name(&self) -> &str {
        &self.0.cookie_name
    }

    /// `PERMANENT_SESSION_LIFETIME` in seconds.
    pub fn lifetime_secs(&self) -> u64 {
        self.0.lifetime
    }

    /// Whether permanent sessions are re-issued on every response.
    pub fn refresh_each_request(&self) -> bool {
        self.0.refresh_each_request
    }

    /// The codec, for encoding or decoding cookie values directly.
    pub fn codec(&self) -> &CookieCodec {
        &self.0.codec
    }

    /// The current time in Unix seconds, from the configured clock.
    pub fn now(&self) -> u64 {
        (self.0.clock)()
    }

    /// The time limit on each load and save of a server-side session.
    pub fn store_timeout(&self) -> Option<Duration> {
        self.0.server.as_ref().and_then(|s| s.timeout)
    }

    /// What a request gets when loading its server-side session failed with
    /// `error`: with fail-open, an empty session that is never saved (and a
    /// warning); otherwise the error back.
    pub fn on_load_failure(&self, error: Error) -> Result<Session, Error> {
        match &self.0.server {
            Some(server) if server.fail_open => {
                tracing::warn!(error = %error, "session store failing; serving an empty, unsaved session (fail-open)");
                Ok(Session::read_only_server())
            }
            _ => Err(error),
        }
    }

    /// Whether sessions live in a store (the cookie holds only an id).
    pub fn is_server_side(&self) -> bool {
        self.0.server.is_some()
    }

    /// Opens the request's session with whichever backend is configured:
    /// [`open`](Config::open) for cookie sessions, the store otherwise. Fails
    /// only when the store does ([`ErrorKind::Backend`]); a bad cookie or id
    /// gives a new session.
    pub fn load_session(&self, cookie_headers: &[&[u8]]) -> LoadSession {
        match &self.0.server {
            None => LoadSession::ready(Ok(self.open(cookie_headers.iter().copied()))),
            Some(server) => {
                let cookie = crate::header::find_cookie(cookie_headers.iter().copied(), self.cookie_name().as_bytes());
                self.open_server(server, cookie.as_deref())
            }
        }
    }

    /// Saves `session` when that needs no store call, which is every request
    /// that only read a server-side session (with no expiry refresh due):
    /// `Some` is then exactly what [`save_session`](Config::save_session)
    /// would return, and tells that the store was not involved. `None` means
    /// call `save_session`.
    pub fn save_session_in_place(&self, session: &Session) -> Option<SaveOutcome> {
        match &self.0.server {
            None => None,
            Some(server) => self.save_server_in_place(server, session),
        }
    }

    /// Saves the request's session with whichever backend is configured and
    /// says what the response needs.
    ///
    /// The future owns what it needs. It is ready on its first poll when the
    /// save needs no store call (a request that only read) or the store
    /// answers in place (the memory store): a caller can poll it once and
    /// only keep it when it is not.
    pub fn save_session(&self, session: &Session) -> SaveSession {
        let Some(server) = &self.0.server else {
            return SaveSession::ready(self.save(session));
        };
        match self.save_server_now(server, session) {
            SaveStep::Done(result) => SaveSession::ready(result),
            step => {
                let (config, session) = (self.clone(), session.clone());
                SaveSession::waiting(async move {
                    match &config.0.server {
                        Some(server) => config.save_server_later(server, &session, step).await,
                        None => config.save(&session),
                    }
                })
            }
        }
    }

    /// Flask's `open_session`: the session carried by the request's `Cookie`
    /// header values (the first cookie with the session's name wins). A
    /// missing or rejected cookie gives a new empty session; a rejection is
    /// logged as a warning with its reason, never failing the request.
    pub fn open<'a>(&self, cookie_headers: impl IntoIterator<Item = &'a [u8]>) -> Session {
        match crate::header::find_cookie(cookie_headers, self.cookie_name().as_bytes()) {
            Some(raw) => self.open_value(&raw),
            None => Session::new_cookie(),
        }
    }

    /// Like [`open`](Config::open), from the cookie value itself.
    pub fn open_value(&self, value: &[u8]) -> Session {
        if value.is_empty() {
            return Session::new_cookie();
        }
        match self.0.codec.decode_bytes(value, self.now()) {
            Ok(data) => Session::from_shared(data),
            Err(e) => {
                metrics::counter!("hipflask_cookies_rejected_total", "reason" => e.reason()).increment(1);
                tracing::warn!(reason = e.reason(), error = %e, "rejected session cookie; starting an empty session");
                Session::new_cookie()
            }
        }
    }

    pub(crate) fn saved_counter(&self) -> &metrics::Counter {
        self.0.saved.get_or_init(|| metrics::counter!("hipflask_sessions_saved_total"))
    }

    /// Flask's `save_session`: what the response needs. Fails only with
    /// [`ErrorKind::CookieTooLarge`] when strict cookie size is on.
    pub fn save(&self, session: &Session) -> Result<SaveOutcome, Error> {
        let c = &self.0;
        session.inspect(|data, modified, accessed| {
            let mut out = SaveOutcome { vary_cookie: accessed, vary_first: accessed, set_cookie: None };
            if data.is_empty() {
                if modified {
                    out.set_cookie = Some(self.cookie_header("", None, true));
                    out.vary_cookie = true;
                }
                return Ok(out);
            }
            let permanent = data.get(PERMANENT_KEY).is_some_and(Value::is_truthy);
            if !(modified || (permanent && c.refresh_each_request)) {
                return Ok(out);
            }
            let now = self.now();
            let expires = permanent.then(|| now.saturating_add(c.lifetime) as i64);
            // The value is signed straight into the header, one allocation.
            let (value_len, header) = c.codec.with_value(data, now, |value| {
                let header =
                    self.write_cookie_with::<Vec<u8>>(value.len(), |out| value.write_to(out), expires, false, false);
                (value.len(), header)
            });
            self.check_size(value_len, &header)?;
            out.set_cookie = Some(header);
            out.vary_cookie = true;
            Ok(out)
        })
    }

    fn check_size(&self, value_len: usize, header: &str) -> Result<(), Error> {
        let max = self.0.max_cookie_size;
        if max == 0 || header.len() <= max {
            return Ok(());
        }
        let message = format!(
            "The '{}' cookie is too large: the value was {} bytes but the header required {} extra bytes. \
             The final size was {} bytes but the limit is {} bytes. Browsers may silently ignore cookies larger than this.",
            self.cookie_name(),
            value_len,
            header.len() - value_len,
            header.len(),
            max
        );
        if self.0.strict_cookie_size {
            return Err(Error::new(ErrorKind::CookieTooLarge, message));
        }
        tracing::warn!("{message}");
        Ok(())
    }

    /// A `Set-Cookie` value for Flask's signed-cookie sessions.
    fn cookie_header(&self, value: &str, expires: Option<i64>, delete: bool) -> String {
        self.write_cookie(value, expires, delete, false)
    }

    /// A `Set-Cookie` value as Flask-Session writes it: never `Partitioned`,
    /// and a deletion cookie with only `Domain` and `Path`.
    pub(crate) fn server_cookie_header(&self, value: &str, expires: Option<i64>, delete: bool) -> String {
        self.write_cookie(value, expires, delete, true)
    }

    /// A `Set-Cookie` value with Werkzeug's attribute order.
    ///
    /// Joined from its parts in one allocation of exactly its length: the
    /// header value then takes the buffer over as it is, where a buffer with
    /// room to spare cost it one more allocation for every response.
    fn write_cookie(&self, value: &str, expires: Option<i64>, delete: bool, flask_session: bool) -> String {
        // Joined as text: a value that is already a `str` needs no check.
        self.write_cookie_with::<String>(value.len(), |out| out.push_str(value), expires, delete, flask_session)
    }

    /// [`write_cookie`](Config::write_cookie) with the value written into the
    /// header by `write_value`, which appends exactly `value_len` bytes. The
    /// header's buffer is exactly its length, so it becomes a header value
    /// without another allocation.
    fn write_cookie_with<B: HeaderBuf>(
        &self,
        value_len: usize,
        write_value: impl FnOnce(&mut B),
        expires: Option<i64>,
        delete: bool,
        flask_session: bool,
    ) -> String {
        let c = &self.0;
        let (domain, tail) = &c.attributes;
        let tail = match (flask_session, delete) {
            (false, _) => &tail.cookie,
            (true, false) => &tail.server,
            (true, true) => &tail.bare,
        };
        let join = |expires_attr: &str, date: &str| {
            let (head, rest) = ([c.cookie_name.as_str(), "="], [domain.as_str(), expires_attr, date, tail.as_str()]);
            let len = head.iter().chain(&rest).map(|p| p.len()).sum::<usize>() + value_len;
            let mut h = B::with_capacity(len);
            for part in head {
                h.push_str(part);
            }
            write_value(&mut h);
            for part in rest {
                h.push_str(part);
            }
            h.into_header(len)
        };
        match expires {
            _ if delete => join("; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0", ""),
            Some(t) => crate::date::with_http_date(t, |date| join("; Expires=", date)),
            None => join("", ""),
        }
    }
}

/// The buffer a `Set-Cookie` header is joined in: text, or bytes (for a
/// signed value written as bytes), checked as text once at the end.
trait HeaderBuf {
    fn with_capacity(len: usize) -> Self;
    fn push_str(&mut self, part: &str);
    /// The header, `len` bytes long in a buffer of exactly that size.
    fn into_header(self, len: usize) -> String;
}

impl HeaderBuf for String {
    fn with_capacity(len: usize) -> Self {
        String::with_capacity(len)
    }

    fn push_str(&mut self, part: &str) {
        // The inherent method, named in full so it cannot read as recursion.
        String::push_str(self, part);
    }

    fn into_header(self, len: usize) -> String {
        debug_assert_eq!((self.len(), self.capacity()), (len, len));
        self
    }
}

impl HeaderBuf for Vec<u8> {
    fn with_capacity(len: usize) -> Self {
        Vec::with_capacity(len)
    }

    fn push_str(&mut self, part: &str) {
        self.extend_from_slice(part.as_bytes());
    }

    fn into_header(self, len: usize) -> String {
        debug_assert_eq!((self.len(), self.capacity()), (len, len));
        String::from_utf8(self).expect("the parts are text and the value ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read of a cookie the codec verified before shares the cached entries
    /// (no copy); a change copies them first. Each way of changing a session
    /// is made on a session read from the same cached cookie, and the next
    /// read of that cookie must still see what it holds.
    #[test]
    fn changes_to_a_session_from_a_cached_cookie_never_reach_the_cache() {
        let config = Config::builder().secret_key("k").build().unwrap();
        let value = seeded_cookie(&config);
        let original = config.open_value(&value).to_dict();
        assert_eq!(original.len(), 3, "{original:?}");
        for (name, change) in every_change() {
            let session = config.open_value(&value);
            change(&session);
            assert_ne!(session.to_dict(), original, "{name} changed nothing");
            assert_eq!(config.open_value(&value).to_dict(), original, "{name} reached the cache");
        }
    }

    /// The cookie value of a session holding `user`, `cart` and a flash.
    fn seeded_cookie(config: &Config) -> Vec<u8> {
        let seed = Session::new();
        seed.insert("user", "alice").unwrap();
        seed.insert("cart", vec![1, 2]).unwrap();
        seed.flash("hello", "message");
        let header = config.save(&seed).unwrap().set_cookie.unwrap();
        header.split(';').next().unwrap().split_once('=').unwrap().1.as_bytes().to_vec()
    }

    type Change = (&'static str, fn(&Session));

    /// Every way of changing a session that holds `user` (a string) and
    /// `cart` (a list).
    fn every_change() -> [Change; 8] {
        [
            ("insert", |s| s.insert("user", "mallory").unwrap()),
            ("insert_value", |s| s.insert_value("new", Value::Int(1))),
            ("remove", |s| drop(s.remove("user"))),
            ("remove_as", |s| drop(s.remove_as::<String>("user").unwrap())),
            ("clear", Session::clear),
            ("with_value_mut", |s| {
                let _ = s.with_value_mut("cart", |v| *v = Value::Int(0));
            }),
            ("flash", |s| s.flash("again", "message")),
            ("get_flashed_messages", |s| drop(s.get_flashed_messages(&[]))),
        ]
    }

    /// Cookie sessions opened by `Config` keep no per-key notes (a cookie is
    /// written whole): whatever changed them, and whether the cookie was
    /// cached, missing or forged, `changes()` is the whole session as it
    /// now is, and the saved cookie holds exactly that.
    #[test]
    fn cookie_sessions_report_their_whole_data_as_changes() {
        let config = Config::builder().secret_key("k").build().unwrap();
        let value = seeded_cookie(&config);
        type Open = (&'static str, fn(&Config, &[u8]) -> Session);
        let opened: [Open; 3] = [
            ("valid", |c, v| c.open_value(v)),
            ("missing", |c, _| c.open(std::iter::empty())),
            ("forged", |c, v| c.open_value(&[v, b"x"].concat())),
        ];
        for (how, open) in opened {
            let untouched = open(&config, &value);
            assert!(untouched.changes().is_empty(), "{how}: an unchanged session has no changes");
            for (name, change) in every_change() {
                let session = open(&config, &value);
                change(&session);
                if !session.is_modified() {
                    // A change in place, or nothing to remove: not saved, as in Flask.
                    assert!(session.changes().is_empty(), "{how}, {name}");
                    session.mark_modified();
                }
                let whole = session.to_dict().into_iter().map(|(k, v)| (k, Some(v))).collect();
                assert_eq!(session.changes(), crate::Changes { cleared: true, keys: whole }, "{how}, {name}");
                let saved = config.save(&session).unwrap().set_cookie.unwrap();
                let saved = saved.split(';').next().unwrap().split_once('=').unwrap().1;
                let reopened = config.open_value(saved.as_bytes()).to_dict();
                assert_eq!(reopened, session.to_dict(), "{how}, {name}: the cookie holds the session");
            }
        }
    }

    #[test]
    fn env_loader_reads_flask_names_and_names_bad_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let b = ConfigBuilder::from_lookup(env(&[
            ("SECRET_KEY", "s"),
            ("PERMANENT_SESSION_LIFETIME", "60"),
            ("SESSION_COOKIE_SAMESITE", "lax"),
        ]))
        .unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.lifetime_secs(), 60);
        assert_eq!(c.0.samesite, Some(SameSite::Lax));

        let err = ConfigBuilder::from_lookup(env(&[("SESSION_COOKIE_SECURE", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("SESSION_COOKIE_SECURE"), "{err}");
        let err = ConfigBuilder::from_lookup(env(&[("PERMANENT_SESSION_LIFETIME", "31d")])).unwrap_err();
        assert!(err.to_string().contains("PERMANENT_SESSION_LIFETIME"), "{err}");
        let b = ConfigBuilder::from_lookup(env(&[("SESSION_CONFLICTS", "Reject")])).unwrap();
        assert_eq!(b.conflict, ConflictPolicy::Reject);
        let b = ConfigBuilder::from_lookup(env(&[("SESSION_CONFLICTS", "last-write-wins")])).unwrap();
        assert_eq!(b.conflict, ConflictPolicy::LastWriteWins);
        let err = ConfigBuilder::from_lookup(env(&[("SESSION_CONFLICTS", "merge")])).unwrap_err();
        assert!(err.to_string().starts_with("SESSION_CONFLICTS must be"), "{err}");
        let err = ConfigBuilder::from_lookup(env(&[])).unwrap().build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("SECRET_KEY"), "{err}");
    }

    #[test]
    fn empty_secret_fails_at_build() {
        let err = Config::builder().secret_key("").build().unwrap_err();
        assert!(err.to_string().contains("SECRET_KEY is empty"), "{err}");
    }

    #[test]
    fn bad_cookie_attributes_fail_at_build() {
        assert!(Config::builder().secret_key("k").cookie_name("a b").build().is_err());
        assert!(Config::builder().secret_key("k").cookie_domain(Some("a;b")).build().is_err());
    }

    /// Each kind of cookie gets its attributes (joined once, at build), and
    /// in a buffer with no spare room: the header value takes such a buffer
    /// over without copying or allocating.
    #[test]
    fn set_cookie_values_carry_their_kinds_attributes_in_an_exact_buffer() {
        for bits in 0..32u32 {
            let on = |bit: u32| bits & (1 << bit) != 0;
            let config = Config::builder()
                .secret_key("k")
                .cookie_domain(on(0).then_some("example.com"))
                .cookie_secure(on(1))
                .cookie_httponly(on(2))
                .cookie_samesite(on(3).then_some(SameSite::Strict))
                .cookie_partitioned(on(4))
                .build()
                .unwrap();
            for (expires, delete, flask_session) in [
                (None, false, false),
                (Some(1_700_000_000), false, false),
                (None, true, true),
                (None, true, false),
                (Some(1_700_000_000), false, true),
            ] {
                let h = config.write_cookie("v.a.l", expires, delete, flask_session);
                assert_eq!(h.len(), h.capacity(), "{h}");
                assert!(h.starts_with("session=v.a.l"), "{h}");
                assert_eq!(h.contains("; Domain=example.com"), on(0), "{h}");
                assert_eq!(h.contains("Expires=Tue, 14 Nov 2023 22:13:20 GMT"), expires.is_some(), "{h}");
                // Flask-Session never partitions; its deletion cookie has `Path` only.
                assert_eq!(h.contains("; Partitioned"), on(4) && !flask_session, "{h}");
                let bare = delete && flask_session;
                assert_eq!(h.contains("; Secure"), !bare && (on(1) || (on(4) && !flask_session)), "{h}");
                assert_eq!(h.contains("; HttpOnly"), !bare && on(2), "{h}");
                assert_eq!(h.contains("; SameSite=Strict"), !bare && on(3), "{h}");
                assert!(h.ends_with("; Path=/") || h.contains("; Path=/; "), "{h}");
            }
        }
    }

    /// `save` signs the value straight into the header: the header must
    /// still carry exactly the value `encode` gives (compressed or not,
    /// permanent or not), in a buffer with no spare room, and the size error
    /// must still measure the value apart from the attributes.
    #[test]
    fn saved_headers_carry_the_encoded_value_in_an_exact_buffer() {
        const NOW: u64 = 1_700_000_000;
        let config = Config::builder().secret_key("k").clock(|| NOW).cookie_httponly(true).build().unwrap();
        for (name, permanent, text) in [
            ("short", false, "alice".to_owned()),
            ("short, permanent", true, "alice".to_owned()),
            ("compressible", false, "ab".repeat(400)),
            ("compressible, permanent", true, "ab".repeat(400)),
        ] {
            let session = Session::new();
            session.insert("user", &text).unwrap();
            session.set_permanent(permanent);
            let header = config.save(&session).unwrap().set_cookie.unwrap();
            assert_eq!(header.len(), header.capacity(), "{name}: {header}");
            let expected = config.codec().encode(&session.to_dict(), NOW);
            assert_eq!(expected.starts_with('.'), text.len() > 100, "{name}: compression as Flask decides");
            let (value, attributes) = header.split_once(';').unwrap();
            assert_eq!(value, format!("session={expected}"), "{name}");
            assert_eq!(attributes.contains("Expires="), permanent, "{name}: {attributes}");
            assert_eq!(config.codec().decode(&expected, NOW).unwrap(), session.to_dict(), "{name}");
        }

        let strict =
            Config::builder().secret_key("k").clock(|| NOW).max_cookie_size(60).strict_cookie_size(true).build();
        let session = Session::new();
        session.insert("user", "alice").unwrap();
        let value_len = strict.as_ref().unwrap().codec().encode(&session.to_dict(), NOW).len();
        let err = strict.unwrap().save(&session).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CookieTooLarge);
        let header_len = "session=".len() + value_len + "; HttpOnly; Path=/".len();
        let expected =
            format!("the value was {value_len} bytes but the header required {} extra", header_len - value_len);
        assert!(err.to_string().contains(&expected), "{err}");
    }

    #[test]
    fn domain_and_path_follow_werkzeug() {
        assert_eq!(normalize_domain(".example.com:8080").unwrap(), "example.com");
        assert_eq!(normalize_domain("bücher.example").unwrap(), "xn--bcher-kva.example");
        assert_eq!(quote_path("/a b/ü"), "/a%20b/%C3%BC");
    }
}
