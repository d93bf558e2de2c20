//! The processes of a campaign: its private broker (a temporary SQLite file, or a
//! `redis-server` from PATH with AOF on), one `hopper serve --no-workers` and N
//! `hopper worker`, all of the binary that runs the campaign, and the signals sent to them.
//!
//! Everything lives in one temporary directory: the config every process reads, the ledger
//! directory, the broker's files and one log file per process (its stderr and stdout). Every
//! child is spawned in a process group of its own, so a Ctrl-C at the terminal reaches only
//! the campaign, which then kills them; each is also killed when its handle drops, so no
//! exit path leaves one running, and the directory is removed when [`Cluster`] drops.
//!
//! Redis runs with `appendonly yes` and `appendfsync always`: an enqueue Hopper answered 201
//! was fsynced into the AOF before the answer, so it survives the SIGKILL the campaign sends
//! and comes back when the server restarts on the same AOF. (With the default `everysec`, up
//! to a second of acknowledged writes may be lost by a crash, and the ledger would show it.)
//!
//! Not here: when to send which signal (`faults`), what the jobs are (`client`).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::Broker;

/// The lease every worker of a campaign takes: short, so a stopped or killed worker's jobs
/// come back within seconds.
pub(super) const LEASE: Duration = Duration::from_secs(2);
/// How often leases are extended: under a third of [`LEASE`], so one lost heartbeat does
/// not cost a lease.
const HEARTBEAT: Duration = Duration::from_millis(600);
/// The queue the campaign's jobs go to.
pub(super) const QUEUE: &str = "chaos";
/// How long a process gets to become ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A child process and where its output goes.
pub(super) struct Proc {
    child: Child,
    /// What the campaign calls it in its progress lines.
    name: String,
}

impl Proc {
    fn pid(&self) -> Result<Pid> {
        let id = self
            .child
            .id()
            .with_context(|| format!("{} has already exited", self.name))?;
        let id = i32::try_from(id).with_context(|| format!("pid {id} out of range"))?;
        Ok(Pid::from_raw(id))
    }

    /// Sends `signal`.
    pub(super) fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.pid()?, signal).with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// SIGKILL, then reaps it.
    pub(super) async fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }

    /// SIGTERM, and SIGKILL if it has not exited within `grace`.
    pub(super) async fn terminate(&mut self, grace: Duration) {
        // A process that already exited has nothing to stop.
        if self.signal(Signal::SIGCONT).is_ok()
            && self.signal(Signal::SIGTERM).is_ok()
            && tokio::time::timeout(grace, self.child.wait()).await.is_ok()
        {
            return;
        }
        let _ = self.child.kill().await;
    }

    /// Whether it has exited (and then how).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// The processes of one campaign and the directory they live in.
pub(super) struct Cluster {
    /// Removed (with everything in it) on drop, after the children it holds were killed.
    dir: tempfile::TempDir,
    exe: PathBuf,
    /// The API's base URL, `http://127.0.0.1:PORT`.
    pub(super) base: String,
    redis: Option<(Proc, u16)>,
    serve: Option<Proc>,
    /// One slot per worker; `None` only between a kill and its restart.
    workers: Vec<Option<Proc>>,
    /// Workers spawned so far, restarts included, to name their log files.
    spawned: usize,
    concurrency: usize,
}

impl Cluster {
    /// Starts the broker, the API and `workers` workers of `concurrency` slots each, and
    /// waits until the API answers `/readyz`.
    pub(super) async fn start(broker: Broker, workers: usize, concurrency: usize) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hopper-chaos.")
            .tempdir()
            .context("creating the campaign's temporary directory")?;
        tracing::info!("chaos: working in {}", dir.path().display());
        std::fs::create_dir(dir.path().join("ledger")).context("creating the ledger directory")?;
        std::fs::create_dir(dir.path().join("logs")).context("creating the log directory")?;
        let exe = std::env::current_exe().context("finding this program to start its nodes")?;
        let port = free_port()?;
        let mut cluster = Self {
            dir,
            exe,
            base: format!("http://127.0.0.1:{port}"),
            redis: None,
            serve: None,
            workers: Vec::new(),
            spawned: 0,
            concurrency,
        };
        let url = match broker {
            Broker::Sqlite => format!("sqlite://{}", cluster.dir.path().join("chaos.db").display()),
            Broker::Redis => {
                let port = free_port()?;
                cluster.redis = Some((cluster.spawn_redis(port).await?, port));
                format!("redis://127.0.0.1:{port}/0")
            }
        };
        std::fs::write(cluster.config_path(), config(port, &url, concurrency))
            .context("writing the campaign's config")?;
        let serve = cluster.spawn_hopper("serve", &["serve", "--no-workers"])?;
        cluster.serve = Some(serve);
        cluster.wait_ready().await?;
        for _ in 0..workers {
            let w = cluster.spawn_worker()?;
            cluster.workers.push(Some(w));
        }
        Ok(cluster)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Where the `chaos.ledger` jobs of every process write.
    pub(super) fn ledger_dir(&self) -> PathBuf {
        self.dir.path().join("ledger")
    }

