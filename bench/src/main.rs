//! `bench-peer KIND ADDR`: one of hipflask's peers serving the demo's bench-route contract.
//!
//! `GET /bench/none` never touches the session, `/bench/read` answers the integer `visits` (0 if
//! absent), `/bench/write` increments it and answers the new value, `/bench/seed` sets it to 1.
//! Every peer is configured the way its documentation shows, with the `Secure` cookie flag off
//! because the benchmark speaks plain HTTP on loopback.

use std::net::SocketAddr;

const KINDS: &str = "axum-bare | axum-wire | tower-memory | tower-redis | actix-cookie | actix-redis";

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(kind), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: bench-peer KIND ADDR   (KIND: {KINDS}; Redis peers read REDIS_URL)");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    match kind.as_str() {
        "axum-bare" => tokio_main(axum_peer::bare(), addr),
        "axum-wire" => tokio_main(axum_peer::wire(), addr),
        "tower-memory" => tokio_main(axum_peer::tower_memory(), addr),
        "tower-redis" => {
            let runtime = tokio_runtime()?;
            let app = runtime.block_on(axum_peer::tower_redis(&redis))?;
            runtime.block_on(axum_peer::serve(app, addr))
        }
        "actix-cookie" => actix_peer::serve(actix_peer::Backend::Cookie, addr),
        "actix-redis" => actix_peer::serve(actix_peer::Backend::Redis(redis), addr),
        other => {
            eprintln!("unknown peer {other:?}; one of: {KINDS}");
            std::process::exit(2);
        }
    }
}

fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn tokio_main(app: axum::Router, addr: SocketAddr) -> std::io::Result<()> {
    tokio_runtime()?.block_on(axum_peer::serve(app, addr))
}

mod axum_peer {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::Router;
    use axum::extract::Request;
    use axum::http::header::{COOKIE, SET_COOKIE, VARY};
    use axum::http::{HeaderValue, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    pub(crate) async fn serve(app: Router, addr: SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("peer on http://{}/", listener.local_addr()?);
        axum::serve(listener, app).await
    }

    /// The same routes with no session layer: the floor every session library is measured against.
    pub(crate) fn bare() -> Router {
        Router::new()
            .route("/bench/none", get(|| async { "ok" }))
            .route("/bench/read", get(|| async { "0" }))
            .route("/bench/write", get(|| async { "1" }))
            .route("/bench/seed", get(|| async { "1" }))
    }

    /// Bare axum answering with what a Flask-compatible session response carries, and no session:
    /// `Vary: Cookie` on reads and writes, a write's `Set-Cookie` with the request's id and an
    /// `Expires` date, and the count as a `String` body. The floor of the wire format: what a
    /// session layer costs beyond it is its own work.
    pub(crate) fn wire() -> Router {
        Router::new()
            .route("/bench/none", get(|| async { "ok" }))
            .route("/bench/read", get(|| async { ([(VARY, HeaderValue::from_static("Cookie"))], count()) }))
            .route("/bench/write", get(wire_write))
            .route("/bench/seed", get(wire_seed))
    }

    /// The handler's answer as the session peers make it: a number formatted into a `String`.
    fn count() -> String {
        std::hint::black_box(1i64).to_string()
    }

    /// A `Set-Cookie` as Flask-Session writes a permanent session's: the id the request sent,
    /// an `Expires` of the same length as a real one, `HttpOnly` and `Path=/`.
    async fn wire_write(request: Request) -> Response {
        const TAIL: &str = "; Expires=Tue, 05 Jan 2027 09:25:31 GMT; HttpOnly; Path=/";
        let id = request.headers().get(COOKIE).and_then(|v| v.as_bytes().strip_prefix(b"session=")).unwrap_or_default();
        let mut cookie = Vec::with_capacity(8 + id.len() + TAIL.len());
        cookie.extend_from_slice(b"session=");
        cookie.extend_from_slice(id);
        cookie.extend_from_slice(TAIL.as_bytes());
        let Ok(cookie) = HeaderValue::try_from(cookie) else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        ([(VARY, HeaderValue::from_static("Cookie")), (SET_COOKIE, cookie)], count()).into_response()
    }

    /// Hands out ids shaped as Flask-Session's (43 characters), so requests carry a cookie of the
    /// real size.
    async fn wire_seed() -> impl IntoResponse {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let cookie = format!("session={:043}; Path=/", NEXT.fetch_add(1, Ordering::Relaxed));
        ([(SET_COOKIE, cookie)], "1")
    }

    type Answer = Result<String, StatusCode>;

    fn failed<E>(_: E) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    /// The four routes for one tower-sessions version (0.14 and 0.15 share the handler API).
    macro_rules! tower_routes {
        ($ts:ident) => {
            Router::new()
                .route("/bench/none", get(|| async { "ok" }))
                .route(
                    "/bench/read",
                    get(|session: $ts::Session| async move {
                        let n: Option<i64> = session.get("visits").await.map_err(failed)?;
                        Answer::Ok(n.unwrap_or(0).to_string())
                    }),
                )
                .route(
                    "/bench/write",
                    get(|session: $ts::Session| async move {
                        let n: Option<i64> = session.get("visits").await.map_err(failed)?;
                        let n = n.unwrap_or(0) + 1;
                        session.insert("visits", n).await.map_err(failed)?;
                        Answer::Ok(n.to_string())
                    }),
                )
                .route(
                    "/bench/seed",
                    get(|session: $ts::Session| async move {
                        session.insert("visits", 1i64).await.map_err(failed)?;
                        Answer::Ok("1".into())
                    }),
                )
        };
    }

    pub(crate) fn tower_memory() -> Router {
        let store = tower_sessions::MemoryStore::default();
        tower_routes!(tower_sessions).layer(tower_sessions::SessionManagerLayer::new(store).with_secure(false))
    }

    pub(crate) async fn tower_redis(url: &str) -> std::io::Result<Router> {
        use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
        let config = Config::from_url(url).map_err(std::io::Error::other)?;
        let pool = Pool::new(config, None, None, None, 4).map_err(std::io::Error::other)?;
        pool.init().await.map_err(std::io::Error::other)?;
        let store = tower_sessions_redis_store::RedisStore::new(pool);
        let layer = tower_sessions_014::SessionManagerLayer::new(store).with_secure(false);
        Ok(tower_routes!(tower_sessions_014).layer(layer))
    }
}

mod actix_peer {
    use std::net::SocketAddr;

