//! The middleware end to end: bad input, laziness, strict size, the
//! extractor, and a Flask-style round trip across requests.

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use hipflask::{Config, Dict, Value};
use hipflask_tower::{Session, SessionLayer};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value as Json;
use tower::ServiceExt;

mod common;
use common::Logs;

const FROZEN: u64 = 1_700_000_000;

fn frozen() -> u64 {
    FROZEN
}

fn config() -> Config {
    Config::builder().secret_key("secret").clock(frozen).build().unwrap()
}

async fn whoami(session: Session) -> String {
    session.get::<String>("username").unwrap_or_else(|| "anonymous".into())
}

async fn untouched() -> &'static str {
    "untouched"
}

async fn login(session: Session) -> &'static str {
    session.insert("username", "liefyuan").unwrap();
    "ok"
}

async fn big(session: Session) -> &'static str {
    // Incompressible text, so the cookie really passes 4093 bytes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: String = (0..6000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    session.insert("blob", noise).unwrap();
    "ok"
}

fn app(config: Config) -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/untouched", get(untouched))
        .route("/login", get(login))
        .route("/big", get(big))
        .layer(SessionLayer::new(config))
}

struct Answer {
    status: StatusCode,
    set_cookie: Vec<String>,
    body: String,
    logs: String,
}

fn send(app: Router, path: &str, cookie: Option<HeaderValue>) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    if let Some(c) = cookie {
        req.headers_mut().insert("cookie", c);
    }
    let logs = Logs::default();
    let (status, set_cookie, body) = logs.capture(|| {
        rt.block_on(async {
            let res = app.oneshot(req).await.unwrap();
            let status = res.status();
            let set_cookie =
                res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, set_cookie, String::from_utf8(body.to_vec()).unwrap())
        })
    });
    let logs = logs.text();
    Answer { status, set_cookie, body, logs }
}

fn cookie_header(value: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(&format!("session={value}")).unwrap())
}

fn signed(data: &[(&str, Value)], ts: u64) -> String {
    let d: Dict = data.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    config().codec().encode(&d, ts)
}

fn assert_rejected(name: &str, cookie: Option<HeaderValue>, reason: &str) {
    let a = send(app(config()), "/whoami", cookie);
    assert_eq!(a.status, StatusCode::OK, "{name}");
    assert_eq!(a.body, "anonymous", "{name}: an empty session");
    assert!(a.set_cookie.is_empty(), "{name}: Flask never deletes a stale cookie by itself");
    assert!(a.logs.contains("rejected session cookie"), "{name}: no warning in {}", a.logs);
    assert!(a.logs.contains(reason), "{name}: reason {reason} not in {}", a.logs);
}

#[test]
fn valid_cookie_loads() {
    let a = send(app(config()), "/whoami", cookie_header(&signed(&[("username", "liefyuan".into())], FROZEN)));
    assert_eq!(a.body, "liefyuan");
    assert!(a.logs.is_empty(), "{}", a.logs);
}

#[test]
fn tampered_cookie_yields_empty_session() {
    let good = signed(&[("username", "liefyuan".into())], FROZEN);
    let tampered = good.replacen("eyJ1", "eyJ2", 1);
    assert_rejected("tampered", cookie_header(&tampered), "bad_signature");
    let mut sig_flipped = good.clone();
    sig_flipped.pop();
    sig_flipped.push('A');
    assert_rejected("signature", cookie_header(&sig_flipped), "bad_signature");
}

#[test]
fn expired_and_future_cookies_yield_empty_sessions() {
    let lifetime = config().lifetime_secs();
    let expired = signed(&[("username", "x".into())], FROZEN - lifetime - 1);
    assert_rejected("expired", cookie_header(&expired), "expired");
    let future = signed(&[("username", "x".into())], FROZEN + 1);
    assert_rejected("future", cookie_header(&future), "future_timestamp");
    // The boundary itself is still valid, as in itsdangerous.
    let boundary = signed(&[("username", "edge".into())], FROZEN - lifetime);
    assert_eq!(send(app(config()), "/whoami", cookie_header(&boundary)).body, "edge");
}

#[test]
fn truncated_and_garbage_cookies_yield_empty_sessions() {
    let good = signed(&[("username", "liefyuan".into())], FROZEN);
    assert_rejected("truncated", cookie_header(&good[..good.len() - 5]), "bad_signature");
    assert_rejected("two parts", cookie_header(&good[..good.rfind('.').unwrap()]), "bad_signature");
    assert_rejected("garbage", cookie_header("!!!.@@@.###"), "bad_signature");
    assert_rejected("no dot", cookie_header("abc"), "bad_signature");
}

#[test]
fn oversized_and_non_utf8_cookies_yield_empty_sessions() {
    assert_rejected("oversized", cookie_header(&"A".repeat(20_000)), "too_long");
    let non_utf8 = HeaderValue::from_bytes(b"session=\xff\xfe.\xfa.\xfb").unwrap();
    assert_rejected("non-UTF-8", Some(non_utf8), "bad_signature");
}

