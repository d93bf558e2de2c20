//! Waiting on a condition instead of sleeping: poll a probe until it says done, or fail the
//! test after a deadline generous enough for a loaded machine, with the last state seen.
//!
//! It does not own what is waited for; the daemon, API and Redis fixtures build their waits
//! on it.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long any wait may take before the test fails. Generous on purpose: a wait returns as
/// soon as its condition holds, so only a failing test pays for it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Pause between two probes.
const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` until it returns `Ok`, from a test's async body. `Err` carries the state
/// seen, shown after `what` when the deadline passes.
pub async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match probe().await {
            Ok(done) => return done,
            Err(state) => assert!(Instant::now() < deadline, "{what}; last seen: {state}"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] for code outside the async runtime (process fixtures, drop guards).
pub fn until_blocking<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match probe() {
            Ok(done) => return done,
            Err(state) => assert!(Instant::now() < deadline, "{what}; last seen: {state}"),
        }
        std::thread::sleep(POLL);
    }
}

/// Runs a future to its end under [`DEADLINE`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

/// Wall-clock milliseconds since the epoch: the clock the daemons stamp jobs and events with.
pub fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}
