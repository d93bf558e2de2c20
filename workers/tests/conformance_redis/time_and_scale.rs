//! Redis as deployed across nodes and over time: leases and due times on Redis' clock whatever
//! a node's clock says, rescue that visits only the queues with running jobs, and a job's
//! history that reads only its own stream entries. Part of the `conformance_redis` test
//! binary (its fixtures are the parent module's).

use super::*;

/// A node's clock, off from the real one by a fixed amount: what a node with a wrong clock
/// reads.
#[derive(Debug)]
struct SkewedClock {
    offset_ms: i64,
}

impl Clock for SkewedClock {
    fn now(&self) -> Timestamp {
        let real = hopper_workers::clock::SystemClock.now();
        Timestamp::from_millis(real.as_millis() + self.offset_ms)
    }
}

/// Leases, due times and rescue follow Redis' clock, not the calling node's: a node whose clock
/// runs 20 s fast never takes a job whose 10 s lease is live (not by rescue, not by fetch), a
/// node 20 s slow cannot shorten a lease by renewing it, and a retry a fast node schedules is
/// due after its backoff, not its backoff plus the skew. (The suite runs the Redis broker on
/// its manual clock instead; this test runs it as deployed, on Redis' `TIME`.)
#[tokio::test]
async fn leases_and_due_times_follow_redis_time_not_the_node_clock() {
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let node = |offset_ms: i64| {
        let prefix = prefix.clone();
        async move {
            let clock: Arc<dyn Clock> = Arc::new(SkewedClock { offset_ms });
            connect(&prefix, clock).await
        }
    };
    let honest = node(0).await;
    let fast = node(20_000).await;
    let slow = node(-20_000).await;
    let lease = Duration::from_secs(10);
    let server_ms = || -> i64 {
        let (s, us): (i64, i64) = redis::cmd("TIME").query(&mut raw_conn()).expect("TIME");
        s * 1000 + us / 1000
    };

    honest
        .enqueue(vec![job("k").queue("skew")])
        .await
        .expect("enqueue");
    let held = honest.fetch("skew", 1, lease).await.expect("fetch");
    assert_eq!(held.len(), 1);
    let until = held[0].lease_until.expect("a running job has a lease");
    let now = server_ms();
    assert!(
        (now + 5_000..=now + 10_000).contains(&until.as_millis()),
        "a 10 s lease ends 10 s after Redis' now ({now}), not the node's: {until:?}"
    );

    assert_eq!(
        fast.rescue(3).await.expect("rescue"),
        Vec::new(),
        "rescued a live lease"
    );
    assert!(
        fast.fetch("skew", 10, lease)
            .await
            .expect("fetch")
            .is_empty()
    );

    // A slow node renewing the lease extends it from Redis' now, not 20 s in the past.
    let renewed = slow
        .heartbeat(&[held[0].lease()], lease)
        .await
        .expect("heartbeat");
    assert_eq!(renewed, vec![hopper_workers::broker::LeaseStatus::Held]);
    assert_eq!(
        honest.rescue(3).await.expect("rescue"),
        Vec::new(),
        "the renewal shortened the lease"
    );
    let job_now = honest.get(&held[0].id).await.expect("get").expect("job");
    assert_eq!(job_now.state, JobState::Running);
    assert_eq!(job_now.lease_token, held[0].lease_token);

    // A fast node's retry with a 1 s backoff is due in about 1 s, not 21 s.
    fast.enqueue(vec![job("r").queue("skew-retry")])
        .await
        .expect("enqueue");
    let got = fast.fetch("skew-retry", 1, lease).await.expect("fetch");
    let at = SkewedClock { offset_ms: 20_000 }.now() + ms(1_000);
    fast.finish(vec![finish(
        got[0].lease(),
        Outcome::Retry {
            at,
            error: "again".into(),
        },
    )])
    .await
    .expect("finish")
    .remove(0)
    .expect("the lease is held");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if !honest
            .fetch("skew-retry", 1, lease)
            .await
            .expect("fetch")
            .is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a retry due in 1 s was not due 15 s later"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A delay asked of a node whose clock runs 20 s fast (or slow) is a delay on Redis' clock:
/// a job delayed by 1 s is due about 1 s later, not 21 s later (nor at once).
#[tokio::test]
async fn a_delay_from_a_skewed_node_counts_on_redis_time() {
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let fast: Arc<dyn Clock> = Arc::new(SkewedClock { offset_ms: 20_000 });
    let slow: Arc<dyn Clock> = Arc::new(SkewedClock { offset_ms: -20_000 });
    let fast_node = connect(&prefix, fast.clone()).await;
    let slow_node = connect(&prefix, slow.clone()).await;
    let lease = Duration::from_secs(10);

    let later = job("d").queue("skew-delay").run_at(fast.now() + ms(1_000));
    fast_node.enqueue(vec![later]).await.expect("enqueue");
    let early = job("e")
        .queue("skew-delay-slow")
        .run_at(slow.now() + ms(3_000));
    slow_node.enqueue(vec![early]).await.expect("enqueue");
    assert!(
        slow_node
            .fetch("skew-delay-slow", 1, lease)
            .await
            .expect("fetch")
            .is_empty(),
        "a job delayed by 3 s on a slow node ran at once"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if !slow_node
            .fetch("skew-delay", 1, lease)
            .await
            .expect("fetch")
            .is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a job delayed by 1 s on a fast node was not due 15 s later"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rescue looks only at queues that may hold running jobs: a queue whose jobs all finished
/// leaves the index of leased queues at the next rescue (so a node's once-a-second rescue does
/// not grow with every queue ever used), and a queue that leases a job again is back in it, its
/// expired lease rescued.
#[tokio::test]
async fn rescue_visits_only_queues_with_running_jobs() {
    let f = fixture().await;
    let b = &f.broker;
    let leased = || -> Vec<String> {
        let mut v: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:leased", f.prefix))
            .query(&mut raw_conn())
            .expect("smembers");
        v.sort();
        v
    };
    for i in 0..20 {
        let q = format!("q{i:02}");
        b.enqueue(vec![job("k").queue(&q)]).await.expect("enqueue");
        let got = b.fetch(&q, 1, LEASE).await.expect("fetch");
        b.finish(succeed_all(&got)).await.expect("finish");
    }
    b.enqueue(vec![job("k").queue("busy")])
        .await
        .expect("enqueue");
    let running = b.fetch("busy", 1, LEASE).await.expect("fetch");
    assert_eq!(running.len(), 1);
    assert_eq!(b.rescue(3).await.expect("rescue"), Vec::new());
    assert_eq!(
        leased(),
        vec!["busy".to_string()],
        "only the queue with a running job"
    );

    f.clock.advance(30_001);
    assert_eq!(
        b.rescue(3)
            .await
            .expect("rescue")
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![running[0].id.clone()]
    );
    assert_eq!(b.rescue(3).await.expect("rescue"), Vec::new());
    assert!(leased().is_empty(), "nothing runs: {:?}", leased());

    let again = b.fetch("busy", 1, LEASE).await.expect("fetch");
    assert_eq!(leased(), vec!["busy".to_string()]);
    f.clock.advance(30_001);
    assert_eq!(
        b.rescue(3)
            .await
            .expect("rescue")
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![again[0].id.clone()]
    );
}

/// A job's history costs its own events, not the queue's: the job hash lists the stream
/// entries that hold its events after the first (field `evs`; the first leads `d`), and
/// `history` reads just those, however many entries other jobs added in between.
#[tokio::test]
async fn history_reads_only_the_jobs_own_stream_entries() {
    let f = fixture().await;
    let b = &f.broker;
    let mine = job("k.mine").queue("hist").priority(9);
    b.enqueue(vec![mine.clone()]).await.expect("enqueue");
    for _ in 0..300 {
        b.enqueue(vec![job("k.other").queue("hist")])
            .await
            .expect("enqueue");
    }
    // Everything else first (priority 0 < 9), one fetch call each: many entries in between.
    let others = drain(&**b, "hist", 1).await;
    assert_eq!(others.len(), 301);
    assert_eq!(
        others.last(),
        Some(&mine.id),
        "the low-priority job runs last"
    );
    let events = b.history(&mine.id).await.expect("history");
    assert_eq!(
        events.iter().map(|e| e.kind_of_event).collect::<Vec<_>>(),
        vec![
            EventType::Enqueued,
            EventType::Started,
            EventType::Succeeded
        ]
    );
    let key = format!("{{{}:hist}}:job:{}", f.prefix, mine.id);
    let rec: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query(&mut raw_conn())
        .expect("get");
    // `evs`, the last part of the record's `h`: up to its first 0xFF.
    let h = String::from_utf8_lossy(rec.split(|b| *b == 0xFF).next().expect("h")).into_owned();
    let evs = h.rsplit('|').next().map(str::to_owned);
    assert_eq!(
        evs.as_deref().map(|s| s.split(' ').count()),
        Some(2),
        "the started and succeeded entries: {evs:?}"
    );
    let stream_len: usize = redis::cmd("XLEN")
        .arg(format!("{{{}:hist}}:events", f.prefix))
        .query(&mut raw_conn())
        .expect("xlen");
    assert!(stream_len > 600, "entries in between: {stream_len}");
}

/// A cursor at the largest stream id there is (a client's guess, or a cursor from far ahead)
/// reads nothing after it, as any cursor past the last event does: Redis refuses `(` before
/// that id in XRANGE ("invalid start ID"), which answered the event page and the inbox with a
/// server error.
#[tokio::test]
async fn a_cursor_at_the_largest_stream_id_reads_nothing_after_it() {
    let f = fixture().await;
    let b = &f.broker;
    b.enqueue(vec![job("k").queue("far")])
        .await
        .expect("enqueue");
    let max = format!("{0}-{0}", u64::MAX);
    let page = b
        .events(Some(&format!("{max}@far")), 10)
        .await
        .expect("events after the largest id");
    assert!(page.is_empty(), "{page:?}");
    // A queue sorting before the cursor's: its entries at or before that id are behind it.
    let page = b
        .events(Some(&format!("{max}@zzz")), 10)
        .await
        .expect("events after the largest id of a later queue");
    assert!(page.is_empty(), "{page:?}");
    let entry = hopper_workers::broker::NewInboxEntry {
        id: "n1".into(),
        user: "u".into(),
        body: json!({ "title": "t" }),
    };
    let hour = Duration::from_secs(3600);
    b.inbox_append(&entry, hour).await.expect("append");
    let read = b
        .inbox_read(Some("u"), Some(&max), 10, hour)
        .await
        .expect("inbox after the largest id");
    assert!(read.is_empty(), "{read:?}");
    // Ids spelt otherwise than Redis writes them are refused, not taken for the id they
    // parse to (ids compare as text: such a cursor was past the end, a gap and a replay).
    for odd in [
        "017-0@far",
        "+17-0@far",
        "17-00@far",
        "17-0.0@far",
        "17-0.01@far",
    ] {
        let r = b.events(Some(odd), 10).await;
        assert!(matches!(r, Err(BrokerError::Invalid(_))), "{odd}: {r:?}");
    }
    for odd in ["017-0", "+17-0", "17-00"] {
        let r = b.inbox_read(Some("u"), Some(odd), 10, hour).await;
        assert!(matches!(r, Err(BrokerError::Invalid(_))), "{odd}: {r:?}");
    }
}

/// Events of a queue created while a reader pages through the log are read like any other.
/// The queues were listed once per read: a queue created between the listing and the
/// read (the read waits out Redis' current millisecond, ~1 ms) had its first entry passed
/// over while a later entry of a known queue moved the cursor past it, for good; a live
/// stream following busy queues missed a fifth of the new queues' first events.
#[tokio::test]
async fn a_queue_created_while_the_log_is_read_loses_no_event() {
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let clock: Arc<dyn Clock> = Arc::new(hopper_workers::clock::SystemClock);
    let b = Arc::new(connect(&prefix, clock).await);
    b.enqueue(vec![job("k").queue("zz")])
        .await
        .expect("enqueue");
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut fresh = Vec::new();
            for i in 0..300 {
                b.enqueue(vec![job("k").queue("zz")])
                    .await
                    .expect("enqueue");
                let made = b
                    .enqueue(vec![job("k").queue(format!("a{i:03}"))])
                    .await
                    .expect("enqueue");
                fresh.push(made[0].job.id.clone());
            }
            fresh
        })
    };
    let mut seen = std::collections::HashSet::new();
    let mut after: Option<String> = None;
    let mut quiet_reads = 0;
    while quiet_reads < 3 {
        let page = b.events(after.as_deref(), 50).await.expect("events");
        if page.is_empty() && writer.is_finished() {
            quiet_reads += 1;
        }
        for e in &page {
            seen.insert(e.job_id.clone());
        }
        if let Some(last) = page.last() {
            after = Some(last.id.clone());
        }
    }
    let fresh = writer.await.expect("writer");
    let missed: Vec<_> = fresh.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missed.is_empty(),
        "{} of {} new queues' first events never read, first {:?}",
        missed.len(),
        fresh.len(),
        missed.first()
    );
}

