//! The broker conformance suite (feature `test-util`): every lifecycle case written once, run
//! against every [`Broker`].
//!
//! Each case is a `pub async fn(Arc<dyn Broker>, Arc<ManualClock>)`. The broker under test must
//! read time only through the clock it was built with, so a case moves time with
//! [`ManualClock::advance`] instead of sleeping. A broker's test file is one macro call:
//!
//! ```ignore
//! // workers/tests/conformance_sqlite.rs
//! hopper_workers::conformance_suite!(|clock| async move {
//!     let dir = tempfile::tempdir().expect("tempdir");
//!     let broker = SqliteBroker::open(dir.path().join("t.db"), clock).await.expect("open");
//!     (Arc::new(broker) as Arc<dyn Broker>, dir) // the guard lives as long as the test
//! });
//! ```
//!
//! The factory gets an `Arc<dyn Clock>` and returns a fresh, isolated broker: either an
//! `Arc<dyn Broker>`, or `(Arc<dyn Broker>, guard)` where the guard (a temp dir, say) is kept
//! alive until the case ends. It does not own the API: that has its own tests.
//!
//! This file holds the case list (the macro), the factory plumbing and the helpers the cases
//! share; the cases live by topic: `enqueue`, `fetch` (order, due work, waiting), `promotion`
//! (a huge backlog falling due at once), `outcomes` (finish), `leases` (heartbeats, fencing,
//! rescue, progress), `chains`, `payloads` (JSON that comes back exactly), `admin` (cancel,
//! retry, purge, drop), `pausing` (pause and resume a queue), `rates` (job rate limits
//! across handles, and a pool that sleeps while its queue is held), `inbox` (users' notification
//! inboxes and Web Push subscriptions), `nodes` (the registry of worker
//! nodes, ready jobs ahead of a priority), `publish` (a publish's
//! fan-out and its replay, named cursors in the event log), `progress` (coalescing, through a
//! pool), `checkpoints` (saved under the lease, kept across retries), `circuits` (the
//! circuit breakers of `notify.send`'s endpoints), `schedules` (a missed tick caught up at
//! start-up, once), `inspect` (list, queues, events), `agreement` (inputs on which the
//! brokers once answered differently) and `pool` (an in-process pool over the broker under
//! test: timeouts, panics, retries, leases running out, unserved kinds; `partition` is the
//! wrapper that cuts a pool off from its broker). A case that only one broker can pass does
//! not belong here: it stays in that broker's test file, saying why.

// One file per topic. Each case is `pub` in its topic and re-exported here, so the macro (and
// any caller) names it `testing::<case>` whichever file it lives in.
mod admin;
mod agreement;
mod chains;
mod checkpoints;
mod circuits;
mod enqueue;
mod fetch;
mod inbox;
mod inspect;
mod leases;
mod nodes;
mod outcomes;
mod partition;
mod pausing;
mod payloads;
mod pool;
mod progress;
mod promotion;
mod publish;
mod rates;
mod schedules;
mod support;

pub use admin::*;
pub use agreement::*;
pub use chains::*;
pub use checkpoints::*;
pub use circuits::*;
pub use enqueue::*;
pub use fetch::*;
pub use inbox::*;
pub use inspect::*;
pub use leases::*;
pub use nodes::*;
pub use outcomes::*;
pub use partition::Partitioned;
pub use pausing::*;
pub use payloads::*;
pub use pool::*;
pub use progress::*;
pub use promotion::*;
pub use publish::*;
pub use rates::*;
pub use schedules::*;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

pub use crate::clock::ManualClock;

use crate::broker::{Broker, Finish, JobFilter, Outcome};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::event::{Event, EventType};
use crate::job::{Job, JobId, JobState, Lease, NewJob};
use crate::time::Timestamp;

/// Where every case's clock starts: a fixed, realistic time (2023-11-14T22:13:20Z).
pub const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);
/// The lease cases fetch with unless they say otherwise.
pub const LEASE: Duration = Duration::from_secs(30);

/// `n` milliseconds: cases move times by plain numbers (`clock.now() + ms(5_000)`), the way
/// they move the clock (`clock.advance(5_000)`).
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What a conformance factory may return: a broker, or a broker and a guard to keep alive.
pub trait TestBroker {
    /// The broker and whatever must outlive it.
    fn split(self) -> (Arc<dyn Broker>, Box<dyn Any + Send>);
}

impl TestBroker for Arc<dyn Broker> {
    fn split(self) -> (Arc<dyn Broker>, Box<dyn Any + Send>) {
        (self, Box::new(()))
    }
}

