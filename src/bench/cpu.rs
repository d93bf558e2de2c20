//! CPU spent per job, so that a regression shows in the bench's one line: this process's CPU
//! time (user + system, every thread, from `/proc/self/stat`) and, when the broker is Redis,
//! the Redis server's (`INFO cpu`: `used_cpu_user` + `used_cpu_sys`), each read before and
//! after a workload.
//!
//! Not here: the report the deltas go into, its printing (`super`). A reading that fails
//! (no `/proc`, a Redis that refuses `INFO`) is logged and gives `null`, never a failed run.

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, which Linux fixes at 100
/// for user space on every architecture (the kernel's own `HZ` may differ; `/proc` converts).
const USER_HZ: f64 = 100.0;

/// The CPU counters at one moment; `None` where one could not be read.
pub(super) struct CpuSnapshot {
    process_us: Option<f64>,
    broker_us: Option<f64>,
}

/// Reads both counters. `redis_url` is the broker's URL when the broker is Redis.
pub(super) async fn snapshot(redis_url: Option<&str>) -> CpuSnapshot {
    let process_us = process_cpu_us()
        .inspect_err(|e| {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot read this process's CPU time"
            )
        })
        .ok();
    let broker_us = match redis_url {
        Some(url) => redis_cpu_us(url)
            .await
            .inspect_err(|e| {
                tracing::warn!(error = format!("{e:#}"), "cannot read Redis' CPU time")
            })
            .ok(),
        None => None,
    };
    CpuSnapshot {
        process_us,
        broker_us,
    }
}

impl CpuSnapshot {
    /// Microseconds of (process, broker) CPU per job between `self` and the later `end`.
    pub(super) fn per_job(&self, end: &Self, jobs: u64) -> (Option<f64>, Option<f64>) {
        let per = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if jobs > 0 => Some(round1((b - a).max(0.0) / jobs as f64)),
            _ => None,
        };
        (
            per(self.process_us, end.process_us),
            per(self.broker_us, end.broker_us),
        )
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// This process's user + system CPU time so far, all threads, in microseconds.
fn process_cpu_us() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    parse_proc_stat(&stat).context("parsing /proc/self/stat")
}

/// `utime` + `stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in microseconds. The
/// command name (field 2) is in parentheses and may hold spaces, so fields are counted after
/// its closing parenthesis.
fn parse_proc_stat(stat: &str) -> Option<f64> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    // After the name: field 3 (state) is the first, so utime (14) is the 12th.
    let mut fields = after.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ * 1e6)
}

/// The Redis server's user + system CPU time since it started, in microseconds.
async fn redis_cpu_us(url: &str) -> Result<f64> {
    let client = redis::Client::open(url).context("parsing the broker URL")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .context("INFO cpu")?;
    parse_info_cpu(&info).context("no used_cpu_user / used_cpu_sys in INFO cpu")
}

/// `used_cpu_user` + `used_cpu_sys` (seconds) of an `INFO cpu` reply, in microseconds.
fn parse_info_cpu(info: &str) -> Option<f64> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((field("used_cpu_user")? + field("used_cpu_sys")?) * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_times_are_counted_after_the_name() {
        // A name with spaces and a parenthesis; utime 250 and stime 50 ticks = 3 s.
        let line = "4242 (my (odd) bin) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_proc_stat(line), Some(3_000_000.0));
        assert_eq!(parse_proc_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn info_cpu_sums_user_and_system() {
        let info = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\n\
                    used_cpu_sys_children:9.000000\r\nused_cpu_user_children:9.000000\r\n";
        assert_eq!(parse_info_cpu(info), Some(3_750_000.0));
        assert_eq!(parse_info_cpu("# CPU\r\n"), None);
    }

    #[test]
    fn per_job_needs_both_readings() {
        let a = CpuSnapshot {
            process_us: Some(1_000.0),
            broker_us: None,
        };
        let b = CpuSnapshot {
            process_us: Some(3_000.0),
            broker_us: Some(5.0),
        };
        assert_eq!(a.per_job(&b, 100), (Some(20.0), None));
        assert_eq!(a.per_job(&b, 0), (None, None));
    }
}
