//! The process's log: where it goes (stderr), its level (`RUST_LOG`, else the command's
//! default) and its format (`[log] format`: text or JSON lines).
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
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
