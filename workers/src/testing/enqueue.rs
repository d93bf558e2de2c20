//! What `enqueue` stores: every field as given, a batch all or none, and a taken
//! `unique_key` answered with the existing job instead of a new one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{LEASE, ManualClock, enqueue, fetch_one, get, history_types, job, ms, types};
use crate::broker::{Broker, Enqueued};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::event::EventType;
use crate::job::{JobId, JobState, NewJob};

/// A job is stored as given, starts `queued`, and its history opens with `job.enqueued`.
pub async fn enqueue_get_history(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let now = clock.now();
    let new = NewJob::new("test.echo", json!({"n": 1, "s": "x"}))
        .queue("q1")
        .priority(3)
        .max_retries(2)
        .timeout(Duration::from_secs(5));
    let answers = b.enqueue(vec![new.clone()]).await.expect("enqueue");
    assert_eq!(answered(&answers), vec![(new.id.clone(), true)]);

    let j = get(&b, &new.id).await;
    assert_eq!(j.id, new.id);
    assert_eq!(j.queue, "q1");
    assert_eq!(j.kind, "test.echo");
    assert_eq!(j.payload, json!({"n": 1, "s": "x"}));
    assert_eq!(j.priority, 3);
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.run_at, now);
    assert_eq!(j.attempt, 0);
    assert_eq!(j.max_retries, 2);
    assert_eq!(j.timeout_ms, Some(5000));
    assert_eq!(j.interruptions, 0);
    assert_eq!(j.progress, 0);
    assert_eq!(j.result, None);
    assert_eq!(j.last_error, None);
    assert_eq!(j.created_at, now);
    assert_eq!(j.started_at, None);
    assert_eq!(j.finished_at, None);

    let history = b.history(&new.id).await.expect("history");
    assert_eq!(types(&history), vec![EventType::Enqueued]);
    let e = &history[0];
    assert_eq!(e.job_id, new.id);
    assert_eq!(e.queue, "q1");
    assert_eq!(e.kind, "test.echo");
    assert_eq!(e.at, now);
    assert_eq!(e.attempt, 0);

    let missing = JobId::generate();
    assert_eq!(b.get(&missing).await.expect("get missing"), None);
    assert!(
        b.history(&missing)
            .await
            .expect("history missing")
            .is_empty()
    );
    assert!(
        b.enqueue(Vec::new())
            .await
            .expect("empty enqueue")
            .is_empty()
    );
}

/// A batch with one invalid job creates nothing.
pub async fn enqueue_is_all_or_none(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let good = job("test.ok");
    let bad = job("test.bad").priority(12);
    let r = b.enqueue(vec![good.clone(), bad]).await;
    assert!(matches!(r, Err(BrokerError::Invalid(_))), "got {r:?}");
    assert_eq!(b.get(&good.id).await.expect("get"), None);
    assert!(fetch_one(&b, "default").await.is_none());
}

/// A taken `unique_key` returns the existing job and creates nothing, also inside one batch
/// and when the very same job is sent again.
pub async fn unique_key_returns_existing(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let first = enqueue(&b, job("test.u").unique_key("k1")).await;
    let dup = job("test.u").unique_key("k1");
    let answers = b.enqueue(vec![dup.clone()]).await.expect("enqueue dup");
    assert_eq!(answered(&answers), vec![(first.clone(), false)]);
    assert_eq!(b.get(&dup.id).await.expect("get"), None);
    assert_eq!(history_types(&b, &first).await, vec![EventType::Enqueued]);
    // One batch naming a taken key twice: each is answered with the stored job, whole.
    let twice = b
        .enqueue(vec![
            job("test.u").unique_key("k1"),
            job("test.u").unique_key("k1"),
        ])
        .await
        .expect("enqueue the taken key twice");
    assert_eq!(
        answered(&twice),
        vec![(first.clone(), false), (first.clone(), false)]
    );
    let stored = get(&b, &first).await;
    assert!(twice.iter().all(|e| e.job == stored), "{twice:?}");

    let a = job("test.u").unique_key("k2");
    let c = job("test.u").unique_key("k2");
    let plain = job("test.u");
    let answers = b
        .enqueue(vec![a.clone(), c.clone(), plain.clone()])
        .await
        .expect("enqueue batch");
    assert_eq!(
        answered(&answers),
        vec![
            (a.id.clone(), true),
            (a.id.clone(), false),
            (plain.id.clone(), true),
        ]
    );
    assert_eq!(b.get(&c.id).await.expect("get"), None);
    assert_eq!(get(&b, &a.id).await.unique_key.as_deref(), Some("k2"));

    // The very same job sent again (a client retrying its request) is the job already stored.
    let again = b.enqueue(vec![a.clone()]).await.expect("enqueue again");
    assert_eq!(answered(&again), vec![(a.id.clone(), false)]);
    let queued = b.queues().await.expect("queues")[0].counts.queued;
    assert_eq!(queued, 3, "k1, k2 and the plain job");
}

