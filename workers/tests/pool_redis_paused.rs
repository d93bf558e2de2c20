//! A pool whose Redis stops answering mid-job, for real: a private `redis-server` on a free
//! port is paused with SIGSTOP while a job runs, so the pool's heartbeats hang on a stalled
//! connection rather than failing fast. The conformance suite's
//! `pool_stops_a_handler_whose_lease_ran_out_unrenewed` covers the same rule on both brokers
//! with calls that fail at once; this file checks that a heartbeat stuck on the wire does not
//! keep a handler running past its lease either. Real time throughout (leases of 3 s).

#![cfg(feature = "redis")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hopper_workers::broker::Broker;
use hopper_workers::broker::redis::RedisBroker;
use hopper_workers::clock::{self, Clock};
use hopper_workers::pool::{Pool, PoolConfig};
use hopper_workers::{Handler, JobContext, JobResult, JobState, NewJob, Registry};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long any one condition may take to come true on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

#[path = "support/private_redis.rs"]
mod private_redis;
use private_redis::Server;

/// What the handlers saw: which pool ran each attempt, and how many runs were stopped.
#[derive(Debug, Default)]
struct Probe {
    runs: Mutex<Vec<&'static str>>,
    stopped: AtomicU32,
}

impl Probe {
    fn runs(&self) -> Vec<&'static str> {
        self.runs.lock().expect("probe lock").clone()
    }
}

/// Counts the run as stopped if, when it ends, it was told to stop: however it ends, since
/// the pool may drop a handler rather than let it return.
struct Stopped(Arc<Probe>, JobContext);

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.1.is_cancelled() {
            self.0.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// `test.sleep` as one pool runs it: sleeps `sleep` (until told to stop), then succeeds,
/// saying which pool ran it.
struct Sleep {
    pool: &'static str,
    sleep: Duration,
    probe: Arc<Probe>,
}

#[async_trait]
impl Handler for Sleep {
    async fn run(&self, cx: JobContext) -> JobResult {
        self.probe.runs.lock().expect("probe lock").push(self.pool);
        let _stopped = Stopped(self.probe.clone(), cx.clone());
        tokio::select! {
            () = cx.cancelled() => return Ok(json!({"stopped": self.pool})),
            () = tokio::time::sleep(self.sleep) => {}
        }
        Ok(json!({"by": self.pool}))
    }
}

fn pool(
    broker: Arc<dyn Broker>,
    name: &'static str,
    sleep: Duration,
    probe: &Arc<Probe>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut registry = Registry::new();
    registry
        .register(
            "test.sleep",
            Sleep {
                pool: name,
                sleep,
                probe: probe.clone(),
            },
        )
        .expect("register");
    let config = PoolConfig {
        concurrency: 2,
        lease: Duration::from_secs(3),
        heartbeat: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(1),
        rescue_interval: Duration::from_millis(500),
        idle_wait: Duration::from_millis(200),
        ..PoolConfig::default()
    };
    let clock: Arc<dyn Clock> = clock::system();
    let pool = Pool::new(broker, Arc::new(registry), config, clock);
    let shutdown = CancellationToken::new();
    let run = pool.run(shutdown.clone());
    let task = tokio::spawn(async move {
        run.await.expect("the pool ran without error");
    });
    (shutdown, task)
}

async fn connect(url: &str) -> Arc<dyn Broker> {
    Arc::new(
        RedisBroker::connect(url, "paused", clock::system())
            .await
            .expect("connect to the private redis-server"),
    )
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_stops_when_its_redis_stalls_past_the_lease_and_runs_again_once_elsewhere() {
    let server = Server::start();
    let probe = Arc::new(Probe::default());
    let a = connect(&server.url()).await;
    let (stop_a, pool_a) = pool(a.clone(), "a", Duration::from_secs(3600), &probe);
    let job = NewJob::new("test.sleep", json!({}));
    let id = job.id.clone();
    a.enqueue(vec![job]).await.expect("enqueue");
    until("pool a to start the job", || probe.runs() == ["a"]).await;

    server.signal("STOP");
    until("pool a to stop the handler after its lease ran out", || {
        probe.stopped.load(Ordering::SeqCst) == 1
    })
    .await;
    // Redis is still paused: nobody can have rescued the job, let alone run it.
    assert_eq!(probe.runs(), ["a"]);
    stop_a.cancel();
    server.signal("CONT");

    let b = connect(&server.url()).await;
    let (stop_b, pool_b) = pool(b.clone(), "b", Duration::ZERO, &probe);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let done = loop {
        let j = b.get(&id).await.expect("get").expect("the job exists");
        if j.state == JobState::Succeeded {
            break j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PATIENCE:?} for the job to succeed on pool b; it is {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop_b.cancel();
    for task in [pool_a, pool_b] {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the pool stops")
            .expect("the pool task did not panic");
    }
    assert_eq!(done.result, Some(json!({"by": "b"})));
    assert_eq!(probe.runs(), ["a", "b"], "the job ran once more, elsewhere");
    assert_eq!(probe.stopped.load(Ordering::SeqCst), 1);
    assert_eq!(done.interruptions, 1);
}
