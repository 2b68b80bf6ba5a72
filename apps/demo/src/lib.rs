//! The hipflask demo: every example of the Flask session tutorials the
//! project started from, as one app. [`app`] builds the router, so tests
//! drive it in-process without a socket.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use hipflask::Value;
use hipflask_tower::{Session, SessionLayer, SessionService};
use minijinja::Environment;
use minijinja::value::{Enumerator, Kwargs, Object, Value as JValue, from_args};
use serde::Deserialize;
use tower::Layer as _;

/// Deletes expired sessions every `every`, for stores without native expiry;
/// logs and carries on when the store fails.
pub fn spawn_cleanup(store: Arc<dyn hipflask::Store>, config: hipflask::Config, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match store.delete_expired(config.now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "expired sessions removed"),
                Err(e) => tracing::warn!(error = %e, "session cleanup failed; will retry"),
            }
        }
    });
}

/// The key the per-user index follows (Flask-Login's).
const USER_KEY: &str = "_user_id";

/// Largest JSON body the API accepts; session values must fit in a cookie anyway.
const MAX_API_BODY: usize = 64 * 1024;

/// The demo's settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Session settings (Flask's names).
    pub session: hipflask::Config,
    /// The store of server-side sessions (`None`: signed-cookie sessions),
    /// also used by the "log out everywhere" page.
    pub store: Option<Arc<dyn hipflask::Store>>,
    /// Renders the metrics recorder for `/metrics` (installed by the binary:
    /// a process has one recorder).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl DemoConfig {
    /// Signed-cookie sessions with `config`.
    pub fn cookie(session: hipflask::Config) -> DemoConfig {
        DemoConfig { session, store: None, metrics: None }
    }
}

impl DemoConfig {
    /// Reads the settings from the environment: Flask's names plus
    /// `SESSION_TYPE`. Without `SECRET_KEY` a random key is generated and a
    /// warning is returned. Errors are one line naming the variable.
    pub async fn from_env() -> Result<(DemoConfig, Vec<String>), String> {
        DemoConfig::from_lookup(|name| std::env::var(name).ok()).await
    }

    /// Like [`from_env`](DemoConfig::from_env) from any lookup (for tests).
    pub async fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<(DemoConfig, Vec<String>), String> {
        let mut warnings = Vec::new();
        let session_type = lookup("SESSION_TYPE").unwrap_or_default();
        let store: Option<Arc<dyn hipflask::Store>> = match session_type.trim().to_ascii_lowercase().as_str() {
            "" | "cookie" => None,
            "memory" => {
                let mut store = hipflask::MemoryStore::new();
                if let Some(text) = lookup("SESSION_MEMORY_CAPACITY") {
                    let capacity = text.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("SESSION_MEMORY_CAPACITY={text:?} must be a positive number of sessions")
                    })?;
                    store = store.with_capacity(capacity);
                }
                Some(Arc::new(store))
            }
            "sqlite" => {
                let url = lookup("SESSION_DATABASE_URL").unwrap_or_else(|| "sqlite://hipflask-sessions.db".into());
                let Some(path) = url.strip_prefix("sqlite://") else {
                    return Err(format!(
                        "SESSION_DATABASE_URL={url:?} must start with sqlite:// for SESSION_TYPE=sqlite"
                    ));
                };
                let store = hipflask_sqlite::SqliteStore::open(path).await.map_err(|e| {
                    format!("SESSION_DATABASE_URL={url:?}: cannot open the session database: {}", why(&e))
                })?;
                Some(Arc::new(store.with_key_prefix(&lookup("SESSION_KEY_PREFIX").unwrap_or_default())))
            }
            "filesystem" => {
                let dir = lookup("SESSION_FILE_DIR").unwrap_or_else(|| "flask_session".into());
                let store = hipflask_filesystem::FileStore::open(&dir)
                    .await
                    .map_err(|e| format!("SESSION_FILE_DIR={dir:?}: cannot use the directory: {}", why(&e)))?;
                Some(Arc::new(store))
            }
            "redis" => {
                let url = lookup("SESSION_REDIS").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
                // Checked before connecting, so a typo is named even when Redis is down.
                let cache = lookup("SESSION_REDIS_LOCAL_CACHE")
                    .map(|text| {
                        text.trim().parse::<usize>().map(|n| (n, text.clone())).map_err(|_| {
                            format!("SESSION_REDIS_LOCAL_CACHE={text:?} must be a number of sessions (0 for none)")
                        })
                    })
                    .transpose()?;
                let store = hipflask_redis::RedisStore::connect(&url)
                    .await
                    .map_err(|e| format!("SESSION_REDIS={url:?}: cannot connect: {}", why(&e)))?;
                let prefix = lookup("SESSION_KEY_PREFIX").unwrap_or_else(|| "session:".into());
                let mut store = store.with_key_prefix(&prefix);
                if let Some((capacity, text)) = cache.filter(|(n, _)| *n > 0) {
                    store = store
                        .with_local_cache(capacity)
                        .await
                        .map_err(|e| format!("SESSION_REDIS_LOCAL_CACHE={text:?}: {}", why(&e)))?;
                }
                Some(Arc::new(store))
            }
            kind @ ("postgresql" | "mysql") => {
                let Some(url) = lookup("SESSION_DATABASE_URL") else {
                    return Err(format!(
                        "SESSION_DATABASE_URL is not set: SESSION_TYPE={kind} needs the database's URL"
                    ));
                };
                let prefix = lookup("SESSION_KEY_PREFIX").unwrap_or_default();
                let failed =
                    |e: hipflask::Error| format!("SESSION_DATABASE_URL={url:?}: cannot use the database: {}", why(&e));
                let store: Arc<dyn hipflask::Store> = if kind == "postgresql" {
                    Arc::new(hipflask_sql::PostgresStore::connect(&url).await.map_err(failed)?.with_key_prefix(&prefix))
                } else {
                    Arc::new(hipflask_sql::MySqlStore::connect(&url).await.map_err(failed)?.with_key_prefix(&prefix))
                };
                Some(store)
            }
            other => {
                return Err(format!(
                    "SESSION_TYPE={other:?} is not one of cookie, memory, filesystem, sqlite, redis, postgresql, mysql"
                ));
            }
        };
        let mut builder = hipflask::ConfigBuilder::from_lookup(&lookup).map_err(|e| e.to_string())?;
        if !builder.has_secret_key() && lookup("SECRET_KEY").is_none_or(|k| k.is_empty()) {
            builder = builder.random_secret_key();
            warnings
                .push("SECRET_KEY is not set: using a random key, so sessions will not survive a restart".to_owned());
        }
        if let Some(store) = &store {
            builder = builder.store(store.clone()).store_timeout(Some(std::time::Duration::from_secs(5)));
        }
        let session = builder.build().map_err(|e| e.to_string())?;
        Ok((DemoConfig { session, store, metrics: None }, warnings))
    }
}

