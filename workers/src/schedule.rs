//! Periodic jobs: `[[schedule]]` entries that enqueue one job per cron tick.
//!
//! Every `serve` and `worker` process runs the scheduler, and there is no leader to elect or
//! lose: each tick's job carries the unique key `schedule:<name>:<tick ms>`, so however many
//! processes enqueue the same tick, the broker keeps one job. A tick missed while every process
//! was down is enqueued once at start-up (the most recent missed tick only, not one per tick).
//!
//! What "missed" means needs a memory that outlives the tick's job: its unique key goes when
//! retention purges the job, and a schedule just added to the config has no job at all. So
//! each enqueued tick is also written to the broker's named cursor `schedule:<name>`
//! ([`Broker::advance_cursor`]: only ever forward, as every node records the ticks it
//! enqueued and a slow node's older tick may come last), and start-up catches up only a tick
//! after it. A schedule with
//! no cursor is new: its last tick is recorded as seen, not run (a nightly job added at 3 pm
//! runs that night, not at deploy).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::clock::Clock;
use crate::field::FieldError;
use crate::job::NewJob;
use crate::time::Timestamp;

/// What every schedule's tick key starts with: `schedule:<name>:<tick in ms>`, the unique key
/// of the tick's job (a client's job may not take one: `hopper`'s submit refuses the prefix).
pub const SCHEDULE_KEY_PREFIX: &str = "schedule:";

/// One periodic job.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleSpec {
    /// Stable name; part of each tick's unique key, so renaming a schedule re-runs a tick.
    pub name: String,
    /// Cron expression with seconds: `sec min hour day-of-month month day-of-week [year]`;
    /// day of week `0`-`7` as in crontab (`0` and `7` Sunday, `1` Monday) or `SUN`-`SAT`.
    pub cron: String,
    pub kind: String,
    pub payload: Value,
    pub queue: String,
    pub priority: u8,
    pub max_retries: u32,
}

/// The day-of-week field as crontab means it (`0` to `7`, Sunday both `0` and `7`, Monday
/// `1`), in the `cron` crate's numbering (Quartz's: Sunday `1` to Saturday `7`), so that
/// `1-5` is Monday to Friday as in every crontab, not Sunday to Thursday. Names (`MON-FRI`),
/// `*` and `?` mean the same in both and pass unchanged; each numeric part (`n`, `a-b`,
/// `a-b/s`, `*/s`, `n/s`) becomes the list of the days it names.
fn crontab_days(field: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for part in field.split(',') {
        if part.chars().any(|c| c.is_ascii_alphabetic()) || part == "*" || part == "?" {
            out.push(part.to_owned());
            continue;
        }
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        let day = |s: &str| -> Result<u32, String> {
            match s.parse::<u32>() {
                Ok(d) if d <= 7 => Ok(d),
                _ => Err(format!(
                    "day of week {s:?} is not 0-7 (0 and 7 are Sunday) or a name (SUN-SAT)"
                )),
            }
        };
        let (from, to) = match range {
            "*" => (0, 6),
            r => match r.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                // `n/s` runs from n to the end of the week, as in crontab.
                None if step.is_some() => (day(r)?, 7),
                None => (day(r)?, day(r)?),
            },
        };
        if from > to {
            return Err(format!("day-of-week range {range:?} runs backwards"));
        }
        let step = match step {
            None => 1,
            Some(s) => match s.parse::<u32>() {
                Ok(s) if s >= 1 => s,
                _ => {
                    return Err(format!(
                        "day-of-week step {s:?} is not a whole number from 1"
                    ));
                }
            },
        };
        let mut days: Vec<u32> = (from..=to)
            .step_by(step as usize)
            .map(|d| d % 7 + 1)
            .collect();
        days.sort_unstable();
        days.dedup();
        out.extend(days.iter().map(u32::to_string));
    }
    Ok(out.join(","))
}

/// A schedule whose cron expression parsed.
#[derive(Clone, Debug)]
pub struct Schedule {
    spec: ScheduleSpec,
    cron: cron::Schedule,
}

