//! The engine's metrics: the `hopper_*` names it records and where, through the `metrics`
//! facade, and [`Metered`], a [`Broker`] that times every call.
//!
//! Recording goes to whatever recorder the process installed (the shell installs a Prometheus
//! one); with none installed every call here is a no-op. Names and label values are stable
//! strings written out here, so dashboards can be shared (DESIGN §6, `GET /metrics`).
//!
//! Handles are resolved once and kept ([`JobMeters`], and [`Metered`]'s per-method timers):
//! the facade's macros build a key, hash it and look it up in the recorder's registry on every
//! call, which at three job metrics per job cost 9% of the process's instructions per job
//! in a no-op drain. Recording through a kept handle is an atomic add or a push.
//!
//! **Bounded labels.** Queue names come from clients (any `POST /v1/jobs` may name a new
//! one), and so do push service origins (from users' push subscriptions): a label value per
//! name would let one client grow `/metrics` without bound, in memory and in every scrape.
//! [`QUEUE_LABELS`] and [`ENDPOINT_LABELS`] ([`LabelValues`]) keep the first
//! [`DEFAULT_MAX_LABEL_VALUES`] (or `[worker] metrics_max_label_values`) values of each label
//! and fold the rest into [`OTHER`]; every `queue` label recorded here goes through them.
//!
//! Not here: rendering, the `/metrics` route and the scrape-time gauges (queue depth, worker
//! slots), which are the shell's (`hopper::metrics`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{Counter, Histogram};
use serde_json::Value;

use crate::broker::{
    Appended, Broker, Circuit, Enqueued, Finish, InboxEntry, JobFilter, JobPage, JobRate,
    LeaseStatus, NewInboxEntry, QueueStats, RatedFetch, Rescued, WebPush,
};
use crate::error::BrokerResult;
use crate::event::Event;
use crate::job::{Job, JobId, JobState, Lease, NewJob};
use crate::nodes::WorkerNode;
use crate::time::Timestamp;

/// Attempts ended, by `queue`, `kind` and `outcome` (one of [`Outcome`]'s names).
pub const JOBS_FINISHED: &str = "hopper_jobs_finished_total";
/// Seconds a handler ran, by `queue` and `kind`.
pub const JOB_RUN_SECONDS: &str = "hopper_job_run_seconds";
/// Seconds from a job being due to its attempt starting, by `queue`: first attempts,
/// retries and snoozed jobs; not an attempt after a rescue, whose job keeps its old due time
/// (see `pool::execute`).
pub const JOB_PICKUP_SECONDS: &str = "hopper_job_pickup_seconds";
/// The `# HELP` of [`JOB_PICKUP_SECONDS`], which says what it leaves out.
pub const JOB_PICKUP_HELP: &str = "Time from due (enqueued, or a retry or snooze falling due) \
    to started, per attempt; attempts after a rescue (a worker died) are not recorded, as \
    their job keeps its first due time.";
/// Heartbeat calls that failed (each covers every lease of the pool).
pub const HEARTBEAT_FAILURES: &str = "hopper_heartbeat_failures_total";
/// Handlers stopped because their lease was lost or ran out.
pub const LEASES_LOST: &str = "hopper_leases_lost_total";
/// Seconds per broker call, by `op` (the trait method's name).
pub const BROKER_CALL_SECONDS: &str = "hopper_broker_call_seconds";
/// Broker calls that returned an error, by `op`.
pub const BROKER_ERRORS: &str = "hopper_broker_errors_total";

/// The label value that stands for every value past a label's cap (see [`LabelValues`]).
pub const OTHER: &str = "_other";
/// How many distinct values a client-named label keeps by default before folding the rest
/// into [`OTHER`]: far more queues than a deployment names on purpose, and a few thousand
/// series per family at most.
pub const DEFAULT_MAX_LABEL_VALUES: usize = 1000;

/// The `queue` label of every family: the first queues seen keep their name, the rest read
/// [`OTHER`].
pub static QUEUE_LABELS: LazyLock<LabelValues> = LazyLock::new(|| LabelValues::new("queue"));
/// The `endpoint` label of `hopper_notify_circuit_open` (push service origins come from
/// users), bounded like [`QUEUE_LABELS`].
pub static ENDPOINT_LABELS: LazyLock<LabelValues> = LazyLock::new(|| LabelValues::new("endpoint"));

