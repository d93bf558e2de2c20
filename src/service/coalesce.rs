//! Single-job enqueues that arrive together go to the broker together.
//!
//! Each `POST /v1/jobs` (and each `hopper enqueue`) stores one job. Sent one by one, a busy API
//! pays one broker call per job: one Redis script call, one SQLite write command with its own
//! savepoint. The [`Coalescer`] queues them instead; one task takes whatever is queued (up to
//! [`MAX_BATCH`]) and stores it with one [`Broker::enqueue`] call, then answers each caller
//! with its own job. Nothing waits for company: an enqueue that arrives alone is sent at once,
//! and batches form only while earlier calls are in flight (at most [`IN_FLIGHT`] at a time),
//! that is, under load, where they pay.
//!
//! Each job is checked ([`NewJob::validate`]) before it is queued, so a bad request is refused
//! alone, with its own field named, and never fails the others' batch. Two jobs with the same
//! queue and `unique_key` never share a batch: the second waits for the next one, so it finds
//! the first exactly as it would have one after the other. A batch goes to the broker as one
//! call per queue, sent together: a call that fails (the broker is unreachable, the queue's
//! shard is down) fails for each of its callers, with the same error, as each call alone
//! would have, and for no caller of another queue, whose job may well be stored.
//!
//! Not here: chains (a chain is one call already, `super::Service::submit`), checking a
//! request against the registry (`super::submit`).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};

use hopper_workers::broker::Enqueued;
use hopper_workers::job::NewJob;
use hopper_workers::{Broker, BrokerError, BrokerResult};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most jobs in one broker call.
pub const MAX_BATCH: usize = 256;
/// Most broker calls in flight at once.
pub const IN_FLIGHT: usize = 4;
/// Enqueues queued for the task, beyond which callers wait to queue theirs.
const QUEUED: usize = 4 * MAX_BATCH;

/// One caller's job and where its answer goes.
struct Waiting {
    job: NewJob,
    reply: oneshot::Sender<BrokerResult<Enqueued>>,
}

/// The queue of single-job enqueues over one broker. Its task starts with the first enqueue
/// (so that it is made on the runtime that uses it) and ends when the last handle is dropped.
#[derive(Debug)]
pub struct Coalescer {
    broker: Arc<dyn Broker>,
    tx: OnceLock<mpsc::Sender<Waiting>>,
}

impl Coalescer {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            tx: OnceLock::new(),
        }
    }

    /// Stores `job` (in a batch with others arriving meanwhile) and answers it as stored.
    pub async fn enqueue(&self, job: NewJob) -> BrokerResult<Enqueued> {
        job.validate().map_err(BrokerError::Invalid)?;
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUED);
            tokio::spawn(run(self.broker.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(w)) = tx.send(Waiting { job, reply }).await {
            // The task is gone (the runtime is shutting down): store it here.
            return one(&*self.broker, w.job).await;
        }
        answer
            .await
            .map_err(|_| BrokerError::Backend("the enqueue batcher stopped".into()))?
    }
}

/// The task: takes what is queued into batches and sends each, [`IN_FLIGHT`] at most at once.
async fn run(broker: Arc<dyn Broker>, mut rx: mpsc::Receiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // Jobs held back from a batch because their unique key was already in it.
    let mut held: VecDeque<Waiting> = VecDeque::new();
    loop {
        let first = match held.pop_front() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Taken after a slot is free: what queued while every slot was busy joins this batch.
        let mut keys = HashSet::new();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut admit =
            |w: Waiting, held: &mut VecDeque<Waiting>, batch: &mut Vec<Waiting>| match &w
                .job
                .unique_key
            {
                Some(k) if !keys.insert((w.job.queue.clone(), k.clone())) => held.push_back(w),
                _ => batch.push(w),
            };
        admit(first, &mut held, &mut batch);
        let mut from_held = held.len();
        while batch.len() < MAX_BATCH {
            let next = if from_held > 0 {
                from_held -= 1;
                held.pop_front()
            } else {
                rx.try_recv().ok()
            };
            let Some(w) = next else { break };
            admit(w, &mut held, &mut batch);
        }
        let broker = broker.clone();
        tokio::spawn(async move {
            send(&*broker, batch).await;
            drop(slot);
        });
    }
}

/// Stores a batch, one broker call per queue (at once), and answers each job.
///
/// Per queue, because one call is all or nothing only within a queue: Redis stores each
/// queue's jobs with a script call of their own (on a Cluster, on the queue's shard), so one
/// call over several queues can fail after storing some of them, and its error would reach
/// callers whose job was stored (and whose retry would store it again).
async fn send(broker: &dyn Broker, batch: Vec<Waiting>) {
    let mut groups: Vec<Vec<Waiting>> = Vec::new();
    for w in batch {
        match groups.iter_mut().find(|g| g[0].job.queue == w.job.queue) {
            Some(g) => g.push(w),
            None => groups.push(vec![w]),
        }
    }
    futures::future::join_all(groups.into_iter().map(|g| send_queue(broker, g))).await;
}

/// Stores one queue's jobs of a batch and answers each; a failure, each of them.
async fn send_queue(broker: &dyn Broker, batch: Vec<Waiting>) {
    let (jobs, replies): (Vec<NewJob>, Vec<_>) =
        batch.into_iter().map(|w| (w.job, w.reply)).unzip();
    let n = jobs.len();
    match broker.enqueue(jobs).await {
        Ok(stored) if stored.len() == n => {
            for (reply, e) in replies.into_iter().zip(stored) {
                let _ = reply.send(Ok(e));
            }
        }
        Ok(stored) => {
            let why = format!("the broker answered {} of {n} jobs", stored.len());
            for reply in replies {
                let _ = reply.send(Err(BrokerError::Backend(why.clone().into())));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(copy(&e)));
            }
        }
    }
}

