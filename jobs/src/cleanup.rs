//! `cleanup.purge`: deletes old files under the files directory. This module owns the walk
//! and its safety rules; what counts as "old" is the file's modification time against now.
//!
//! Payload: `{"dir": "tmp", "older_than": "7d", "glob": "*.tmp", "dry_run": false}`.
//!
//! - `dir` (default `"."`) is relative to the files directory; after resolving symlinks it
//!   must still be inside it, or the job fails permanently.
//! - `glob` (default `"*"`): a pattern with no `/` matches a file's name at any depth (like a
//!   `.gitignore` line); one with a `/` matches the path relative to `dir` (`**` crosses
//!   directories).
//! - Symlinks are never followed: a linked directory is not entered, and a link is judged by
//!   its own name and time and, if it matches, the link itself is deleted, never its target.
//! - Only regular files and symlinks are deleted, never directories.
//!
//! Result: `{"deleted": n, "bytes": n, "dry_run": bool, "files": [first 100 relative paths]}`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use globset::{GlobBuilder, GlobMatcher};
use hopper_workers::FieldError;
use hopper_workers::{Handler, JobContext, JobError, JobResult};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::JobsConfig;
use crate::files::{FilesDir, check_relative, io_error};
use crate::payload;

/// The kind's stable name.
pub const KIND: &str = "cleanup.purge";
/// The result lists at most this many paths.
pub const LISTED_FILES: usize = 100;
/// Directories deeper than this are not entered.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    #[serde(default = "default_dir")]
    dir: String,
    older_than: String,
    #[serde(default = "default_glob")]
    glob: String,
    #[serde(default)]
    dry_run: bool,
    /// A chain predecessor's result: accepted, not used.
    #[serde(default, rename = "input")]
    _input: Option<serde::de::IgnoredAny>,
}

fn default_dir() -> String {
    ".".to_owned()
}

fn default_glob() -> String {
    "*".to_owned()
}

/// Deletes the engine's own old records (finished jobs and events past `[retention]`). The
/// shell implements it over the broker, so this crate never sees one.
#[async_trait]
pub trait RecordPurger: Send + Sync + std::fmt::Debug + 'static {
    /// Purges what retention allows; returns a small summary for the job's result.
    async fn purge_records(&self) -> Result<Value, JobError>;
}

/// `cleanup.purge`.
#[derive(Debug)]
pub struct Purge {
    files: FilesDir,
    /// Set in processes that can reach the broker: runs payloads of `{"records": true}`.
    records: Option<std::sync::Arc<dyn RecordPurger>>,
}

struct Checked {
    args: Args,
    age: Duration,
    matcher: GlobMatcher,
    by_name: bool,
}

impl Purge {
    pub fn new(config: &JobsConfig) -> Self {
        Self {
            files: FilesDir::new(&config.files_dir),
            records: None,
        }
    }

    /// Also purges the engine's records, for payloads of `{"records": true}` (the built-in
    /// retention schedule).
    #[must_use]
    pub fn with_records(mut self, records: std::sync::Arc<dyn RecordPurger>) -> Self {
        self.records = Some(records);
        self
    }

    /// A `{"records": true}` payload: retention of job records rather than files. Nothing
    /// else may be set beside it (but a chain `input`).
    fn records_mode(payload: &Value) -> Result<bool, FieldError> {
        let Some(flag) = payload.get("records") else {
            return Ok(false);
        };
        if flag != &Value::Bool(true) {
            return Err(FieldError::new(
                "payload.records",
                "must be true when given",
            ));
        }
        if let Some(other) = payload
            .as_object()
            .and_then(|m| m.keys().find(|k| *k != "records" && *k != "input"))
        {
            return Err(FieldError::new(
                format!("payload.{other}"),
                "a records purge takes no other field",
            ));
        }
        Ok(true)
    }

