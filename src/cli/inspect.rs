//! The inspection commands: `queues` (with the open circuits of notification endpoints),
//! `jobs`, `job`, `retry` and `cancel`. They talk to the
//! broker directly (lookups through `crate::service`), so they work on a worker node with no
//! API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use hopper_workers::broker::JobFilter;
use hopper_workers::job::{JobId, check_queue};
use hopper_workers::time::Timestamp;
use hopper_workers::{Broker, BrokerError};
use serde_json::Value;

use super::{CliError, Command};
use crate::config::{Settings, shown_url};
use crate::notify::circuits::{CircuitView, open_circuits};
use crate::service::Service;
use crate::view::{self, JobWithHistory};
use crate::{app, out};

/// Runs one inspection command.
pub(super) async fn run(
    command: Command,
    settings: &Settings,
    broker: Arc<dyn Broker>,
) -> Result<()> {
    match command {
        Command::Enqueue(args) => super::enqueue::run(args, settings, broker).await,
        Command::Queues { json } => {
            let stats = view::merge_configured_queues(broker.queues().await?, &settings.config);
            let circuits = open_circuits(&*broker).await?;
            if json {
                return Ok(out::json(
                    &serde_json::json!({"queues": stats, "circuits": circuits}),
                )?);
            }
            let rows: Vec<Vec<String>> = stats
                .iter()
                .map(|q| {
                    let c = &q.counts;
                    let mut row = vec![q.queue.clone()];
                    row.extend(
                        [
                            c.queued,
                            c.scheduled,
                            c.running,
                            c.retrying,
                            c.dead,
                            c.succeeded,
                            c.cancelled,
                            c.waiting,
                        ]
                        .map(|n| n.to_string()),
                    );
                    row.push(if q.paused { "yes" } else { "no" }.to_owned());
                    row
                })
                .collect();
            out::table(
                &[
                    "queue",
                    ">queued",
                    ">scheduled",
                    ">running",
                    ">retrying",
                    ">dead",
                    ">succeeded",
                    ">cancelled",
                    ">waiting",
                    "paused",
                ],
                &rows,
            )?;
            print_circuits(&circuits)?;
            Ok(())
        }
        Command::Jobs {
            queue,
            state,
            kind,
            limit,
            cursor,
            json,
        } => {
            let page = broker
                .list(&JobFilter {
                    queue,
                    state,
                    kind,
                    limit,
                    cursor,
                })
                .await?;
            if json {
                return Ok(out::json(&page)?);
            }
            let rows: Vec<Vec<String>> = page
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.to_string(),
                        j.queue.clone(),
                        j.kind.clone(),
                        j.state.to_string(),
                        j.priority.to_string(),
                        j.attempt.to_string(),
                        j.created_at.to_rfc3339(),
                    ]
                })
                .collect();
            out::table(
                &[
                    "id", "queue", "kind", "state", ">prio", ">attempt", "created",
                ],
                &rows,
            )?;
            if rows.is_empty() {
                // Say where we looked: an empty table from the wrong broker looks the same.
                eprint_line(&format!(
                    "(no jobs match in {})",
                    shown_url(&settings.config.broker.url)
                ));
            }
            if let Some(c) = page.next_cursor {
                out::line(format!("(more: --cursor {c})"))?;
            }
            Ok(())
        }
        Command::Job { id, json } => {
            let id = JobId(id);
            let found = service(settings, broker)?
                .lookup(&id)
                .await?
                .ok_or_else(|| CliError::NotFound(format!("job {id} not found")))?;
            let shown = JobWithHistory::from(found);
            if json {
                return Ok(out::json(&shown)?);
            }
            print_job(&shown)
        }
        Command::Retry {
            ids,
            all_dead,
            queue,
        } => {
            if all_dead {
                // The broker reads an invalid name as a queue with no dead jobs: refuse it here,
                // so a typo is not answered "0 jobs retried".
                if let Some(q) = &queue {
                    check_queue(q)
                        .map_err(|e| CliError::Usage(format!("--queue: {}", e.message)))?;
                }
                let n = broker.retry_all_dead(queue.as_deref()).await?;
                out::line(format!("{n} {} retried", plural(n)))?;
                return Ok(());
            }
            let broker = &broker;
            each(ids, "retried", |id| async move { broker.retry(&id).await }).await
        }
        Command::Cancel { ids } => {
            let broker = &broker;
            each(
                ids,
                "cancelled",
                |id| async move { broker.cancel(&id).await },
            )
            .await
        }
        Command::Serve { .. }
        | Command::Worker { .. }
        | Command::Bench(_)
        | Command::Chaos(_)
        | Command::Publish(_)
        | Command::CheckConfig { .. }
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Workers { .. }
        | Command::Tail(_) => Ok(()),
    }
}