/// Every field fixed at enqueue comes back exactly from `get`, `fetch` and `history`: a
/// payload holding `|` (Redis packs these fields into one string), numbers and empty arrays,
/// a priority, a timeout, a unique key; and a job without a timeout has none.
pub async fn fields_round_trip_exactly(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let payload = json!({"a|b": "x|y||", "n": [1, 2.5, -3], "e": []});
    let j = NewJob::new("k.packed", payload.clone())
        .priority(7)
        .max_retries(4)
        .timeout(Duration::from_millis(1234))
        .unique_key("u|1");
    let plain = NewJob::new("k.plain", json!({}));
    b.enqueue(vec![j.clone(), plain.clone()])
        .await
        .expect("enqueue");
    let got = get(&b, &j.id).await;
    assert_eq!(got.payload, payload);
    assert_eq!(got.priority, 7);
    assert_eq!(got.max_retries, 4);
    assert_eq!(got.timeout_ms, Some(1234));
    assert_eq!(got.unique_key.as_deref(), Some("u|1"));
    assert_eq!(got.created_at, clock.now());
    let leased = b.fetch("default", 10, LEASE).await.expect("fetch");
    assert_eq!(leased.len(), 2);
    let got = leased.iter().find(|l| l.id == j.id).expect("leased");
    assert_eq!(got.payload, payload);
    assert_eq!(got.timeout_ms, Some(1234));
    let plain_got = leased.iter().find(|l| l.id == plain.id).expect("leased");
    assert_eq!(plain_got.timeout_ms, None);
    assert_eq!(plain_got.priority, plain.priority);
    let events = b.history(&j.id).await.expect("history");
    assert_eq!(events.len(), 2, "{events:?}");
}

/// A batch appends one `job.enqueued` event per job it created, none for a job that existed
/// already (its unique key taken, before the batch or earlier in it), in the batch's order,
/// each carrying its own job's queue, kind and attempt 0.
pub async fn batch_appends_one_event_per_created_job(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let taken = enqueue(&b, job("test.before").unique_key("t")).await;
    let before = b.events(None, 1000).await.expect("events").len();
    let first = job("test.a");
    let dup_before = job("test.b").unique_key("t");
    let keyed = job("test.c").unique_key("u");
    let dup_within = job("test.d").unique_key("u");
    let last = NewJob::new("test.e", json!({"n": 1}));
    let answers = b
        .enqueue(vec![
            first.clone(),
            dup_before,
            keyed.clone(),
            dup_within,
            last.clone(),
        ])
        .await
        .expect("enqueue batch");
    assert_eq!(
        answered(&answers),
        vec![
            (first.id.clone(), true),
            (taken, false),
            (keyed.id.clone(), true),
            (keyed.id.clone(), false),
            (last.id.clone(), true),
        ]
    );
    let events = b.events(None, 1000).await.expect("events");
    let appended: Vec<(EventType, JobId, String, u32)> = events[before..]
        .iter()
        .map(|e| (e.kind_of_event, e.job_id.clone(), e.kind.clone(), e.attempt))
        .collect();
    assert_eq!(
        appended,
        vec![
            (EventType::Enqueued, first.id, "test.a".to_owned(), 0),
            (EventType::Enqueued, keyed.id, "test.c".to_owned(), 0),
            (EventType::Enqueued, last.id, "test.e".to_owned(), 0),
        ]
    );
    assert!(
        events[before..]
            .iter()
            .all(|e| e.at == clock.now() && e.queue == "default" && e.error.is_none())
    );
}

/// What an enqueue answered, as (id, created) pairs.
fn answered(answers: &[Enqueued]) -> Vec<(JobId, bool)> {
    answers
        .iter()
        .map(|e| (e.job.id.clone(), e.created))
        .collect()
}

/// The enqueue answer is each job as stored: exactly what a read gives back, for a queued,
/// a scheduled and a waiting job, and for a taken unique key.
pub async fn enqueue_answers_jobs_as_stored(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let now = clock.now();
    let queued = job("test.q").unique_key("as-stored");
    let scheduled = job("test.s").run_at(now + ms(60_000));
    let steps = crate::job::link_chain(vec![job("test.c0"), job("test.c1")]);
    let mut batch = vec![queued.clone(), scheduled];
    batch.extend(steps);
    let answers = b.enqueue(batch).await.expect("enqueue");
    assert_eq!(answers.len(), 4);
    let states: Vec<JobState> = answers.iter().map(|e| e.job.state).collect();
    assert_eq!(
        states,
        vec![
            JobState::Queued,
            JobState::Scheduled,
            JobState::Queued,
            JobState::Waiting
        ]
    );
    for e in &answers {
        assert!(e.created);
        assert_eq!(e.job, get(&b, &e.job.id).await, "answered as stored");
    }
    let again = b
        .enqueue(vec![job("test.q").unique_key("as-stored")])
        .await
        .expect("enqueue again");
    assert!(!again[0].created);
    assert_eq!(again[0].job, get(&b, &queued.id).await, "the existing job");
}

/// A job whose id names a stored job (a client's retry of a batch it did not hear back from,
/// with the same ids) is that job: answered as it is stored, not created, not changed, and no
/// event appended; the rest of its batch is created as usual.
pub async fn an_id_enqueued_again_is_the_job_it_names(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let first = job("test.first");
    enqueue(&b, first.clone()).await;
    let stored = get(&b, &first.id).await;
    let before = b.events(None, 1000).await.expect("events").len();
    let mut again = NewJob::new("test.other", json!({"other": true}));
    again.id = first.id.clone();
    let fresh = job("test.fresh");
    let answers = b
        .enqueue(vec![again, fresh.clone()])
        .await
        .expect("enqueue");
    assert_eq!(
        answered(&answers),
        vec![(first.id.clone(), false), (fresh.id.clone(), true)]
    );
    assert_eq!(answers[0].job, stored, "answered as stored");
    assert_eq!(get(&b, &first.id).await, stored, "unchanged");
    let events = b.events(None, 1000).await.expect("events");
    let appended: Vec<JobId> = events[before..].iter().map(|e| e.job_id.clone()).collect();
    assert_eq!(appended, vec![fresh.id], "one event, the new job's");
}
