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

/// Starts the demo on a free port with these settings; returns it and its address.
fn serve(settings: &[(&str, &str)]) -> (std::process::Child, String) {
    let mut command = demo();
    command.env("SECRET_KEY", "k").args(["--bind", "127.0.0.1:0"]).stderr(Stdio::piped());
    for (var, value) in settings {
        command.env(var, value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the demo printed its address").unwrap();
        if let Some(rest) = line.strip_prefix("hipflask demo on http://") {
            break rest.trim_end_matches('/').to_owned();
        }
    };
    (child, addr)
}

/// One `GET` on a connection of its own: the whole response, head and body.
fn get(addr: &str, path: &str, cookie: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let cookie = cookie.map(|c| format!("Cookie: session={c}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{cookie}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_are_served_in_prometheus_format() {
    let (mut child, addr) = serve(&[]);
    get(&addr, "/bench/seed", None);
    get(&addr, "/bench/read", Some("tampered.cookie.value"));
    let page = get(&addr, "/metrics", None);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(page.contains("text/plain"), "{page}");
    assert!(page.contains("hipflask_sessions_loaded_total"), "{page}");
    assert!(page.contains("hipflask_cookies_rejected_total{reason=\"bad_signature\"}"), "{page}");
}

/// The demo's `/metrics` page after a seed and three writes to one session.
fn metrics_after_four_saves(settings: &[(&str, &str)]) -> String {
    let (mut child, addr) = serve(settings);
    let seeded = get(&addr, "/bench/seed", None);
    let cookie = seeded
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: session="))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("the seed sets a cookie: {seeded}"))
        .to_owned();
    for _ in 0..3 {
        assert!(get(&addr, "/bench/write", Some(&cookie)).starts_with("HTTP/1.1 200"));
    }
    let page = get(&addr, "/metrics", None);
    child.kill().unwrap();
    child.wait().unwrap();
    page
}

/// The value of one series on a metrics page, if it is there.
fn series(page: &str, name: &str) -> Option<u64> {
    page.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
}

#[test]
fn store_waits_are_a_histogram_and_answers_given_in_place_a_count() {
    // The memory store answers every save on its first poll: nothing waited.
    let page = metrics_after_four_saves(&[("SESSION_TYPE", "memory")]);
    assert_eq!(series(&page, "hipflask_store_in_place_total{op=\"save\"}"), Some(4), "{page}");
    assert_eq!(series(&page, "hipflask_store_seconds_count{op=\"save\"}").unwrap_or(0), 0, "{page}");

    // SQLite's writes go to its own thread: a save is timed when it waited
    // for the answer, counted when the thread answered before the first poll
    // ended. Never both.
    let dir = std::env::temp_dir().join(format!("hipflask-demo-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("sessions.db").display());
    let page = metrics_after_four_saves(&[("SESSION_TYPE", "sqlite"), ("SESSION_DATABASE_URL", &url)]);
    std::fs::remove_dir_all(&dir).unwrap();
    let waited = series(&page, "hipflask_store_seconds_count{op=\"save\"}").unwrap_or(0);
    assert_eq!(series(&page, "hipflask_store_in_place_total{op=\"save\"}"), Some(4 - waited), "{page}");
    assert!(!page.contains("quantile="), "a histogram, not a summary: {page}");
}