struct AppState {
    templates: Environment<'static>,
    lifetime_days: u64,
    store: Option<Arc<dyn hipflask::Store>>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

type Shared = State<Arc<AppState>>;

/// The demo: its router inside the session layer.
///
/// The layer wraps the whole router instead of being added with
/// `Router::layer`, which wraps every route on its own: there each request
/// paid for a clone of the boxed route service and one more boxed future.
pub type DemoApp = SessionService<Router>;

/// The demo's router, with the session layer installed.
pub fn app(config: DemoConfig) -> DemoApp {
    let mut templates = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("index.html", include_str!("templates/index.html")),
        ("query.html", include_str!("templates/query.html")),
    ] {
        templates.add_template(name, source).expect("the bundled templates are valid");
    }
    templates.add_filter("py", |v: JValue| python_str(&v));
    let state = Arc::new(AppState {
        templates,
        lifetime_days: config.session.lifetime_secs() / 86_400,
        store: config.store.clone(),
        metrics: config.metrics.clone(),
    });

    let api = Router::new()
        .route("/api/session", get(api_get).delete(api_clear))
        .route("/api/session/{key}", put(api_put).delete(api_delete))
        .layer(DefaultBodyLimit::max(MAX_API_BODY));

    let routes = Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/set", get(set))
        .route("/get", get(get_query))
        .route("/del", get(del))
        .route("/clear", get(clear))
        .route("/visits-counter/", get(visits_counter))
        .route("/delete-visits/", get(delete_visits))
        .route("/session/", get(cart))
        .route("/permanent/", get(permanent))
        .route("/get_session/", get(get_session))
        .route("/del_session/", get(del_session))
        .route("/metrics", get(metrics_page))
        .merge(api)
        .with_state(state)
        .merge(bench_routes())
        // Every route made into its final service now, once (see the
        // hipflask-tower docs): inside a layer, axum would otherwise build
        // the bench routes' services from their handlers on each request.
        .with_state(());
    SessionLayer::new(config.session).layer(routes)
}

/// `session` inside templates, as in Flask: `session.get('user')`,
/// `session.user`, `session.permanent`, `'user' in session`, `session.items()`.
#[derive(Debug)]
struct SessionObject(hipflask::Session);

