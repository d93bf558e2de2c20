//! Hopper under systemd, without systemd: the test binds the notify socket itself and hands
//! it to `hopper worker` / `hopper serve` as systemd would (`NOTIFY_SOCKET`, `WATCHDOG_USEC`),
//! then reads what they say. And the rolling restart an operator does with
//! `systemctl restart hopper-worker@…` one node at a time: SIGTERM, wait, start again.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::redis::{RedisKeys, SHARED_URL};
use crate::util::{Daemon, Scratch, count, sleep, wait};

/// The watchdog interval the tests give (`WATCHDOG_USEC`): short, so a stall shows quickly,
/// but well above the pool's one-second rounds on a loaded machine.
const WATCHDOG: Duration = Duration::from_secs(3);

/// A notify socket as systemd binds it: every datagram received, with when.
struct NotifySocket {
    path: PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (got2, stop2) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    got2.lock().unwrap().push((Instant::now(), msg));
                }
            }
        });
        Self { path, got, stop }
    }

    /// When each line starting with `prefix` arrived, in order.
    fn times(&self, prefix: &str) -> Vec<Instant> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l.starts_with(prefix)))
            .map(|(t, _)| *t)
            .collect()
    }

    /// The lines starting with `prefix` that arrived after `since`.
    fn lines_after(&self, prefix: &str, since: Instant) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > since)
            .flat_map(|(_, m)| m.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    fn all(&self) -> String {
        let got = self.got.lock().unwrap();
        got.iter()
            .map(|(_, m)| m.replace('\n', " | "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for a line starting with `prefix` after `since`; returns when it arrived.
    fn wait(&self, prefix: &str, since: Instant) -> Instant {
        wait::until_blocking(&format!("no {prefix} from hopper"), || {
            self.times(prefix)
                .into_iter()
                .find(|t| *t > since)
                .ok_or_else(|| self.all())
        })
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The acceptance test of the watchdog: `READY=1`, then `WATCHDOG=1` every half interval
/// while idle; none once the fetch loop is blocked (the test-only fault hook) while the
/// status lines go on; pings again once it runs; and `STOPPING=1` with a stop-timeout
/// extension on SIGTERM, then a clean exit.
#[test]
fn worker_feeds_the_watchdog_only_while_its_fetch_loop_runs() {
    let s = Scratch::with_config("[worker]\nconcurrency = 2\nshutdown_grace = \"20s\"\n");
    let sock = NotifySocket::bind(s.path());
    let block = s.path().join("block-fetch");
    let s = s
        .with_env("NOTIFY_SOCKET", sock.path.to_str().unwrap())
        .with_env("WATCHDOG_USEC", &WATCHDOG.as_micros().to_string())
        .with_env("HOPPER_FAULT_BLOCK_FETCH_FILE", block.to_str().unwrap());
    let start = Instant::now();
    let mut d = s.start(&["worker"]);

    let ready = sock.wait("READY=1", start);
    d.wait_log("worker started");
    // Idle and healthy: pings keep coming.
    wait::until_blocking("fewer than three watchdog pings while idle", || {
        let n = sock
            .times("WATCHDOG=1")
            .iter()
            .filter(|t| **t >= ready)
            .count();
        if n >= 3 { Ok(()) } else { Err(sock.all()) }
    });
    // A job run shows in the status line.
    s.cli_ok(&["enqueue", "sys.noop"]);
    wait::until_blocking("no status line with a job done", || {
        let done = sock
            .lines_after("STATUS=", ready)
            .into_iter()
            .any(|l| l.contains("slots busy") && !l.contains(", 0 jobs done"));
        if done { Ok(()) } else { Err(sock.all()) }
    });

    // The fetch loop hangs: the pings stop (for twice the interval, the status lines going
    // on meanwhile), and the node says why.
    std::fs::write(&block, b"").unwrap();
    let blocked = Instant::now();
    d.wait_log("fetch loop is blocked");
    let quiet = wait::until_blocking("the watchdog pings did not stop", || {
        let last = sock.times("WATCHDOG=1").last().copied().unwrap_or(blocked);
        let quiet_since = last.max(blocked);
        if quiet_since.elapsed() >= 2 * WATCHDOG {
            Ok(quiet_since)
        } else {
            Err(sock.all())
        }
    });
    assert!(
        !sock.lines_after("STATUS=", quiet).is_empty(),
        "no status line while the pings stopped:\n{}",
        sock.all()
    );
    d.wait_log("has stopped making progress");

    // It runs again: so do the pings.
    std::fs::remove_file(&block).unwrap();
    let unblocked = Instant::now();
    sock.wait("WATCHDOG=1", unblocked);

    let term = Instant::now();
    d.signal("TERM");
    sock.wait("STOPPING=1", term);
    let extend = sock.lines_after("EXTEND_TIMEOUT_USEC=", term);
    let usec: u64 = extend
        .first()
        .unwrap_or_else(|| panic!("no EXTEND_TIMEOUT_USEC on SIGTERM:\n{}", sock.all()))
        .trim_start_matches("EXTEND_TIMEOUT_USEC=")
        .parse()
        .unwrap();
    // The grace (20 s) and a margin for the release.
    assert!(usec > 20_000_000, "EXTEND_TIMEOUT_USEC={usec}");
    let status = d.wait_exit();
    assert!(status.success(), "exit status {status}");
}

/// `hopper serve` says `READY=1` once its API answers; with no `WATCHDOG_USEC` it never pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_ready_once_its_api_answers() {
    let s = Scratch::with_config("");
    let sock = NotifySocket::bind(s.path());
    let s = s.with_env("NOTIFY_SOCKET", sock.path.to_str().unwrap());
    let start = Instant::now();
    let (mut d, api) = s.serve(&[]);
    tokio::task::block_in_place(|| sock.wait("READY=1", start));
    let queues = api.get_json("/v1/queues", &[]).await;
    assert!(queues["queues"].is_array(), "{queues}");
    assert!(
        sock.lines_after("STATUS=", start)
            .iter()
            .any(|l| l.contains("serving on") && l.contains("slots busy")),
        "{}",
        sock.all()
    );
    let status = tokio::task::block_in_place(|| d.stop("TERM"));
    assert!(status.success(), "exit status {status}");
    assert!(sock.times("WATCHDOG=1").is_empty(), "{}", sock.all());
    assert!(!sock.times("STOPPING=1").is_empty(), "{}", sock.all());
}

/// The rolling restart of README's "Run on servers": three `hopper worker` nodes on one Redis
/// under a steady load of short jobs; each in turn gets SIGTERM, exits within its grace
/// (plus a margin for a slow machine), and is started again. Nothing is lost: every job
/// enqueued ends `succeeded` on its first attempt, never interrupted, none dead or stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_three_workers_loses_nothing() {
    const GRACE: Duration = Duration::from_secs(10);
    const MARGIN: Duration = Duration::from_secs(10);
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(
        SHARED_URL,
        &keys.prefix,
        &format!(
            "[worker]\nconcurrency = 4\nshutdown_grace = \"{}s\"\nlease = \"10s\"\nheartbeat = \"2s\"\n",
            GRACE.as_secs()
        ),
    );
    let (_api_d, api) = s.serve(&["--no-workers"]);
    let api = Arc::new(api);
    let mut workers: Vec<Daemon> = (0..3).map(|_| s.start(&["worker"])).collect();
    for w in &workers {
        w.wait_log("worker started");
    }

    // The steady load: a 300 ms job every 50 ms, until told to stop.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (api, producing) = (api.clone(), producing.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            while producing.load(Ordering::Relaxed) {
                ids.push(api.enqueue_ok(sleep(300)).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };

    for (i, w) in workers.iter_mut().enumerate() {
        // Under load: jobs running somewhere, more succeeding since the last restart.
        let before = count(&api.counts("default").await, "succeeded");
        wait::until("no progress under load", async || {
            let c = api.counts("default").await;
            if count(&c, "succeeded") >= before + 20 && count(&c, "running") > 0 {
                Ok(())
            } else {
                Err(c.to_string())
            }
        })
        .await;
        let asked = Instant::now();
        let status = tokio::task::block_in_place(|| w.stop("TERM"));
        let took = asked.elapsed();
        assert!(status.success(), "worker {i} exited with {status}");
        assert!(
            took <= GRACE + MARGIN,
            "worker {i} took {took:?} to stop (grace {GRACE:?})"
        );
        *w = s.start(&["worker"]);
        tokio::task::block_in_place(|| w.wait_log("worker started"));
    }

    producing.store(false, Ordering::Relaxed);
    let ids: BTreeSet<String> = producer.await.unwrap().into_iter().collect();
    assert!(ids.len() > 60, "too little load: {} jobs", ids.len());
    let n = ids.len() as u64;
    wait::until("not every job succeeded", async || {
        let c = api.counts("default").await;
        if count(&c, "succeeded") == n {
            Ok(())
        } else {
            Err(c.to_string())
        }
    })
    .await;
    let counts = api.counts("default").await;
    for (state, k) in counts.as_object().unwrap() {
        let want = if state == "succeeded" { n } else { 0 };
        assert_eq!(k.as_u64(), Some(want), "{state} in {counts}");
    }
    let succeeded = api.all_jobs("default", "succeeded").await;
    let listed: BTreeSet<String> = succeeded
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids, "the succeeded jobs are not the jobs enqueued");
    for j in &succeeded {
        assert_eq!(j["attempt"], 1, "{j:#}");
        assert_eq!(j["interruptions"], 0, "{j:#}");
    }
}
