//! The `hipflask cookie` interface, run as a process against Flask's vectors.

use std::process::{Command, Output};

use serde_json::Value as Json;

fn hipflask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hipflask")).args(args).env_remove("SECRET_KEY").output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap().trim_end().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn vectors() -> Vec<Json> {
    let all: Json =
        serde_json::from_str(include_str!("../../../crates/hipflask/tests/fixtures/flask-vectors.json")).unwrap();
    all["cookie_vectors"].as_array().unwrap().clone()
}

#[test]
fn sign_and_decode_reproduce_flask_for_every_vector() {
    let mut checked = 0;
    for v in vectors() {
        let (Some(secret), true) = (v["secret_key"].as_str(), v["kind"] == "cookie") else {
            continue;
        };
        if v["reencode_stable"] == false
            || v.get("signed_with").is_some()
            || v["secret_key_fallbacks"] != Json::Array(vec![])
        {
            continue;
        }
        let id = v["id"].as_str().unwrap();
        let payload = v["payload_json"].as_str().unwrap();
        let ts = v["timestamp"].to_string();
        let cookie = v["cookie"].as_str().unwrap();
        let signed = hipflask(&["cookie", "sign", "--secret", secret, "--timestamp", &ts, payload]);
        assert!(signed.status.success(), "{id}: {}", stderr(&signed));
        assert_eq!(stdout(&signed), cookie, "{id}: sign");
        let now = v["now"].to_string();
        let max_age = v["max_age"].to_string();
        let decoded = hipflask(&["cookie", "decode", "--secret", secret, "--now", &now, "--max-age", &max_age, cookie]);
        assert!(decoded.status.success(), "{id}: {}", stderr(&decoded));
        assert_eq!(stdout(&decoded), payload, "{id}: decode");
        checked += 1;
    }
    assert!(checked >= 40, "{checked}");
}

#[test]
fn issue_example_signs_tagged_json() {
    let o = hipflask(&[
        "cookie",
        "sign",
        "--secret",
        "secret",
        "--timestamp",
        "1700000000",
        r#"{"cart":{" t":[1,2]},"user":"Tom"}"#,
    ]);
    assert!(o.status.success());
    let cookie = stdout(&o);
    let d = hipflask(&["cookie", "decode", "--secret", "secret", "--now", "1700000000", &cookie]);
    assert_eq!(stdout(&d), r#"{"cart":{" t":[1,2]},"user":"Tom"}"#);
}

#[test]
fn rejections_exit_1_with_one_line_naming_the_reason() {
    let cookie = "eyJ1c2VybmFtZSI6ImxpZWZ5dWFuIn0.ZVPxAA.30GR1UJkcBpgrU-BXb5LvJTqcQY";
    let cases: [(&[&str], &str); 4] = [
        (&["--secret", "wrong", "--now", "1700000000", cookie], "bad signature"),
        (&["--secret", "secret", "--now", "1702678401", cookie], "expired"),
        (&["--secret", "secret", "--now", "1699999999", cookie], "future"),
        (&["--secret", "secret", "--now", "1700000000", "WzEsMl0.ZVPxAA.JwF2GclrdmNCvnOQPCFBnTNoWzM"], "bad payload"),
    ];
    for (args, reason) in cases {
        let mut all = vec!["cookie", "decode"];
        all.extend_from_slice(args);
        let o = hipflask(&all);
        assert_eq!(o.status.code(), Some(1), "{reason}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(reason), "{reason}: {err}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn fallback_keys_verify() {
    let v = vectors().into_iter().find(|v| v["id"] == "fallback_key_verifies").unwrap();
    let o = hipflask(&[
        "cookie",
        "decode",
        "--secret",
        "new-key",
        "--fallback",
        "old-key-2",
        "--fallback",
        "old-key-1",
        "--now",
        "1700000000",
        v["cookie"].as_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), r#"{"username":"liefyuan"}"#);
}

#[test]
fn secret_comes_from_the_environment() {
    let o = Command::new(env!("CARGO_BIN_EXE_hipflask"))
        .args(["cookie", "sign", "--timestamp", "1700000000", r#"{"username":"liefyuan"}"#])
        .env("SECRET_KEY", "secret")
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "eyJ1c2VybmFtZSI6ImxpZWZ5dWFuIn0.ZVPxAA.30GR1UJkcBpgrU-BXb5LvJTqcQY");
}

#[test]
fn missing_secret_is_a_clear_usage_error() {
    let o = hipflask(&["cookie", "decode", "abc.def.ghi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--secret KEY or set SECRET_KEY"), "{}", stderr(&o));
    let o = hipflask(&["cookie", "sign", "--secret", "", "{}"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("SECRET_KEY is empty"), "{}", stderr(&o));
}

#[test]
fn no_verify_prints_payload_with_a_warning() {
    let v = vectors().into_iter().find(|v| v["id"] == "seed_cart").unwrap();
    let cookie = v["cookie"].as_str().unwrap();
    // Any signature at all: nothing is checked.
    let forged = format!("{}.forged", &cookie[..cookie.rfind('.').unwrap()]);
    let o = hipflask(&["cookie", "decode", "--no-verify", &forged]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("NOT verified"));
    assert_eq!(stdout(&o), v["payload_json"].as_str().unwrap());
}

#[test]
fn invalid_json_is_rejected() {
    let o = hipflask(&["cookie", "sign", "--secret", "s", "[1,2]"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid session JSON"));
}