/// Retention trims each queue's stream apart: a cursor whose later events were trimmed is told
/// so although another queue still holds events older than it (the shell judged by the log's
/// oldest event alone, and skipped the trimmed events without a gap); a cursor with nothing
/// trimmed after it is not.
#[tokio::test]
async fn a_trimmed_cursor_is_told_while_another_queue_holds_older_events() {
    let f = fixture().await;
    let b = &f.broker;
    for _ in 0..5 {
        b.enqueue(vec![job("k").queue("qb")])
            .await
            .expect("enqueue");
    }
    for _ in 0..20 {
        b.enqueue(vec![job("k").queue("qa")])
            .await
            .expect("enqueue");
    }
    let all = b.events(None, 100).await.expect("events");
    let of = |q: &str| -> Vec<String> {
        all.iter()
            .filter(|e| e.queue == q)
            .map(|e| e.id.clone())
            .collect()
    };
    let (qa, qb) = (of("qa"), of("qb"));
    assert_eq!((qa.len(), qb.len()), (20, 5));
    // Each stream keeps its newest 10: qb all 5, qa its last 10.
    b.purge(&[], Timestamp::EPOCH, 10).await.expect("purge");
    assert_eq!(
        b.trimmed_after(&qa[2]).await.expect("trimmed"),
        Some(true),
        "qa's 4th to 10th events are gone"
    );
    assert_eq!(
        b.trimmed_after(&qa[12]).await.expect("trimmed"),
        Some(false)
    );
    assert_eq!(b.trimmed_after(&qb[0]).await.expect("trimmed"), Some(true));
    assert_eq!(
        b.trimmed_after(qa.last().expect("qa"))
            .await
            .expect("trimmed"),
        Some(false)
    );
    assert!(matches!(
        b.trimmed_after("garbage").await,
        Err(BrokerError::Invalid(_))
    ));
    // A cursor into a queue with no stream (dropped, or the data wiped) is left to the
    // caller's rule, which makes it a gap: the broker cannot say what it missed.
    let last = qa.last().expect("qa");
    let (sid, _) = last.split_once('@').expect("an event id");
    assert_eq!(
        b.trimmed_after(&format!("{sid}@nowhere"))
            .await
            .expect("trimmed"),
        None
    );
}

