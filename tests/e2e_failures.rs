//! Failures a job queue must survive: a worker killed mid-job, a cancel, graceful and hard
//! shutdown (also with the log's reader gone), and the daemon killed with jobs still queued.
//! Each case waits for the outcome it checks; the scenarios are sized so that the wrong
//! outcome (a job waiting out its full sleep, a drain waiting out its full grace) cannot
//! happen within the wait's deadline.

#![allow(clippy::unwrap_used)]

use serde_json::json;

use crate::util::{Scratch, count, events, ms, noop, sleep, wait};

/// `kill -9` a worker while it runs `sys.sleep {"ms":5000}` with a 2 s lease: a second worker
/// picks the job up once the lease expires and finishes it; the job shows one interruption and
/// no failed attempt.
#[tokio::test]
async fn killed_worker_job_is_rescued_by_another() {
    let s = Scratch::with_config("[worker]\nlease = \"2s\"\nheartbeat = \"500ms\"\n");
    let (_api_d, api) = s.serve(&["--no-workers"]);
    let mut w1 = s.start(&["worker"]);
    let id = api.enqueue_ok(sleep(5000)).await;
    api.wait_state(&id, "running").await;
    w1.stop("KILL");

    let _w2 = s.start(&["worker"]);
    api.wait_job(&id, |j| events(j, "job.started").len() == 2)
        .await;
    let job = api.wait_state(&id, "succeeded").await;
    assert_eq!(job["interruptions"], 1, "{job:#}");
    assert_eq!(
        job["attempt"], 1,
        "an interruption is not a failed attempt: {job:#}"
    );
    assert!(events(&job, "job.retrying").is_empty(), "{job:#}");
    assert_eq!(events(&job, "job.interrupted").len(), 1, "{job:#}");
}

/// Cancelling a running `sys.sleep` of ten minutes stops its handler at once: with one slot, a
/// job queued behind it starts after the cancel and succeeds, long before the sleep would have
/// ended. Retrying the cancelled job runs it again.
#[tokio::test]
async fn cancel_stops_a_running_handler() {
    let s = Scratch::with_config("[worker]\nconcurrency = 1\n");
    let (_d, api) = s.serve(&[]);
    let long = api.enqueue_ok(sleep(600_000)).await;
    api.wait_state(&long, "running").await;
    let next = api
        .enqueue_ok(json!({"kind": "sys.noop", "payload": {}, "priority": 0}))
        .await;

    let (status, body) = api.post(&format!("/v1/jobs/{long}/cancel")).await;
    assert_eq!(status, 200, "{body}");
    let cancelled = api.job(&long).await;
    assert_eq!(cancelled["state"], "cancelled");
    // The only slot was the cancelled handler's: the next job runs once it is freed.
    let done = api.wait_state(&next, "succeeded").await;
    assert!(
        ms(&done["started_at"]) >= ms(&cancelled["finished_at"]),
        "the next job started before the cancel: {done:#}"
    );

    // A second cancel is a conflict: the job is final.
    let (status, _) = api.post(&format!("/v1/jobs/{long}/cancel")).await;
    assert_eq!(status, 409);

    let (status, body) = api.post(&format!("/v1/jobs/{long}/retry")).await;
    assert_eq!(status, 200, "{body}");
    api.wait_state(&long, "running").await;
}

/// SIGTERM with four running 1 s jobs and a ten-minute grace: the process waits for them, they
/// succeed, and it exits 0 as soon as they are done, not at the end of the grace.
#[tokio::test]
async fn sigterm_drains_running_jobs() {
    let s = Scratch::with_config("[worker]\nconcurrency = 4\nshutdown_grace = \"10m\"\n");
    let (mut d, api) = s.serve(&[]);
    let ids = api.enqueue_n(4, &sleep(1000)).await;
    api.wait_all(&ids, "running").await;
    let status = d.stop("TERM");
    assert!(status.success(), "exit status {status}");
    for id in &ids {
        let job = s.cli_job(id);
        assert_eq!(job["state"], "succeeded", "{job:#}");
    }
}

/// With `shutdown_grace` (500 ms) far shorter than the jobs (ten minutes), SIGTERM exits at the
/// end of the grace and the jobs are back in `queued` at once, not after their ten-minute
/// lease, without a failed attempt.
#[tokio::test]
async fn sigterm_past_grace_releases_jobs() {
    stopped_past_grace_releases_jobs("TERM", 4).await;
}

/// SIGHUP (a closed terminal, or a `kill -HUP` meant as a reload) stops the node as SIGTERM
/// does: it exits 0 at the end of the grace with the jobs released, back in `queued` at once,
/// instead of dying on the signal's default with them left `running` until their lease.
#[tokio::test]
async fn sighup_stops_gracefully_as_sigterm_does() {
    let status = stopped_past_grace_releases_jobs("HUP", 2).await;
    assert!(status.success(), "exit status {status}");
}

