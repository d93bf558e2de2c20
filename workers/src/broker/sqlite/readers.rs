//! The read connections.

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
