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

/// What one snapshot holds (a snapshot takes them).
struct Snapshot {
    /// (name, labels, value).
    counters: Vec<(String, String, u64)>,
    /// The names and labels of histograms with samples.
    histograms: Vec<String>,
    /// The samples of `hipflask_store_seconds`, by op.
    store_seconds: Vec<(String, f64)>,
}

fn read_metrics(snapshotter: &Snapshotter) -> Snapshot {
    let mut out = Snapshot { counters: Vec::new(), histograms: Vec::new(), store_seconds: Vec::new() };
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        let labels: Vec<String> = key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        let op = key.key().labels().find(|l| l.key() == "op").map(|l| l.value().to_owned());
        match value {
            DebugValue::Counter(n) => out.counters.push((name, labels.join(","), n)),
            DebugValue::Histogram(samples) if !samples.is_empty() => {
                if let (true, Some(op)) = (name == "hipflask_store_seconds", op) {
                    out.store_seconds.extend(samples.iter().map(|v| (op.clone(), f64::from(*v))));
                }
                out.histograms.push(format!("{name}{{{}}}", labels.join(",")))
            }
            _ => {}
        }
    }
    out
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
    let Snapshot { counters, .. } = read_metrics(&snapshotter);
    assert_eq!(count(&counters, "hipflask_sessions_loaded_total", ""), 3);
    assert_eq!(count(&counters, "hipflask_sessions_saved_total", ""), 1);
    assert_eq!(count(&counters, "hipflask_cookies_rejected_total", "reason=bad_signature"), 1);
}

#[test]
fn server_side_sessions_report_creation_saves_and_store_operations() {
    let snapshotter = two_writes(memory_app);
    let Snapshot { counters, histograms, .. } = read_metrics(&snapshotter);
    assert_eq!(count(&counters, "hipflask_sessions_created_total", ""), 1);
    assert_eq!(count(&counters, "hipflask_sessions_saved_total", ""), 1);
    // The memory store answers every call in place: counted, nothing timed.
    assert_eq!(count(&counters, "hipflask_store_in_place_total", "op=load"), 2);
    assert_eq!(count(&counters, "hipflask_store_in_place_total", "op=save"), 2);
    assert!(histograms.is_empty(), "{histograms:?}");
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
    let Snapshot { counters, histograms, .. } = read_metrics(&snapshotter);
    // One save for the write; the three reads are answered without the store.
    assert_eq!(count(&counters, "hipflask_store_in_place_total", "op=save"), 1);
    assert_eq!(count(&counters, "hipflask_store_in_place_total", "op=load"), 4);
    assert!(histograms.is_empty(), "{histograms:?}");
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
    let Snapshot { counters, .. } = read_metrics(&snapshotter);
    assert_eq!(count(&counters, "hipflask_sessions_loaded_total", ""), 2);
    assert_eq!(count(&counters, "hipflask_sessions_saved_total", ""), 1);
    assert_eq!(count(&counters, "hipflask_store_in_place_total", "op=save"), 2);
}

/// A store that answers at once is counted, without reading the clock;
/// one that has to wait is timed, and not counted as answered in place.
#[test]
fn answers_given_in_place_are_counted_and_waits_are_timed() {
    let waited = read_metrics(&two_writes(memory_app)).store_seconds;
    assert_eq!(waited, [], "nothing waited");

    let snapshotter = two_writes(|| {
        let slow = Faulty::new(std::time::Duration::from_millis(30), |_| false);
        app(Config::builder().secret_key("secret").store(Arc::new(slow)).build().unwrap())
    });
    let Snapshot { counters, store_seconds: waited, .. } = read_metrics(&snapshotter);
    let slow = |op: &str| waited.iter().filter(|(o, s)| o == op && *s >= 0.03).count();
    assert_eq!((slow("load"), slow("save")), (1, 2), "{waited:?}");
    assert_eq!(waited.len(), 3, "every wait is timed once: {waited:?}");
    // The first request has no cookie: its load needs no store call.
    assert_eq!(count(&counters, "hipflask_store_in_place_total", "op=load"), 1);
    assert_eq!(count(&counters, "hipflask_store_in_place_total", "op=save"), 0);
}
