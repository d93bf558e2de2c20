//! `hopper tail` on the broker the config names: polls `Broker::events(after, limit)` (the
//! durable log every node appends to in the same step as each state change) every 100 ms,
//! filtering here by job, queue and kind. A broker that goes away is waited for and read again
//! from the last cursor shown, so nothing is skipped or repeated; one that cannot be reached
//! at the start is waited for too, saying so (`--job`'s exit 1 means the job died, so a
//! broker that is down must not end it with 1). A `--since` cursor the log
//! no longer holds (trimmed by retention) or past its end (kept from before the broker's data
//! was wiped) is said on stderr, and following goes on with the oldest event held after it
//! (from the log's oldest event, past its end), as the
//! API's stream does (`crate::api::events::cursor` decides which).
//!
//! It does not decide how an event looks or what exit code a job's end is (`super`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hopper_workers::clock;
use hopper_workers::job::{JobId, JobState};
use hopper_workers::{Broker, BrokerError};

use super::{CliError, Filter, Printer, TailArgs, ended, ending};
use crate::api::events::cursor::{Cursor, locate};
use crate::config::Config;

/// Pause between two reads once caught up.
const POLL: Duration = Duration::from_millis(100);
/// Events read per call.
const PAGE: usize = 1000;
/// Pause before reading again from a broker that did not answer.
const RETRY: Duration = Duration::from_secs(1);
/// How often `--job` also reads the job itself once caught up: its end is then seen even if
/// retention trimmed the event that told it.
const RECHECK: Duration = Duration::from_secs(2);

/// Opens the broker `config` names, waiting (and saying so once) while it cannot be reached.
/// A broker URL or setting that cannot work still ends the command at once.
pub(super) async fn open(printer: &Printer, config: &Config) -> Result<Arc<dyn Broker>> {
    patiently(printer, async || {
        crate::app::open_broker(config, clock::system()).await
    })
    .await
}

/// Runs `op` until it gets an answer from the broker: while the broker is unavailable it is
/// tried again every [`RETRY`], said once on stderr (and said again when it answers).
async fn patiently<T>(printer: &Printer, mut op: impl AsyncFnMut() -> Result<T>) -> Result<T> {
    let mut said = false;
    loop {
        match op().await {
            Err(e) if crate::exit::broker_unavailable(&e) => {
                if !said {
                    printer.note(&format!("{}; waiting for it…", crate::exit::message(&e)));
                    said = true;
                }
                tokio::time::sleep(RETRY).await;
            }
            answered => {
                if said && answered.is_ok() {
                    printer.note("the broker answers again");
                }
                return answered;
            }
        }
    }
}

pub(super) async fn run(printer: Printer, args: &TailArgs, broker: Arc<dyn Broker>) -> Result<()> {
    let filter = Filter::from(args);
    let mut cursor = match (&args.job, &args.since) {
        (Some(job), since) => {
            let id = JobId(job.clone());
            let found = patiently(&printer, async || Ok(broker.get(&id).await?)).await?;
            let Some(found) = found else {
                return Err(CliError::NotFound(format!("job {job} not found")).into());
            };
            let final_now = found.state.is_final();
            let mut cursor = match since {
                Some(since) => {
                    patiently(&printer, async || {
                        resume_from(&printer, &broker, since).await
                    })
                    .await?
                }
                None => None,
            };
            if since.is_none() || final_now {
                let history = patiently(&printer, async || Ok(broker.history(&id).await?)).await?;
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
                (None, None) => {
                    patiently(&printer, async || Ok(broker.events_end().await?)).await?
                }
            }
        }
        (None, Some(since)) => {
            patiently(&printer, async || {
                resume_from(&printer, &broker, since).await
            })
            .await?
        }
        (None, None) => patiently(&printer, async || Ok(broker.events_end().await?)).await?,
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
    let id = JobId(job.to_owned());
    let found = patiently(printer, async || Ok(broker.get(&id).await?)).await?;
    let Some(j) = found else {
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
    // No hub here: the log's end stands for its position (a cursor is then behind it, at it,
    // or past the end), so the log is not searched from its start for the cursor.
    let end = broker.events_end().await?;
    Ok(match locate(&**broker, since, end.as_deref()).await? {
        Cursor::PastEnd => {
            printer.note(&format!(
                "gap: {since} is past the end of the event log (kept from before its data was \
                 wiped?); following from its oldest event"
            ));
            None
        }
        c if c.gap() => {
            printer.note(&format!(
                "gap: the event log no longer holds some events after {since} (trimmed by \
                 retention); following from the next one it holds"
            ));
            Some(since.to_owned())
        }
        _ => Some(since.to_owned()),
    })
}