/// Runs `jobs` ten-minute jobs on a node with a 500 ms grace, stops it with `signal`, checks
/// every job is back in `queued` with no attempt spent, and answers the node's exit status.
async fn stopped_past_grace_releases_jobs(signal: &str, jobs: usize) -> std::process::ExitStatus {
    let s = Scratch::with_config(&format!(
        "[worker]\nconcurrency = {jobs}\nshutdown_grace = \"500ms\"\nlease = \"10m\"\nheartbeat = \"1m\"\n"
    ));
    let (mut d, api) = s.serve(&[]);
    let ids = api.enqueue_n(jobs, &sleep(600_000)).await;
    api.wait_all(&ids, "running").await;
    let status = d.stop(signal);
    for id in &ids {
        let job = s.cli_job(id);
        assert_eq!(job["state"], "queued", "{job:#}");
        assert_eq!(job["attempt"], 0, "{job:#}");
    }
    status
}

/// An operator who will not wait out a long grace sends a second SIGTERM (or Ctrl-C): the
/// process stops at once, and the running jobs are released on the way, back in `queued`
/// with no interruption counted, rather than left `running` until their lease (ten minutes
/// here) runs out and a rescue counts one against them (three make a job a poison pill).
#[tokio::test]
async fn second_sigterm_skips_the_grace_but_still_releases_jobs() {
    let s = Scratch::with_config(
        "[worker]\nconcurrency = 2\nshutdown_grace = \"10m\"\nlease = \"10m\"\nheartbeat = \"1m\"\n",
    );
    let (mut d, api) = s.serve(&[]);
    let ids = api.enqueue_n(2, &sleep(600_000)).await;
    api.wait_all(&ids, "running").await;
    d.signal("TERM");
    d.wait_log("shutting down: waiting for running jobs");
    d.stop("TERM");
    for id in &ids {
        let job = s.cli_job(id);
        assert_eq!(job["state"], "queued", "{job:#}");
        assert_eq!(job["attempt"], 0, "{job:#}");
        assert_eq!(job["interruptions"], 0, "{job:#}");
    }
}

/// `serve --no-workers` has no running job to hand back, so a second signal ends it at once,
/// even while a request holds up the graceful stop (a client still sending its body). Giving
/// every node the worker node's ten seconds to release its jobs made an API-only node wait
/// them out.
#[tokio::test]
async fn second_sigterm_ends_an_api_only_node_at_once() {
    use tokio::io::AsyncWriteExt;
    let s = Scratch::new();
    let (mut d, api) = s.serve(&["--no-workers"]);
    let addr = api.base.trim_start_matches("http://").to_owned();
    let mut held = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    held.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nHost: hopper\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"kind\"",
    )
    .await
    .expect("a request whose body is still coming");
    // Past the upgrade of the connection into a request being read.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    d.signal("TERM");
    d.wait_log("shutting down");
    let second = std::time::Instant::now();
    d.signal("TERM");
    d.wait_exit();
    let took = second.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "exited {took:?} after the second signal"
    );
    drop(held);
}

/// 1,000 jobs enqueued with `serve --no-workers`, the process killed with SIGKILL: a new
/// `serve` runs each exactly once.
#[tokio::test]
async fn sigkill_loses_no_enqueued_job() {
    let s = Scratch::with_config("[worker]\nconcurrency = 32\n");
    let (mut d, api) = s.serve(&["--no-workers"]);
    let ids = api.enqueue_n(1000, &noop()).await;
    d.stop("KILL");

    let (_d2, api) = s.serve(&[]);
    wait::until("not all 1000 jobs succeeded", async || {
        let c = api.counts("default").await;
        if count(&c, "succeeded") == 1000 {
            Ok(())
        } else {
            Err(c.to_string())
        }
    })
    .await;
    // The CLI, straight from the broker, agrees.
    assert_eq!(s.cli_counts("default")["succeeded"], 1000);
    // Exactly once: every job started once and on its first attempt.
    for id in ids.iter().step_by(50) {
        let job = api.job(id).await;
        assert_eq!(job["attempt"], 1, "{job:#}");
        assert_eq!(events(&job, "job.started").len(), 1, "{job:#}");
    }
}

/// Kills (SIGKILL) and reaps the child when dropped, so a test that fails leaves no process.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A daemon whose stderr has lost its reader (a log shipper that died, `hopper serve 2>&1 |
/// head`) still stops on SIGTERM: a log line it cannot write is dropped, rather than panicking
/// the task that watches for signals (which left the process deaf to SIGTERM and Ctrl-C).
#[test]
fn sigterm_stops_a_daemon_whose_log_reader_is_gone() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let s = Scratch::with_config("");
    let child = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .current_dir(s.path())
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("HOPPER_BROKER")
        .arg("--config")
        .arg(s.path().join("config.toml"))
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    assert!(
        lines
            .by_ref()
            .any(|l| l.is_ok_and(|l| l.contains("listening on"))),
        "the daemon did not start"
    );
    // The pipe's only read end goes: every later log line fails to write.
    drop(lines);

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop a daemon whose log reader is gone"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
