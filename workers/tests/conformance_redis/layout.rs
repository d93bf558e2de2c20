//! Storage layouts: jobs an older Hopper stored in layout 1 (a hash per job) are rewritten as
//! a record and `d` each (layout 3) when a node connects, and read, run and keep their
//! history as before.
//! Part of the `conformance_redis` test binary (its fixtures are the parent module's).

use super::*;

/// The parts of a record's `h`, in order (see workers/lua/common.lua).
const HOT: [&str; 10] = [
    "state",
    "attempt",
    "lease_token",
    "lease_until",
    "started_at",
    "run_at",
    "seq",
    "finished_at",
    "interruption_streak",
    "evs",
];

/// Rewrites the record at `key` by hand as the hash layout 1 stored: `h`'s parts, the kind,
/// `d` and each optional field as fields of their own, without the zero counters and empty
/// fields layout 1 left out, and the sequence without leading zeros.
fn to_layout1(conn: &mut redis::Connection, key: &str) {
    let rec: Vec<u8> = redis::cmd("GET").arg(key).query(conn).expect("get");
    let d_key = key.replacen("}:job:", "}:jd:", 1);
    let d: Vec<u8> = redis::cmd("GET").arg(&d_key).query(conn).expect("get d");
    let mut pieces = rec.split(|b| *b == 0xFE);
    let head: Vec<&[u8]> = pieces
        .next()
        .expect("a record")
        .split(|b| *b == 0xFF)
        .collect();
    assert_eq!(head.len(), 2, "h, kind: {rec:?}");
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> =
        vec![(b"kind".to_vec(), head[1].to_vec()), (b"d".to_vec(), d)];
    let h = std::str::from_utf8(head[0]).expect("h is text");
    for (name, value) in HOT.iter().zip(h.split('|')) {
        let zero_counter =
            value == "0" && matches!(*name, "attempt" | "lease_token" | "interruption_streak");
        // Layout 1 wrote the sequence without layout 2's leading zeros.
        let value = match *name {
            "seq" => value.parse::<u64>().expect("a sequence").to_string(),
            _ => value.to_owned(),
        };
        if !value.is_empty() && !zero_counter {
            fields.push((name.as_bytes().to_vec(), value.into_bytes()));
        }
    }
    for piece in pieces {
        let at = piece.iter().position(|b| *b == 0xFF).expect("a pair");
        fields.push((piece[..at].to_vec(), piece[at + 1..].to_vec()));
    }
    let mut hset = redis::cmd("HSET");
    hset.arg(key);
    for (name, value) in &fields {
        hset.arg(name).arg(value);
    }
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(key)
        .arg(&d_key)
        .ignore()
        .add_command(hset)
        .ignore()
        .query::<()>(conn)
        .expect("rewrite as a hash");
}

/// Rewrites the record at `key` and its `d` by hand as layout 2 stored them: `d` inside the
/// record, after the kind.
fn to_layout2(conn: &mut redis::Connection, key: &str) {
    let rec: Vec<u8> = redis::cmd("GET").arg(key).query(conn).expect("get");
    let d_key = key.replacen("}:job:", "}:jd:", 1);
    let d: Vec<u8> = redis::cmd("GET").arg(&d_key).query(conn).expect("get d");
    let at = rec.iter().position(|b| *b == 0xFE).unwrap_or(rec.len());
    let mut inline = rec[..at].to_vec();
    inline.push(0xFF);
    inline.extend_from_slice(&d);
    inline.extend_from_slice(&rec[at..]);
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(&d_key)
        .ignore()
        .cmd("SET")
        .arg(key)
        .arg(inline)
        .ignore()
        .query::<()>(conn)
        .expect("rewrite as layout 2");
}

/// Every entry of the list at `key`, head first.
fn whole_list(conn: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(conn)
        .expect("lrange")
}

/// Every job key under `prefix`.
fn job_keys(prefix: &str) -> Vec<String> {
    keys_of(prefix)
        .into_iter()
        .filter(|k| k.contains("}:job:"))
        .collect()
}