    fn parse(&self, payload: &Value) -> Result<Checked, FieldError> {
        let args: Args = payload::parse(payload)?;
        check_relative(&args.dir).map_err(|m| FieldError::new("payload.dir", m))?;
        let age = humantime::parse_duration(&args.older_than)
            .map_err(|e| FieldError::new("payload.older_than", format!("{e} (e.g. \"7d\")")))?;
        let matcher = GlobBuilder::new(&args.glob)
            .literal_separator(true)
            .build()
            .map_err(|e| FieldError::new("payload.glob", e.to_string()))?
            .compile_matcher();
        let by_name = !args.glob.contains('/');
        Ok(Checked {
            args,
            age,
            matcher,
            by_name,
        })
    }
}

#[derive(Default)]
struct Tally {
    deleted: u64,
    bytes: u64,
    files: Vec<String>,
}

struct Walk<'a> {
    checked: &'a Checked,
    cutoff: SystemTime,
    base: PathBuf,
    tally: Tally,
    cx: &'a JobContext,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path, depth: usize) -> Result<(), JobError> {
        if depth > MAX_DEPTH || self.cx.is_cancelled() {
            return Ok(());
        }
        let entries =
            std::fs::read_dir(dir).map_err(|e| io_error(&dir.display().to_string(), &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&dir.display().to_string(), &e))?;
            let path = entry.path();
            // symlink_metadata: the entry itself, never what a link points to.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Gone since read_dir listed it: someone else cleaned up.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&path.display().to_string(), &e)),
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                self.dir(&path, depth + 1)?;
                continue;
            }
            if !(kind.is_file() || kind.is_symlink()) {
                continue;
            }
            let rel = path.strip_prefix(&self.base).unwrap_or(&path);
            let matched = if self.checked.by_name {
                self.checked.matcher.is_match(entry.file_name())
            } else {
                self.checked.matcher.is_match(rel)
            };
            let old = meta.modified().is_ok_and(|m| m < self.cutoff);
            if !(matched && old) {
                continue;
            }
            if !self.checked.args.dry_run {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error(&path.display().to_string(), &e)),
                }
            }
            self.tally.deleted += 1;
            if kind.is_file() {
                self.tally.bytes += meta.len();
            }
            if self.tally.files.len() < LISTED_FILES {
                self.tally.files.push(rel.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for Purge {
    async fn run(&self, cx: JobContext) -> JobResult {
        if Self::records_mode(cx.payload()).map_err(payload::permanent)? {
            return match &self.records {
                Some(records) => records.purge_records().await,
                None => Err(JobError::permanent(
                    "records purge is not available in this process (no broker)",
                )),
            };
        }
        let checked = self.parse(cx.payload()).map_err(payload::permanent)?;
        let files = self.files.clone();
        let cx2 = cx.clone();
        let tally = tokio::task::spawn_blocking(move || -> Result<(Tally, bool), JobError> {
            // `existing` canonicalizes: a `dir` that is (or passes through) a symlink leading
            // out of the files directory is refused here.
            let base = files.existing(&checked.args.dir)?;
            if !std::fs::metadata(&base).is_ok_and(|m| m.is_dir()) {
                return Err(JobError::permanent(format!(
                    "dir {:?} is not a directory",
                    checked.args.dir
                )));
            }
            let cutoff = SystemTime::now()
                .checked_sub(checked.age)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut walk = Walk {
                checked: &checked,
                cutoff,
                base: base.clone(),
                tally: Tally::default(),
                cx: &cx2,
            };
            walk.dir(&base, 0)?;
            Ok((walk.tally, checked.args.dry_run))
        })
        .await
        .map_err(|e| JobError::retryable(format!("cleanup task failed: {e}")))??;
        let (tally, dry_run) = tally;
        if cx.is_cancelled() {
            return Err(JobError::retryable("cancelled during the walk"));
        }
        Ok(json!({
            "deleted": tally.deleted,
            "bytes": tally.bytes,
            "dry_run": dry_run,
            "files": tally.files,
        }))
    }

    fn validate(&self, payload: &Value) -> Result<(), FieldError> {
        if Self::records_mode(payload)? {
            return Ok(());
        }
        self.parse(payload).map(|_| ())
    }
}