impl Object for SessionObject {
    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        let key = key.as_str()?;
        if key == "permanent" {
            return Some(JValue::from(self.0.permanent()));
        }
        self.0.get_value(key).map(|v| to_jinja(&v))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.keys().into_iter().map(JValue::from).collect())
    }

    fn is_true(self: &Arc<Self>) -> bool {
        !self.0.is_empty()
    }

    fn call_method(
        self: &Arc<Self>,
        _: &minijinja::State<'_, '_>,
        method: &str,
        args: &[JValue],
    ) -> Result<JValue, minijinja::Error> {
        match method {
            "get" => {
                let (key, default): (&str, Option<JValue>) = from_args(args)?;
                Ok(self.0.get_value(key).map(|v| to_jinja(&v)).or(default).unwrap_or(JValue::from(())))
            }
            "keys" => Ok(JValue::from(self.0.keys())),
            "items" => Ok(JValue::from(
                self.0.iter().map(|(k, v)| JValue::from(vec![JValue::from(k), to_jinja(&v)])).collect::<Vec<_>>(),
            )),
            _ => Err(minijinja::Error::new(
                minijinja::ErrorKind::UnknownMethod,
                format!("session has no method {method}"),
            )),
        }
    }
}

/// A session value as a template value: Markup stays safe HTML, the other
/// tagged types show as Flask would print them.
/// An error with its causes, on one line: a store's own message says what
/// failed, the cause (refused connection, wrong password, missing
/// permission) says why.
fn why(e: &hipflask::Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        // Some errors repeat their cause in their own message: once is enough.
        let text = c.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        cause = c.source();
    }
    out.replace('\n', " ")
}

fn to_jinja(v: &Value) -> JValue {
    match v {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Int(i) => JValue::from(*i),
        Value::BigInt(b) => b.to_i128().map_or_else(|| JValue::from(b.to_string()), JValue::from),
        Value::Float(f) => JValue::from(*f),
        Value::Str(s) => JValue::from(s.as_str()),
        Value::List(items) | Value::Tuple(items) => JValue::from(items.iter().map(to_jinja).collect::<Vec<_>>()),
        Value::Dict(d) => JValue::from_iter(d.iter().map(|(k, v)| (k.clone(), to_jinja(v)))),
        Value::Bytes(b) => JValue::from_bytes(b.clone()),
        Value::Markup(m) => JValue::from_safe_string(m.clone()),
        Value::Uuid(u) => JValue::from(u.hyphenated().to_string()),
        Value::DateTime(d) => JValue::from(d.to_string()),
    }
}

/// Python's `str()` of a template value, so pages print `None` and `True`
/// as the tutorials' Flask pages do.
fn python_str(v: &JValue) -> String {
    use minijinja::value::ValueKind;
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::String => v.as_str().unwrap_or_default().to_owned(),
        _ => v.to_string(),
    }
}

/// Python's `repr()` of a session value (dict keys in sorted order).
pub fn python_repr(v: &Value) -> String {
    let mut out = String::new();
    write_repr(v, &mut out);
    out
}

fn write_repr(v: &Value, out: &mut String) {
    let seq = |items: &[Value], open: &str, close: &str, out: &mut String| {
        out.push_str(open);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_repr(item, out);
        }
        if close == ")" && items.len() == 1 {
            out.push(',');
        }
        out.push_str(close);
    };
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::BigInt(b) => out.push_str(b.as_str()),
        Value::Float(f) => {
            let mut tmp = hipflask::Dict::new();
            tmp.insert(String::new(), Value::Float(*f));
            let json = hipflask::to_tagged_json(&tmp);
            let text = &json[4..json.len() - 1];
            out.push_str(match text {
                "Infinity" => "inf",
                "-Infinity" => "-inf",
                "NaN" => "nan",
                t => t,
            });
        }
        Value::Str(s) => str_repr(s, out),
        Value::List(items) => seq(items, "[", "]", out),
        Value::Tuple(items) => seq(items, "(", ")", out),
        Value::Dict(d) => {
            out.push('{');
            for (i, (k, v)) in d.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                str_repr(k, out);
                out.push_str(": ");
                write_repr(v, out);
            }
            out.push('}');
        }
        Value::Bytes(b) => {
            out.push_str("b'");
            for &c in b {
                match c {
                    b'\\' => out.push_str("\\\\"),
                    b'\'' => out.push_str("\\'"),
                    0x20..=0x7e => out.push(c as char),
                    _ => {
                        let _ = write!(out, "\\x{c:02x}");
                    }
                }
            }
            out.push('\'');
        }
        Value::Markup(m) => {
            out.push_str("Markup(");
            str_repr(m, out);
            out.push(')');
        }
        Value::Uuid(u) => {
            let _ = write!(out, "UUID('{}')", u.hyphenated());
        }
        Value::DateTime(d) => {
            let t = d.to_offset_date_time();
            let _ = write!(
                out,
                "datetime.datetime({}, {}, {}, {}, {}, {}, tzinfo=datetime.timezone.utc)",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
        }
    }
}

