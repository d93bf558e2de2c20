//! The read connections: a small pool of read-only connections, so that reads run in parallel.
//!
//! It owns the connections `get`, `history`, `list`, `queues`, `events` and `ping` run on, and
//! how a read borrows one: a permit of a semaphore with one permit per connection (waited for
//! without blocking the async runtime), then the connection, lent to a blocking thread and
//! given back when the read ends, even by a panic (a lock poisoned by
//! one leaves the list of connections intact). In WAL mode each connection reads its own
//! snapshot and none waits for the writer, so a slow `list` holds one connection and the
//! others (and `/readyz`'s ping) go on. It does not open the connections (`super::open`), nor
//! know what a read does: that is the closure it runs.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::error::{BrokerError, BrokerResult};

/// Read connections a broker opens unless told otherwise: enough for the API, the CLI and a
/// dashboard to read at once on a small machine, few enough that idle ones cost nothing.
pub const DEFAULT_READERS: usize = 4;

/// The pool. Every connection is either idle in `idle` or lent to exactly one read, which
/// holds one of `permits`' permits while it has it.
pub(super) struct Readers {
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub fn new(connections: Vec<Connection>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(connections.len())),
            idle: Arc::new(Mutex::new(connections)),
        }
    }

    /// Runs `f` on an idle connection, off the async runtime, waiting for one when all are
    /// busy.
    pub async fn run<T, F>(&self, f: F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> BrokerResult<T> + Send + 'static,
    {
        // The semaphore is never closed; an error here would be a bug, reported, not a panic.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(BrokerError::backend)?;
        let idle = self.idle.clone();
        tokio::task::spawn_blocking(move || {
            // The permit moves into the read it guards; it is given back after the connection.
            let _permit = permit;
            let conn = idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                // As many permits as connections: with a permit there is always one idle.
                .ok_or_else(|| BrokerError::backend(NoIdleReader))?;
            // A panicking read still gives its connection back (SQLite's own state is intact:
            // the statement is reset as it unwinds), so the pool never shrinks.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(&conn)));
            idle.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .await
        .map_err(BrokerError::backend)?
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no idle read connection although a permit was granted")]
struct NoIdleReader;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use crate::broker::Broker;
    use crate::broker::sqlite::SqliteBroker;
    use crate::clock;

    /// Reads on different connections run at once: a read that holds its connection (as a
    /// slow `list` would) does not keep the others, nor `/readyz`'s ping, waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_in_parallel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Arc::new(
            SqliteBroker::open(dir.path().join("hopper.db"), clock::system())
                .await
                .expect("open"),
        );
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        // Generous: on a loaded machine the blocking threads may start late. With one
        // connection the reads run one after another and never meet, and the test fails
        // after this deadline.
        let deadline = Instant::now() + Duration::from_secs(20);
        let reads = (0..4).map(|_| {
            let (active, peak) = (active.clone(), peak.clone());
            broker.read(move |conn, _| {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Hold this connection, using it, until another read runs alongside.
                while peak.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                    conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
                    std::thread::sleep(Duration::from_millis(1));
                }
                active.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        });
        for r in futures::future::join_all(reads).await {
            r.expect("read");
        }
        assert!(
            peak.load(Ordering::SeqCst) >= 2,
            "reads never ran at the same time"
        );
        broker.ping().await.expect("ping");
    }
}