/// Sets the cap of [`QUEUE_LABELS`] and [`ENDPOINT_LABELS`] (`[worker]
/// metrics_max_label_values`); call it at start, before anything records.
pub fn set_max_label_values(max: usize) {
    QUEUE_LABELS.set_max(max);
    ENDPOINT_LABELS.set_max(max);
}

/// The values one label may take: the first `max` distinct values seen keep their own
/// (and those [`kept`](Self::keep) on purpose, e.g. the configured queues), every later one
/// is [`OTHER`]. The first fold logs a warning, once, so the operator learns the cap was hit.
///
/// ```
/// use hopper_workers::metrics::{LabelValues, OTHER};
/// let queues = LabelValues::new("queue");
/// queues.set_max(1);
/// assert_eq!(queues.of("email"), "email");
/// assert_eq!(queues.of("tenant-42"), OTHER);
/// assert_eq!(queues.of("email"), "email");
/// ```
#[derive(Debug)]
pub struct LabelValues {
    label: &'static str,
    max: AtomicUsize,
    kept: Mutex<HashSet<String>>,
    warned: AtomicBool,
}

impl LabelValues {
    /// The values of `label` (named in the warning), capped at [`DEFAULT_MAX_LABEL_VALUES`].
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            max: AtomicUsize::new(DEFAULT_MAX_LABEL_VALUES),
            kept: Mutex::default(),
            warned: AtomicBool::new(false),
        }
    }

    /// Sets the cap; values already kept stay kept.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Keeps each of `values` as its own label value, whatever the cap: names from the
    /// config are bounded by it, and should never be folded.
    pub fn keep<'a>(&self, values: impl IntoIterator<Item = &'a str>) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend(values.into_iter().map(str::to_owned));
    }

    /// The label value of `value`: itself while it is kept or there is room, else [`OTHER`].
    pub fn of(&self, value: &str) -> String {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.contains(value) {
            return value.to_owned();
        }
        let max = self.max.load(Ordering::Relaxed);
        if kept.len() < max {
            kept.insert(value.to_owned());
            return value.to_owned();
        }
        drop(kept);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                label = self.label,
                max,
                "metrics: more distinct {} values than [worker] metrics_max_label_values; \
                 the rest are reported as {OTHER:?}",
                self.label
            );
        }
        OTHER.to_owned()
    }
}

/// How an attempt ended, as the `outcome` label of [`JOBS_FINISHED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded = 0,
    Retrying = 1,
    Dead = 2,
    Cancelled = 3,
    /// Stopped before it ended: a lost or expired lease, or released at shutdown.
    Interrupted = 4,
}

impl Outcome {
    /// The stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Retrying => "retrying",
            Outcome::Dead => "dead",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// Counts one attempt's end.
pub fn job_finished(queue: &str, kind: &str, outcome: Outcome) {
    metrics::counter!(
        JOBS_FINISHED,
        "queue" => QUEUE_LABELS.of(queue),
        "kind" => kind.to_owned(),
        "outcome" => outcome.as_str(),
    )
    .increment(1);
}

/// Records how long a handler ran.
pub fn job_ran(queue: &str, kind: &str, took: Duration) {
    metrics::histogram!(
        JOB_RUN_SECONDS,
        "queue" => QUEUE_LABELS.of(queue),
        "kind" => kind.to_owned(),
    )
    .record(took.as_secs_f64());
}

/// Records how long a job waited past its due time before its attempt started.
pub fn job_picked_up(queue: &str, waited: Duration) {
    metrics::histogram!(JOB_PICKUP_SECONDS, "queue" => QUEUE_LABELS.of(queue))
        .record(waited.as_secs_f64());
}

/// The job metrics of one queue label (see [`QUEUE_LABELS`]) and kind, as kept handles: what the pool records for every
/// attempt, without a registry lookup per record (see the module doc).
///
/// An outcome's counter is registered on its first use, not before, so `/metrics` shows the
/// same series as when each record looked its counter up.
#[derive(Debug)]
pub struct JobMeters {
    queue: String,
    kind: String,
    run: Histogram,
    pickup: Histogram,
    /// By `Outcome as usize`.
    finished: [OnceLock<Counter>; 5],
}

impl JobMeters {
    fn new(queue: &str, kind: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            kind: kind.to_owned(),
            run: metrics::histogram!(
                JOB_RUN_SECONDS,
                "queue" => queue.to_owned(),
                "kind" => kind.to_owned(),
            ),
            pickup: metrics::histogram!(JOB_PICKUP_SECONDS, "queue" => queue.to_owned()),
            finished: Default::default(),
        }
    }

