//! `hopper tail`: follows the event stream in the terminal, one line per event (or one JSON
//! event per line with `--json`), filtered by job, queue and kind. With `--job` it shows the
//! job's history, draws a progress bar on a terminal's stderr, and exits with how the job
//! ended: 0 succeeded, 1 dead, 4 cancelled (3 when there is no such job).
//!
//! This file owns the flags, the filter, how an event is shown and how a job's end becomes
//! an exit code. Where events come from is `local` (the broker the config names, polled
//! through `Broker::events`, the durable resumable log) or `remote` (a node's
//! `GET /v1/events` WebSocket, with `--server`). It does not serve the stream: that is
//! `crate::api`.

mod local;
mod remote;

use std::io::IsTerminal;

use anyhow::Result;
use hopper_workers::event::{Event, EventType};
use hopper_workers::job::{check_kind, check_queue};
use indicatif::{ProgressBar, ProgressStyle};

use super::CliError;
use crate::config::Config;
use crate::out;

/// `hopper tail` flags.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Follow one job: show its history, then its events, and exit when it ends (0 succeeded,
    /// 1 dead, 4 cancelled).
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
    /// Only events of these queues (a comma list).
    #[arg(long, value_name = "Q")]
    pub queue: Option<String>,
    /// Only events of these job kinds (a comma list).
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
    /// Start right after this event id (an event's `id`); default: from now on.
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<String>,
    /// Print each event as one line of JSON.
    #[arg(long)]
    pub json: bool,
    /// Follow a remote node's `/v1/events` WebSocket instead of the configured broker, e.g.
    /// http://10.0.0.5:8080.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The API token for --server (sent as `Authorization: Bearer`); unused without it. Not
    /// `requires = "server"`: clap counts a value from `HOPPER_TOKEN` as the flag given, and a
    /// token exported for other commands made every local `tail` a usage error.
    #[arg(long, value_name = "T", env = "HOPPER_TOKEN")]
    pub token: Option<String>,
}

/// Follows the event log of the broker `config` names.
pub(super) async fn run_local(args: TailArgs, config: &Config) -> Result<()> {
    check(&args)?;
    let printer = Printer::new(&args);
    let broker = local::open(&printer, config).await?;
    local::run(printer, &args, broker).await
}

/// Follows a remote node's WebSocket (`--server`).
pub(super) async fn run_remote(args: TailArgs) -> Result<()> {
    check(&args)?;
    remote::run(Printer::new(&args), &args).await
}

/// Refuses a filter no event can match (as `GET /v1/events` does), naming the flag: it would
/// otherwise follow forever showing nothing.
fn check(args: &TailArgs) -> Result<(), CliError> {
    // Each a comma list, as the server reads them: every item must be able to match.
    for q in args.queue.iter().flat_map(|q| q.split(',')) {
        if let Err(e) = check_queue(q) {
            return Err(CliError::Usage(format!("--queue: {}", e.message)));
        }
    }
    for k in args.kind.iter().flat_map(|k| k.split(',')) {
        if let Err(e) = check_kind(k) {
            return Err(CliError::Usage(format!("--kind: {}", e.message)));
        }
    }
    if let Some(j) = &args.job
        && j.is_empty()
    {
        return Err(CliError::Usage("--job: must be a job id".into()));
    }
    Ok(())
}

/// Which events are shown.
struct Filter {
    job: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
}

impl From<&TailArgs> for Filter {
    fn from(args: &TailArgs) -> Self {
        Self {
            job: args.job.clone(),
            queue: args.queue.clone(),
            kind: args.kind.clone(),
        }
    }
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        // Comma lists, as `GET /v1/events` reads them.
        let any = |list: &str, value: &str| list.split(',').any(|item| item == value);
        self.job.as_ref().is_none_or(|j| any(j, &e.job_id.0))
            && self.queue.as_ref().is_none_or(|q| any(q, &e.queue))
            && self.kind.as_ref().is_none_or(|k| any(k, &e.kind))
    }
}

/// Shows events: lines on stdout, and with `--job` on a terminal a progress bar on stderr.
struct Printer {
    json: bool,
    bar: Option<ProgressBar>,
}

impl Printer {
    fn new(args: &TailArgs) -> Self {
        let bar = (args.job.is_some() && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(100);
            if let Ok(style) =
                ProgressStyle::with_template("{bar:40.cyan/blue} {pos:>3}% {wide_msg}")
            {
                bar.set_style(style);
            }
            bar
        });
        Self {
            json: args.json,
            bar,
        }
    }

    /// Prints one event (and moves the bar on a progress event).
    fn show(&self, e: &Event) -> Result<()> {
        let text = if self.json {
            serde_json::to_string(e)?
        } else {
            line(e)
        };
        match &self.bar {
            Some(bar) => {
                if let Some(p) = e.progress {
                    bar.set_position(u64::from(p));
                }
                bar.set_message(match &e.message {
                    Some(m) => out::shown(m).into_owned(),
                    None => e.kind_of_event.as_str().to_owned(),
                });
                bar.suspend(|| out::line(text))?;
            }
            None => out::line(text)?,
        }
        Ok(())
    }

    /// A note for the operator on stderr, above the bar when there is one.
    fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| super::inspect::eprint_line(msg)),
            None => super::inspect::eprint_line(msg),
        }
    }

    /// Leaves the bar with how the job ended; full when it succeeded, whatever the handler last
    /// reported (the job's own `progress` is 100 then).
    fn finish(&self, ended: &str, succeeded: bool) {
        if let Some(bar) = &self.bar {
            if succeeded {
                bar.set_position(100);
            }
            bar.abandon_with_message(ended.to_owned());
        }
    }
}

