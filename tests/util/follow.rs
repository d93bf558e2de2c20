//! A long-running CLI command whose output a test reads as it comes: `hopper tail`, which
//! follows the event stream until its job ends or it is killed.
//!
//! It owns the child process and the threads that read its stdout and stderr; starting daemons
//! is `super::daemon`, and the WebSocket peer `super::ws_peer`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Scratch;
use super::wait::DEADLINE;

/// A running `hopper` command with its stdout as a stream of lines and its stderr kept.
pub struct Follow {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Follow {
    /// Starts `hopper ARGS` in `s`'s directory with its config (as `Scratch::cli` does).
    pub fn start(s: &Scratch, args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hopper"));
        cmd.current_dir(s.path())
            .env("NO_COLOR", "1")
            .env_remove("HOPPER_BROKER")
            .env_remove("RUST_LOG");
        let config = s.path().join("config.toml");
        if config.exists() {
            cmd.arg("--config").arg(&config);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let keep = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut k = keep.lock().unwrap();
                k.push_str(&line);
                k.push('\n');
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// The next line of stdout; fails the test past the deadline or when stdout closed.
    pub fn next_line(&self) -> String {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no line within {DEADLINE:?}; stderr: {}", self.stderr())
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("stdout closed; stderr: {}", self.stderr())
            }
        }
    }

    /// The next `n` lines of stdout.
    pub fn lines(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.next_line()).collect()
    }

    /// Every stdout line read so far without waiting.
    pub fn pending(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stderr; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; returns its status and every remaining stdout line.
    pub fn wait_exit(&mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread ends at EOF, closing the channel.
                let rest: Vec<String> = self.lines.iter().collect();
                return (status, rest);
            }
            assert!(
                Instant::now() < deadline,
                "still running after {DEADLINE:?}; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- hopper tail stderr ---\n{}", self.stderr());
        }
    }
}
