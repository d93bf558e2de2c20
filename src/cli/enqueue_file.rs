//! `hopper enqueue --file PATH` (`-` for stdin): a newline-delimited JSON file of jobs, one a
//! line in the shape `POST /v1/jobs` takes (read by the API's `job_body`, so a line is
//! accepted or refused exactly as that body would be), enqueued in batches of
//! `[server] max_batch` through the broker the config names.
//!
//! The file is streamed: at most two batches of lines are held at a time (one being stored
//! while the next is read), whatever the file's size. Each batch is one
//! `Service::submit_batch`, all or none, committed before the next one is sent. So a bad line
//! stops the run with the batches before its own enqueued and nothing of its own batch: the
//! error names the line, the field, and the lines that stayed enqueued. Blank lines
//! are skipped (and counted). Not here: single-job flags (`super::enqueue`).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hopper_workers::Broker;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;

use super::CliError;
use super::inspect::service;
use crate::api::job_body;
use crate::config::Settings;
use crate::out;
use crate::service::{BatchError, FieldError, Service, Submission, Submitted};

/// Enqueues every line of `path` (`-`: stdin) and prints a summary.
pub(super) async fn run(path: &str, settings: &Settings, broker: Arc<dyn Broker>) -> Result<()> {
    let (input, size): (Box<dyn AsyncBufRead + Unpin + Send>, Option<u64>) = if path == "-" {
        (Box::new(BufReader::new(tokio::io::stdin())), None)
    } else {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {path}"))?;
        let size = file.metadata().await.ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 16, file)), size)
    };
    let mut run = Run {
        service: service(settings, broker)?,
        max: settings.config.server.max_batch,
        bar: progress_bar(size),
        started: Instant::now(),
        enqueued: 0,
        existing: 0,
        committed_to: 0,
        in_flight: None,
    };
    let done = run.feed(input).await;
    run.bar.finish_and_clear();
    done?;
    let seconds = run.started.elapsed().as_secs_f64();
    out::line(format!(
        "enqueued {} jobs{} in {seconds:.2}s ({:.0} jobs/s)",
        run.enqueued,
        if run.existing > 0 {
            format!(
                " ({} of them existed already: their unique_key was taken)",
                run.existing
            )
        } else {
            String::new()
        },
        rate(run.enqueued, seconds),
    ))?;
    Ok(())
}

/// One run through a file: where it stands.
struct Run {
    service: Service,
    /// Jobs per batch: `[server] max_batch`.
    max: usize,
    bar: ProgressBar,
    started: Instant,
    /// Jobs answered so far, the existing ones (a taken `unique_key`) included.
    enqueued: u64,
    existing: u64,
    /// The last line of the last batch committed.
    committed_to: u64,
    /// The batch being stored while the next one is read, if any.
    in_flight: Option<InFlight>,
}

/// A batch being stored: the task storing it, and where its jobs came from.
struct InFlight {
    task: JoinHandle<Result<Vec<Submitted>, BatchError>>,
    /// The line number of each job.
    numbers: Vec<u64>,
    /// The last line read with it, and the bytes read up to it.
    last: u64,
    bytes: u64,
}

impl Run {
    /// Reads, checks and enqueues every line, a batch at a time. One batch is stored while
    /// the next is read and parsed, never two at once, so batches are committed in order and a
    /// refusal always knows which lines went before it.
    async fn feed(&mut self, input: Box<dyn AsyncBufRead + Unpin + Send>) -> Result<()> {
        let mut lines = input.lines();
        let mut batch = Vec::with_capacity(self.max);
        // The line number of each job of `batch`.
        let mut numbers = Vec::with_capacity(self.max);
        let mut line_no: u64 = 0;
        let mut bytes: u64 = 0;
        loop {
            let line = match lines.next_line().await {
                Ok(line) => line,
                Err(e) => {
                    self.settle().await?;
                    return Err(
                        anyhow::Error::new(e).context(format!("reading line {}", line_no + 1))
                    );
                }
            };
            let Some(line) = line else { break };
            line_no += 1;
            bytes += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            match parse(&line) {
                Ok(job) => batch.push(job),
                Err(e) => {
                    self.settle().await?;
                    return Err(self.refused(line_no, &e));
                }
            }
            numbers.push(line_no);
            if batch.len() == self.max {
                self.settle().await?;
                self.launch(
                    std::mem::take(&mut batch),
                    std::mem::take(&mut numbers),
                    line_no,
                    bytes,
                );
            }
        }
        self.settle().await?;
        if !batch.is_empty() {
            self.launch(batch, numbers, line_no, bytes);
            self.settle().await?;
        }
        Ok(())
    }

    /// Starts storing a batch, whose jobs came from the lines `numbers`, the last line read
    /// being `last`. The batch before it must be settled.
    fn launch(&mut self, batch: Vec<Submission>, numbers: Vec<u64>, last: u64, bytes: u64) {
        let service = self.service.clone();
        self.in_flight = Some(InFlight {
            task: tokio::spawn(async move { service.submit_batch(batch).await }),
            numbers,
            last,
            bytes,
        });
    }

    /// Waits for the batch being stored, if any, and counts it; a refusal names its line.
    async fn settle(&mut self) -> Result<()> {
        let Some(InFlight {
            task,
            numbers,
            last,
            bytes,
        }) = self.in_flight.take()
        else {
            return Ok(());
        };
        let done = match task.await.context("storing a batch")? {
            Ok(done) => done,
            Err(BatchError::Job { index, error }) => {
                let line = numbers.get(index).copied().unwrap_or(last);
                return Err(self.refused(line, &error));
            }
            Err(BatchError::Broker(e)) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "enqueueing the batch of lines {} to {last} ({})",
                    self.committed_to + 1,
                    self.kept()
                )));
            }
        };
        let existing = done.iter().filter(|d| !d.created).count() as u64;
        self.enqueued += done.len() as u64;
        self.existing += existing;
        self.committed_to = last;
        let seconds = self.started.elapsed().as_secs_f64();
        self.bar.set_position(bytes);
        self.bar.set_message(format!(
            "{} jobs, {:.0} jobs/s",
            self.enqueued,
            rate(self.enqueued, seconds)
        ));
        Ok(())
    }

    /// The error for a refused line: where, what, and what stayed enqueued.
    fn refused(&self, line: u64, e: &FieldError) -> anyhow::Error {
        let what = if e.field.is_empty() {
            e.message.clone()
        } else {
            format!("{}: {}", e.field, e.message)
        };
        CliError::Usage(format!("line {line}: {what} ({})", self.kept())).into()
    }

    /// What stays enqueued when the run stops now.
    fn kept(&self) -> String {
        match self.committed_to {
            0 => "nothing was enqueued".to_owned(),
            n => format!(
                "the {} jobs of lines 1 to {n} were enqueued and stay; nothing after line {n} was",
                self.enqueued
            ),
        }
    }
}

/// One line as a job, refused as `POST /v1/jobs` would refuse it as a body.
fn parse(line: &str) -> Result<Submission, FieldError> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => job_body::read(m),
        Ok(_) => Err(FieldError::invalid(
            "",
            "must be a JSON object (one job a line)",
        )),
        Err(e) => Err(FieldError::invalid("", format!("not valid JSON: {e}"))),
    }
}

/// A bar over the file's bytes on a terminal, a counter for stdin; hidden when stderr is not
/// a terminal.
fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match size {
        Some(n) => (
            ProgressBar::new(n),
            "{bar:40.cyan/blue} {percent:>3}% {msg}",
        ),
        None => (ProgressBar::new_spinner(), "{spinner} {msg}"),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn rate(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}
