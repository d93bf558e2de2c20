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
//! are skipped (and counted). A line is held whole only up to `[server] body_limit` (the
//! largest body `POST /v1/jobs` takes): a longer one, or one that is not UTF-8, is a refused
//! line like any other. Not here: single-job flags (`super::enqueue`).

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
        // A file that cannot be read is the caller's to fix, exit 2 as `--payload @FILE`'s.
        let unreadable =
            |why: String| CliError::Usage(format!("--file: cannot read {path}: {why}"));
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let meta = file.metadata().await.ok();
        if meta.as_ref().is_some_and(std::fs::Metadata::is_dir) {
            return Err(unreadable("it is a directory".into()).into());
        }
        let size = meta.map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 16, file)), size)
    };
    let mut run = Run {
        service: service(settings, broker)?,
        max: settings.config.server.max_batch,
        line_limit: settings.config.server.body_limit,
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
    // New jobs only are "enqueued": a line whose unique_key was taken created nothing.
    out::line(format!(
        "enqueued {} jobs{} in {seconds:.2}s ({:.0} jobs/s)",
        run.enqueued - run.existing,
        if run.existing > 0 {
            format!(
                "; {} more lines named jobs that existed already (their unique_key was taken)",
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
    /// The longest line: `[server] body_limit`, the largest body `POST /v1/jobs` takes.
    line_limit: usize,
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
    async fn feed(&mut self, mut input: Box<dyn AsyncBufRead + Unpin + Send>) -> Result<()> {
        let mut raw = Vec::new();
        let mut batch = Vec::with_capacity(self.max);
        // The line number of each job of `batch`.
        let mut numbers = Vec::with_capacity(self.max);
        let mut line_no: u64 = 0;
        let mut bytes: u64 = 0;
        loop {
            let read = match next_line(&mut input, &mut raw, self.line_limit).await {
                Ok(read) => read,
                Err(e) => {
                    self.settle().await?;
                    return Err(
                        anyhow::Error::new(e).context(format!("reading line {}", line_no + 1))
                    );
                }
            };
            match read {
                Read::End => break,
                Read::Line => line_no += 1,
                Read::TooLong => {
                    self.settle().await?;
                    let e = FieldError::invalid(
                        "",
                        format!(
                            "longer than [server] body_limit ({} bytes), the most a job's \
                             body may be",
                            self.line_limit
                        ),
                    );
                    return Err(self.refused(line_no + 1, &e));
                }
            }
            bytes += raw.len() as u64 + 1;
            let Ok(line) = std::str::from_utf8(&raw) else {
                self.settle().await?;
                let e = FieldError::invalid("", "not UTF-8 text");
                return Err(self.refused(line_no, &e));
            };
            // A byte order mark some editors write first (UTF-8 needs none): not part of the
            // JSON, which serde refused as "expected value at column 1".
            let line = match line_no {
                1 => line.strip_prefix('\u{feff}').unwrap_or(line),
                _ => line,
            };
            if line.trim().is_empty() {
                continue;
            }
            match parse(line) {
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
        match (self.committed_to, self.existing) {
            (0, _) => "nothing was enqueued".to_owned(),
            (n, 0) => format!(
                "the {} jobs of lines 1 to {n} were enqueued and stay; nothing after line {n} was",
                self.enqueued
            ),
            (n, existing) => format!(
                "lines 1 to {n} were enqueued and stay ({} new jobs; {existing} existed already: \
                 their unique_key was taken); nothing after line {n} was",
                self.enqueued.saturating_sub(existing)
            ),
        }
    }
}

/// What [`next_line`] read.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// A line, in the buffer without its line ending.
    Line,
    /// A line longer than the limit: the run stops there, so the rest of it is not read.
    TooLong,
    /// The end of the input.
    End,
}

/// Reads the next line of `input` into `buf` (cleared first), without its `\n` or `\r\n`,
/// holding at most `limit` bytes of it: a longer line is [`Read::TooLong`], not a line held
/// whole in memory however long it is. Bytes are not checked as UTF-8 here.
async fn next_line(
    input: &mut (dyn AsyncBufRead + Unpin + Send),
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Read> {
    buf.clear();
    let mut any = false;
    loop {
        let chunk = input.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(match (any, buf.len() > limit) {
                (false, _) => Read::End,
                (true, true) => Read::TooLong,
                (true, false) => Read::Line,
            });
        }
        any = true;
        let (part, used, ended) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        // A `\r` before the `\n` is the line ending's, not the line's: it may take the
        // line one byte past the limit without making it too long.
        if buf.len() + part.len() > limit + 1 {
            return Ok(Read::TooLong);
        }
        buf.extend_from_slice(part);
        input.consume(used);
        if ended {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if buf.len() > limit {
                Read::TooLong
            } else {
                Read::Line
            });
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every line of `input` as [`next_line`] reads it with `limit`.
    async fn read_all(input: &'static [u8], limit: usize) -> Vec<(Read, String)> {
        let mut reader: Box<dyn AsyncBufRead + Unpin + Send> =
            Box::new(BufReader::with_capacity(4, input));
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let read = next_line(&mut reader, &mut buf, limit).await.unwrap();
            let text = String::from_utf8_lossy(&buf).into_owned();
            match read {
                Read::End => return out,
                Read::TooLong => {
                    out.push((read, String::new()));
                    return out;
                }
                Read::Line => out.push((read, text)),
            }
        }
    }

    #[tokio::test]
    async fn lines_are_read_up_to_the_limit() {
        let lines = read_all(b"ab\r\n\nabcd\nabc", 4).await;
        let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["ab", "", "abcd", "abc"]);
        assert!(lines.iter().all(|(r, _)| *r == Read::Line));
        // A line ending in \r\n exactly at the limit is not too long.
        assert_eq!(
            read_all(b"abcd\r\n", 4).await,
            [(Read::Line, "abcd".into())]
        );
        for long in [&b"abcde\nab\n"[..], b"abcde", b"abcdefghijklmnop\n"] {
            let lines = read_all(long, 4).await;
            assert_eq!(
                lines.last().map(|(r, _)| r),
                Some(&Read::TooLong),
                "{long:?}"
            );
        }
        assert_eq!(read_all(b"", 4).await, []);
    }
}