/// `test.nap`: sleeps 2.5 s unless told to stop, counting its runs and the stops.
struct Nap {
    runs: Arc<std::sync::atomic::AtomicU32>,
    stopped: Arc<std::sync::atomic::AtomicU32>,
}

#[async_trait::async_trait]
impl hopper_workers::Handler for Nap {
    async fn run(&self, cx: hopper_workers::JobContext) -> hopper_workers::JobResult {
        use std::sync::atomic::Ordering;
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            () = cx.cancelled() => {
                self.stopped.fetch_add(1, Ordering::SeqCst);
                Ok(json!({"stopped": true}))
            }
            () = tokio::time::sleep(Duration::from_millis(2_500)) => Ok(json!({"slept": true})),
        }
    }
}

/// A pool on a node whose clock runs 8 s fast runs a job that outlives nothing but its first
/// heartbeat to the end, once: the lease Redis grants ends 3 s after Redis' now, which the
/// node's clock reads as 5 s ago, so a pool that watched Redis' deadline on its own clock
/// stopped every handler at once and the job was interrupted until buried as a poison pill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_a_fast_clock_keeps_its_running_jobs() {
    use hopper_workers::pool::{Pool, PoolConfig};
    use std::sync::atomic::{AtomicU32, Ordering};
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let clock: Arc<dyn Clock> = Arc::new(SkewedClock { offset_ms: 8_000 });
    let broker: Arc<dyn Broker> = Arc::new(connect(&prefix, clock.clone()).await);
    let runs = Arc::new(AtomicU32::new(0));
    let stopped = Arc::new(AtomicU32::new(0));
    let mut registry = hopper_workers::Registry::new();
    registry
        .register(
            "test.nap",
            Nap {
                runs: runs.clone(),
                stopped: stopped.clone(),
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
        queues: vec![hopper_workers::pool::QueueSpec::new("skew-pool")],
        ..PoolConfig::default()
    };
    let pool = Pool::new(broker.clone(), Arc::new(registry), config, clock);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(pool.run(shutdown.clone()));
    let ids = enqueue_ids(&*broker, vec![job("test.nap").queue("skew-pool")]).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let j = broker.get(&ids[0]).await.expect("get").expect("the job");
        if j.state.is_final() {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not end in 60 s: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the pool stops")
        .expect("the pool task did not panic")
        .expect("the pool ran without error");
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.result, Some(json!({"slept": true})));
    assert_eq!(
        (done.attempt, done.interruptions),
        (1, 0),
        "one attempt, never interrupted"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(stopped.load(Ordering::SeqCst), 0);
}