#[tokio::test]
async fn jobs_stored_as_hashes_are_rewritten_when_a_node_connects() {
    let f = fixture().await;
    let b = &f.broker;
    // More queued jobs than one migrate.lua call rewrites, and jobs in other states with the
    // optional fields: a result, progress, a last error, a chain, a unique key.
    let queued = enqueue_ids(&**b, (0..250).map(|_| job("k.many")).collect()).await;
    let chain = hopper_workers::job::link_chain(vec![job("k.c0"), job("k.c1")]);
    let others = enqueue_ids(
        &**b,
        [job("k.ok"), job("k.dead").unique_key("u-1")]
            .into_iter()
            .chain(chain)
            .map(|j| j.queue("other"))
            .collect(),
    )
    .await;
    let got = b.fetch("other", 3, LEASE).await.expect("fetch");
    assert_eq!(got.len(), 3, "the ok, dead and first chain step");
    let by_kind = |k: &str| {
        got.iter()
            .find(|j| j.kind == k)
            .map(|j| j.lease())
            .expect("leased")
    };
    b.progress(&by_kind("k.ok"), 40, Some("halfway".into()))
        .await
        .expect("progress");
    let done = b
        .finish(vec![
            finish(
                by_kind("k.ok"),
                Outcome::Succeeded {
                    result: json!({"n": [1, 2]}),
                },
            ),
            finish(
                by_kind("k.dead"),
                Outcome::Dead {
                    error: "boom | with a bar".into(),
                },
            ),
        ])
        .await
        .expect("finish");
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    let ids: Vec<_> = queued.iter().chain(&others).cloned().collect();
    let mut before = Vec::new();
    for id in &ids {
        let job = b.get(id).await.expect("get").expect("a job");
        let history = b.history(id).await.expect("history");
        before.push((job, history));
    }

    // An older Hopper's Redis: every job a hash, no layout version.
    let mut conn = raw_conn();
    let keys = job_keys(&f.prefix);
    assert_eq!(keys.len(), ids.len());
    // Most as hashes (layout 1), every fifth with `d` inside its record (layout 2, which
    // no release stored, but a build of it may have).
    for (i, key) in keys.iter().enumerate() {
        if i % 5 == 4 {
            to_layout2(&mut conn, key);
        } else {
            to_layout1(&mut conn, key);
        }
    }
    let () = redis::cmd("DEL")
        .arg(format!("{}:layout", f.prefix))
        .query(&mut conn)
        .expect("del");
    // Layout 1 kept the succeeded ids in a zset by finish time, not in the list `done`.
    let done_key = format!("{{{}:other}}:done", f.prefix);
    let done: Vec<String> = whole_list(&mut conn, &done_key);
    assert_eq!(done, [others[0].to_string()], "the one succeeded job");
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(format!("{{{}:other}}:succeeded", f.prefix));
    for (i, id) in done.iter().enumerate() {
        zadd.arg(i).arg(id);
    }
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(&done_key)
        .ignore()
        .add_command(zadd)
        .ignore()
        .query::<()>(&mut conn)
        .expect("as a zset");

    let node = connect(&f.prefix, f.clock.clone()).await.with_clock_time();
    assert_eq!(stored_layout(&mut conn, &f.prefix), "4");
    for key in &keys {
        let kind: String = redis::cmd("TYPE").arg(key).query(&mut conn).expect("type");
        assert_eq!(kind, "string", "{key} rewritten");
    }
    let moved: Vec<String> = whole_list(&mut conn, &done_key);
    assert_eq!(moved, done, "the succeeded ids moved to the list");
    let zset: bool = redis::cmd("EXISTS")
        .arg(format!("{{{}:other}}:succeeded", f.prefix))
        .query(&mut conn)
        .expect("exists");
    assert!(!zset, "the zset is gone");
    for (id, (job, history)) in ids.iter().zip(&before) {
        let now = node.get(id).await.expect("get").expect("a job");
        assert_eq!(&now, job, "the job reads as before");
        assert_eq!(&node.history(id).await.expect("history"), history);
    }

    // A build of layout 1 that still enqueues after the migration ran (a client left on the
    // old build) writes hashes: the scripts rewrite such a job when they meet it, and the
    // jobs taken off the queue with it are not stranded.
    to_layout1(
        &mut conn,
        &format!("{{{}:default}}:job:{}", f.prefix, queued[3]),
    );
    to_layout1(
        &mut conn,
        &format!("{{{}:default}}:job:{}", f.prefix, queued[200]),
    );
    assert_eq!(
        node.get(&queued[200]).await.expect("get").as_ref(),
        Some(&before[200].0),
        "read through the listing's path too"
    );

    // They run: the queued ones are leased in their order and succeed; the chain's first
    // step, leased before, finishes and queues the second with its result.
    let node: Arc<dyn Broker> = Arc::new(node);
    let mut leased = Vec::new();
    while leased.len() < queued.len() {
        let got = node.fetch("default", 100, LEASE).await.expect("fetch");
        assert!(!got.is_empty(), "all {} leased", queued.len());
        leased.extend(got.iter().map(|j| j.id.clone()));
        node.finish(succeed_all(&got)).await.expect("finish");
    }
    assert_eq!(leased, queued, "in queue order");
    let step = by_kind("k.c0");
    let done = node
        .finish(vec![finish(step, Outcome::Succeeded { result: json!(7) })])
        .await
        .expect("finish");
    assert!(
        done[0].is_ok(),
        "the lease taken before the rewrite still holds"
    );
    let next = node.fetch("other", 1, LEASE).await.expect("fetch");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload["input"], json!(7));
    let again = connect(&f.prefix, f.clock.clone()).await;
    assert_eq!(
        again.get(&others[0]).await.expect("get").map(|j| j.state),
        Some(JobState::Succeeded),
        "a second connect changes nothing"
    );
}

