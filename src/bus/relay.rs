//! The relay of Hopper's own job events to the bus: each event of the durable log
//! (`job.dead`, `job.succeeded`, …) that a subscription takes is published on its type's
//! topic, with the event's fields as `data`.
//!
//! **Exactly once, on any number of nodes and across restarts.** Every `serve` process whose
//! config subscribes to job events runs the relay. Each keeps its place in the log in the
//! broker, under one cursor name ([`RELAY_CURSOR`]), so that a restarted node resumes where
//! the relay stopped, not at the end of the log. Each publishes with the event's id as the
//! publish key, so the jobs' unique keys make a second publish of the same event (by another
//! node, or by this one after a crash between the publish and the cursor's save) create
//! nothing. The cursor is saved after the jobs are stored, never before: an event is never
//! skipped.
//!
//! **No loops.** An event of a job a subscription created (its unique key starts with
//! [`super::KEY_PREFIX`]) is never published: an alert job that dies makes no alert.
//!
//! The first start, with no cursor saved, begins at the end of the log: events from before
//! the relay existed are not replayed.

use std::time::Duration;

use hopper_workers::BrokerError;
use hopper_workers::event::Event;
use tokio_util::sync::CancellationToken;

use super::{Bus, KEY_PREFIX, PublishError};
use crate::service::Service;

/// The cursor the relay keeps in the broker.
pub const RELAY_CURSOR: &str = "bus.job-events";
/// Events read per round-trip.
const PAGE: usize = 500;
/// Longest wait on an idle log before looking again (SQLite wakes only this process's
/// writes; another process's events are seen within this).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// How long the relay waits after a broker error before trying again.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Relays job events to `bus` until `shutdown` fires. Broker errors are logged and retried.
pub async fn run_relay(bus: Bus, service: Service, shutdown: CancellationToken) {
    let mut cursor = loop {
        match start(&service).await {
            Ok(cursor) => break cursor,
            Err(e) => {
                tracing::warn!(error = %e, "job-event relay: reading its cursor");
                if pause(&shutdown, ERROR_BACKOFF).await {
                    return;
                }
            }
        }
    };
    loop {
        match step(&bus, &service, cursor.as_deref()).await {
            Ok(Some(next)) => {
                cursor = Some(next);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "job-event relay");
                if pause(&shutdown, ERROR_BACKOFF).await {
                    return;
                }
                continue;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = service.broker().wait_for_events(cursor.as_deref(), service.broker().events_idle_wait(IDLE_WAIT)) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "job-event relay: waiting for events");
                    if pause(&shutdown, ERROR_BACKOFF).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Sleeps, or returns true when `shutdown` fired first.
async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// The saved cursor, or (first start) the last event of the log, saved.
async fn start(service: &Service) -> Result<Option<String>, BrokerError> {
    let broker = service.broker();
    if let Some(saved) = broker.cursor(RELAY_CURSOR).await? {
        return Ok(Some(saved));
    }
    let last = broker.events_end().await?;
    if let Some(last) = &last {
        broker.save_cursor(RELAY_CURSOR, last).await?;
    }
    Ok(last)
}

/// Relays one page after `cursor`; answers the new cursor, saved, or `None` when the log had
/// nothing new.
async fn step(
    bus: &Bus,
    service: &Service,
    cursor: Option<&str>,
) -> Result<Option<String>, BrokerError> {
    let broker = service.broker();
    let page = broker.events(cursor, PAGE).await?;
    let Some(last) = page.last().map(|e| e.id.clone()) else {
        return Ok(None);
    };
    for event in &page {
        relay(bus, service, event).await?;
    }
    broker.save_cursor(RELAY_CURSOR, &last).await?;
    Ok(Some(last))
}

/// Publishes one event if a subscription takes it and its job was not made by one.
async fn relay(bus: &Bus, service: &Service, event: &Event) -> Result<(), BrokerError> {
    if bus.event_subscriptions(event).next().is_none() {
        return Ok(());
    }
    let job = service.broker().get(&event.job_id).await?;
    if job
        .as_ref()
        .and_then(|j| j.unique_key.as_deref())
        .is_some_and(|k| k.starts_with(KEY_PREFIX))
    {
        return Ok(());
    }
    match bus.publish_event(service, event).await {
        Ok(done) => {
            if !done.duplicate {
                tracing::info!(
                    topic = %done.topic,
                    job = %event.job_id,
                    jobs = done.jobs.len(),
                    "published a job event"
                );
            }
            Ok(())
        }
        // The broker could not be reached or failed: the same event is tried again later.
        Err(PublishError::Broker(e @ (BrokerError::Unavailable(_) | BrokerError::Backend(_)))) => {
            Err(e)
        }
        // The broker refused this event's jobs (invalid, a conflict): retrying would not change
        // that and would hold back every later event, so it is logged and passed.
        Err(PublishError::Broker(e)) => {
            tracing::warn!(
                event = %event.id,
                job = %event.job_id,
                error = %e,
                "job event not published"
            );
            Ok(())
        }
        // The event's data does not fit a subscription's template or kind: retrying would not
        // change that, so it is logged and passed.
        Err(PublishError::Field(e)) => {
            tracing::warn!(
                event = %event.id,
                job = %event.job_id,
                error = %e.message,
                "job event not published"
            );
            Ok(())
        }
    }
}
