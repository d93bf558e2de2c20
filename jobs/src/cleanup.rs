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
//!
//! `{"records": true}` (and nothing else) purges the engine's own old records instead, through
//! the [`RecordPurger`] the shell hands over: the built-in retention schedule.
//!
//! [`Purge`] is a [`Kind`]: its payload is [`PurgeArgs`]; the two modes, the age and the glob
//! are its `check`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use globset::{GlobBuilder, GlobMatcher};
use hopper_workers::FieldError;
use hopper_workers::{JobContext, JobError, JobResult, Kind};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::JobsConfig;
use crate::files::{FilesDir, check_relative, io_error};

/// The result lists at most this many paths.
pub const LISTED_FILES: usize = 100;
/// Directories deeper than this are not entered.
const MAX_DEPTH: usize = 64;

/// The payload of `cleanup.purge`: files (`older_than` and the optional rest), or
/// `{"records": true}` alone. The file fields are optional here so that a records payload can
/// be told apart, and a file field beside `records` named; `check` requires `older_than`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeArgs {
    #[serde(default, deserialize_with = "only_true")]
    records: bool,
    dir: Option<String>,
    dry_run: Option<bool>,
    glob: Option<String>,
    older_than: Option<String>,
    /// A chain predecessor's result: accepted, not used.
    #[serde(default, rename = "input")]
    _input: Option<IgnoredAny>,
}

/// `records` may only be `true` (leaving it out means files).
fn only_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(true) => Ok(true),
        _ => Err(serde::de::Error::custom("must be true when given")),
    }
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

/// A file purge, checked: what the walk needs.
struct Plan {
    dir: String,
    age: Duration,
    matcher: GlobMatcher,
    by_name: bool,
    dry_run: bool,
}

impl Plan {
    /// The file purge `args` describe, or the field that makes it impossible.
    fn of(args: &PurgeArgs) -> Result<Self, FieldError> {
        let older_than = args
            .older_than
            .as_deref()
            // Worded as serde words a missing field, which it was before `records` existed.
            .ok_or_else(|| FieldError::new("payload", "missing field `older_than`"))?;
        let dir = args.dir.clone().unwrap_or_else(|| ".".to_owned());
        check_relative(&dir).map_err(|m| FieldError::new("payload.dir", m))?;
        let age = humantime::parse_duration(older_than)
            .map_err(|e| FieldError::new("payload.older_than", format!("{e} (e.g. \"7d\")")))?;
        let glob = args.glob.as_deref().unwrap_or("*");
        let matcher = GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| FieldError::new("payload.glob", e.to_string()))?
            .compile_matcher();
        Ok(Self {
            dir,
            age,
            matcher,
            by_name: !glob.contains('/'),
            dry_run: args.dry_run.unwrap_or(false),
        })
    }
}

impl Purge {
    pub fn new(config: &JobsConfig) -> Self {
        Self {
            files: FilesDir::new(&config.files.dir),
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
}

#[derive(Default)]
struct Tally {
    deleted: u64,
    bytes: u64,
    files: Vec<String>,
}

struct Walk<'a> {
    plan: &'a Plan,
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
            let matched = if self.plan.by_name {
                self.plan.matcher.is_match(entry.file_name())
            } else {
                self.plan.matcher.is_match(rel)
            };
            let old = meta.modified().is_ok_and(|m| m < self.cutoff);
            if !(matched && old) {
                continue;
            }
            if !self.plan.dry_run {
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

impl Kind for Purge {
    const NAME: &'static str = "cleanup.purge";
    type Args = PurgeArgs;

    async fn run(&self, cx: JobContext, args: PurgeArgs) -> JobResult {
        if args.records {
            return match &self.records {
                Some(records) => records.purge_records().await,
                None => Err(JobError::permanent(
                    "records purge is not available in this process (no broker)",
                )),
            };
        }
        // `check` has passed, so this cannot fail; but a panic is no way to say so.
        let plan =
            Plan::of(&args).map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        let files = self.files.clone();
        let cx2 = cx.clone();
        let tally = tokio::task::spawn_blocking(move || -> Result<(Tally, bool), JobError> {
            // `existing` canonicalizes: a `dir` that is (or passes through) a symlink leading
            // out of the files directory is refused here.
            let base = files.existing(&plan.dir)?;
            if !std::fs::metadata(&base).is_ok_and(|m| m.is_dir()) {
                return Err(JobError::permanent(format!(
                    "dir {:?} is not a directory",
                    plan.dir
                )));
            }
            let cutoff = SystemTime::now()
                .checked_sub(plan.age)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut walk = Walk {
                plan: &plan,
                cutoff,
                base: base.clone(),
                tally: Tally::default(),
                cx: &cx2,
            };
            walk.dir(&base, 0)?;
            Ok((walk.tally, plan.dry_run))
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

    /// A records purge takes no file field; a file purge needs a valid age, dir and glob.
    fn check(&self, args: &PurgeArgs) -> Result<(), FieldError> {
        if !args.records {
            return Plan::of(args).map(drop);
        }
        // Alphabetical, the order the untyped check met the keys in, so the same one is named.
        let given = [
            ("dir", args.dir.is_some()),
            ("dry_run", args.dry_run.is_some()),
            ("glob", args.glob.is_some()),
            ("older_than", args.older_than.is_some()),
        ];
        match given.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(FieldError::new(
                format!("payload.{field}"),
                "a records purge takes no other field",
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hopper_workers::Registry;

    fn validate(payload: Value) -> Result<(), FieldError> {
        let mut registry = Registry::new();
        registry
            .add(Purge::new(&JobsConfig::default()))
            .expect("registered");
        registry
            .get("cleanup.purge")
            .expect("registered")
            .validate(&payload)
    }

    #[test]
    fn a_records_purge_takes_nothing_else() {
        assert!(validate(json!({"records": true})).is_ok());
        assert!(validate(json!({"records": true, "input": {"deleted": 0}})).is_ok());
        let e = validate(json!({"records": false})).expect_err("false");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("payload.records", "must be true when given")
        );
        let e = validate(json!({"records": true, "dry_run": true, "glob": "*"})).expect_err("mix");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("payload.dry_run", "a records purge takes no other field")
        );
        let e = validate(json!({"dry_run": true})).expect_err("no age");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("payload", "missing field `older_than`")
        );
    }
}