    /// Counts one attempt's end, as [`job_finished`].
    pub fn finished(&self, outcome: Outcome) {
        self.finished[outcome as usize]
            .get_or_init(|| {
                metrics::counter!(
                    JOBS_FINISHED,
                    "queue" => self.queue.clone(),
                    "kind" => self.kind.clone(),
                    "outcome" => outcome.as_str(),
                )
            })
            .increment(1);
    }

    /// Records how long a handler ran, as [`job_ran`].
    pub fn ran(&self, took: Duration) {
        self.run.record(took.as_secs_f64());
    }

    /// Records how long a job waited past its due time, as [`job_picked_up`].
    pub fn picked_up(&self, waited: Duration) {
        self.pickup.record(waited.as_secs_f64());
    }
}

/// The [`JobMeters`] of every queue and kind seen so far, resolved on first use: a pool keeps
/// one for its lifetime, and looks a job's meters up once per attempt.
///
/// Handles come from the recorder installed when they are first resolved; the shell installs
/// its recorder before it starts a pool.
#[derive(Debug, Default)]
pub struct JobMetrics(Mutex<HashMap<String, HashMap<String, Arc<JobMeters>>>>);

impl JobMetrics {
    /// The meters of `queue`'s jobs of `kind`.
    ///
    /// Kept by label, not by queue: a queue past the cap shares the meters of [`OTHER`], so
    /// this map is as bounded as the labels. A kept queue is found without asking
    /// [`QUEUE_LABELS`] (its label is its name), which keeps the per-attempt cost one lookup.
    pub fn of(&self, queue: &str, kind: &str) -> Arc<JobMeters> {
        if let Some(m) = self.find(queue, kind) {
            return m;
        }
        let label = QUEUE_LABELS.of(queue);
        if let Some(m) = self.find(&label, kind) {
            return m;
        }
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let m = map
            .entry(label.clone())
            .or_default()
            .entry(kind.to_owned())
            .or_insert_with(|| Arc::new(JobMeters::new(&label, kind)));
        m.clone()
    }

    fn find(&self, label: &str, kind: &str) -> Option<Arc<JobMeters>> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(label).and_then(|kinds| kinds.get(kind)).cloned()
    }
}

/// Counts a failed heartbeat call.
pub fn heartbeat_failed() {
    metrics::counter!(HEARTBEAT_FAILURES).increment(1);
}

/// Counts handlers stopped for a lost or expired lease.
pub fn leases_lost(n: u64) {
    metrics::counter!(LEASES_LOST).increment(n);
}

/// A [`Broker`] that records, for every call, its time in [`BROKER_CALL_SECONDS`] and its
/// failure in [`BROKER_ERRORS`], labelled with the trait method's name, then answers what
/// the inner broker answered.
///
/// The two waits (`wait_for_work`, `wait_for_events`) are counted when they fail but not
/// timed: they last as long as there is nothing to do, which says nothing of the broker.
///
/// ```no_run
/// # fn demo(broker: std::sync::Arc<dyn hopper_workers::Broker>) {
/// use std::sync::Arc;
/// let broker: Arc<dyn hopper_workers::Broker> =
///     Arc::new(hopper_workers::metrics::Metered::new(broker));
/// # }
/// ```
#[derive(Debug)]
pub struct Metered {
    inner: std::sync::Arc<dyn Broker>,
    /// Each method's [`BROKER_CALL_SECONDS`] handle, resolved on its first call (so a method
    /// never called shows no series, as before handles were kept).
    timers: Timers,
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(inner: std::sync::Arc<dyn Broker>) -> Self {
        Self {
            inner,
            timers: Timers::default(),
        }
    }
}

/// Runs one broker call, timing it in `timer` (none for the waits) and counting its failure.
async fn call<T>(
    op: &'static str,
    timer: Option<&OnceLock<Histogram>>,
    f: impl Future<Output = BrokerResult<T>>,
) -> BrokerResult<T> {
    let started = timer.map(|_| Instant::now());
    let r = f.await;
    if let (Some(timer), Some(started)) = (timer, started) {
        timer
            .get_or_init(|| metrics::histogram!(BROKER_CALL_SECONDS, "op" => op))
            .record(started.elapsed().as_secs_f64());
    }
    if r.is_err() {
        metrics::counter!(BROKER_ERRORS, "op" => op).increment(1);
    }
    r
}

