//! What the middleware reports through the `metrics` facade.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use hipflask::{Config, MemoryStore};
use hipflask_tower::{Session, SessionLayer};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::ServiceExt;

mod faulty;
use faulty::Faulty;

async fn write(session: Session) -> &'static str {
    session.insert("a", 1).unwrap();
    "ok"
}

async fn read(session: Session) -> String {
    session.get::<i64>("a").unwrap_or(0).to_string()
}

fn app(config: Config) -> Router {
    Router::new().route("/write", get(write)).route("/read", get(read)).layer(SessionLayer::new(config))
}

/// Server-side sessions in a memory store; built inside a test's local recorder.
fn memory_app() -> Router {
    app(Config::builder().secret_key("secret").store(Arc::new(MemoryStore::new())).build().unwrap())
}

fn send(app: &Router, path: &str, cookie: Option<&str>) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let mut req = http::Request::get(path);
    if let Some(c) = cookie {
        req = req.header("cookie", format!("session={c}"));
    }
    let res = rt.block_on(app.clone().oneshot(req.body(Body::empty()).unwrap())).unwrap();
    let set = res.headers().get("set-cookie")?.to_str().unwrap().to_owned();
    Some(set["session=".len()..set.find(';').unwrap()].to_owned())
}

/// A new session written, then written again, under a recorder of its own.
fn two_writes(app: impl FnOnce() -> Router) -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let app = app();
        let id = send(&app, "/write", None).unwrap();
        send(&app, "/write", Some(&id));
    });
    snapshotter
}

/// (name, labels) -> counter value, and names of histograms with samples.
fn read_metrics(snapshotter: &Snapshotter) -> (Vec<(String, String, u64)>, Vec<String>) {
    let mut counters = Vec::new();
    let mut histograms = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        let labels: Vec<String> = key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        match value {
            DebugValue::Counter(n) => counters.push((name, labels.join(","), n)),
            DebugValue::Histogram(samples) if !samples.is_empty() => {
                histograms.push(format!("{name}{{{}}}", labels.join(",")))
            }
            _ => {}
        }
    }
    (counters, histograms)
}

fn count(counters: &[(String, String, u64)], name: &str, labels: &str) -> u64 {
    counters.iter().filter(|(n, l, _)| n == name && l == labels).map(|(_, _, v)| *v).sum()
}

#[test]
fn cookie_sessions_report_loads_saves_and_rejections() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let app = app(Config::builder().secret_key("secret").build().unwrap());
        let cookie = send(&app, "/write", None).unwrap();
        send(&app, "/read", Some(&cookie));
        send(&app, "/read", Some("forged.cookie.value"));
    });
    let (counters, _) = read_metrics(&snapshotter);
    assert_eq!(count(&counters, "hipflask_sessions_loaded_total", ""), 3);
    assert_eq!(count(&counters, "hipflask_sessions_saved_total", ""), 1);
    assert_eq!(count(&counters, "hipflask_cookies_rejected_total", "reason=bad_signature"), 1);
}

#[test]
fn server_side_sessions_report_creation_saves_and_store_latency() {
    let snapshotter = two_writes(memory_app);
    let (counters, histograms) = read_metrics(&snapshotter);
    assert_eq!(count(&counters, "hipflask_sessions_created_total", ""), 1);
    assert_eq!(count(&counters, "hipflask_sessions_saved_total", ""), 1);
    assert!(histograms.contains(&"hipflask_store_seconds{op=load}".to_owned()), "{histograms:?}");
    assert!(histograms.contains(&"hipflask_store_seconds{op=save}".to_owned()), "{histograms:?}");
}

#[test]
fn requests_that_only_read_make_no_save_call() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let app = memory_app();
        let id = send(&app, "/write", None).unwrap();
        for _ in 0..3 {
            assert_eq!(send(&app, "/read", Some(&id)), None, "a read sets no cookie");
        }
    });
    let samples = |op: &str| {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == "hipflask_store_seconds")
            .filter(|(key, ..)| key.key().labels().any(|l| l.value() == op))
            .map(|(.., value)| match value {
                DebugValue::Histogram(s) => s.len(),
                _ => 0,
            })
            .sum::<usize>()
    };
    // One save for the write; the three reads are answered without the store.
    assert_eq!(samples("save"), 1);
}

/// Apps often build the router first and install the recorder later in
/// `main`: metrics are bound on the first request, so none are lost.
#[test]
fn a_recorder_installed_after_the_layer_is_built_gets_the_metrics() {
    let app = memory_app();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let id = send(&app, "/write", None).unwrap();
        send(&app, "/write", Some(&id));
    });
    let (counters, histograms) = read_metrics(&snapshotter);
    assert_eq!(count(&counters, "hipflask_sessions_loaded_total", ""), 2);
    assert_eq!(count(&counters, "hipflask_sessions_saved_total", ""), 1);
    assert!(histograms.contains(&"hipflask_store_seconds{op=save}".to_owned()), "{histograms:?}");
}

/// The samples of `hipflask_store_seconds`, by op (a snapshot takes them).
fn store_seconds(snapshotter: &Snapshotter) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let op = key.key().labels().find(|l| l.key() == "op").map(|l| l.value().to_owned());
        if let (true, Some(op), DebugValue::Histogram(s)) = (key.key().name() == "hipflask_store_seconds", op, value) {
            samples.extend(s.into_iter().map(|v| (op.clone(), f64::from(v))));
        }
    }
    samples
}

/// A store that answers at once is recorded as taking no time (without
/// reading the clock); one that has to wait is timed.
#[test]
fn store_seconds_are_zero_for_an_answer_at_once_and_the_wait_otherwise() {
    let snapshotter = two_writes(memory_app);
    let at_once = store_seconds(&snapshotter);
    assert!(at_once.iter().any(|(op, _)| op == "load") && at_once.iter().any(|(op, _)| op == "save"), "{at_once:?}");
    assert!(at_once.iter().all(|(_, s)| *s == 0.0), "{at_once:?}");

    let snapshotter = two_writes(|| {
        let slow = Faulty::new(std::time::Duration::from_millis(30), |_| false);
        app(Config::builder().secret_key("secret").store(Arc::new(slow)).build().unwrap())
    });
    // The first request has no cookie: its load never reaches the store.
    let waited = store_seconds(&snapshotter);
    let slow = |op: &str| waited.iter().filter(|(o, s)| o == op && *s >= 0.03).count();
    assert_eq!((slow("load"), slow("save")), (1, 2), "{waited:?}");
}