impl<G: Send + 'static> TestBroker for (Arc<dyn Broker>, G) {
    fn split(self) -> (Arc<dyn Broker>, Box<dyn Any + Send>) {
        (self.0, Box::new(self.1))
    }
}

/// A fresh manual clock at [`START`], and the same clock as the `dyn Clock` a factory takes.
pub fn clocks() -> (Arc<ManualClock>, Arc<dyn Clock>) {
    let clock = ManualClock::new(START);
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    (clock, dyn_clock)
}

/// An SQLite broker on a file in a fresh temporary directory (removed when the guard drops).
///
/// # Panics
///
/// When the directory or the database cannot be created: this is test support.
#[cfg(feature = "sqlite")]
pub async fn temp_sqlite(clock: Arc<dyn Clock>) -> (Arc<dyn Broker>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let broker = crate::broker::sqlite::SqliteBroker::open(dir.path().join("hopper.db"), clock)
        .await
        .expect("open the SQLite broker");
    (Arc::new(broker), dir)
}

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh broker from
/// `$factory` (a closure taking `Arc<dyn Clock>` and returning a future of a [`TestBroker`]).
/// The calling crate needs `tokio` with the `macros` and `rt` features.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@cases $factory;
            // enqueue.rs
            enqueue_get_history,
            enqueue_answers_jobs_as_stored,
            enqueue_is_all_or_none,
            unique_key_returns_existing,
            batch_appends_one_event_per_created_job,
            an_id_enqueued_again_is_the_job_it_names,
            fields_round_trip_exactly,
            // fetch.rs
            strict_priority_fifo_within_level,
            batch_fetch_takes_priority_then_due_time_then_fifo,
            delayed_job_waits_for_run_at,
            large_due_backlog_is_fetched_in_full,
            fetch_respects_max_and_never_repeats,
            concurrent_fetches_never_share_a_job,
            wait_for_work_returns,
            // promotion.rs
            huge_due_backlog_is_promoted_in_bounded_steps_in_order,
            // outcomes.rs
            finish_succeeded,
            finish_retry_then_dead,
            finish_snooze,
            finish_snooze_records_its_reason,
            finish_released,
            a_released_job_keeps_its_place_in_line,
            finish_batch_answers_each_entry,
            finish_batch_mixes_outcomes_and_refuses_stale_tokens,
            // leases.rs
            stale_token_refused_after_rescue,
            heartbeat_extends_and_reports,
            rescue_counts_interruption_not_attempt,
            poison_pill_after_max_interruptions,
            progress_recorded_and_fenced,
            heartbeat_cancel_retry_and_rescue,
            // admin.rs
            cancel_non_final_and_conflict_on_final,
            retry_dead_and_cancelled_only,
            retry_all_dead_counts_and_filters,
            retry_all_dead_retries_only_jobs_dead_when_it_began,
            purge_finished_and_trim_events,
            events_purged_after_a_cursor_are_a_gap,
            purge_frees_unique_keys_and_drop_queue_counts,
            drop_queue_removes_jobs_and_events,
            ping_answers,
            // inspect.rs
            list_filters_and_cursor,
            list_pages_a_batch_across_queues_with_filters,
            queues_counts,
            events_resume_after_id,
            events_merge_queues_and_page_one_at_a_time,
            batched_events_page_one_by_one,
            events_end_is_the_newest_event_handed_out,
            wait_for_events_wakes_on_an_append,
            a_live_follower_misses_nothing_while_queues_are_written_at_once,
            // chains.rs
            chain_passes_results_in_order,
            chain_dead_step_cancels_rest_and_retry_resumes,
            chain_cancel_cancels_rest,
            chain_replay_with_taken_key_creates_nothing,
            chain_retry_of_later_step_waits_for_predecessor,
            chain_counts_waiting_splices_input_and_survives_poison,
            // agreement.rs
            purge_keeps_a_chain_step_while_a_later_step_exists,
            unique_key_is_per_queue,
            multi_queue_batch_with_invalid_job_stores_nothing,
            large_batch_over_two_queues_with_invalid_last_job_stores_nothing,
            started_at_is_the_first_start,
            garbage_cursors_and_filter_names_are_refused,
            released_job_is_recorded_as_released,
            // payloads.rs
            payloads_and_results_round_trip_exactly,
            chain_payloads_stay_exact_through_promote_and_retry,
            chain_payloads_stay_exact_through_cancel_and_retry,
            free_text_round_trips_through_a_fetch,
            // pool.rs
            pool_times_out_a_stuck_handler,
            pool_turns_a_panic_into_a_failed_attempt,
            pool_buries_a_result_nested_too_deep_to_read_back,
            pool_buries_a_checkpoint_nested_too_deep_to_read_back,
            pool_runs_a_failing_job_max_retries_plus_one_times,
            pool_starts_a_capped_queues_next_job_when_its_slot_frees,
            pool_stops_a_handler_whose_lease_ran_out_unrenewed,
            pool_snoozes_an_unserved_kind_then_buries_it,
            // pausing.rs
            paused_queue_accepts_jobs_but_is_not_fetched,
            pause_refuses_an_invalid_queue_name,
            // nodes.rs
            nodes_register_refresh_expire_and_deregister,
            ready_ahead_counts_queued_jobs_at_or_above_a_priority,
            // progress.rs
            pool_coalesces_progress_and_keeps_the_last_report,
            // rates.rs
            rated_fetch_starts_no_more_than_the_rate,
            rated_fetch_spaces_a_per_minute_rate,
            pool_sleeps_while_its_queue_is_held_by_its_rate,
            // publish.rs
            publish_fan_out_is_replayed_by_its_keys,
            cursors_are_saved_and_replaced,
            cursors_advanced_only_go_forward,
            // inbox.rs
            inbox_appends_once_per_id_and_reads_per_user,
            inbox_drops_entries_older_than_keep,
            inbox_wait_returns_on_an_append,
            inbox_end_is_the_newest_cursor_handed_out,
            push_subscriptions_upsert_list_and_remove,
            // checkpoints.rs
            checkpoint_saved_fenced_and_kept_across_retries,
            pool_hands_a_saved_checkpoint_to_the_retry,
            // circuits.rs
            circuits_are_shared_count_down_and_close,
            // schedules.rs
            schedule_start_up_never_repeats_a_purged_tick,
            a_new_schedule_does_not_run_a_tick_from_before_it_existed,
            a_slow_nodes_older_tick_does_not_move_the_schedule_back,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test]
            async fn $case() {
                let (clock, dyn_clock) = $crate::testing::clocks();
                let factory = $factory;
                let (broker, _guard) =
                    $crate::testing::TestBroker::split(factory(dyn_clock).await);
                $crate::testing::$case(broker, clock).await;
            }
        )*
    };
}

