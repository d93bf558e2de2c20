//! The broker conformance suite against the SQLite broker, plus what only SQLite has: several
//! broker instances (as several processes would) sharing one database file.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use hopper_workers::broker::sqlite::{SqliteBroker, SqliteOptions};
use hopper_workers::broker::{Broker, Durability, JobFilter, JobRate};
use hopper_workers::clock::{self, Clock};
use hopper_workers::event::EventType;
use hopper_workers::handler::Registry;
use hopper_workers::job::{JobState, NewJob};
use hopper_workers::pool::{Pool, PoolConfig, QueueSpec};
use hopper_workers::testing::{drain, temp_sqlite};
use serde_json::json;

hopper_workers::conformance_suite!(|clock: Arc<dyn Clock>| temp_sqlite(clock));

/// Two instances on one file, fetching concurrently, never hand out the same job twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_file_never_share_a_job() {
    const N: usize = 2_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/dir/shared.db");
    let one: Arc<dyn Broker> = Arc::new(
        SqliteBroker::open(&path, clock::system())
            .await
            .expect("open one"),
    );
    let two: Arc<dyn Broker> = Arc::new(
        SqliteBroker::open(&path, clock::system())
            .await
            .expect("open two"),
    );

    let jobs: Vec<NewJob> = (0..N)
        .map(|_| NewJob::new("test.shared", json!({})))
        .collect();
    one.enqueue(jobs).await.expect("enqueue");

    let mut tasks = Vec::new();
    for broker in [one.clone(), two.clone(), one.clone(), two.clone()] {
        tasks.push(tokio::spawn(
            async move { drain(&*broker, "default", 16).await },
        ));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.expect("task") {
            assert!(seen.insert(id.clone()), "job {id} handed out twice");
        }
    }
    assert_eq!(seen.len(), N);
    let stats = two.queues().await.expect("queues");
    assert_eq!(stats[0].counts.succeeded, N as u64);
}

/// Reopening a file keeps its jobs, and migrations are not applied twice.
#[tokio::test]
async fn reopen_keeps_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hopper.db");
    let id = {
        let b = SqliteBroker::open(&path, clock::system())
            .await
            .expect("open");
        let job = NewJob::new("test.keep", json!({"a": 1}));
        let id = job.id.clone();
        b.enqueue(vec![job]).await.expect("enqueue");
        id
    };
    let b = SqliteBroker::open(&path, clock::system())
        .await
        .expect("reopen");
    let job = b.get(&id).await.expect("get").expect("kept");
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.payload, json!({"a": 1}));
    assert_eq!(b.path(), path.as_path());

    let url = format!("sqlite://{}", path.display());
    let via_url = hopper_workers::broker::open(&url, "", clock::system())
        .await
        .expect("open by URL");
    assert_eq!(via_url.name(), "sqlite");
    assert!(via_url.get(&id).await.expect("get").is_some());
}

/// With `durability = full` (one fsync per commit), many concurrent single-job enqueues still
/// share commits: the writer thread batches whatever queued while it was committing, so the
/// cost is one fsync per batch, not per job. Counts commits; asserts no timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_commits_under_full_durability() {
    const JOBS: u64 = 2_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteOptions {
        durability: Durability::Full,
        ..SqliteOptions::default()
    };
    let b = Arc::new(
        SqliteBroker::open_with(dir.path().join("hopper.db"), options, clock::system())
            .await
            .expect("open"),
    );
    let before = b.commits();
    let tasks: Vec<_> = (0..JOBS)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                b.enqueue(vec![NewJob::new("test.one", json!({ "i": i }))])
                    .await
                    .expect("enqueue")
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.expect("task")[0].created);
    }
    let commits = b.commits() - before;
    let stats = b.queues().await.expect("queues");
    assert_eq!(stats[0].counts.queued, JOBS, "every enqueue is stored");
    eprintln!("{JOBS} concurrent enqueues, durability full: {commits} commits");
    assert!(commits >= 1);
    // Far fewer commits (fsyncs) than jobs; the margin is wide so that a loaded machine,
    // which spreads the enqueues out, cannot fail it.
    assert!(
        commits * 4 <= JOBS,
        "{JOBS} enqueues took {commits} commits: the writer is not batching"
    );
}

