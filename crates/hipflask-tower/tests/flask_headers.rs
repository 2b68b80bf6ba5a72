//! Every Set-Cookie / Vary transcript recorded from Flask 3.1.3
//! (`flask-headers.json` from the spec), replayed through the middleware.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hipflask::{Config, ConfigBuilder, SameSite, Value};
use hipflask_tower::{LazySession, SessionLayer};
use http::StatusCode;
use serde_json::Value as Json;
use tower::ServiceExt;

mod common;
use common::Logs;

const FROZEN: u64 = 1_700_000_000;

fn frozen() -> u64 {
    FROZEN
}

fn scenarios() -> Vec<Json> {
    let all: Json = serde_json::from_str(include_str!("../../hipflask/tests/fixtures/flask-headers.json")).unwrap();
    all["scenarios"].as_array().unwrap().clone()
}

/// Python's `str(timedelta)`: `7 days, 0:00:00` or `0:01:00`.
fn timedelta(text: &str) -> Duration {
    let (days, hms) = match text.split_once(" days, ").or_else(|| text.split_once(" day, ")) {
        Some((d, rest)) => (d.parse::<u64>().unwrap(), rest),
        None => (0, text),
    };
    let secs = hms.split(':').fold(0u64, |acc, p| acc * 60 + p.parse::<u64>().unwrap());
    Duration::from_secs(days * 86_400 + secs)
}

fn config_for(scenario: &Json) -> Config {
    let mut b: ConfigBuilder = Config::builder().secret_key("secret").clock(frozen);
    for (key, v) in scenario["config"].as_object().unwrap() {
        b = match key.as_str() {
            "PERMANENT_SESSION_LIFETIME" => b.permanent_session_lifetime(timedelta(v.as_str().unwrap())),
            "SESSION_REFRESH_EACH_REQUEST" => b.refresh_each_request(v.as_bool().unwrap()),
            "SESSION_COOKIE_SAMESITE" => b.cookie_samesite(SameSite::parse(v.as_str().unwrap())),
            "SESSION_COOKIE_SECURE" => b.cookie_secure(v.as_bool().unwrap()),
            "SESSION_COOKIE_HTTPONLY" => b.cookie_httponly(v.as_bool().unwrap()),
            "SESSION_COOKIE_PARTITIONED" => b.cookie_partitioned(v.as_bool().unwrap()),
            "SESSION_COOKIE_DOMAIN" => b.cookie_domain(v.as_str()),
            "SESSION_COOKIE_PATH" => b.cookie_path(v.as_str()),
            "SESSION_COOKIE_NAME" => b.cookie_name(v.as_str().unwrap()),
            "APPLICATION_ROOT" => b.application_root(v.as_str().unwrap()),
            "MAX_COOKIE_SIZE" => b.max_cookie_size(v.as_u64().unwrap() as usize),
            other => panic!("scenario config {other} is not mapped"),
        };
    }
    b.build().unwrap()
}

/// The 5000-character blob of the size scenarios, read back from Flask's cookie.
fn blob(scenario: &Json) -> String {
    let set_cookie = scenario["response"]["set_cookie"][0].as_str().unwrap();
    let value = &set_cookie["session=".len()..set_cookie.find(';').unwrap()];
    let codec = Config::builder().secret_key("secret").build().unwrap().codec().clone();
    let d = codec.decode(value, FROZEN).unwrap();
    d["blob"].as_str().unwrap().to_owned()
}