impl Schedule {
    /// Parses the cron expression; the error names the schedule and says, on one line, what
    /// is wrong: the number of fields (crontab's five, without seconds, is the usual slip), the
    /// field the `cron` crate refused, or an expression that has no tick at all.
    pub fn new(spec: ScheduleSpec) -> Result<Self, FieldError> {
        let bad = |why: String| {
            FieldError::new(
                format!("schedule.{}.cron", spec.name),
                format!("{:?} {why}", spec.cron),
            )
        };
        let fields: Vec<&str> = spec.cron.split_whitespace().collect();
        // `@daily` and its kin are one field, which the crate reads itself.
        if !spec.cron.trim_start().starts_with('@') && !(6..=7).contains(&fields.len()) {
            let mut why = format!(
                "has {} fields; write 6, seconds first: sec min hour day-of-month month \
                 day-of-week (and an optional year)",
                fields.len()
            );
            if fields.len() == 5 {
                why.push_str(&format!(", e.g. \"0 {}\"", fields.join(" ")));
            }
            return Err(bad(why));
        }
        // Day of week as crontab numbers it (see `crontab_days`); `@daily` and its kin have
        // no such field.
        let mut expr = fields.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>();
        if let Some(days) = expr.get_mut(5) {
            *days = crontab_days(days).map_err(&bad)?;
        }
        let expr = if spec.cron.trim_start().starts_with('@') {
            spec.cron.clone()
        } else {
            expr.join(" ")
        };
        let cron = cron::Schedule::from_str(&expr).map_err(|e| {
            // The crate's message repeats the expression with a caret under it, then says
            // why on its last line: keep that line only.
            let text = e.to_string();
            let reason = text
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty() && *l != "^" && *l != expr.trim())
                .unwrap_or("not valid");
            bad(format!("is not a cron expression with seconds: {reason}"))
        })?;
        if cron.after(&DateTime::<Utc>::UNIX_EPOCH).next().is_none() {
            return Err(bad("never fires (no date matches it)".to_owned()));
        }
        // A year in the past parses, and would never fire either.
        if cron.after(&Utc::now()).next().is_none() {
            return Err(bad("never fires again (its last date is past)".to_owned()));
        }
        Ok(Self { spec, cron })
    }

    /// The schedule's definition.
    pub fn spec(&self) -> &ScheduleSpec {
        &self.spec
    }

    /// The first tick strictly after `at`.
    pub fn next_after(&self, at: Timestamp) -> Option<Timestamp> {
        self.cron
            .after(&to_datetime(at))
            .next()
            .map(|t| Timestamp::from_millis(t.timestamp_millis()))
    }

    /// The last tick at or before `at` and after `since`, if any: the tick to catch up on
    /// at start-up. Looks back a minute, then an hour, a day, up to `since`, so that a
    /// per-second schedule does not walk a week of ticks.
    pub fn last_between(&self, since: Timestamp, at: Timestamp) -> Option<Timestamp> {
        const STEPS: [Duration; 4] = [
            Duration::from_secs(60),
            Duration::from_secs(3600),
            Duration::from_secs(86_400),
            Duration::MAX,
        ];
        for back in STEPS {
            let from = (at - back).max(since);
            let mut last = None;
            for t in self.cron.after(&to_datetime(from)) {
                let t = Timestamp::from_millis(t.timestamp_millis());
                if t > at {
                    break;
                }
                last = Some(t);
            }
            if last.is_some() || from == since {
                return last;
            }
        }
        None
    }

    /// The broker's named cursor that holds the schedule's last enqueued tick, in ms.
    fn cursor_name(&self) -> String {
        format!("schedule:{}", self.spec.name)
    }

    /// The job of the tick at `tick`.
    pub fn job_for(&self, tick: Timestamp) -> NewJob {
        let s = &self.spec;
        NewJob::new(s.kind.clone(), s.payload.clone())
            .queue(s.queue.clone())
            .priority(s.priority)
            .max_retries(s.max_retries)
            .run_at(tick)
            .unique_key(format!(
                "{SCHEDULE_KEY_PREFIX}{}:{}",
                s.name,
                tick.as_millis()
            ))
    }
}

fn to_datetime(at: Timestamp) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(at.as_millis())
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// How far back start-up looks for a missed tick.
const CATCH_UP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Enqueues each schedule's ticks until `shutdown` fires.
pub async fn run(
    broker: Arc<dyn Broker>,
    schedules: Vec<Schedule>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    if schedules.is_empty() {
        return;
    }
    let start = clock.now();
    for s in &schedules {
        catch_up(&*broker, s, start).await;
    }
    let mut next: Vec<Option<Timestamp>> = schedules.iter().map(|s| s.next_after(start)).collect();
    info!(schedules = schedules.len(), "scheduler started");
    loop {
        let Some(due) = next.iter().flatten().min().copied() else {
            return;
        };
        let wait = due.since(clock.now());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let now = clock.now();
        for (s, n) in schedules.iter().zip(next.iter_mut()) {
            if let Some(tick) = *n
                && tick <= now
            {
                // A tick that could not be enqueued (the broker is away) is tried again
                // until the next tick is due, rather than lost.
                let following = s.next_after(now.max(tick));
                let done = enqueue(&*broker, s, tick).await;
                *n = if done || following.is_none_or(|f| f <= now) {
                    following
                } else {
                    Some(tick)
                };
            }
        }
        if next.iter().flatten().any(|t| *t <= clock.now()) {
            // Something is still due (a failed enqueue): do not spin on it.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_WAIT) => {}
            }
        }
    }
}