    /// Where each process's output goes, one file per process.
    pub(super) fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The number of worker slots.
    pub(super) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Worker `i`, unless it is between a kill and its restart.
    pub(super) fn worker(&self, i: usize) -> Option<&Proc> {
        self.workers.get(i).and_then(Option::as_ref)
    }

    /// SIGKILLs worker `i` and starts a fresh one in its place.
    pub(super) async fn kill_and_restart_worker(&mut self, i: usize) -> Result<()> {
        if let Some(mut w) = self.workers.get_mut(i).and_then(Option::take) {
            w.kill().await?;
        }
        let w = self.spawn_worker()?;
        if let Some(slot) = self.workers.get_mut(i) {
            *slot = Some(w);
        }
        Ok(())
    }

    /// SIGKILLs the Redis server and starts it again on the same port and AOF.
    pub(super) async fn kill_and_restart_redis(&mut self) -> Result<()> {
        let Some((mut redis, port)) = self.redis.take() else {
            bail!("this campaign runs no Redis server");
        };
        redis.kill().await?;
        let restarted = self.spawn_redis(port).await?;
        self.redis = Some((restarted, port));
        Ok(())
    }

    /// Fails when the API or the broker died by itself (the campaign only kills workers and
    /// Redis, and restarts them).
    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.serve.as_mut().and_then(Proc::exited) {
            bail!(
                "hopper serve exited ({status}); its log: {}",
                self.log_dir().join("serve.log").display()
            );
        }
        Ok(())
    }

    /// Stops every process: workers first (SIGTERM, so they release their leases), then the
    /// API, then the broker.
    pub(super) async fn stop(&mut self) {
        let grace = Duration::from_secs(5);
        let stops = self
            .workers
            .iter_mut()
            .flatten()
            .map(|w| w.terminate(grace));
        futures::future::join_all(stops).await;
        if let Some(s) = self.serve.as_mut() {
            s.terminate(grace).await;
        }
        if let Some((r, _)) = self.redis.as_mut() {
            r.terminate(grace).await;
        }
    }

    fn spawn_worker(&mut self) -> Result<Proc> {
        self.spawned += 1;
        let name = format!("worker-{}", self.spawned);
        let concurrency = self.concurrency.to_string();
        self.spawn_hopper(&name, &["worker", "--concurrency", &concurrency])
    }

    /// `hopper ARGS --config CONFIG --chaos-ledger DIR`, its output in `logs/NAME.log`.
    fn spawn_hopper(&self, name: &str, args: &[&str]) -> Result<Proc> {
        let log = self.log_file(name)?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .arg("--config")
            .arg(self.config_path())
            .arg("--chaos-ledger")
            .arg(self.ledger_dir())
            // The refusals the report counts are logged at warn, progress at info.
            .env("RUST_LOG", "info")
            .env_remove("HOPPER_BROKER")
            .env_remove("HOPPER_TOKENS");
        spawn(cmd, name, log)
    }

    async fn spawn_redis(&self, port: u16) -> Result<Proc> {
        let dir = self.dir.path().join("redis");
        std::fs::create_dir_all(&dir).context("creating the Redis directory")?;
        let log = self.log_file("redis")?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(&dir)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no"])
            .args(["--maxmemory-policy", "noeviction"]);
        let redis = spawn(cmd, "redis", log).context("starting redis-server (is it on PATH?)")?;
        wait_redis(port).await?;
        Ok(redis)
    }

    /// Opens (appending) this process's log file.
    fn log_file(&self, name: &str) -> Result<std::fs::File> {
        let path = self.log_dir().join(format!("{name}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.base);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("hopper serve did not become ready within {READY_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Spawns `cmd` with its output appended to `log`, in a process group of its own, killed on
/// drop.
fn spawn(mut cmd: Command, name: &str, log: std::fs::File) -> Result<Proc> {
    let err = log.try_clone().context("sharing a log file")?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    Ok(Proc {
        child,
        name: name.to_owned(),
    })
}

/// A loopback port nothing listens on right now.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("reading a free port")?.port())
}

/// Waits until Redis on `port` answers PING with PONG (not `-LOADING` while it replays its
/// AOF).
async fn wait_redis(port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let mut buf = [0u8; 64];
            if s.write_all(b"PING\r\n").await.is_ok()
                && let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                && buf.get(..n).is_some_and(|b| b.starts_with(b"+PONG"))
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("redis-server on port {port} did not answer within {READY_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The config every process of the campaign reads.
fn config(port: u16, broker_url: &str, concurrency: usize) -> String {
    format!(
        r#"# Written by `hopper chaos` for the processes of one campaign.
[server]
listen = "127.0.0.1:{port}"

[broker]
url = "{broker_url}"
prefix = "chaos"

[worker]
concurrency = {concurrency}
queues = ["{QUEUE}"]
lease = "{lease}ms"
heartbeat = "{heartbeat}ms"
shutdown_grace = "1s"

[retry]
# A job may be interrupted many times in a row by the kills: it must not go to dead for it.
max_interruptions = 1000
"#,
        lease = LEASE.as_millis(),
        heartbeat = HEARTBEAT.as_millis(),
    )
}