/// Applies `op` to every id (once each: an id given twice is one job), reports each failure
/// on stderr, prints how many succeeded. Fails (exit 3 if every failure was a missing job,
/// else 1) when any id failed.
async fn each<F, Fut>(ids: Vec<String>, verb: &str, op: F) -> Result<()>
where
    F: Fn(JobId) -> Fut,
    Fut: Future<Output = Result<hopper_workers::Job, BrokerError>>,
{
    let (mut done, mut missing, mut failed) = (0u64, 0u64, 0u64);
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id.clone()) {
            continue;
        }
        match op(JobId(id.clone())).await {
            Ok(_) => done += 1,
            Err(BrokerError::NotFound(_)) => {
                missing += 1;
                eprint_line(&format!("job {id} not found"));
            }
            Err(e) => {
                failed += 1;
                eprint_line(&format!("{id}: {e}"));
            }
        }
    }
    out::line(format!("{done} {} {verb}", plural(done)))?;
    match (missing, failed) {
        (0, 0) => Ok(()),
        (m, 0) => Err(CliError::NotFound(format!("{m} {} not found", plural(m))).into()),
        (m, f) => bail!("{} {} not {verb}", m + f, plural(m + f)),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "job" } else { "jobs" }
}

/// A message for the operator on stderr (results go to stdout).
pub(super) fn eprint_line(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

fn print_job(j: &JobWithHistory) -> Result<()> {
    let v = &j.job;
    let mut lines = vec![
        ("id", v.id.to_string()),
        ("kind", v.kind.clone()),
        ("queue", v.queue.clone()),
        ("state", v.state.to_string()),
        ("priority", v.priority.to_string()),
        (
            "attempt",
            format!("{} (max retries {})", v.attempt, v.max_retries),
        ),
        ("run at", v.run_at.to_rfc3339()),
        ("created", v.created_at.to_rfc3339()),
    ];
    let mut opt = |k: &'static str, val: Option<String>| {
        if let Some(val) = val {
            lines.push((k, val));
        }
    };
    opt("started", v.started_at.map(Timestamp::to_rfc3339));
    opt("finished", v.finished_at.map(Timestamp::to_rfc3339));
    opt(
        "progress",
        (v.progress > 0).then(|| match &v.progress_message {
            Some(m) => format!("{}% {m}", v.progress),
            None => format!("{}%", v.progress),
        }),
    );
    opt(
        "interruptions",
        (v.interruptions > 0).then(|| v.interruptions.to_string()),
    );
    opt("unique key", v.unique_key.clone());
    opt(
        "timeout",
        v.timeout_ms
            .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string()),
    );
    opt(
        "waiting",
        j.waiting
            .as_ref()
            .map(|w| format!("{} ({})", w.message, w.reason)),
    );
    opt("last error", v.last_error.clone());
    opt("result", v.result.as_ref().map(Value::to_string));
    lines.push(("payload", v.payload.to_string()));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, val) in &lines {
        out::line(format!("{k:<width$}  {}", out::shown(val)))?;
    }
    if !j.steps.is_empty() {
        section(
            "chain",
            &[">step", "kind", "state", "id", ""],
            &j.steps,
            |step| {
                let here = if step.id == v.id { "<- this job" } else { "" };
                vec![
                    format!("{}.", step.index),
                    step.kind.clone(),
                    step.state.to_string(),
                    step.id.to_string(),
                    here.to_owned(),
                ]
            },
        )?;
    }
    section(
        "history",
        &["at", "event", ">attempt", "detail"],
        &j.history,
        |e| {
            let detail = [
                e.progress.map(|p| format!("{p}%")),
                e.message.clone(),
                e.error.clone(),
                e.result.as_ref().map(Value::to_string),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
            vec![
                e.at.to_rfc3339(),
                e.kind_of_event.as_str().to_owned(),
                e.attempt.to_string(),
                detail,
            ]
        },
    )
}

