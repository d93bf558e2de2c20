//! The process's log: where it goes (stderr; a line stderr cannot take is dropped), its level
//! (`RUST_LOG`, else the command's default) and its format (`[log] format`: text or JSON
//! lines; text without its own timestamps when stderr is the systemd journal).
//!
//! This module owns setting up the `tracing` subscriber, once, at start-up; what is logged is
//! each part's own business. A job's fields (`job_id`, `queue`, `kind`, `attempt`) come from
//! the span the worker pool opens around each attempt: text lines show it as a
//! `job{…}:` prefix, JSON lines ([`json`]) as top-level fields beside the event's own.

pub mod json;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the subscriber. `default_level` applies when `RUST_LOG` is unset or invalid.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // A line that cannot be written (stderr's reader gone: a log shipper that died, `| head`)
    // is dropped. tracing-subscriber would otherwise report it with `eprintln!`, which panics
    // on that same broken stderr, killing whichever task logged: the signal watcher among
    // them, leaving the daemon deaf to SIGTERM.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        // Under systemd with stderr going to the journal (`JOURNAL_STREAM` set), the journal
        // stamps each line itself: a second timestamp would only clutter `journalctl`.
        LogFormat::Text if stderr_is_journal() => {
            builder.without_time().with_ansi(false).init();
        }
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        // One object per line, every span's fields and the event's at the top level.
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::FlatJson)
            .init(),
    }
}

/// True when stderr is the systemd journal's stream: `JOURNAL_STREAM` (`DEVICE:INODE`, set by
/// systemd) names the very file stderr is, not one inherited from a parent.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}