/// Wait between tries of a tick whose enqueue failed.
const RETRY_WAIT: Duration = Duration::from_millis(500);

/// Start-up: enqueues the most recent tick not after `now` if every node missed it, i.e. it
/// is later than the schedule's cursor. With no cursor the schedule is new and the tick is
/// only recorded. A cursor that cannot be read (the broker is away) falls back to enqueueing
/// the tick, whose unique key still stops a duplicate while its job exists: better a rare
/// repeat than a lost run.
async fn catch_up(broker: &dyn Broker, schedule: &Schedule, now: Timestamp) {
    let Some(tick) = schedule.last_between(now - CATCH_UP_WINDOW, now) else {
        return;
    };
    let name = &schedule.spec.name;
    match broker.cursor(&schedule.cursor_name()).await {
        Ok(Some(saved)) => match crate::broker::cursor_number(&saved) {
            Some(last) if tick.as_millis() <= last => {}
            Some(_) => {
                enqueue(broker, schedule, tick).await;
            }
            None => {
                warn!(schedule = %name, saved, "unreadable schedule cursor; catching up its last tick");
                enqueue(broker, schedule, tick).await;
            }
        },
        Ok(None) => {
            info!(schedule = %name, tick = tick.as_millis(), "new schedule: its first job is its next tick's");
            record_tick(broker, schedule, tick).await;
        }
        Err(e) => {
            warn!(schedule = %name, error = %e, "cannot read the schedule's cursor; catching up its last tick");
            enqueue(broker, schedule, tick).await;
        }
    }
}

/// Records `tick` as the schedule's last (see the module doc). A failure is logged: the worst
/// it causes is one repeated tick at a later start-up. Public for the conformance suite, which
/// plays a slow node's late record of an older tick with it.
pub async fn record_tick(broker: &dyn Broker, schedule: &Schedule, tick: Timestamp) {
    let value = tick.as_millis();
    if let Err(e) = broker.advance_cursor(&schedule.cursor_name(), value).await {
        warn!(schedule = %schedule.spec.name, tick = value, error = %e, "cannot record the schedule's last tick");
    }
}