/// The layout version `<prefix>:layout` holds.
fn stored_layout(conn: &mut redis::Connection, prefix: &str) -> String {
    redis::cmd("GET")
        .arg(format!("{prefix}:layout"))
        .query(conn)
        .expect("get the layout")
}

/// A Redis in layout 3 moves to 4 with no job rewritten, and the event clock starts at the
/// newest entry of any queue's stream (one an older process wrote ahead of Redis' time,
/// here), so every entry written after sorts after it.
#[tokio::test]
async fn layout_3_moves_to_4_rewriting_nothing_and_seeds_the_event_clock() {
    let f = fixture().await;
    let ids = enqueue_ids(&*f.broker, vec![job("k").queue("a"), job("k").queue("b")]).await;
    let mut conn = raw_conn();
    let record = |conn: &mut redis::Connection| -> Vec<u8> {
        redis::cmd("GET")
            .arg(format!("{{{}:a}}:job:{}", f.prefix, ids[0]))
            .query(conn)
            .expect("get")
    };
    let before = record(&mut conn);
    // An entry of a layout-3 process an hour ahead of Redis' clock, in queue b's stream.
    let ahead = format!(
        "{}-7",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis()
            + 3_600_000
    );
    let () = redis::pipe()
        .cmd("XADD")
        .arg(format!("{{{}:b}}:events", f.prefix))
        .arg(&ahead)
        .arg("at")
        .arg("1")
        .arg("t")
        .arg("job.progress")
        .arg("j")
        .arg(ids[1].as_str())
        .arg("k")
        .arg("k")
        .arg("a")
        .arg("0")
        .ignore()
        .cmd("DEL")
        .arg(format!("{}:evclock", f.prefix))
        .ignore()
        .cmd("SET")
        .arg(format!("{}:layout", f.prefix))
        .arg(3)
        .ignore()
        .query(&mut conn)
        .expect("back to layout 3");

    let node = connect(&f.prefix, f.clock.clone()).await.with_clock_time();
    assert_eq!(stored_layout(&mut conn, &f.prefix), "4");
    assert_eq!(record(&mut conn), before, "the job is stored as it was");
    let clock: String = redis::cmd("GET")
        .arg(format!("{}:evclock", f.prefix))
        .query(&mut conn)
        .expect("the clock");
    assert_eq!(clock, ahead);
    let later = enqueue_ids(&node, vec![job("k").queue("a")]).await;
    let all = node.events(None, 100).await.expect("events");
    let last = all.last().expect("events");
    assert_eq!(
        last.job_id, later[0],
        "the newest entry sorts last: {all:?}"
    );
    assert!(
        last.id.starts_with(&ahead[..ahead.len() - 2]),
        "{}",
        last.id
    );
}