/// The same failure, for another caller of the batch.
fn copy(e: &BrokerError) -> BrokerError {
    match e {
        BrokerError::Unavailable(why) => BrokerError::Unavailable(why.to_string().into()),
        BrokerError::Invalid(f) => BrokerError::Invalid(f.clone()),
        BrokerError::Config(why) => BrokerError::Config(why.clone()),
        BrokerError::Backend(why) => BrokerError::Backend(why.to_string().into()),
        other => BrokerError::Backend(other.to_string().into()),
    }
}

/// Stores one job.
async fn one(broker: &dyn Broker, job: NewJob) -> BrokerResult<Enqueued> {
    broker
        .enqueue(vec![job])
        .await?
        .pop()
        .ok_or_else(|| BrokerError::Backend("the broker answered an enqueue with nothing".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use hopper_workers::broker::JobFilter;
    use hopper_workers::clock;
    use serde_json::json;

    use super::*;

    async fn sqlite() -> (Arc<dyn Broker>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hopper.db");
        let broker = hopper_workers::broker::sqlite::open(path.to_str().unwrap(), clock::system())
            .await
            .unwrap();
        (broker, dir)
    }

    fn job(n: u64) -> NewJob {
        NewJob::new("test.c", json!({ "n": n }))
    }

    /// Many callers at once: each is answered with its own job, as stored, and every job is
    /// stored once; a bad job among them is refused alone, naming its field.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_each_get_their_own_job_and_a_bad_one_fails_alone() {
        let (broker, _dir) = sqlite().await;
        let c = Arc::new(Coalescer::new(broker.clone()));
        let calls = (0..300u64).map(|n| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut j = job(n);
                if n == 150 {
                    j.priority = 42;
                }
                (n, c.enqueue(j).await)
            })
        });
        let mut ids = HashSet::new();
        for call in futures::future::join_all(calls).await {
            let (n, answer) = call.unwrap();
            if n == 150 {
                match answer {
                    Err(BrokerError::Invalid(f)) => assert_eq!(f.field, "priority"),
                    other => panic!("the bad job: {other:?}"),
                }
                continue;
            }
            let e = answer.unwrap();
            assert!(e.created);
            assert_eq!(
                e.job.payload,
                json!({ "n": n }),
                "each caller gets its own job"
            );
            ids.insert(e.job.id);
        }
        assert_eq!(ids.len(), 299);
        let page = broker
            .list(&JobFilter {
                limit: 1000,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.jobs.len(), 299, "every good job stored, once");
    }

    /// Callers racing with one unique key: one job is created, and every caller is answered
    /// with that job.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_callers_with_one_unique_key_create_one_job() {
        let (broker, _dir) = sqlite().await;
        let c = Arc::new(Coalescer::new(broker.clone()));
        let calls = (0..100u64).map(|n| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut j = job(n);
                j.unique_key = Some("once".into());
                c.enqueue(j).await.unwrap()
            })
        });
        let answers: Vec<Enqueued> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(answers.iter().filter(|e| e.created).count(), 1);
        let ids: HashSet<_> = answers.iter().map(|e| e.job.id.clone()).collect();
        assert_eq!(ids.len(), 1, "every caller sees the one job");
    }

    /// Deletes a Redis prefix's keys when dropped, so a failing test cleans up too.
    struct RedisKeys(String);

    impl Drop for RedisKeys {
        fn drop(&mut self) {
            let Ok(client) = redis::Client::open(REDIS) else {
                return;
            };
            let Ok(mut conn) = client.get_connection() else {
                return;
            };
            for pattern in [format!("{{{}:*", self.0), format!("{}:*", self.0)] {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query(&mut conn)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
                }
            }
        }
    }

    const REDIS: &str = "redis://127.0.0.1:6379/0";

    /// Callers of two queues share batches; on Redis each queue is its own script call, and
    /// one queue's call fails here (its sequence key is not a number, which Redis refuses).
    /// Each caller is answered for its own job: every job of the healthy queue is stored and
    /// answered so, every job of the broken one is refused, and no caller is told of a failure
    /// while its job was stored (a retry of it would store it twice).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_queue_failing_fails_only_its_own_callers() {
        let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
        let _keys = RedisKeys(prefix.clone());
        let broker: Arc<dyn Broker> = Arc::new(
            hopper_workers::broker::redis::RedisBroker::connect(REDIS, &prefix, clock::system())
                .await
                .unwrap(),
        );
        let client = redis::Client::open(REDIS).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("{{{prefix}:broken}}:seq"))
            .arg("not a number")
            .query_async(&mut conn)
            .await
            .unwrap();
        let c = Arc::new(Coalescer::new(broker.clone()));
        let calls = (0..400u64).map(|n| {
            let c = c.clone();
            tokio::spawn(async move {
                let queue = if n % 2 == 0 { "healthy" } else { "broken" };
                (queue, c.enqueue(job(n).queue(queue)).await)
            })
        });
        let mut stored = 0;
        for call in futures::future::join_all(calls).await {
            match call.unwrap() {
                ("healthy", answer) => {
                    let e = answer
                        .unwrap_or_else(|e| panic!("a job of the healthy queue was refused: {e}"));
                    assert!(e.created);
                    stored += 1;
                }
                (_, answer) => assert!(answer.is_err(), "{answer:?}"),
            }
        }
        assert_eq!(stored, 200);
        let page = broker
            .list(&JobFilter {
                queue: Some("healthy".into()),
                limit: 1000,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.jobs.len(), 200, "every job answered stored is, once");
    }
}