/// The Python view of each scenario, written against the Rust API.
async fn view(State((id, blob)): State<(String, Arc<String>)>, req: Request) -> Response {
    let lazy = req.extensions().get::<LazySession>().unwrap().clone();
    // Untouched views must not load the session at all.
    let untouched = id.contains("untouched");
    let session = if untouched { None } else { Some(lazy.load().await.unwrap()) };
    let s = || session.clone().expect("loaded for touched views");
    let mut status = StatusCode::OK;
    let mut vary_accept_encoding = false;
    match id.as_str() {
        "first_write"
        | "samesite_lax"
        | "samesite_lowercase"
        | "samesite_none"
        | "secure"
        | "domain"
        | "domain_leading_dot_port"
        | "domain_idna"
        | "partitioned"
        | "httponly_off"
        | "cookie_name"
        | "path_from_application_root"
        | "path_explicit"
        | "refresh_off_permanent_write" => {
            s().insert("username", "liefyuan").unwrap();
        }
        "permanent_write_7d" | "permanent_write_default" | "all_attributes" => {
            s().set_permanent(true);
            s().insert("username", "liefyuan").unwrap();
        }
        "read_only"
        | "read_only_no_cookie"
        | "refresh_off_permanent_read"
        | "tampered_cookie_read"
        | "expired_cookie_read" => {
            let _ = s().get::<String>("username");
        }
        "contains_only" => {
            let _ = s().contains_key("username");
        }
        "clear_existing" | "clear_without_cookie" | "all_attributes_delete" => s().clear(),
        "pop_missing" => {
            assert_eq!(s().remove("missing"), None);
        }
        "untouched_with_cookie"
        | "untouched_no_cookie"
        | "refresh_on_permanent_untouched"
        | "refresh_off_permanent_untouched"
        | "refresh_on_nonpermanent_untouched" => {}
        "nested_mutation_new" => {
            s().setdefault("cart", Value::List(vec![]));
            s().with_value_mut("cart", |v| {
                if let Value::List(l) = v {
                    l.push("x".into())
                }
            });
        }
        "nested_mutation_not_detected" => {
            let _ = s().get::<String>("username");
            s().with_value_mut("cart", |v| {
                if let Value::List(l) = v {
                    l.push("x".into())
                }
            });
        }
        "modified_flag" => s().mark_modified(),
        "set_same_value" => {
            let name: String = s().require("username").unwrap();
            s().insert("username", name).unwrap();
        }
        "permanent_false" => s().set_permanent(false),
        "vary_merge" => {
            let _ = s().get::<String>("username");
            vary_accept_encoding = true;
        }
        "error_500_after_write" => {
            s().insert("username", "liefyuan").unwrap();
            status = StatusCode::INTERNAL_SERVER_ERROR;
        }
        "cookie_too_large" | "cookie_size_limit_off" => {
            s().insert("blob", blob.as_str()).unwrap();
        }
        "flash_write" => {
            s().flash("Hello", "message");
            s().flash("Bad", "error");
        }
        "flash_consume_only_key" | "flash_consume_with_other_keys" => {
            let _ = s().get_flashed_messages(&[]);
        }
        other => panic!("scenario {other} has no view"),
    }
    let mut res = (status, "ok").into_response();
    if vary_accept_encoding {
        res.headers_mut().insert("vary", "Accept-Encoding".parse().unwrap());
    }
    res
}

#[test]
fn every_flask_transcript_is_reproduced() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let scenarios = scenarios();
    assert_eq!(scenarios.len(), 44);
    for scenario in &scenarios {
        let id = scenario["id"].as_str().unwrap().to_owned();
        let blob = Arc::new(if id == "cookie_too_large" || id == "cookie_size_limit_off" {
            blob(scenario)
        } else {
            String::new()
        });
        let app = Router::new()
            .route("/", get(view))
            .with_state((id.clone(), blob))
            .layer(SessionLayer::new(config_for(scenario)));
        let mut req = http::Request::get("/");
        if let Some(cookie) = scenario["request_cookie_header"].as_str() {
            req = req.header("cookie", cookie);
        }
        let req = req.body(Body::empty()).unwrap();

        let logs = Logs::default();
        let res = logs.capture(|| rt.block_on(app.oneshot(req))).unwrap();

        let want = &scenario["response"];
        assert_eq!(res.status().as_u16(), want["status"].as_u64().unwrap() as u16, "{id}: status");
        let set_cookie: Vec<&str> = res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        let want_set_cookie: Vec<&str> =
            want["set_cookie"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(set_cookie, want_set_cookie, "{id}: Set-Cookie");
        let vary = res.headers().get("vary").map(|v| v.to_str().unwrap());
        assert_eq!(vary, want["vary"].as_str(), "{id}: Vary");

        // Where both appear, they appear in Flask's order.
        let order: Vec<String> =
            res.headers().keys().map(|k| k.as_str().to_owned()).filter(|k| k == "vary" || k == "set-cookie").collect();
        let want_order: Vec<String> = want["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
            .filter(|k| k == "vary" || k == "set-cookie")
            .collect();
        assert_eq!(order, want_order, "{id}: header order");

        let logged = logs.text();
        for warning in scenario["warnings"].as_array().unwrap() {
            assert!(logged.contains(warning.as_str().unwrap()), "{id}: missing warning, logged: {logged}");
        }
        if scenario["warnings"].as_array().unwrap().is_empty() {
            assert!(!logged.contains("too large"), "{id}: unexpected warning {logged}");
        }
    }
}
