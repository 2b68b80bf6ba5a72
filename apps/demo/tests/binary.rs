//! The `hipflask-demo` program itself: startup messages and bad settings.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn demo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hipflask-demo"));
    for var in ["SECRET_KEY", "SESSION_TYPE", "PERMANENT_SESSION_LIFETIME", "SESSION_COOKIE_SAMESITE"] {
        c.env_remove(var);
    }
    c
}

#[test]
fn bad_settings_stop_with_one_line_naming_the_variable() {
    for (var, value) in
        [("SESSION_TYPE", "mongodb"), ("PERMANENT_SESSION_LIFETIME", "a month"), ("SESSION_COOKIE_SECURE", "perhaps")]
    {
        let out = demo().env("SECRET_KEY", "k").env(var, value).arg("--bind").arg("127.0.0.1:0").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(var), "{err}");
    }
}

#[test]
fn without_a_secret_key_it_warns_and_serves() {
    let mut child = demo().args(["--bind", "127.0.0.1:0"]).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("hipflask demo on http://127.0.0.1:");
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.contains("SECRET_KEY is not set")), "{seen:?}");
    assert!(seen.last().unwrap().starts_with("hipflask demo on http://127.0.0.1:"), "{seen:?}");
    assert!(!seen.last().unwrap().ends_with(":0/"), "the real port is shown: {seen:?}");
}
