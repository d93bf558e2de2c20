//! The process side: a scratch directory with its config, the `hopper` CLI run in it, and
//! `hopper serve` / `hopper worker` daemons started from it.
//!
//! A [`Daemon`] keeps its stderr (the log) and prints it when dropped during a panic, so a red
//! test says what the process was doing. Talking to a daemon over HTTP is `super::api`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::api::Api;
use super::wait;

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

    /// A scratch directory whose config is [`Scratch::write_config`] of `extra`.
    pub fn with_config(extra: &str) -> Self {
        let s = Self::new();
        s.write_config(extra);
        s
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
        self.write_config_file("", &format!("url = \"{}\"\n", self.broker_url()), extra)
    }

    /// Writes `config.toml` like [`Scratch::write_config`] with `server` (lines of the
    /// `[server]` section, e.g. `body_limit = 4096`) added after its `listen`.
    pub fn write_config_with_server(&self, server: &str, extra: &str) -> PathBuf {
        self.write_config_file(server, &format!("url = \"{}\"\n", self.broker_url()), extra)
    }

    /// Writes `config.toml` like [`Scratch::write_config`] but with the broker `url` and Redis
    /// key `prefix` given.
    pub fn write_config_with_broker(&self, url: &str, prefix: &str, extra: &str) -> PathBuf {
        self.write_config_file(
            "",
            &format!("url = \"{url}\"\nprefix = \"{prefix}\"\n"),
            extra,
        )
    }

    fn write_config_file(&self, server: &str, broker: &str, extra: &str) -> PathBuf {
        let path = self.path().join("config.toml");
        let body =
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[broker]\n{broker}\n{extra}\n");
        std::fs::write(&path, body).unwrap();
        path
    }

    /// `hopper` in this directory, with `--config` when a config was written, `NO_COLOR`, this
    /// directory's environment, and `RUST_LOG` at `log` (unset: each command's default).
    fn command(&self, log: Option<&str>) -> Command {
        let config = self.path().join("config.toml");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hopper"));
        cmd.current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("HOPPER_BROKER")
            .env_remove("RUST_LOG");
        if let Some(level) = log {
            cmd.env("RUST_LOG", level);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if config.exists() {
            cmd.arg("--config").arg(&config);
        }
        cmd
    }

    /// Runs the CLI with `--config` of this directory (written by `write_config` first).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(None).args(args).output().unwrap()
    }

    /// Runs the CLI like [`Scratch::cli`], killing it when it has not ended within `limit`
    /// (for a command that runs until stopped when the test expects it to refuse at once).
    pub fn cli_within(&self, args: &[&str], limit: std::time::Duration) -> Output {
        let mut child = self
            .command(None)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                let out = child.wait_with_output().unwrap();
                panic!("hopper {args:?} still ran after {limit:?}: {out:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
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

    /// Runs a CLI command with `--json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.cli_ok(&all);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// `hopper job ID --json`: the job with its history.
    pub fn cli_job(&self, id: &str) -> Value {
        self.cli_json(&["job", id])
    }

    /// The jobs of `hopper jobs ARGS --json` (its first page).
    pub fn cli_jobs(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["jobs"];
        all.extend_from_slice(args);
        let page = self.cli_json(&all);
        page["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("no jobs in {page}"))
            .clone()
    }

    /// The entry of `queue` in `hopper queues --json`, if it is listed.
    pub fn cli_queue(&self, queue: &str) -> Option<Value> {
        let queues = self.cli_json(&["queues"]);
        queues["queues"]
            .as_array()
            .unwrap_or_else(|| panic!("queues are not a list: {queues}"))
            .iter()
            .find(|q| q["queue"] == queue)
            .cloned()
    }

    /// The state counts of `queue` in `hopper queues --json`; fails when it is not listed.
    pub fn cli_counts(&self, queue: &str) -> Value {
        let q = self
            .cli_queue(queue)
            .unwrap_or_else(|| panic!("no {queue} queue in `hopper queues`"));
        q["counts"].clone()
    }

    /// Starts `hopper ARGS` (`serve`, `worker`) with this directory's config.
    pub fn start(&self, args: &[&str]) -> Daemon {
        Daemon::spawn(self.command(Some("info")).args(args))
    }

    /// Starts `hopper serve ARGS` and connects to its API once it listens.
    pub fn serve(&self, args: &[&str]) -> (Daemon, Api) {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let d = self.start(&all);
        let api = Api::new(d.wait_addr());
        (d, api)
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
        wait::until_blocking("the daemon never said it listens", || {
            let addr = self.addr.lock().unwrap().clone();
            addr.map(|a| format!("http://{a}"))
                .ok_or_else(|| self.log_text())
        })
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait::until_blocking(&format!("no log line with {needle:?}"), || {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                Ok(())
            } else {
                Err(self.log_text())
            }
        });
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The job ids (`job=` field) of the log lines containing `needle`, once per line.
    pub fn logged_jobs(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .filter_map(|l| {
                let rest = l.split(" job=").nth(1)?;
                Some(rest.split_whitespace().next()?.to_owned())
            })
            .collect()
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

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        let log = &self.log;
        wait::until_blocking("the process did not exit", || {
            child
                .try_wait()
                .unwrap()
                .ok_or_else(|| log.lock().unwrap().join("\n"))
        })
    }

    /// Sends `sig` and waits for the process to exit.
    pub fn stop(&mut self, sig: &str) -> ExitStatus {
        self.signal(sig);
        self.wait_exit()
    }

    /// Sends SIGSTOP and waits until every thread of the process is stopped: `kill` returns
    /// once the signal is queued, while a thread on another CPU may still be finishing a
    /// write to the broker.
    pub fn freeze(&self) {
        self.signal("STOP");
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        wait::until_blocking("the process did not stop", || {
            let running: Vec<String> = std::fs::read_dir(&tasks)
                .map_err(|e| e.to_string())?
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                // The state is the field after the command name, which is in parentheses
                // and may itself hold spaces or parentheses.
                .filter_map(|stat| stat.rsplit_once(") ")?.1.chars().next())
                .filter(|state| !matches!(state, 'T' | 't'))
                .map(String::from)
                .collect();
            if running.is_empty() {
                Ok(())
            } else {
                Err(format!("threads in states {running:?}"))
            }
        });
    }

    /// Fails the test when the process has exited.
    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "hopper exited:\n{}",
            self.log_text()
        );
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
