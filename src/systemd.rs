//! systemd's notify protocol (`Type=notify` units): `READY=1` once the node is up, `STATUS=`
//! lines with its slots and jobs, `WATCHDOG=1` only while the pool's fetch loop and
//! acknowledger make progress, `STOPPING=1` and `EXTEND_TIMEOUT_USEC=` while the shutdown
//! grace runs.
//!
//! It owns talking to the service manager and deciding when the node looks hung; it does not
//! own the pool's counters (`hopper_workers::pool::Vitals`) nor the shutdown (the token it is
//! given). Without `NOTIFY_SOCKET` (not started by systemd) nothing here runs.

use std::time::{Duration, Instant};

use hopper_workers::pool::PoolHandle;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// How often a `STATUS=` line is sent (and the watchdog pinged, when its interval allows).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How long past `shutdown_grace` systemd is asked to wait for the release of the jobs still
/// running and the last writes, before its stop timeout applies again.
const STOP_MARGIN: Duration = Duration::from_secs(15);

/// How often `EXTEND_TIMEOUT_USEC=` is renewed while the node drains: well within
/// [`STOP_MARGIN`], the window each message grants.
const EXTEND_EVERY: Duration = Duration::from_secs(5);

/// The service manager of this process, when it has one.
#[derive(Debug)]
pub struct Notifier {
    /// `WATCHDOG_USEC`: systemd restarts the node when no `WATCHDOG=1` arrives within it.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier of a process started by systemd with `NOTIFY_SOCKET` set; `None` otherwise.
    pub fn from_env() -> Option<Self> {
        std::env::var_os("NOTIFY_SOCKET")?;
        Some(Self {
            watchdog: sd_notify::watchdog_enabled(),
        })
    }

    /// Tells systemd the node is up (`READY=1`) with a first status line.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
        tracing::info!(watchdog = ?self.watchdog, "told systemd the node is ready");
    }

    /// Sends status lines and watchdog pings until `shutdown`, then `STOPPING=1` and
    /// extensions of the stop timeout until `drained` (the pool has stopped) or the grace
    /// (plus a margin) is over.
    ///
    /// With a `pool`, `WATCHDOG=1` is sent only while its fetch loop and acknowledger both
    /// went round within the watchdog interval; without one (`serve --no-workers`) always.
    pub async fn run(
        self,
        pool: Option<PoolHandle>,
        label: String,
        grace: Duration,
        shutdown: CancellationToken,
        drained: CancellationToken,
    ) {
        let every = self
            .watchdog
            .map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = drained.cancelled() => return,
                _ = tick.tick() => {
                    let status = status_line(&label, pool.as_ref());
                    let alive = self.check(pool.as_ref(), &mut stalled);
                    if alive && self.watchdog.is_some() {
                        send(&[NotifyState::Status(&status), NotifyState::Watchdog]);
                    } else {
                        send(&[NotifyState::Status(&status)]);
                    }
                }
            }
        }
        self.stopping(pool.as_ref(), grace, &drained).await;
    }

    /// True when the pool (if any) makes progress; logs once when it stops and when it
    /// resumes.
    fn check(&self, pool: Option<&PoolHandle>, stalled: &mut bool) -> bool {
        let (Some(limit), Some(pool)) = (self.watchdog, pool) else {
            return true;
        };
        let v = pool.vitals();
        let alive = v.progressing(limit);
        if !alive && !*stalled {
            tracing::error!(
                fetch_loop_idle = ?v.since_fetch,
                acknowledger_idle = ?v.since_acknowledger,
                watchdog = ?limit,
                "the worker pool has stopped making progress: no more watchdog pings, so \
                 systemd restarts this node"
            );
        } else if alive && *stalled {
            tracing::warn!("the worker pool makes progress again: watchdog pings resume");
        }
        *stalled = !alive;
        alive
    }

    /// `STOPPING=1`, then `EXTEND_TIMEOUT_USEC=` renewed every few seconds until `drained` or
    /// until the grace and its margin are over (then systemd's own stop timeout decides).
    async fn stopping(
        &self,
        pool: Option<&PoolHandle>,
        grace: Duration,
        drained: &CancellationToken,
    ) {
        let until = Instant::now() + grace + STOP_MARGIN;
        let running = pool.map_or(0, |p| p.vitals().busy);
        let status = format!("stopping: draining {running} running jobs within {grace:?}");
        send(&[
            NotifyState::Stopping,
            NotifyState::Status(&status),
            extend(until),
        ]);
        loop {
            tokio::select! {
                () = drained.cancelled() => return,
                () = tokio::time::sleep(EXTEND_EVERY) => {
                    if Instant::now() >= until {
                        // Past the grace and its margin: no more extensions.
                        drained.cancelled().await;
                        return;
                    }
                    let running = pool.map_or(0, |p| p.vitals().busy);
                    let status = format!("stopping: {running} jobs still running");
                    send(&[NotifyState::Status(&status), extend(until)]);
                }
            }
        }
    }
}

/// `EXTEND_TIMEOUT_USEC=` for the time left until `until`.
fn extend(until: Instant) -> NotifyState<'static> {
    let left = until.saturating_duration_since(Instant::now());
    NotifyState::ExtendTimeoutUsec(u32::try_from(left.as_micros()).unwrap_or(u32::MAX))
}

/// `LABEL: B/N slots busy, D jobs done` (or just the label without a pool).
fn status_line(label: &str, pool: Option<&PoolHandle>) -> String {
    match pool {
        None => format!("{label}: no worker pool"),
        Some(p) => {
            let v = p.vitals();
            format!(
                "{label}: {}/{} slots busy, {} jobs done",
                v.busy, v.slots, v.done
            )
        }
    }
}

/// Sends `states` to the service manager; a failure is logged, never fatal (a node runs
/// jobs whether or not systemd hears about it).
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