/// Each trait method as `name(args) -> T` becomes a call of the inner broker's method of
/// the same name through [`call`], timed in its own field of [`Timers`]; `untimed` marks the
/// waits.
macro_rules! metered {
    ($( $(#[$untimed:ident])? fn $op:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        /// One kept [`BROKER_CALL_SECONDS`] handle per broker method.
        #[derive(Debug, Default)]
        struct Timers {
            $( $op: OnceLock<Histogram>, )*
        }

        #[async_trait]
        impl Broker for Metered {
            fn name(&self) -> &'static str {
                self.inner.name()
            }
            fn events_idle_wait(&self, short: Duration) -> Duration {
                self.inner.events_idle_wait(short)
            }
            $(
                async fn $op(&self $(, $arg: $ty)*) -> BrokerResult<$ret> {
                    let timer = (!metered!(@untimed $($untimed)?)).then_some(&self.timers.$op);
                    call(stringify!($op), timer, self.inner.$op($($arg),*)).await
                }
            )*
        }
    };
    (@untimed untimed) => { true };
    (@untimed) => { false };
}

metered! {
    fn store(&self, jobs: Vec<NewJob>) -> Vec<Enqueued>;
    fn fetch(&self, queue: &str, max: usize, lease: Duration) -> Vec<Job>;
    fn fetch_rated(&self, queue: &str, max: usize, lease: Duration, rate: JobRate) -> RatedFetch;
    fn rate_held_until(&self, queue: &str) -> Option<Timestamp>;
    #[untimed]
    fn wait_for_work(&self, queues: &[String], timeout: Duration) -> ();
    fn heartbeat(&self, leases: &[Lease], lease: Duration) -> Vec<LeaseStatus>;
    fn progress(&self, lease: &Lease, percent: u8, message: Option<String>) -> ();
    fn checkpoint(&self, lease: &Lease, value: &Value) -> ();
    fn finish(&self, batch: Vec<Finish>) -> Vec<BrokerResult<()>>;
    fn cancel(&self, id: &JobId) -> Job;
    fn retry(&self, id: &JobId) -> Job;
    fn retry_all_dead(&self, queue: Option<&str>) -> u64;
    fn pause(&self, queue: &str) -> ();
    fn resume(&self, queue: &str) -> ();
    fn rescue(&self, max_interruptions: u32) -> Vec<Rescued>;
    fn get(&self, id: &JobId) -> Option<Job>;
    fn history(&self, id: &JobId) -> Vec<Event>;
    fn list(&self, filter: &JobFilter) -> JobPage;
    fn queues(&self) -> Vec<QueueStats>;
    fn is_paused(&self, queue: &str) -> bool;
    fn events(&self, after: Option<&str>, limit: usize) -> Vec<Event>;
    fn events_end(&self) -> Option<String>;
    fn trimmed_after(&self, after: &str) -> Option<bool>;
    #[untimed]
    fn wait_for_events(&self, after: Option<&str>, timeout: Duration) -> ();
    fn purge(&self, states: &[JobState], before: Timestamp, keep: u64) -> u64;
    fn drop_queue(&self, queue: &str) -> u64;
    fn ping(&self) -> ();
    fn ready(&self) -> ();
    fn cursor(&self, name: &str) -> Option<String>;
    fn save_cursor(&self, name: &str, value: &str) -> ();
    fn advance_cursor(&self, name: &str, value: i64) -> ();
    fn ready_ahead(&self, queue: &str, priority: u8) -> u64;
    fn register_node(&self, node: &WorkerNode) -> ();
    fn deregister_node(&self, id: &str) -> ();
    fn nodes(&self) -> Vec<WorkerNode>;
    fn inbox_append(&self, entry: &NewInboxEntry, keep: Duration) -> Appended;
    fn inbox_read(&self, user: Option<&str>, after: Option<&str>, limit: usize, keep: Duration) -> Vec<InboxEntry>;
    #[untimed]
    fn inbox_wait(&self, after: Option<&str>, timeout: Duration) -> ();
    fn inbox_end(&self) -> Option<String>;
    fn push_subscribe(&self, user: &str, sub: &WebPush) -> bool;
    fn push_subscriptions(&self, user: &str) -> Vec<WebPush>;
    fn push_unsubscribe(&self, user: &str, endpoint: &str) -> bool;
    fn circuits(&self) -> Vec<Circuit>;
    fn circuit(&self, endpoint: &str) -> Option<Circuit>;
    fn save_circuit(&self, circuit: &Circuit) -> ();
}