/// Enqueues a tick's job and records the tick; true when the job exists now (created, or
/// already there).
async fn enqueue(broker: &dyn Broker, schedule: &Schedule, tick: Timestamp) -> bool {
    let job = schedule.job_for(tick);
    match broker.enqueue(vec![job]).await {
        Ok(r) => {
            if r.first().is_some_and(|e| e.created) {
                // Logged as its milliseconds, the number in the tick's unique key.
                info!(schedule = %schedule.spec.name, tick = tick.as_millis(), "scheduled job enqueued");
            }
            record_tick(broker, schedule, tick).await;
            true
        }
        Err(e) => {
            warn!(schedule = %schedule.spec.name, tick = tick.as_millis(), error = %e, "scheduled job not enqueued yet");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_second() -> Schedule {
        Schedule::new(ScheduleSpec {
            name: "tick".into(),
            cron: "* * * * * *".into(),
            kind: "sys.noop".into(),
            payload: serde_json::json!({}),
            queue: "default".into(),
            priority: 5,
            max_retries: 3,
        })
        .expect("valid cron")
    }

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn ticks_and_keys() {
        let s = every_second();
        assert_eq!(s.next_after(t(1_000)), Some(t(2_000)));
        assert_eq!(s.next_after(t(1_500)), Some(t(2_000)));
        assert_eq!(s.last_between(t(0), t(5_500)), Some(t(5_000)));
        // A week back, per second: found from the last minute, not by walking the week.
        let week = 7 * 86_400_000;
        assert_eq!(
            s.last_between(t(1_700_000_000_000 - week), t(1_700_000_000_500)),
            Some(t(1_700_000_000_000))
        );
        let job = s.job_for(t(5_000));
        assert_eq!(job.unique_key.as_deref(), Some("schedule:tick:5000"));
        assert_eq!(job.run_at, Some(t(5_000)));
    }

    fn cron_error(cron: &str) -> FieldError {
        let mut spec = every_second().spec().clone();
        spec.cron = cron.into();
        Schedule::new(spec).expect_err(cron)
    }

    /// Day-of-week numbers are crontab's, whatever the `cron` crate counts from: `1-5` is
    /// Monday to Friday (it ran Sunday to Thursday), `0` and `7` are Sunday, names as they are.
    #[test]
    fn day_of_week_numbers_are_crontabs() {
        // 2026-12-04 is a Friday, 2026-12-05 a Saturday, 2026-12-06 a Sunday, 00:00 UTC.
        let fri = t(1_796_342_400_000);
        let day = 86_400_000;
        let next = |cron: &str, from: Timestamp| {
            let mut spec = every_second().spec().clone();
            spec.cron = cron.into();
            Schedule::new(spec).expect(cron).next_after(from)
        };
        // Weekdays at midnight, from Friday 00:00: Monday, not Saturday or Sunday.
        assert_eq!(
            next("0 0 0 * * 1-5", fri),
            Some(t(1_796_342_400_000 + 3 * day))
        );
        assert_eq!(
            next("0 0 0 * * MON-FRI", fri),
            Some(t(1_796_342_400_000 + 3 * day))
        );
        // Sunday is 0 and 7.
        assert_eq!(
            next("0 0 0 * * 0", fri),
            Some(t(1_796_342_400_000 + 2 * day))
        );
        assert_eq!(
            next("0 0 0 * * 7", fri),
            Some(t(1_796_342_400_000 + 2 * day))
        );
        assert_eq!(
            next("0 0 0 * * SUN", fri),
            Some(t(1_796_342_400_000 + 2 * day))
        );
        // Saturday is 6; a list, a range to 7 and a step.
        assert_eq!(next("0 0 0 * * 6", fri), Some(t(1_796_342_400_000 + day)));
        assert_eq!(next("0 0 0 * * 3,6", fri), Some(t(1_796_342_400_000 + day)));
        assert_eq!(
            next("0 0 0 * * 6-7", t(1_796_342_400_000 + day)),
            Some(t(1_796_342_400_000 + 2 * day))
        );
        assert_eq!(next("0 0 0 * * */2", fri), Some(t(1_796_342_400_000 + day)));
        assert_eq!(crontab_days("*/2").as_deref(), Ok("1,3,5,7"));
        assert_eq!(crontab_days("5-7").as_deref(), Ok("1,6,7"));
        assert_eq!(crontab_days("MON-FRI,0").as_deref(), Ok("MON-FRI,1"));
        for bad in ["8", "5-2", "1/0", "-1"] {
            assert!(crontab_days(bad).is_err(), "{bad}");
        }
        let err = cron_error("0 0 0 * * 8");
        assert!(err.message.contains("0-7"), "{}", err.message);
    }

    /// A year in the past parses but would never fire: refused as never firing.
    #[test]
    fn a_cron_whose_years_are_past_is_refused() {
        let err = cron_error("0 0 0 1 1 * 2020");
        assert!(err.message.contains("never fires"), "{}", err.message);
    }

    /// The crontab habit (five fields, no seconds) is told what to write instead, on one line
    /// (a config problem is one line), not shown a caret under the expression and nothing else.
    #[test]
    fn a_five_field_cron_says_seconds_come_first() {
        let err = cron_error("0 2 * * *");
        assert_eq!(err.field, "schedule.tick.cron");
        assert!(!err.message.contains('\n'), "{}", err.message);
        assert!(
            err.message.contains("5 fields") && err.message.contains("\"0 0 2 * * *\""),
            "{}",
            err.message
        );
        let mut daily = every_second().spec().clone();
        daily.cron = "@daily".into();
        assert!(Schedule::new(daily).is_ok(), "a shorthand is one field");
        let err = cron_error("0 0 25 * * *");
        assert!(!err.message.contains('\n'), "{}", err.message);
        assert!(err.message.contains("'25'"), "{}", err.message);
    }

    /// A valid expression with no tick at all (30 February) would be a schedule that silently
    /// never runs: refused.
    #[test]
    fn a_cron_that_never_fires_is_refused() {
        let err = cron_error("0 0 0 30 2 *");
        assert!(err.message.contains("never"), "{}", err.message);
    }

    #[test]
    fn bad_cron_names_the_schedule() {
        let mut spec = every_second().spec().clone();
        spec.cron = "every day".into();
        let err = Schedule::new(spec).expect_err("invalid");
        assert_eq!(err.field, "schedule.tick.cron");
    }
}