/// One event as a line: time, type, queue, kind, job, attempt, then what it carries.
fn line(e: &Event) -> String {
    let detail = [
        e.progress.map(|p| format!("{p}%")),
        e.message.clone(),
        e.error.clone(),
        e.result.as_ref().map(|r| r.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let text = format!(
        "{}  {:<15}  {}  {}  {}  #{}  {detail}",
        e.at.to_rfc3339(),
        e.kind_of_event.as_str(),
        e.queue,
        e.kind,
        e.job_id,
        e.attempt,
    );
    // One line, whatever the job's texts hold (see `out::shown`).
    out::shown(text.trim_end()).into_owned()
}

/// How a followed job ended, if `ty` ends it: the exit code and what to say.
fn ending(ty: EventType) -> Option<(u8, &'static str)> {
    match ty {
        EventType::Succeeded => Some((0, "succeeded")),
        EventType::Dead => Some((1, "dead")),
        EventType::Cancelled => Some((4, "cancelled")),
        _ => None,
    }
}

/// Ends `tail --job` with the job's exit code: Ok for success, else the error whose code is
/// 1 (dead) or 4 (cancelled).
fn ended(printer: &Printer, job: &str, code: u8, state: &str, error: Option<&str>) -> Result<()> {
    printer.finish(state, code == 0);
    if code == 0 {
        return Ok(());
    }
    let message = match error {
        Some(err) => format!("job {job} is {state}: {}", out::shown(err)),
        None => format!("job {job} is {state}"),
    };
    Err(CliError::Ended { message, code }.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hopper_workers::job::JobId;
    use hopper_workers::time::Timestamp;

    use super::*;

    fn ev(ty: EventType, progress: Option<u8>) -> Event {
        Event {
            id: "7".into(),
            kind_of_event: ty,
            job_id: JobId("j1".into()),
            queue: "default".into(),
            kind: "sys.sleep".into(),
            at: Timestamp::from_millis(0),
            attempt: 1,
            progress,
            message: None,
            result: None,
            error: None,
        }
    }

    #[test]
    fn a_line_says_what_happened_to_which_job() {
        let l = line(&ev(EventType::Progress, Some(40)));
        assert_eq!(
            l,
            "1970-01-01T00:00:00.000Z  job.progress     default  sys.sleep  j1  #1  40%"
        );
    }

    #[test]
    fn the_filter_keeps_what_every_flag_names() {
        let f = Filter {
            job: None,
            queue: Some("default".into()),
            kind: Some("sys.noop".into()),
        };
        assert!(!f.matches(&ev(EventType::Started, None)));
        let f = Filter {
            job: Some("j1".into()),
            queue: Some("default".into()),
            kind: None,
        };
        assert!(f.matches(&ev(EventType::Started, None)));
        let f = Filter {
            job: None,
            queue: Some("other,default".into()),
            kind: Some("sys.noop,sys.sleep".into()),
        };
        assert!(f.matches(&ev(EventType::Started, None)), "comma lists");
    }

    #[test]
    fn a_filter_nothing_can_match_is_bad_usage() {
        let args = |queue: Option<&str>, kind: Option<&str>, job: Option<&str>| TailArgs {
            job: job.map(str::to_owned),
            queue: queue.map(str::to_owned),
            kind: kind.map(str::to_owned),
            since: None,
            json: false,
            server: None,
            token: None,
        };
        for (a, flag) in [
            (args(Some("a b"), None, None), "--queue"),
            (args(Some(""), None, None), "--queue"),
            (args(None, Some(""), None), "--kind"),
            (args(None, None, Some("")), "--job"),
        ] {
            match check(&a) {
                Err(CliError::Usage(m)) => assert!(m.starts_with(flag), "{m}"),
                other => panic!("{a:?}: {other:?}"),
            }
        }
        assert!(check(&args(Some("default"), Some("sys.noop"), Some("j1"))).is_ok());
        assert!(
            check(&args(Some("a,b"), Some("k1,k2"), None)).is_ok(),
            "comma lists"
        );
        assert!(check(&args(Some("a,a b"), None, None)).is_err());
    }

    #[test]
    fn final_events_map_to_exit_codes() {
        assert_eq!(ending(EventType::Succeeded).map(|e| e.0), Some(0));
        assert_eq!(ending(EventType::Dead).map(|e| e.0), Some(1));
        assert_eq!(ending(EventType::Cancelled).map(|e| e.0), Some(4));
        assert_eq!(ending(EventType::Retrying), None);
    }
}