/// Rough throughput: enqueue 20 000 jobs, then drain them with fetches of 64 and one finish
/// per fetch, from a few concurrent "slots". Prints numbers; asserts no timing.
///
/// `cargo test --release -p hopper-workers --features test-util --test conformance_sqlite -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test; run on demand with --release"]
async fn drain_throughput() {
    const N: usize = 20_000;
    const FETCHERS: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let b: Arc<dyn Broker> = Arc::new(
        SqliteBroker::open(dir.path().join("bench.db"), clock::system())
            .await
            .expect("open"),
    );

    let started = Instant::now();
    for chunk in 0..N / 1_000 {
        let jobs: Vec<NewJob> = (0..1_000)
            .map(|i| NewJob::new("sys.noop", json!({"i": chunk * 1_000 + i})).queue("bench"))
            .collect();
        b.enqueue(jobs).await.expect("enqueue");
    }
    let enqueue_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..FETCHERS {
        let b = b.clone();
        tasks.push(tokio::spawn(
            async move { drain(&*b, "bench", 64).await.len() },
        ));
    }
    let mut processed = 0;
    for t in tasks {
        processed += t.await.expect("task");
    }
    let drain_s = started.elapsed().as_secs_f64();
    assert_eq!(processed, N);
    eprintln!(
        "sqlite: enqueue {:.0} jobs/s ({enqueue_s:.2} s), fetch(64)+finish {:.0} jobs/s ({drain_s:.2} s), \
         enqueue+fetch+finish {:.0} jobs/s",
        N as f64 / enqueue_s,
        N as f64 / drain_s,
        N as f64 / (enqueue_s + drain_s),
    );
}

/// A command that fails inside a write batch rolls back alone: its partial writes vanish, the
/// commands batched with it commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_command_rolls_back_alone() {
    let (b, dir) = temp_sqlite(clock::system()).await;
    let first = NewJob::new("test.a", json!({}));
    b.enqueue(vec![first.clone()]).await.expect("enqueue");

    // The file refuses a job of kind `test.c` (a trigger another program added): the second
    // job's insert fails after `fresh` was written.
    foreign_writer(&dir)
        .execute_batch(
            "CREATE TRIGGER refuse_c BEFORE INSERT ON jobs WHEN NEW.kind = 'test.c' \
             BEGIN SELECT RAISE(ABORT, 'test: kind test.c refused'); END;",
        )
        .expect("add the trigger");
    let fresh = NewJob::new("test.b", json!({}));
    let clash = NewJob::new("test.c", json!({}));
    let others: Vec<NewJob> = (0..20).map(|_| NewJob::new("test.d", json!({}))).collect();
    let (failed, ok) = tokio::join!(
        b.enqueue(vec![fresh.clone(), clash]),
        futures::future::join_all(others.iter().map(|j| b.enqueue(vec![j.clone()]))),
    );
    assert!(
        matches!(failed, Err(hopper_workers::BrokerError::Backend(_))),
        "got {failed:?}"
    );
    assert_eq!(b.get(&fresh.id).await.expect("get"), None, "rolled back");
    assert!(b.history(&fresh.id).await.expect("history").is_empty());
    for (r, j) in ok.into_iter().zip(&others) {
        r.expect("a neighbour's enqueue");
        assert!(b.get(&j.id).await.expect("get").is_some());
    }
    assert_eq!(
        b.get(&first.id).await.expect("get").expect("kept").kind,
        "test.a"
    );
}

/// A pause is stored in the file: another instance on it (as another process would) leases
/// nothing from the paused queue at once, and a broker opened afterwards still sees it.
#[tokio::test]
async fn pause_is_honoured_by_another_instance_and_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hopper.db");
    let one = SqliteBroker::open(&path, clock::system())
        .await
        .expect("open one");
    let two = SqliteBroker::open(&path, clock::system())
        .await
        .expect("open two");
    one.pause("held").await.expect("pause");
    one.enqueue(vec![NewJob::new("test.held", json!({})).queue("held")])
        .await
        .expect("enqueue");
    assert!(
        two.fetch("held", 10, std::time::Duration::from_secs(30))
            .await
            .expect("fetch")
            .is_empty()
    );
    drop(one);
    drop(two);
    let three = SqliteBroker::open(&path, clock::system())
        .await
        .expect("reopen");
    let stats = three.queues().await.expect("queues");
    assert!(
        stats.iter().any(|s| s.queue == "held" && s.paused),
        "{stats:?}"
    );
    three.resume("held").await.expect("resume");
    assert_eq!(
        three
            .fetch("held", 10, std::time::Duration::from_secs(30))
            .await
            .expect("fetch")
            .len(),
        1
    );
}