// ---- Helpers ---------------------------------------------------------------------------------

fn job(kind: &str) -> NewJob {
    NewJob::new(kind, json!({}))
}

async fn enqueue(b: &Arc<dyn Broker>, job: NewJob) -> JobId {
    let answers = b.enqueue(vec![job]).await.expect("enqueue");
    assert_eq!(answers.len(), 1, "one answer per job");
    assert!(answers[0].created, "a new job is created");
    answers[0].job.id.clone()
}

async fn get(b: &Arc<dyn Broker>, id: &JobId) -> Job {
    b.get(id).await.expect("get").expect("the job exists")
}

/// Asserts that a fetch from `queue` leases nothing, saying `why` when it does.
async fn assert_none_fetched(b: &Arc<dyn Broker>, queue: &str, why: &str) {
    let job = fetch_one(b, queue).await;
    assert!(job.is_none(), "{why}: fetched {job:?}");
}

async fn fetch_one(b: &Arc<dyn Broker>, queue: &str) -> Option<Job> {
    let mut jobs = b.fetch(queue, 1, LEASE).await.expect("fetch");
    assert!(
        jobs.len() <= 1,
        "fetch(max = 1) returned {} jobs",
        jobs.len()
    );
    jobs.pop()
}

/// The one job `fetch` leases from `queue` for `lease`.
async fn fetch_leased(b: &Arc<dyn Broker>, queue: &str, lease: Duration) -> Job {
    let mut jobs = b.fetch(queue, 1, lease).await.expect("fetch");
    assert_eq!(jobs.len(), 1, "fetch(max = 1) of a due job");
    jobs.remove(0)
}

async fn fetch_expect(b: &Arc<dyn Broker>, queue: &str, id: &JobId) -> Job {
    let job = fetch_one(b, queue).await.expect("a job is due");
    assert_eq!(&job.id, id, "the expected job is fetched");
    job
}

async fn finish(b: &Arc<dyn Broker>, lease: Lease, outcome: Outcome) -> Result<(), BrokerError> {
    let mut answers = b
        .finish(vec![Finish { lease, outcome }])
        .await
        .expect("finish round-trip");
    assert_eq!(answers.len(), 1, "one answer per entry");
    answers.remove(0)
}

fn ok() -> Outcome {
    Outcome::Succeeded {
        result: json!({"ok": true}),
    }
}

