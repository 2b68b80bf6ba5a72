//! Helpers shared by the middleware tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Collects what the middleware logs through `tracing`.
#[derive(Clone, Default)]
pub(crate) struct Logs(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Runs `f` with a subscriber writing into these logs, and returns its result.
    pub(crate) fn capture<R>(&self, f: impl FnOnce() -> R) -> R {
        let sink = self.clone();
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).without_time().finish();
        tracing::subscriber::with_default(subscriber, f)
    }

    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