#[test]
fn validly_signed_garbage_yields_empty_session_not_500() {
    let vectors: Json = serde_json::from_str(include_str!("../../hipflask/tests/fixtures/flask-vectors.json")).unwrap();
    let mut seen = 0;
    for v in vectors["cookie_vectors"].as_array().unwrap() {
        if v["kind"] != "cookie_signed_bad_payload" || v["expected"] != "error" {
            continue;
        }
        // These vectors are signed at the frozen time with the key "secret".
        assert_eq!(v["secret_key"], "secret");
        assert_rejected(v["id"].as_str().unwrap(), cookie_header(v["cookie"].as_str().unwrap()), "bad_payload");
        seen += 1;
    }
    assert_eq!(seen, 7);
}

#[test]
fn zip_bomb_in_a_validly_signed_cookie_is_capped() {
    let bomb = signed(&[("a", Value::Str("0".repeat(4 * 1024 * 1024)))], FROZEN);
    assert!(bomb.len() < 16 * 1024, "the bomb is small on the wire: {}", bomb.len());
    assert_rejected("zip bomb", cookie_header(&bomb), "inflates past");
}

#[test]
fn ten_thousand_cookies_still_find_the_session() {
    let mut header: String = (0..10_000).map(|i| format!("c{i}=v; ")).collect();
    header.push_str(&format!("session={}", signed(&[("username", "deep".into())], FROZEN)));
    let a = send(app(config()), "/whoami", Some(HeaderValue::from_str(&header).unwrap()));
    assert_eq!(a.body, "deep");
}

#[test]
fn untouched_request_sets_nothing() {
    let a = send(app(config()), "/untouched", cookie_header(&signed(&[("username", "x".into())], FROZEN)));
    assert!(a.set_cookie.is_empty());
    let a = send(app(config()), "/untouched", None);
    assert!(a.set_cookie.is_empty());
}

#[test]
fn written_session_reads_back_on_the_next_request() {
    let a = send(app(config()), "/login", None);
    let set = &a.set_cookie[0];
    let value = &set["session=".len()..set.find(';').unwrap()];
    assert_eq!(send(app(config()), "/whoami", cookie_header(value)).body, "liefyuan");
}

#[test]
fn oversized_session_warns_by_default_and_fails_in_strict_mode() {
    let a = send(app(config()), "/big", None);
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.set_cookie.len(), 1, "Flask still sends the cookie");
    assert!(a.logs.contains("cookie is too large"), "{}", a.logs);

    let strict = Config::builder().secret_key("secret").strict_cookie_size(true).build().unwrap();
    let a = send(app(strict), "/big", None);
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(a.body.is_empty(), "no detail in the body: {}", a.body);
    assert!(a.set_cookie.is_empty());
    assert!(a.logs.contains("cookie is too large"), "the detail goes to tracing: {}", a.logs);
}

#[test]
fn extractor_without_layer_is_an_empty_500() {
    let router = Router::new().route("/whoami", get(whoami));
    let a = send(router, "/whoami", None);
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(a.body.is_empty());
    assert!(a.logs.contains("SessionLayer"), "{}", a.logs);
}

#[test]
fn session_handle_is_send_sync_and_survives_await() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<hipflask::Session>();
    assert_send_sync::<Session>();

    async fn handler(session: Session) -> String {
        let s = session.clone();
        tokio::task::yield_now().await;
        s.insert("after_await", 1).unwrap();
        tokio::task::yield_now().await;
        session.get::<i64>("after_await").unwrap().to_string()
    }
    let router = Router::new().route("/", get(handler)).layer(SessionLayer::new(config()));
    let a = send(router, "/", None);
    assert_eq!(a.body, "1");
    assert_eq!(a.set_cookie.len(), 1);
}

#[test]
fn fallback_key_cookie_is_resigned_with_the_current_key_on_write() {
    let old = Config::builder().secret_key("old").clock(frozen).build().unwrap();
    let d: Dict = [("username".to_owned(), Value::from("rotating"))].into();
    let cookie = old.codec().encode(&d, FROZEN);
    let rotated = Config::builder().secret_key("new").secret_key_fallbacks(["old"]).clock(frozen).build().unwrap();
    assert_eq!(send(app(rotated.clone()), "/whoami", cookie_header(&cookie)).body, "rotating");
    let a = send(app(rotated), "/login", cookie_header(&cookie));
    let set = &a.set_cookie[0];
    let value = &set["session=".len()..set.find(';').unwrap()];
    let new_only = Config::builder().secret_key("new").clock(frozen).build().unwrap();
    assert_eq!(send(app(new_only), "/whoami", cookie_header(value)).body, "liefyuan");
}
