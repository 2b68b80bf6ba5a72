//! Every demo route in-process, with a cookie-keeping client.

use hipflask_demo::{DemoApp, DemoConfig, app};
use http::{Method, StatusCode};

mod common;
use common::Client;

const FROZEN: u64 = 1_700_000_000;

fn frozen() -> u64 {
    FROZEN
}

fn demo() -> DemoApp {
    let session = hipflask::Config::builder().secret_key("secret").clock(frozen).build().unwrap();
    app(DemoConfig::cookie(session))
}

#[tokio::test]
async fn index_without_a_session_shows_the_login_form_and_sets_nothing() {
    let mut c = Client::new(demo());
    let a = c.get("/").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains(r#"<form method="post" action="/login""#));
    assert!(a.body.contains(r#"name="remember""#));
    assert!(a.body.contains("/visits-counter/") && a.body.contains("/set") && a.body.contains("/permanent/"));
    assert!(a.body.contains("The session is empty."));
    assert_eq!(a.set_cookie(), None);
    assert_eq!(a.vary(), Some("Cookie"), "the page read the session");
}

#[tokio::test]
async fn login_with_remember_me_is_a_permanent_session() {
    let mut c = Client::new(demo());
    let a = c.form("/login", "username=alice&password=pw&remember=on").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers["location"], "/");
    let cookie = a.set_cookie().unwrap();
    // now + 31 days, as Flask's PERMANENT_SESSION_LIFETIME default.
    assert!(cookie.contains("; Expires=Fri, 15 Dec 2023 22:13:20 GMT; HttpOnly; Path=/"), "{cookie}");
    let page = c.get("/").await;
    assert!(page.body.contains("Logged in as alice"), "the flash is shown");
    assert!(page.body.contains("Logged in as <strong>alice</strong>"));
    assert!(page.body.contains("remembered for 31 days"));
    assert!(page.set_cookie().unwrap().contains("Expires="), "flash consumed, cookie re-issued");
    let again = c.get("/").await;
    assert!(!again.body.contains(r#"role="status""#), "a flash is shown once");
    assert!(again.body.contains("Logged in as <strong>alice</strong>"));
}

#[tokio::test]
async fn login_without_remember_me_is_a_browser_session() {
    let mut c = Client::new(demo());
    let a = c.form("/login", "username=bob&password=pw").await;
    let cookie = a.set_cookie().unwrap();
    assert!(!cookie.contains("Expires"), "{cookie}");
    assert!(c.get("/").await.body.contains("until the browser closes"));
}

#[tokio::test]
async fn empty_username_flashes_an_error_and_stores_nothing() {
    let mut c = Client::new(demo());
    c.form("/login", "username=++&password=x").await;
    let page = c.get("/").await;
    assert!(page.body.contains(r#"class="flash error""#), "{}", page.body);
    assert!(page.body.contains("Please enter a username."));
    assert!(!page.body.contains("Logged in as"));
}

#[tokio::test]
async fn logout_clears_the_session() {
    let mut c = Client::new(demo());
    c.form("/login", "username=alice&remember=on").await;
    c.get("/").await;
    let a = c.form("/logout", "").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let page = c.get("/").await;
    assert!(page.body.contains("Logged out"));
    assert!(!page.body.contains("Logged in as"));
    assert!(page.set_cookie().unwrap().starts_with("session=; Expires=Thu, 01 Jan 1970"), "only the flash was left");
    assert!(c.get("/").await.body.contains("The session is empty."));
}

#[tokio::test]
async fn seed_003_set_get_del_clear() {
    let mut c = Client::new(demo());
    let a = c.get("/get").await;
    assert!(a.body.contains("session.get('user') = None"), "{}", a.body);
    let a = c.get("/set").await;
    assert!(a.body.contains("session.get('user') = poloyy"));
    assert!(a.body.contains("session.get('pwd') = password"));
    assert!(c.get("/get").await.body.contains("session.get('user') = poloyy"));
    let a = c.get("/del").await;
    assert!(a.body.contains("session.get('user') = None"));
    assert!(a.body.contains("session.get('pwd') = password"));
    let a = c.get("/clear").await;
    assert!(a.body.contains("session.get('pwd') = None"));
    assert!(a.set_cookie().unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn seed_004_visits_counter() {
    let mut c = Client::new(demo());
    for n in 1..=3 {
        assert_eq!(c.get("/visits-counter/").await.body, format!("Total visits: {n}"));
    }
    assert_eq!(c.get("/delete-visits/").await.body, "Visits deleted");
    assert_eq!(c.get("/visits-counter/").await.body, "Total visits: 1");
}

#[tokio::test]
async fn seed_004_cart_changed_in_place_is_saved_after_mark_modified() {
    let mut c = Client::new(demo());
    let first = c.get("/session/").await;
    assert_eq!(first.body, "dict_items([])");
    assert!(first.set_cookie().is_some());
    let second = c.get("/session/").await;
    assert_eq!(second.body, "dict_items([('cart_item', {'apples': '20', 'mangoes': '30', 'pineapples': '10'})])");
    assert!(second.set_cookie().is_some(), "modified was set, so the cookie is rewritten");
    let third = c.get("/session/").await;
    assert!(third.body.contains("'pineapples': '100'"), "{}", third.body);
}

#[tokio::test]
async fn seeds_000_002_permanent_session() {
    let mut c = Client::new(demo());
    assert_eq!(c.get("/get_session/").await.body, "没有session数据");
    let a = c.get("/permanent/").await;
    assert!(a.set_cookie().unwrap().contains("Expires=Fri, 15 Dec 2023 22:13:20 GMT"));
    assert_eq!(c.get("/get_session/").await.body, "zhiliao");
    let a = c.get("/del_session/").await;
    assert_eq!(a.body, "删除session成功...");
    assert!(a.set_cookie().unwrap().contains("Max-Age=0"));
    assert_eq!(c.get("/get_session/").await.body, "没有session数据");
}

#[tokio::test]
async fn json_api_round_trips_tagged_values() {
    let mut c = Client::new(demo());
    assert_eq!(c.json(Method::PUT, "/api/session/cart", r#"{" t":[1,"a"]}"#).await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.json(Method::PUT, "/api/session/n", "42").await.status, StatusCode::NO_CONTENT);
    let a = c.get("/api/session").await;
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.body, r#"{"cart":{" t":[1,"a"]},"n":42}"#);
    assert_eq!(c.json(Method::DELETE, "/api/session/n", "").await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.json(Method::DELETE, "/api/session/n", "").await.status, StatusCode::NOT_FOUND);
    let a = c.json(Method::PUT, "/api/session/_permanent", "true").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.set_cookie().unwrap().contains("Expires="));
    let a = c.json(Method::DELETE, "/api/session", "").await;
    assert!(a.set_cookie().unwrap().contains("Max-Age=0"));
    assert_eq!(c.get("/api/session").await.body, "{}");
}

#[tokio::test]
async fn json_api_rejects_bad_bodies_without_touching_the_session() {
    let mut c = Client::new(demo());
    c.json(Method::PUT, "/api/session/keep", r#""me""#).await;
    let before = c.cookie.clone();
    for (path, body, status) in [
        ("/api/session/x", "not json", StatusCode::BAD_REQUEST),
        ("/api/session/x", "{\"a\":", StatusCode::BAD_REQUEST),
        ("/api/session/_permanent", "\"yes\"", StatusCode::BAD_REQUEST),
        ("/api/session/x", &"[".repeat(10_000), StatusCode::BAD_REQUEST),
        ("/api/session/x", &format!("\"{}\"", "a".repeat(100_000)), StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let a = c.json(Method::PUT, path, body).await;
        assert_eq!(a.status, status, "{path} {}", &body[..body.len().min(20)]);
        assert!(a.body.len() < 200, "a short message: {}", a.body);
        assert_eq!(a.set_cookie(), None);
    }
    assert_eq!(c.cookie, before);
    assert_eq!(c.get("/api/session").await.body, r#"{"keep":"me"}"#);
}

#[tokio::test]
async fn bench_routes() {
    let mut c = Client::new(demo());
    let a = c.get("/bench/none").await;
    assert_eq!((a.body.as_str(), a.set_cookie(), a.vary()), ("ok", None, None));
    assert_eq!(c.get("/bench/read").await.body, "0");
    let a = c.get("/bench/seed").await;
    assert_eq!(a.body, "1");
    assert!(a.set_cookie().is_some());
    let a = c.get("/bench/read").await;
    assert_eq!((a.body.as_str(), a.set_cookie()), ("1", None), "reading does not write");
    let a = c.get("/bench/write").await;
    assert_eq!(a.body, "2");
    assert!(a.set_cookie().is_some());
    assert_eq!(c.get("/bench/read").await.body, "2");
}

#[tokio::test]
async fn bench_seed_makes_sessions_of_the_asked_size() {
    let mut small = Client::new(demo());
    small.get("/bench/seed").await;
    let mut big = Client::new(demo());
    assert_eq!(big.get("/bench/seed?size=3000").await.body, "1");
    let (small, big) = (small.cookie.unwrap(), big.cookie.unwrap());
    // The pad must not compress away: the cookie grows by about the size asked for.
    assert!(big.len() > small.len() + 2500, "{} -> {}", small.len(), big.len());
    let mut c = Client::new(demo());
    let a = c.get("/bench/seed?size=70000").await;
    assert_eq!((a.status, a.set_cookie()), (StatusCode::BAD_REQUEST, None));
    assert_eq!(c.get("/bench/seed?size=ten").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_flask_written_cookie_is_read() {
    let mut c = Client::new(demo());
    // Flask 3.1.3 with SECRET_KEY="secret" at the frozen time (vector seed_permanent).
    c.cookie =
        Some("eyJfcGVybWFuZW50Ijp0cnVlLCJ1c2VybmFtZSI6ImxpZWZ5dWFuIn0.ZVPxAA.yXPn4Pe9rRusboppYJ7Ua0_gi_c".into());
    let page = c.get("/").await;
    assert!(page.body.contains("Logged in as <strong>liefyuan</strong>"), "{}", page.body);
}

#[tokio::test]
async fn settings_errors_name_the_variable() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    };
    let err = DemoConfig::from_lookup(env(&[("SESSION_TYPE", "mongo"), ("SECRET_KEY", "k")])).await.unwrap_err();
    assert!(err.starts_with("SESSION_TYPE="), "{err}");
    let err = DemoConfig::from_lookup(env(&[("SESSION_COOKIE_SAMESITE", "sometimes")])).await.unwrap_err();
    assert!(err.contains("SESSION_COOKIE_SAMESITE"), "{err}");
    assert!(!err.contains('\n'));
    let bad_capacities: [&'static [(&str, &str)]; 2] = [
        &[("SESSION_TYPE", "memory"), ("SESSION_MEMORY_CAPACITY", "0")],
        &[("SESSION_TYPE", "memory"), ("SESSION_MEMORY_CAPACITY", "lots")],
    ];
    for pairs in bad_capacities {
        let err = DemoConfig::from_lookup(env(pairs)).await.unwrap_err();
        assert!(err.starts_with("SESSION_MEMORY_CAPACITY="), "{err}");
    }
    let err = DemoConfig::from_lookup(env(&[("SESSION_TYPE", "redis"), ("SESSION_REDIS_LOCAL_CACHE", "many")]))
        .await
        .unwrap_err();
    assert!(err.starts_with("SESSION_REDIS_LOCAL_CACHE="), "{err}");
    // Nothing listens on port 1: the line says so, not only that it failed.
    let err = DemoConfig::from_lookup(env(&[("SESSION_TYPE", "redis"), ("SESSION_REDIS", "redis://127.0.0.1:1")]))
        .await
        .unwrap_err();
    assert!(err.starts_with("SESSION_REDIS=") && err.contains("cannot connect"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "the cause is given: {err}");
    assert!(!err.contains('\n'));
    let memory = env(&[("SESSION_TYPE", "memory"), ("SESSION_MEMORY_CAPACITY", "2000000"), ("SECRET_KEY", "k")]);
    assert!(DemoConfig::from_lookup(memory).await.unwrap().0.store.is_some());
    let (_, warnings) = DemoConfig::from_lookup(env(&[])).await.unwrap();
    assert!(warnings[0].contains("SECRET_KEY is not set"), "{warnings:?}");
    let (_, warnings) = DemoConfig::from_lookup(env(&[("SECRET_KEY", "k"), ("SESSION_TYPE", "cookie")])).await.unwrap();
    assert!(warnings.is_empty());
}