/// A blank line, `title:`, then a table of `items`, one row each.
fn section<T>(
    title: &str,
    header: &[&str],
    items: &[T],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    out::line("")?;
    out::line(format!("{title}:"))?;
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    out::table(header, &rows)?;
    Ok(())
}

/// The service of a one-shot command: the broker the config names and every kind this build
/// knows, so `hopper enqueue` accepts exactly what `POST /v1/jobs` accepts.
pub(super) fn service(settings: &Settings, broker: Arc<dyn Broker>) -> Result<Service> {
    let registry = Arc::new(app::build_registry(settings, Some(&broker))?);
    Ok(Service::new(
        broker,
        registry,
        hopper_workers::clock::system(),
        settings.config.retry.max_retries,
    )
    .with_paused_queues(settings.config.paused_queues())
    .with_queue_rates(settings.config.queue_rates()))
}

/// The file of an SQLite broker URL when it does not exist yet (opening it would create it).
fn missing_sqlite_file(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .filter(|path| !std::path::Path::new(path).exists())
}

/// A read-only command on an SQLite broker whose file does not exist would create an empty
/// database and show nothing: more likely the wrong directory or config. Refuse, saying where
/// Hopper looked and why.
pub(super) fn refuse_missing_database(url: &str, origin: &str) -> Result<()> {
    match missing_sqlite_file(url) {
        None => Ok(()),
        Some(path) => Err(CliError::Usage(format!(
            "no job database at {path} (broker {url}, from {origin}); run this where `hopper \
             serve` runs, or name the broker with --config or HOPPER_BROKER"
        ))
        .into()),
    }
}

/// `hopper enqueue` and `hopper publish` on an SQLite broker whose file does not exist create
/// it (a first enqueue before the first `serve` is fine), but more often they run in the
/// wrong directory, where no worker will ever see the job: said on stderr, the command goes
/// on.
pub(super) fn warn_new_database(url: &str, origin: &str) {
    if let Some(path) = missing_sqlite_file(url) {
        eprint_line(&format!(
            "warning: no job database at {path} yet (broker {url}, from {origin}): creating it; \
             a `hopper serve` elsewhere will not see this job (run this where it runs, or name \
             the broker with --config or HOPPER_BROKER)"
        ));
    }
}

/// After the queue table, the notification endpoints whose circuit is open or half-open (none:
/// nothing is printed).
fn print_circuits(circuits: &[CircuitView]) -> std::io::Result<()> {
    if circuits.is_empty() {
        return Ok(());
    }
    out::line(String::new())?;
    let rows: Vec<Vec<String>> = circuits
        .iter()
        .map(|c| {
            vec![
                c.endpoint.clone(),
                c.state.replace('_', "-"),
                c.failures.to_string(),
                if c.probing {
                    "probing".to_owned()
                } else {
                    humantime::format_duration(std::time::Duration::from_secs(
                        c.probe_in_ms.div_ceil(1000),
                    ))
                    .to_string()
                },
            ]
        })
        .collect();
    out::table(&["circuit", "state", ">failures", "probe in"], &rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn shown_urls_hide_credentials() {
        assert_eq!(
            shown_url("redis://:s3cret@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(
            shown_url("sqlite://data/hopper.db"),
            "sqlite://data/hopper.db"
        );
    }

    #[test]
    fn a_missing_sqlite_file_is_refused_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.db");
        let url = format!("sqlite://{}", path.display());
        let err = refuse_missing_database(&url, "c.toml").unwrap_err();
        assert!(err.to_string().contains("no job database"), "{err}");
        assert_eq!(crate::exit::exit_code(&err), 2);
        assert!(!path.exists());
        assert!(refuse_missing_database("redis://h/0", "c.toml").is_ok());
    }
}