/// A fresh file with `n` jobs enqueued, job `bad` then corrupted by the SQL `SET` clause `set`
/// (as a hand or another program might), and one fetch of all of them.
struct Corrupted {
    b: std::sync::Arc<dyn hopper_workers::broker::Broker>,
    _dir: tempfile::TempDir,
    raw: rusqlite::Connection,
    jobs: Vec<NewJob>,
    fetched: Vec<hopper_workers::job::JobId>,
}

async fn corrupt_one_and_fetch(n: usize, bad: usize, set: &str) -> Corrupted {
    let (b, dir) = temp_sqlite(clock::system()).await;
    let jobs: Vec<NewJob> = (0..n).map(|_| NewJob::new("test.k", json!({}))).collect();
    b.enqueue(jobs.clone()).await.expect("enqueue");
    let raw = foreign_writer(&dir);
    raw.execute(
        &format!("UPDATE jobs SET {set} WHERE id = ?1"),
        [jobs[bad].id.as_str()],
    )
    .expect("corrupt one row");
    let fetched = b
        .fetch("default", n, std::time::Duration::from_secs(30))
        .await
        .expect("the fetch runs")
        .into_iter()
        .map(|j| j.id)
        .collect();
    Corrupted {
        b,
        _dir: dir,
        raw,
        jobs,
        fetched,
    }
}

