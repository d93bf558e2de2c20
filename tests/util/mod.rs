//! Test fixtures: a scratch directory, a `hopper` daemon process, the CLI, and waiting helpers.
//!
//! On failure, a [`Daemon`] prints its whole log (stderr) when dropped, so a red test says
//! what the process was doing.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hopper")
}

/// A scratch directory holding a config and a SQLite broker file.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    /// Environment variables set on every process started from here (see [`Scratch::with_env`]).
    env: Vec<(String, String)>,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    /// Sets `key=value` on every daemon and CLI run started from this scratch directory,
    /// e.g. `HOPPER_BROKER` (which they otherwise remove from the inherited environment).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The broker URL of this scratch directory's SQLite file.
    pub fn broker_url(&self) -> String {
        format!("sqlite://{}/hopper.db", self.path().display())
    }

    /// Writes `config.toml` with a loopback listener on a free port, this directory's broker,
    /// and `extra` appended (whole sections: `[worker]`, `[retry]`…).
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let path = self.path().join("config.toml");
        let body = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[broker]\nurl = \"{}\"\n\n{extra}\n",
            self.broker_url()
        );
        std::fs::write(&path, body).unwrap();
        path
    }

    /// Writes `config.toml` like [`Scratch::write_config`] but with the broker `url` and Redis
    /// key `prefix` given.
    pub fn write_config_with_broker(&self, url: &str, prefix: &str, extra: &str) -> PathBuf {
        let path = self.path().join("config.toml");
        let body = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n\
             [broker]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n\n{extra}\n"
        );
        std::fs::write(&path, body).unwrap();
        path
    }

    /// Runs the CLI with `--config` of this directory (written by `write_config` first).
    pub fn cli(&self, args: &[&str]) -> Output {
        let config = self.path().join("config.toml");
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("HOPPER_BROKER")
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if config.exists() {
            cmd.arg("--config").arg(&config);
        }
        cmd.args(args).output().unwrap()
    }

    /// Runs the CLI and returns its stdout, failing the test when it exits non-zero.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "hopper {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a CLI listing with `--json` and parses it.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.cli_ok(&all);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Starts `hopper serve` (or `worker`) with this directory's config.
    pub fn start(&self, args: &[&str]) -> Daemon {
        let config = self.path().join("config.toml");
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.path())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("HOPPER_BROKER")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if config.exists() {
            cmd.arg("--config").arg(&config);
        }
        Daemon::spawn(cmd.args(args))
    }
}

/// A running `hopper` process. Killed (SIGKILL) when dropped if still running.
pub struct Daemon {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: Arc<Mutex<Option<String>>>,
}

impl Daemon {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = Arc::new(Mutex::new(None));
        let (log2, addr2) = (log.clone(), addr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let a: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    *addr2.lock().unwrap() = Some(a);
                }
                log2.lock().unwrap().push(line);
            }
        });
        Self { child, log, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The HTTP address once the daemon says it listens.
    pub fn wait_addr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(a) = self.addr.lock().unwrap().clone() {
                return format!("http://{a}");
            }
            assert!(
                Instant::now() < deadline,
                "daemon never said it listens; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no log line with {needle:?}; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the process to exit; returns its status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "process did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}\n----", self.log_text());
        }
    }
}

/// A small HTTP client for the API.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::new(),
        }
    }

    /// POST /v1/jobs; returns (status, body).
    pub async fn enqueue(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST /v1/jobs expecting 201; returns the job id.
    pub async fn enqueue_ok(&self, body: Value) -> String {
        let (status, job) = self.enqueue(body).await;
        assert_eq!(status, 201, "enqueue failed: {job}");
        job["id"].as_str().unwrap().to_owned()
    }

    pub async fn job(&self, id: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/v1/jobs/{id}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls the job until `pred` holds; returns it.
    pub async fn wait_job(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(id).await;
            if pred(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job never matched; last: {job:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls until the job is in `state`.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        self.wait_job(id, timeout, |j| j["state"] == state).await
    }
}

/// The events of a job's history of one type.
pub fn events<'a>(job: &'a Value, ty: &str) -> Vec<&'a Value> {
    job["history"]
        .as_array()
        .map(|h| h.iter().filter(|e| e["type"] == ty).collect())
        .unwrap_or_default()
}

/// Parses an RFC 3339 timestamp of the API into milliseconds since the epoch.
pub fn ms(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
        }
        other => panic!("not a timestamp: {other}"),
    }
}

/// The ids of a chain's steps, in order, from the answer to `POST /v1/jobs` with `then`.
pub fn step_ids(enqueued: &Value) -> Vec<String> {
    enqueued["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {enqueued}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}