/// The history of a job that ran once and succeeded.
const RAN_AND_SUCCEEDED: [EventType; 3] = [
    EventType::Enqueued,
    EventType::Started,
    EventType::Succeeded,
];

fn types(events: &[Event]) -> Vec<EventType> {
    events.iter().map(|e| e.kind_of_event).collect()
}

async fn history_types(b: &Arc<dyn Broker>, id: &JobId) -> Vec<EventType> {
    types(&b.history(id).await.expect("history"))
}

async fn last_event(b: &Arc<dyn Broker>, id: &JobId) -> Event {
    b.history(id)
        .await
        .expect("history")
        .pop()
        .expect("the job has events")
}

fn assert_lease_lost(r: Result<(), BrokerError>, what: &str) {
    assert!(
        matches!(r, Err(BrokerError::LeaseLost(_))),
        "{what}: expected LeaseLost, got {r:?}"
    );
}

/// A job that ran once and died, in `queue`.
async fn make_dead(b: &Arc<dyn Broker>, queue: &str) -> JobId {
    let id = enqueue(b, job("test.dead").queue(queue)).await;
    let j = fetch_expect(b, queue, &id).await;
    finish(
        b,
        j.lease(),
        Outcome::Dead {
            error: "boom".into(),
        },
    )
    .await
    .expect("finish dead");
    id
}

/// A job that ran once and succeeded, in `queue`.
async fn make_succeeded(b: &Arc<dyn Broker>, queue: &str) -> JobId {
    let id = enqueue(b, job("test.ok").queue(queue)).await;
    let j = fetch_expect(b, queue, &id).await;
    finish(b, j.lease(), ok()).await.expect("finish ok");
    id
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, BrokerError>) {
    assert!(
        matches!(r, Err(BrokerError::NotFound(_))),
        "expected NotFound, got {r:?}"
    );
}

fn assert_conflict(r: Result<Job, BrokerError>, state: JobState) {
    assert!(
        matches!(r, Err(BrokerError::Conflict { state: s, .. }) if s == state),
        "expected a conflict in state {state:?}, got {r:?}"
    );
}

/// Enqueues `jobs` in one call and returns the ids it answered, in order.
///
/// # Panics
///
/// When the call fails: this is test support.
pub async fn enqueue_ids(b: &dyn Broker, jobs: Vec<NewJob>) -> Vec<JobId> {
    let answers = b.enqueue(jobs).await.expect("enqueue");
    answers.into_iter().map(|e| e.job.id).collect()
}

/// A `finish` batch that ends every one of `jobs` as succeeded, with a `null` result.
pub fn succeed_all(jobs: &[Job]) -> Vec<Finish> {
    jobs.iter()
        .map(|j| Finish {
            lease: j.lease(),
            outcome: Outcome::Succeeded {
                result: json!(null),
            },
        })
        .collect()
}

/// Fetches `queue` up to `max` jobs at a time, finishing each batch as succeeded, until nothing
/// is due; returns the ids in the order they were fetched.
///
/// # Panics
///
/// When a call fails or a lease is refused: this is test support.
pub async fn drain(b: &dyn Broker, queue: &str, max: usize) -> Vec<JobId> {
    let mut done = Vec::new();
    loop {
        let jobs = b.fetch(queue, max, LEASE).await.expect("fetch");
        if jobs.is_empty() {
            return done;
        }
        for answer in b.finish(succeed_all(&jobs)).await.expect("finish") {
            answer.expect("the lease is held by whoever fetched it");
        }
        done.extend(jobs.into_iter().map(|j| j.id));
    }
}

/// The whole event log, read `limit` events at a time, each page resuming after the last id.
async fn events_paged(b: &Arc<dyn Broker>, limit: usize) -> Vec<Event> {
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = b.events(after.as_deref(), limit).await.expect("events");
        let Some(last) = page.last() else {
            return paged;
        };
        assert!(
            page.len() <= limit,
            "a page of {} for limit {limit}",
            page.len()
        );
        after = Some(last.id.clone());
        paged.extend(page);
    }
}

/// Every job, newest first, paged through the cursor `limit` at a time.
async fn list_paged(b: &Arc<dyn Broker>, limit: usize) -> Vec<JobId> {
    let mut paged = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let page = b
            .list(&JobFilter {
                limit,
                cursor: cursor.clone(),
                ..JobFilter::default()
            })
            .await
            .expect("list page");
        assert!(page.jobs.len() <= limit);
        cursor = page.next_cursor.clone();
        paged.extend(page.jobs.into_iter().map(|j| j.id));
        if cursor.is_none() {
            return paged;
        }
    }
    panic!("paging did not end after 100 pages");
}
