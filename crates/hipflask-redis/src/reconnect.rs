//! A standalone connection that sends a command once more when Redis had
//! closed the connection under it.
//!
//! Redis closes clients idle for longer than its `timeout` setting, and a
//! restart closes all of them. redis-rs' `ConnectionManager` then connects
//! again, but only after the next command has failed: without this, the
//! first request after an idle spell was answered 503.
//!
//! Sending again is safe for what this store sends. Loads only read. A save
//! sets or deletes the keys its request changed, so applied twice it stores
//! the same; when the first one was applied before the connection dropped,
//! the second finds the bytes it expected gone and merges, which with
//! conflicts refused answers 409 rather than lose anything. Creates and
//! deletes are `SET` and `DEL`. Only a dropped connection is retried, once.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, Value};

#[derive(Clone)]
pub(crate) struct Reconnecting(pub(crate) ConnectionManager);

impl ConnectionLike for Reconnecting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.0.req_packed_command(cmd).await {
                Err(e) if e.is_connection_dropped() => self.0.req_packed_command(cmd).await,
                result => result,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.0.req_packed_commands(cmd, offset, count).await {
                Err(e) if e.is_connection_dropped() => self.0.req_packed_commands(cmd, offset, count).await,
                result => result,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}
