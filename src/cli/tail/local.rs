//! `hopper tail` on the broker the config names: polls `Broker::events(after, limit)` (the
//! durable log every node appends to in the same step as each state change) every 100 ms,
//! filtering here by job, queue and kind. A broker that goes away is waited for and read again
//! from the last cursor shown, so nothing is skipped or repeated. A `--since` cursor the log
//! no longer holds (trimmed by retention) or past its end (kept from before the broker's data
//! was wiped) is said on stderr, and following starts from the log's oldest event, as the
//! API's stream does (`crate::api::events::cursor` decides which).
//!
//! It does not decide how an event looks or what exit code a job's end is (`super`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hopper_workers::job::{JobId, JobState};
use hopper_workers::{Broker, BrokerError};

use super::{CliError, Filter, Printer, TailArgs, ended, ending};
use crate::api::events::cursor::{Cursor, locate};

/// Pause between two reads once caught up.
const POLL: Duration = Duration::from_millis(100);
/// Events read per call.
const PAGE: usize = 1000;
/// Pause before reading again from a broker that did not answer.
const RETRY: Duration = Duration::from_secs(1);
/// How often `--job` also reads the job itself once caught up: its end is then seen even if
/// retention trimmed the event that told it.
const RECHECK: Duration = Duration::from_secs(2);

pub(super) async fn run(printer: Printer, args: &TailArgs, broker: Arc<dyn Broker>) -> Result<()> {
    let filter = Filter::from(args);
    let mut cursor = match (&args.job, &args.since) {
        (Some(job), since) => {
            let id = JobId(job.clone());
            let Some(found) = broker.get(&id).await? else {
                return Err(CliError::NotFound(format!("job {job} not found")).into());
            };
            let final_now = found.state.is_final();
            let mut cursor = match since {
                Some(since) => resume_from(&printer, &broker, since).await?,
                None => None,
            };
            if since.is_none() || final_now {
                let history = broker.history(&id).await?;
                for e in &history {
                    printer.show(e)?;
                }
                if let Some(last) = history.last() {
                    // Ended between reading the job and reading its history.
                    if let Some((code, state)) = ending(last.kind_of_event) {
                        return ended(&printer, job, code, state, last.error.as_deref());
                    }
                }
                cursor = history.last().map(|e| e.id.clone());
            }
            if final_now {
                return job_end(&printer, &broker, job).await;
            }
            match (cursor, since) {
                (Some(c), _) => Some(c),
                // `--since` past the end of the log, or trimmed after: from its oldest
                // event, as `resume_from` said (from its end, the job's start was missing).
                (None, Some(_)) => None,
                (None, None) => end_of_log(&broker).await?,
            }
        }
        (None, Some(since)) => resume_from(&printer, &broker, since).await?,
        (None, None) => end_of_log(&broker).await?,
    };
    printer.note(&match &cursor {
        Some(c) => format!("following after {c}"),
        None => "following from the start of the log".to_owned(),
    });

    let mut down = false;
    let mut checked = Instant::now();
    loop {
        let page = match broker.events(cursor.as_deref(), PAGE).await {
            Ok(page) => page,
            Err(BrokerError::Invalid(e)) => return Err(CliError::Usage(e.to_string()).into()),
            Err(e) => {
                if !down {
                    printer.note(&format!("broker unavailable ({e}); reconnecting…"));
                    down = true;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if down {
            down = false;
            printer.note(&format!(
                "resumed after {}",
                cursor.as_deref().unwrap_or("the start of the log")
            ));
        }
        let caught_up = page.len() < PAGE;
        for e in page {
            cursor = Some(e.id.clone());
            if !filter.matches(&e) {
                continue;
            }
            printer.show(&e)?;
            if let (Some(job), Some((code, state))) = (&args.job, ending(e.kind_of_event)) {
                return ended(&printer, job, code, state, e.error.as_deref());
            }
        }
        if caught_up {
            if let Some(job) = &args.job
                && checked.elapsed() >= RECHECK
            {
                checked = Instant::now();
                if let Ok(Some(j)) = broker.get(&JobId(job.clone())).await
                    && j.state.is_final()
                {
                    return job_end(&printer, &broker, job).await;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Exits with the code of a job found final.
async fn job_end(printer: &Printer, broker: &Arc<dyn Broker>, job: &str) -> Result<()> {
    let Some(j) = broker.get(&JobId(job.to_owned())).await? else {
        return Err(CliError::NotFound(format!("job {job} not found")).into());
    };
    let (code, state) = match j.state {
        JobState::Succeeded => (0, "succeeded"),
        JobState::Dead => (1, "dead"),
        _ => (4, "cancelled"),
    };
    ended(printer, job, code, state, j.last_error.as_deref())
}

/// Refuses a cursor this broker did not issue before following anything (exit 2).
async fn check_since(broker: &Arc<dyn Broker>, since: &str) -> Result<()> {
    match broker.events(Some(since), 0).await {
        Err(BrokerError::Invalid(e)) => Err(CliError::Usage(format!("--since: {e}")).into()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

/// Where following resumes for `--since`: after `since`, or from the log's oldest event
/// (`None`) when `since` is past the end of the log, saying so, as it does when the events
/// right after `since` were trimmed. A cursor not of the broker's form exits 2.
async fn resume_from(
    printer: &Printer,
    broker: &Arc<dyn Broker>,
    since: &str,
) -> Result<Option<String>> {
    check_since(broker, since).await?;
    // No hub here: the log is searched from its start, as `end_of_log` reads it.
    Ok(match locate(&**broker, since, None).await? {
        Cursor::PastEnd => {
            printer.note(&format!(
                "gap: {since} is past the end of the event log (kept from before its data was \
                 wiped?); following from its oldest event"
            ));
            None
        }
        c if c.gap() => {
            printer.note(&format!(
                "gap: the event log no longer holds the events right after {since} (trimmed by \
                 retention); following from its oldest event"
            ));
            Some(since.to_owned())
        }
        _ => Some(since.to_owned()),
    })
}

/// The id of the newest event, so that following starts from now on. The log is bounded by
/// `[retention] events`, so this is a few pages at most.
async fn end_of_log(broker: &Arc<dyn Broker>) -> Result<Option<String>> {
    const SKIP_PAGE: usize = 10_000;
    let mut cursor: Option<String> = None;
    loop {
        let page = broker.events(cursor.as_deref(), SKIP_PAGE).await?;
        let n = page.len();
        if let Some(last) = page.into_iter().last() {
            cursor = Some(last.id);
        }
        if n < SKIP_PAGE {
            return Ok(cursor);
        }
    }
}