fn str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn render(state: &AppState, name: &str, session: &hipflask::Session, extra: JValue) -> Response {
    let flash_session = session.clone();
    let get_flashed_messages = JValue::from_function(move |kwargs: Kwargs| -> Result<JValue, minijinja::Error> {
        let with_categories: Option<bool> = kwargs.get("with_categories")?;
        let filter: Option<Vec<String>> = kwargs.get("category_filter")?;
        kwargs.assert_all_used()?;
        let filter: Vec<&str> = filter.iter().flatten().map(String::as_str).collect();
        let flashes = flash_session.get_flashed_messages(&filter);
        Ok(JValue::from(
            flashes
                .into_iter()
                .map(|f| {
                    let message = to_jinja(&f.message);
                    if with_categories.unwrap_or(false) {
                        JValue::from(vec![JValue::from(f.category), message])
                    } else {
                        message
                    }
                })
                .collect::<Vec<_>>(),
        ))
    });
    let ctx = minijinja::context! {
        session => JValue::from_object(SessionObject(session.clone())),
        get_flashed_messages => get_flashed_messages,
        lifetime_days => state.lifetime_days,
        server_side => state.store.is_some(),
        ..extra
    };
    match state.templates.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template = name, "template rendering failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn index(State(state): Shared, session: Session) -> Response {
    let items: Vec<(String, String)> = session
        .iter()
        .filter(|(k, _)| k != hipflask::FLASHES_KEY && k != USER_KEY)
        .map(|(k, v)| (k, python_repr(&v)))
        .collect();
    render(&state, "index.html", &session, minijinja::context! { items })
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    #[serde(default)]
    password: String,
    remember: Option<String>,
}

async fn login(session: Session, Form(form): Form<LoginForm>) -> Redirect {
    let name = form.username.trim();
    let _ = form.password; // a demo: any password is accepted
    if name.is_empty() {
        session.flash("Please enter a username.", "error");
        return Redirect::to("/");
    }
    // A new id at login, against session fixation (server-side sessions).
    session.regenerate();
    session.insert_value("username", Value::from(name));
    // Flask-Login's key: the store's per-user index follows it.
    session.insert_value(USER_KEY, Value::from(name));
    // Seed 000's use case: "remember me" is a long-lived (permanent) session.
    session.set_permanent(form.remember.as_deref() == Some("on"));
    session.flash(format!("Logged in as {name}"), "message");
    Redirect::to("/")
}

async fn logout(session: Session) -> Redirect {
    session.destroy();
    session.flash("Logged out", "message");
    Redirect::to("/")
}

