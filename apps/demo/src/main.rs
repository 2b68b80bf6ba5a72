//! `hipflask-demo [--bind ADDR]`: serves the demo, by default on 127.0.0.1:5000.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "hipflask-demo", version, about = "The Flask session tutorials, served by hipflask")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    bind: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_target(false).init();
    let args = Args::parse();
    let (mut config, warnings) = match hipflask_demo::DemoConfig::from_env().await {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    let listener = match tokio::net::TcpListener::bind(args.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.bind);
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(args.bind);
    eprintln!("hipflask demo on http://{addr}/");
    match metrics_recorder() {
        Ok(handle) => {
            // The exporter keeps every histogram sample until upkeep folds them
            // into the buckets: without this, memory grows with each request
            // whenever nobody scrapes /metrics.
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            config.metrics = Some(handle);
        }
        Err(e) => eprintln!("warning: metrics disabled: {e}"),
    }
    if let Some(store) = &config.store {
        hipflask_demo::spawn_cleanup(store.clone(), config.session.clone(), std::time::Duration::from_secs(600));
    }
    let app = hipflask_demo::app(config);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(app))
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Upper bounds, in seconds, of `hipflask_store_seconds`' buckets, for the
/// store calls that waited (answers given in place are only counted): from a
/// local Redis round trip to a store timing out.
const STORE_SECONDS_BUCKETS: [f64; 12] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0];

/// The Prometheus recorder, with buckets for the store histogram. Without
/// them the exporter renders a summary: quantiles that Prometheus cannot add
/// up across processes, from a sketch that costs about three times as much
/// per sample at upkeep (191 instructions against 66 for two samples).
fn metrics_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    prometheus()?.install_recorder().map_err(|e| e.to_string())
}

/// The exporter's settings, before it is installed (the tests render with
/// their own copy).
fn prometheus() -> Result<metrics_exporter_prometheus::PrometheusBuilder, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("hipflask_store_seconds".to_owned()), &STORE_SECONDS_BUCKETS)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_waits_are_rendered_as_a_histogram() {
        let recorder = super::prometheus().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("hipflask_store_seconds", "op" => "save").record(0.000_2);
        });
        let page = handle.render();
        assert!(page.contains("hipflask_store_seconds_bucket{op=\"save\",le=\"0.0001\"} 0"), "{page}");
        assert!(page.contains("hipflask_store_seconds_bucket{op=\"save\",le=\"0.00025\"} 1"), "{page}");
        assert!(!page.contains("quantile="), "a histogram, not a summary: {page}");
    }
}
