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
//! [`Purge`] is a [`Kind`]: its payload is [`PurgeArgs`]; the age, the directory and the glob
//! are its `check`. The engine's own records (old jobs and events) are not this kind's: they
//! are `hopper.retention`'s, in the engine.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use globset::{GlobBuilder, GlobMatcher};
use hopper_workers::FieldError;
use hopper_workers::{JobContext, JobError, JobResult, Kind};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;

use crate::JobsConfig;
use crate::files::{FilesDir, check_relative, io_error};

/// The result lists at most this many paths.
pub const LISTED_FILES: usize = 100;
/// Directories deeper than this are not entered.
const MAX_DEPTH: usize = 64;

/// The payload of `cleanup.purge`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeArgs {
    /// Relative to the files directory. Default `"."`.
    #[serde(default = "here")]
    dir: String,
    #[serde(default)]
    dry_run: bool,
    /// Default `"*"`.
    #[serde(default = "any")]
    glob: String,
    /// How old a file must be to go, e.g. `"7d"`. Required.
    older_than: String,
    /// A chain predecessor's result: accepted, not used.
    #[serde(default, rename = "input")]
    _input: Option<IgnoredAny>,
}

fn here() -> String {
    ".".to_owned()
}

fn any() -> String {
    "*".to_owned()
}

/// `cleanup.purge`.
#[derive(Debug)]
pub struct Purge {
    files: FilesDir,
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
        let dir = args.dir.clone();
        check_relative(&dir).map_err(|m| FieldError::new("payload.dir", m))?;
        let age = humantime::parse_duration(&args.older_than)
            .map_err(|e| FieldError::new("payload.older_than", format!("{e} (e.g. \"7d\")")))?;
        let glob = args.glob.as_str();
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
            dry_run: args.dry_run,
        })
    }
}

impl Purge {
    pub fn new(config: &JobsConfig) -> Self {
        Self {
            files: FilesDir::new(&config.files.dir),
        }
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

    /// A valid age, dir and glob.
    fn check(&self, args: &PurgeArgs) -> Result<(), FieldError> {
        Plan::of(args).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use hopper_workers::Registry;
    use serde_json::Value;

    use super::*;

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
    fn the_age_is_required_and_records_are_not_this_kinds() {
        let e = validate(json!({"dry_run": true})).expect_err("no age");
        assert_eq!(e.field, "payload");
        assert!(e.message.contains("older_than"), "{e}");
        let e = validate(json!({"records": true})).expect_err("records");
        assert!(e.message.contains("records"), "{e}");
        assert!(validate(json!({"older_than": "7d", "input": {"deleted": 0}})).is_ok());
    }
}