/// Ends every session of the logged-in user, on every browser.
async fn logout_everywhere(State(state): Shared, session: Session) -> Response {
    let Some(store) = &state.store else {
        session.flash("Logging out everywhere needs server-side sessions (SESSION_TYPE=memory).", "error");
        return Redirect::to("/").into_response();
    };
    let Some(user) = session.get::<String>(USER_KEY) else {
        return Redirect::to("/").into_response();
    };
    match store.delete_user(&user).await {
        Ok(n) => {
            session.destroy();
            session.flash(format!("Logged out of {n} sessions"), "message");
            Redirect::to("/").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "log out everywhere failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

fn query(state: &AppState, session: &hipflask::Session, action: &str) -> Response {
    render(state, "query.html", session, minijinja::context! { action })
}

async fn set(State(state): Shared, session: Session) -> Response {
    session.insert_value("user", Value::from("poloyy"));
    session.insert_value("pwd", Value::from("password"));
    query(&state, &session, "set")
}

async fn get_query(State(state): Shared, session: Session) -> Response {
    query(&state, &session, "get")
}

async fn del(State(state): Shared, session: Session) -> Response {
    session.remove("user");
    query(&state, &session, "del")
}

async fn clear(State(state): Shared, session: Session) -> Response {
    session.clear();
    query(&state, &session, "clear")
}

async fn visits_counter(session: Session) -> String {
    let visits = match session.get_value("visits") {
        Some(Value::Int(n)) => n.saturating_add(1),
        _ => 1,
    };
    session.insert_value("visits", Value::Int(visits));
    format!("Total visits: {visits}")
}

async fn delete_visits(session: Session) -> &'static str {
    session.remove("visits");
    "Visits deleted"
}

/// Seed 004: change a nested value in place, then mark the session modified.
async fn cart(session: Session) -> String {
    let before: Vec<String> =
        session.iter().map(|(k, v)| format!("({}, {})", python_repr(&Value::Str(k)), python_repr(&v))).collect();
    let page = format!("dict_items([{}])", before.join(", "));
    let changed = session.with_value_mut("cart_item", |item| {
        if let Some(cart) = item.as_dict_mut() {
            cart.insert("pineapples".into(), Value::from("100"));
        }
    });
    if changed.is_some() {
        // Changing a nested value is invisible to the session, as in Flask.
        session.mark_modified();
    } else {
        let cart: hipflask::Dict =
            [("pineapples", "10"), ("apples", "20"), ("mangoes", "30")].map(|(k, v)| (k.into(), v.into())).into();
        session.insert_value("cart_item", Value::Dict(cart));
    }
    page
}

async fn permanent(session: Session) -> &'static str {
    session.insert_value("username", Value::from("zhiliao"));
    session.insert_value("age", Value::Int(20));
    session.set_permanent(true);
    "session set (permanent)"
}

async fn get_session(session: Session) -> String {
    session.get::<String>("username").unwrap_or_else(|| "没有session数据".to_owned())
}

async fn del_session(session: Session) -> &'static str {
    session.clear();
    "删除session成功..."
}

async fn api_get(session: Session) -> Response {
    let value = Value::Dict(session.to_dict());
    axum::Json(value).into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

async fn api_put(session: Session, Path(key): Path<String>, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("the body must be JSON: {e}\n")),
    };
    if key == hipflask::PERMANENT_KEY {
        return match value {
            Value::Bool(b) => {
                session.set_permanent(b);
                StatusCode::NO_CONTENT.into_response()
            }
            _ => bad_request("_permanent takes true or false\n".into()),
        };
    }
    session.insert_value(key, value);
    StatusCode::NO_CONTENT.into_response()
}

async fn api_delete(session: Session, Path(key): Path<String>) -> Response {
    match session.remove(&key) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => (StatusCode::NOT_FOUND, "no such key\n").into_response(),
    }
}

async fn api_clear(session: Session) -> StatusCode {
    session.clear();
    StatusCode::NO_CONTENT
}

/// The session metrics in Prometheus' text format.
async fn metrics_page(State(state): Shared) -> Response {
    match &state.metrics {
        Some(handle) => {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

/// The benchmark's routes, without the app's state as the peers' bench
/// servers: axum clones a route's handler for every request, and a handler
/// holding the state costs an allocation and an atomic increment each time.
fn bench_routes() -> Router {
    Router::new()
        .route("/bench/none", get(bench_none))
        .route("/bench/read", get(bench_read))
        .route("/bench/write", get(bench_write))
        .route("/bench/seed", get(bench_seed))
}

async fn bench_none() -> &'static str {
    "ok"
}

async fn bench_read(session: Session) -> String {
    session.get::<i64>("visits").unwrap_or(0).to_string()
}

async fn bench_write(session: Session) -> String {
    let n = session.get::<i64>("visits").unwrap_or(0).saturating_add(1);
    session.insert_value("visits", Value::Int(n));
    n.to_string()
}

/// `?size=N` on `/bench/seed`.
#[derive(Deserialize)]
struct SeedSize {
    size: Option<usize>,
}

/// Largest `?size=` the seed route takes: past a cookie's 4 KB, and bounded so a
/// request cannot make the server build a huge session.
const MAX_SEED_SIZE: usize = 64 * 1024;

async fn bench_seed(session: Session, Query(seed): Query<SeedSize>) -> Response {
    if seed.size.is_some_and(|size| size > MAX_SEED_SIZE) {
        return (StatusCode::BAD_REQUEST, format!("size must be at most {MAX_SEED_SIZE}\n")).into_response();
    }
    session.insert_value("visits", Value::Int(1));
    if let Some(size) = seed.size {
        // An incompressible-looking pad, so a cookie's size follows `size` instead of
        // collapsing under zlib: the benchmarks' size curve needs real bytes.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let pad: String = (0..size)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                char::from(b'a' + ((state >> 33) % 26) as u8)
            })
            .collect();
        session.insert_value("pad", Value::Str(pad));
    }
    "1".into_response()
}