#[tokio::test]
async fn a_layout_only_a_newer_hopper_reads_is_refused() {
    let f = fixture().await;
    let () = redis::cmd("SET")
        .arg(format!("{}:layout", f.prefix))
        .arg(5)
        .query(&mut raw_conn())
        .expect("set");
    let err = RedisBroker::connect(&redis_url(), &f.prefix, f.clock.clone())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("layout 5"), "{err}");
}

/// Succeeded ids go to the list `done` in the order their jobs finished (an append, where a
/// zset insert cost a tenth of finish.lua's work), and purge reads it from the head: the jobs
/// finished before the cut go, over several script calls, a chain step whose next step
/// still exists stays at the head, and the rest keep their order.
#[tokio::test]
async fn succeeded_jobs_are_purged_from_the_head_of_their_list() {
    let f = fixture().await;
    let b = &f.broker;
    let chain = hopper_workers::job::link_chain(vec![job("k.c0"), job("k.c1")]);
    let first_step = chain[0].id.clone();
    let mut finished = Vec::new();
    let mut cut = None;
    for round in 0..3 {
        let mut jobs: Vec<NewJob> = (0..250).map(|_| job("k")).collect();
        if round == 0 {
            jobs.extend(chain.clone());
        }
        enqueue_ids(&**b, jobs).await;
        loop {
            let got = b.fetch("default", 500, LEASE).await.expect("fetch");
            // The chain's second step, queued by its first's success, is left running.
            let got: Vec<_> = got.into_iter().filter(|j| j.kind != "k.c1").collect();
            if got.is_empty() {
                break;
            }
            finished.extend(got.iter().map(|j| j.id.to_string()));
            b.finish(succeed_all(&got)).await.expect("finish");
        }
        f.clock.advance(10_000);
        if round == 1 {
            cut = Some(f.clock.now());
        }
    }
    let mut conn = raw_conn();
    let done_key = format!("{{{}:default}}:done", f.prefix);
    let done: Vec<String> = whole_list(&mut conn, &done_key);
    assert_eq!(done, finished, "in the order they finished");

    let n = b
        .purge(&[JobState::Succeeded], cut.expect("a cut"), 1_000_000)
        .await
        .expect("purge");
    assert_eq!(n, 500, "the first two rounds but the chain's first step");
    let done: Vec<String> = whole_list(&mut conn, &done_key);
    let mut kept = vec![first_step.to_string()];
    kept.extend(finished[501..].iter().cloned());
    assert_eq!(
        done, kept,
        "the kept step first, then the last round in order"
    );
    assert!(b.get(&first_step).await.expect("get").is_some());
    let stats = b.queues().await.expect("queues");
    let q = stats
        .iter()
        .find(|q| q.queue == "default")
        .expect("the queue");
    assert_eq!(q.counts.succeeded, 251, "{q:?}");
}

/// A job still stored as a hash (a layout-1 process enqueued it after the migration) met
/// twice by one fetch, through a stale queue entry and its current one: it is rewritten once
/// and leased, not skipped as stale and left queued in no lane.
#[tokio::test]
async fn a_hash_met_twice_in_one_fetch_is_leased() {
    let f = fixture().await;
    let b = &f.broker;
    let ids = enqueue_ids(&**b, vec![job("k")]).await;
    let mut conn = raw_conn();
    let key = format!("{{{}:default}}:job:{}", f.prefix, ids[0]);
    let rec: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).expect("get");
    let h = String::from_utf8_lossy(rec.split(|b| *b == 0xFF).next().expect("h")).into_owned();
    let parts: Vec<&str> = h.split('|').collect();
    let (run_at, seq): (u64, u64) = (
        parts[5].parse().expect("run_at"),
        parts[6].parse().expect("seq"),
    );
    to_layout1(&mut conn, &key);
    // An older entry of the same job, ahead of its current one.
    let stale = format!("{:015}{:016}{}", run_at.saturating_sub(1), seq - 1, ids[0]);
    let () = redis::cmd("ZADD")
        .arg(format!("{{{}:default}}:queued", f.prefix))
        .arg(5)
        .arg(&stale)
        .query(&mut conn)
        .expect("zadd");
    let got = b.fetch("default", 10, LEASE).await.expect("fetch");
    assert_eq!(
        got.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        ids,
        "leased once"
    );
}