    use actix_session::config::CookieContentSecurity;
    use actix_session::storage::{CookieSessionStore, RedisSessionStore, SessionStore};
    use actix_session::{Session, SessionMiddleware};
    use actix_web::cookie::Key;
    use actix_web::{App, HttpResponse, HttpServer, web};

    pub(crate) enum Backend {
        Cookie,
        Redis(String),
    }

    fn failed<E: std::fmt::Display>(e: E) -> actix_web::Error {
        actix_web::error::ErrorInternalServerError(e.to_string())
    }

    async fn none() -> HttpResponse {
        HttpResponse::Ok().body("ok")
    }

    async fn read(session: Session) -> actix_web::Result<String> {
        Ok(session.get::<i64>("visits").map_err(failed)?.unwrap_or(0).to_string())
    }

    async fn write(session: Session) -> actix_web::Result<String> {
        let n = session.get::<i64>("visits").map_err(failed)?.unwrap_or(0) + 1;
        session.insert("visits", n).map_err(failed)?;
        Ok(n.to_string())
    }

    async fn seed(session: Session) -> actix_web::Result<String> {
        session.insert("visits", 1i64).map_err(failed)?;
        Ok("1".into())
    }

    fn middleware<S: SessionStore>(store: S, key: &Key, signed: bool) -> SessionMiddleware<S> {
        let builder = SessionMiddleware::builder(store, key.clone()).cookie_secure(false);
        // actix-session's cookie store encrypts by default; the Flask-comparable mode is signed.
        let builder = if signed { builder.cookie_content_security(CookieContentSecurity::Signed) } else { builder };
        builder.build()
    }

    #[actix_web::main]
    pub(crate) async fn serve(backend: Backend, addr: SocketAddr) -> std::io::Result<()> {
        let key = Key::generate();
        let redis = match &backend {
            Backend::Cookie => None,
            Backend::Redis(url) => Some(RedisSessionStore::new(url.clone()).await.map_err(std::io::Error::other)?),
        };
        eprintln!("peer on http://{addr}/");
        HttpServer::new(move || {
            let routes = web::scope("/bench")
                .route("/read", web::get().to(read))
                .route("/write", web::get().to(write))
                .route("/seed", web::get().to(seed));
            let app = App::new().route("/bench/none", web::get().to(none));
            match &redis {
                None => app.service(routes.wrap(middleware(CookieSessionStore::default(), &key, true))),
                Some(store) => app.service(routes.wrap(middleware(store.clone(), &key, false))),
            }
        })
        .bind(addr)?
        .run()
        .await
    }
}