/// A queued row that cannot be read (a payload that is not JSON: data Hopper did not write)
/// is buried saying why, and the rest of its fetch runs. Before, the whole fetch failed and
/// rolled back, so no job of that queue ever ran again.
#[tokio::test]
async fn an_unreadable_job_is_buried_and_the_rest_of_its_fetch_runs() {
    let Corrupted {
        b,
        raw,
        jobs,
        fetched,
        ..
    } = corrupt_one_and_fetch(3, 1, "payload = 'not json'").await;
    assert_eq!(fetched, vec![jobs[0].id.clone(), jobs[2].id.clone()]);
    let (state, error): (String, String) = raw
        .query_row(
            "SELECT state, last_error FROM jobs WHERE id = ?1",
            [jobs[1].id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the row");
    assert_eq!(state, "dead", "the unreadable job is buried");
    assert!(error.contains("unreadable"), "{error}");
    let history: Vec<_> = b
        .history(&jobs[1].id)
        .await
        .expect("its history reads")
        .into_iter()
        .map(|e| e.kind_of_event)
        .collect();
    assert_eq!(
        history,
        [EventType::Enqueued, EventType::Started, EventType::Dead],
        "its history, as on Redis"
    );
    let again = b
        .fetch("default", 3, std::time::Duration::from_secs(30))
        .await
        .expect("fetch");
    assert!(again.is_empty(), "nothing is leased again: {again:?}");
}

/// A queued row whose kind is not UTF-8 text (data Hopper did not write): the fetch buries it
/// and hands out the rest, as for a payload that is not JSON, instead of failing on the kind
/// again while burying it, which rolls the fetch back so that no job of the queue runs again.
#[tokio::test]
async fn an_unreadable_kind_is_buried_and_the_rest_of_its_fetch_runs() {
    let Corrupted {
        raw, jobs, fetched, ..
    } = corrupt_one_and_fetch(2, 0, "kind = CAST(X'6BFF' AS TEXT)").await;
    assert_eq!(fetched, vec![jobs[1].id.clone()]);
    let state: String = raw
        .query_row(
            "SELECT state FROM jobs WHERE id = ?1",
            [jobs[0].id.as_str()],
            |r| r.get(0),
        )
        .expect("the row");
    assert_eq!(state, "dead", "the unreadable job is buried");
}

/// A queued row whose id is not text (a BLOB another program wrote into the file): the fetch
/// takes it out of the way, dead under a readable id saying why, and hands out the rest. Before,
/// every fetch of the queue failed on that row, so no job of it ran again, and a listing that
/// met the row failed too, so an operator could not see it.
#[tokio::test]
async fn a_job_whose_id_is_not_text_is_buried_and_the_rest_of_its_queue_runs() {
    let (b, dir) = temp_sqlite(clock::system()).await;
    let jobs: Vec<NewJob> = (0..3).map(|_| NewJob::new("test.k", json!({}))).collect();
    b.enqueue(jobs.clone()).await.expect("enqueue");
    let raw = foreign_writer(&dir);
    let bad_id: &[u8] = b"j\xff\x01";
    raw.execute(
        "UPDATE jobs SET id = ?2 WHERE id = ?1",
        rusqlite::params![jobs[1].id.as_str(), bad_id],
    )
    .expect("write a BLOB id");
    let listed = b
        .list(&JobFilter::default())
        .await
        .expect("the listing reads the row");
    let shown = hopper_workers::job::JobId(String::from_utf8_lossy(bad_id).into_owned());
    assert!(listed.jobs.iter().any(|j| j.id == shown), "{listed:?}");

    let fetched: Vec<_> = b
        .fetch("default", 3, std::time::Duration::from_secs(30))
        .await
        .expect("the fetch runs")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(fetched, vec![jobs[0].id.clone(), jobs[2].id.clone()]);

    let dead = b
        .list(&JobFilter {
            state: Some(JobState::Dead),
            ..JobFilter::default()
        })
        .await
        .expect("the dead list reads");
    assert_eq!(dead.jobs.len(), 1, "{dead:?}");
    let buried = &dead.jobs[0];
    assert_eq!(buried.id, shown, "its id, shown lossily");
    let error = buried.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("unreadable") && error.contains("6aff01"),
        "{error}"
    );
    let got = b
        .get(&buried.id)
        .await
        .expect("get")
        .expect("found by the id shown");
    assert_eq!(got.state, JobState::Dead);
    let history: Vec<_> = b
        .history(&buried.id)
        .await
        .expect("its history reads")
        .into_iter()
        .map(|e| e.kind_of_event)
        .collect();
    assert_eq!(history, [EventType::Started, EventType::Dead]);
    let again = b
        .fetch("default", 3, std::time::Duration::from_secs(30))
        .await
        .expect("fetch");
    assert!(again.is_empty(), "nothing is leased again: {again:?}");
}

/// The same for an id stored as text that is not UTF-8, whose lossy reading is another job's
/// id: the buried job gets a fresh id, and the other job runs under its own.
#[tokio::test]
async fn a_job_whose_id_is_not_utf8_is_buried_under_a_fresh_id_when_its_lossy_id_is_taken() {
    let (b, dir) = temp_sqlite(clock::system()).await;
    let raw = foreign_writer(&dir);
    let jobs: Vec<NewJob> = (0..2).map(|_| NewJob::new("test.k", json!({}))).collect();
    b.enqueue(jobs.clone()).await.expect("enqueue");
    raw.execute(
        "UPDATE jobs SET id = CAST(X'6AFF' AS TEXT) WHERE id = ?1",
        [jobs[0].id.as_str()],
    )
    .expect("a text id that is not UTF-8");
    raw.execute(
        "UPDATE jobs SET id = 'j\u{FFFD}' WHERE id = ?1",
        [jobs[1].id.as_str()],
    )
    .expect("its lossy reading, taken");
    let fetched: Vec<_> = b
        .fetch("default", 2, std::time::Duration::from_secs(30))
        .await
        .expect("the fetch runs")
        .into_iter()
        .map(|j| j.id.0)
        .collect();
    assert_eq!(fetched, ["j\u{FFFD}"]);
    let dead = b
        .list(&JobFilter {
            state: Some(JobState::Dead),
            ..JobFilter::default()
        })
        .await
        .expect("the dead list reads");
    assert_eq!(dead.jobs.len(), 1, "{dead:?}");
    assert_ne!(dead.jobs[0].id.0, "j\u{FFFD}");
    let error = dead.jobs[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("X'6aff'"), "{error}");
}

/// A pool of two slots serving `queues` of `b` with the diagnostic kinds (`sys.sleep`,
/// `sys.noop`), on the system clock, until the token is cancelled.
fn two_slot_pool(
    b: &Arc<dyn Broker>,
    queues: Vec<QueueSpec>,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<hopper_workers::BrokerResult<()>>,
) {
    let mut registry = Registry::new();
    hopper_workers::diagnostics::register(&mut registry).expect("the diagnostic kinds");
    let config = PoolConfig {
        concurrency: 2,
        queues,
        ..PoolConfig::default()
    };
    let pool = Pool::new(b.clone(), Arc::new(registry), config, clock::system());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(pool.run(shutdown.clone()));
    (shutdown, task)
}

/// How many jobs of `queue` are in `state`.
async fn count(b: &Arc<dyn Broker>, queue: &str, state: JobState) -> u64 {
    let stats = b.queues().await.expect("queues");
    stats
        .iter()
        .find(|s| s.queue == queue)
        .map_or(0, |s| s.counts.get(state))
}

/// A pool serving a busy queue and a second one (rated, or not): the second queue's jobs start
/// (at its rate) while the busy queue still has a backlog, instead of waiting for the busy
/// queue to run dry. Real time: the rate is counted on the broker's clock. Before, every fetch
/// round started at the first queue, whose backlog took every free slot: the second queue ran
/// only on slots freed mid-round, and a rated one, often held on those rare rounds, starved.
async fn second_queue_is_served_while_the_first_is_busy(rate: Option<JobRate>) {
    let (b, _dir) = temp_sqlite(clock::system()).await;
    let busy: Vec<NewJob> = (0..2000)
        .map(|_| NewJob::new("sys.sleep", json!({"ms": 25})).queue("busy"))
        .collect();
    b.enqueue(busy).await.expect("enqueue busy");
    let rated: Vec<NewJob> = (0..20)
        .map(|_| NewJob::new("sys.noop", json!({})).queue("rated"))
        .collect();
    b.enqueue(rated).await.expect("enqueue rated");
    let (shutdown, task) = two_slot_pool(
        &b,
        vec![
            QueueSpec::new("busy"),
            QueueSpec {
                rate,
                ..QueueSpec::new("rated")
            },
        ],
    );
    // 20 jobs at 20/s take a second; the busy queue holds about 25 s of work. Before each
    // round started at the next queue, the second queue took 4.5 s to over 10.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while count(&b, "rated", JobState::Succeeded).await < 20 && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let rated_done = count(&b, "rated", JobState::Succeeded).await;
    let busy_left = count(&b, "busy", JobState::Queued).await;
    shutdown.cancel();
    task.await.expect("the pool task").expect("the pool ran");
    assert!(
        busy_left > 0,
        "the busy queue ran dry first: the case proves nothing"
    );
    assert_eq!(
        rated_done, 20,
        "the second queue's jobs wait behind a busy queue ({busy_left} busy jobs left)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rated_queue_is_served_while_another_queue_is_busy() {
    let rate = JobRate::new(20, std::time::Duration::from_secs(1));
    second_queue_is_served_while_the_first_is_busy(rate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrated_queue_is_served_while_another_queue_is_busy() {
    second_queue_is_served_while_the_first_is_busy(None).await;
}

/// The file under `temp_sqlite`'s broker, opened as another program would.
fn foreign_writer(dir: &tempfile::TempDir) -> rusqlite::Connection {
    let raw = rusqlite::Connection::open(dir.path().join("hopper.db")).expect("open the file");
    raw.busy_timeout(std::time::Duration::from_secs(30))
        .expect("busy timeout");
    raw
}

/// Rewrites job `id`'s id, and the job id of its events, as the BLOB `bytes`.
fn write_blob_id(raw: &rusqlite::Connection, id: &hopper_workers::job::JobId, bytes: &[u8]) {
    raw.execute(
        "UPDATE events SET job_id = ?2 WHERE job_id = ?1",
        rusqlite::params![id.as_str(), bytes],
    )
    .expect("BLOB job ids on its events");
    raw.execute(
        "UPDATE jobs SET id = ?2 WHERE id = ?1",
        rusqlite::params![id.as_str(), bytes],
    )
    .expect("a BLOB id");
}

/// A row holding a unique key under an id that is not text (written by another program):
/// enqueueing with that key answers the row, lossily, as the job holding the key, and creates
/// nothing; so does replaying a chain whose later step is such a row. Before, every enqueue
/// with the key (or of the chain) failed on reading the row's id.
#[tokio::test]
async fn a_unique_key_held_by_a_job_whose_id_is_not_text_is_answered_with_that_job() {
    let (b, dir) = temp_sqlite(clock::system()).await;
    let raw = foreign_writer(&dir);
    let holder = NewJob::new("test.k", json!({})).unique_key("nightly");
    b.enqueue(vec![holder.clone()]).await.expect("enqueue");
    let bad_id: &[u8] = b"u\xff\x02";
    write_blob_id(&raw, &holder.id, bad_id);
    raw.execute(
        "UPDATE jobs SET state = 'succeeded', finished_at = 1 WHERE unique_key = 'nightly'",
        [],
    )
    .expect("finished");

    let again = b
        .enqueue(vec![NewJob::new("test.k", json!({})).unique_key("nightly")])
        .await
        .expect("an enqueue with the key is answered");
    let shown = hopper_workers::job::JobId(String::from_utf8_lossy(bad_id).into_owned());
    assert!(!again[0].created, "{again:?}");
    assert_eq!(again[0].job.id, shown, "the holder, shown lossily");
    assert_eq!(again[0].job.state, JobState::Succeeded);

    let chain = hopper_workers::job::link_chain(vec![
        NewJob::new("test.k", json!({})).unique_key("chain"),
        NewJob::new("test.k", json!({})),
    ]);
    b.enqueue(chain.clone()).await.expect("enqueue the chain");
    write_blob_id(&raw, &chain[1].id, b"s\xfe");
    let replay = hopper_workers::job::link_chain(vec![
        NewJob::new("test.k", json!({})).unique_key("chain"),
        NewJob::new("test.k", json!({})),
    ]);
    let answers = b
        .enqueue(replay)
        .await
        .expect("a replay of the chain is answered");
    assert!(answers.iter().all(|a| !a.created), "{answers:?}");
    assert_eq!(answers[0].job.id, chain[0].id);
    assert_eq!(answers[1].job.id.0, String::from_utf8_lossy(b"s\xfe"));
    assert_eq!(answers[1].job.state, JobState::Waiting);
}

/// Finished rows and a queue's rows whose id is not text, or not UTF-8 (written by another
/// program, never fetched), are purged and dropped with the rest, their events too. Before, every purge that
/// met one failed (retention then never cleaned jobs or events again), and so did a drop of
/// its queue.
#[tokio::test]
async fn jobs_whose_id_is_not_text_are_purged_and_dropped_with_the_rest() {
    let (b, dir) = temp_sqlite(clock::system()).await;
    let raw = foreign_writer(&dir);
    let jobs: Vec<NewJob> = (0..3).map(|_| NewJob::new("test.k", json!({}))).collect();
    b.enqueue(jobs.clone()).await.expect("enqueue");
    write_blob_id(&raw, &jobs[0].id, b"d\xff");
    raw.execute(
        "UPDATE jobs SET state = 'dead', finished_at = 1 WHERE id = X'64FF'",
        [],
    )
    .expect("dead");
    raw.execute(
        "UPDATE jobs SET state = 'succeeded', finished_at = 1 WHERE id = ?1",
        [jobs[1].id.as_str()],
    )
    .expect("succeeded");

    let purged = b
        .purge(
            &[JobState::Succeeded, JobState::Dead],
            hopper_workers::time::Timestamp::from_millis(1_000),
            u64::MAX,
        )
        .await
        .expect("the purge runs");
    assert_eq!(purged, 2);
    let left: Vec<String> = raw
        .prepare("SELECT DISTINCT CAST(job_id AS TEXT) FROM events")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("events");
    assert_eq!(left, [jobs[2].id.0.clone()], "only the kept job's events");
    let page = b.list(&JobFilter::default()).await.expect("list");
    let ids: Vec<_> = page.jobs.into_iter().map(|j| j.id).collect();
    assert_eq!(ids, [jobs[2].id.clone()]);

    let other: Vec<NewJob> = (0..2)
        .map(|_| NewJob::new("test.k", json!({})).queue("other"))
        .collect();
    b.enqueue(other.clone()).await.expect("enqueue");
    for table in ["UPDATE events SET job_id", "UPDATE jobs SET id"] {
        let column = if table.contains("events") {
            "job_id"
        } else {
            "id"
        };
        raw.execute(
            &format!("{table} = CAST(X'71FF' AS TEXT) WHERE {column} = ?1"),
            [other[0].id.as_str()],
        )
        .expect("a text id that is not UTF-8");
    }
    assert_eq!(b.drop_queue("other").await.expect("the drop runs"), 2);
    let rows: i64 = raw
        .query_row(
            "SELECT (SELECT count(*) FROM jobs WHERE queue = 'other') \
             + (SELECT count(*) FROM events WHERE queue = 'other')",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(rows, 0, "its jobs and their events are gone");
}

/// A queued row whose chain id is not text (written by another program): it is listed and
/// fetched, and the rest of its queue runs. Before, the listing failed, and so did every
/// fetch of its queue, even while burying it: no job of the queue ran again.
#[tokio::test]
async fn a_job_whose_chain_id_is_not_text_does_not_block_its_queue() {
    let (b, dir) = temp_sqlite(clock::system()).await;
    let raw = foreign_writer(&dir);
    let jobs: Vec<NewJob> = (0..2).map(|_| NewJob::new("test.k", json!({}))).collect();
    b.enqueue(jobs.clone()).await.expect("enqueue");
    raw.execute(
        "UPDATE jobs SET chain_id = X'63FF', chain_next = X'6EFF' WHERE id = ?1",
        [jobs[0].id.as_str()],
    )
    .expect("BLOB chain ids");
    let fetched: Vec<_> = b
        .fetch("default", 2, std::time::Duration::from_secs(30))
        .await
        .expect("the fetch runs")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert!(fetched.contains(&jobs[1].id), "{fetched:?}");
    let listed = b
        .list(&JobFilter::default())
        .await
        .expect("the listing reads");
    assert_eq!(listed.jobs.len(), 2);
}

/// Rows whose queue or kind is not UTF-8 text (written by another program), and their events:
/// listings, a lookup by id, a job's history, the event feed and the queue counts read them,
/// the labels shown lossily, and the fetch still buries the one it meets. Before, each of
/// those reads failed on the one foreign row (a 5xx from `GET /v1/jobs`, `GET /v1/events`...).
#[tokio::test]
async fn jobs_whose_queue_or_kind_is_not_utf8_are_listed_and_read() {
    let (b, dir) = temp_sqlite(clock::system()).await;
    let raw = foreign_writer(&dir);
    let jobs: Vec<NewJob> = (0..3).map(|_| NewJob::new("test.k", json!({}))).collect();
    b.enqueue(jobs.clone()).await.expect("enqueue");
    for (column, bytes, id) in [
        ("queue", "71FF", &jobs[0].id),
        ("kind", "6BFF", &jobs[1].id),
    ] {
        for (table, id_column) in [("jobs", "id"), ("events", "job_id")] {
            raw.execute(
                &format!(
                    "UPDATE {table} SET {column} = CAST(X'{bytes}' AS TEXT) WHERE {id_column} = ?1"
                ),
                [id.as_str()],
            )
            .expect("a label that is not UTF-8");
        }
    }
    let lossy_queue = String::from_utf8_lossy(b"q\xff").into_owned();
    let lossy_kind = String::from_utf8_lossy(b"k\xff").into_owned();

    let listed = b
        .list(&JobFilter::default())
        .await
        .expect("the listing reads the rows");
    assert_eq!(listed.jobs.len(), 3, "{listed:?}");
    let queue_of = |id| listed.jobs.iter().find(|j| &j.id == id).map(|j| &j.queue);
    assert_eq!(queue_of(&jobs[0].id), Some(&lossy_queue));
    let got = b
        .get(&jobs[1].id)
        .await
        .expect("the lookup reads the row")
        .expect("found");
    assert_eq!(got.kind, lossy_kind);
    let history = b.history(&jobs[0].id).await.expect("its history reads");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].queue, lossy_queue);
    let feed = b.events(None, 100).await.expect("the event feed reads");
    assert_eq!(feed.len(), 3, "{feed:?}");
    assert!(feed.iter().any(|e| e.kind == lossy_kind), "{feed:?}");
    let queues = b.queues().await.expect("the queue counts read");
    assert!(queues.iter().any(|q| q.queue == lossy_queue), "{queues:?}");

    let fetched: Vec<_> = b
        .fetch("default", 3, std::time::Duration::from_secs(30))
        .await
        .expect("the fetch runs")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        fetched,
        [jobs[2].id.clone()],
        "the foreign kind is not handed out"
    );
    let buried = b.get(&jobs[1].id).await.expect("get").expect("found");
    assert_eq!(buried.state, JobState::Dead, "the foreign kind is buried");
}

/// Weighted queues: two queues with deep backlogs of short jobs, weights 3 and 1, on two
/// slots. The heavy queue runs about three jobs for each of the light queue's, and the light
/// one is never starved. Counted in jobs, not timed. Before, weights did not exist: every
/// round started at the next queue in turn, so the two ran about one to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_queues_share_the_slots_by_weight() {
    let (b, _dir) = temp_sqlite(clock::system()).await;
    for queue in ["heavy", "light"] {
        let jobs: Vec<NewJob> = (0..1000)
            .map(|_| NewJob::new("sys.sleep", json!({"ms": 5})).queue(queue))
            .collect();
        b.enqueue(jobs).await.expect("enqueue");
    }
    let (shutdown, task) = two_slot_pool(
        &b,
        vec![
            QueueSpec {
                weight: 3,
                ..QueueSpec::new("heavy")
            },
            QueueSpec::new("light"),
        ],
    );
    // 400 jobs of 5 ms on two slots: a second or two; the deadline allows a slow machine.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while count(&b, "heavy", JobState::Succeeded).await
        + count(&b, "light", JobState::Succeeded).await
        < 400
        && Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.expect("the pool task").expect("the pool ran");
    let heavy = count(&b, "heavy", JobState::Succeeded).await;
    let light = count(&b, "light", JobState::Succeeded).await;
    assert!(
        heavy + light >= 400,
        "only {heavy} + {light} jobs ran in 60 s"
    );
    assert!(
        count(&b, "heavy", JobState::Queued).await > 0
            && count(&b, "light", JobState::Queued).await > 0,
        "a backlog ran dry ({heavy} heavy, {light} light ran): the case proves nothing"
    );
    assert!(
        light > 0,
        "the light queue starved ({heavy} heavy jobs ran)"
    );
    let share = heavy as f64 / light as f64;
    assert!(
        (2.0..=4.5).contains(&share),
        "weights 3:1 ran {heavy} heavy and {light} light jobs ({share:.2}:1)"
    );
}

/// SQLite tells a gap exactly, its ids being consecutive: once the cap has trimmed the log, a
/// cursor at the newest trimmed event missed nothing (the next event is held), one before it
/// missed that one; `0`, before the first id, missed nothing until event 1 is trimmed.
#[tokio::test]
async fn a_gap_is_told_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = SqliteBroker::open(&dir.path().join("hopper.db"), clock::system())
        .await
        .expect("open");
    for _ in 0..5 {
        b.enqueue(vec![NewJob::new("test.gap", json!({}))])
            .await
            .expect("enqueue");
    }
    let ids: Vec<String> = b
        .events(None, 100)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(b.trimmed_after("0").await.expect("trimmed"), Some(false));
    b.purge(&[], hopper_workers::time::Timestamp::EPOCH, 2)
        .await
        .expect("trim to the newest two");
    assert_eq!(b.events(None, 100).await.expect("events").len(), 2);
    for (cursor, missed) in [
        ("0", true),
        (ids[1].as_str(), true),
        (ids[2].as_str(), false),
        (ids[3].as_str(), false),
        (ids[4].as_str(), false),
    ] {
        assert_eq!(
            b.trimmed_after(cursor).await.expect("trimmed"),
            Some(missed),
            "after {cursor} of {ids:?}"
        );
    }
}
