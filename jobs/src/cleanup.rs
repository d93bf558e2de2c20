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
//!   The walk goes through directory handles (`openat` with `O_NOFOLLOW`, `unlinkat`), not
//!   path strings, so a directory swapped for a symlink mid-walk cannot lead it out either.
//! - Only regular files and symlinks are deleted, never directories.
//! - What cannot be read (a directory of another user's, mode 000) or deleted is passed over
//!   and listed in `skipped`; the rest is purged.
//!
//! Result: `{"deleted": n, "bytes": n, "dry_run": bool, "files": [first 100 relative paths],
//! "skipped": [first 100 {"path", "error"}]}`. Unix only (the handles are `rustix`'s).
//!
//! [`Purge`] is a [`Kind`]: its payload is [`PurgeArgs`]; the age, the directory and the glob
//! are its `check`. The engine's own records (old jobs and events) are not this kind's: they
//! are `hopper.retention`'s, in the engine.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use globset::{GlobBuilder, GlobMatcher};
use hopper_workers::FieldError;
use hopper_workers::{JobContext, JobError, JobResult, Kind};
use rustix::fs::{AtFlags, CWD, Dir, Mode, OFlags, openat, unlinkat};
use rustix::io::Errno;
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
    /// What could not be read or deleted, and why (the first [`LISTED_FILES`]).
    skipped: Vec<serde_json::Value>,
}

impl Tally {
    /// Notes that `rel` was passed over because of `e` (`doing` says at what step).
    fn skip(&mut self, rel: &Path, doing: &str, e: &std::io::Error) {
        if self.skipped.len() < LISTED_FILES {
            self.skipped.push(json!({
                "path": rel.to_string_lossy(),
                "error": format!("cannot {doing}: {e}"),
            }));
        }
    }
}

/// Opens the directory `name` inside `parent` without following a symlink in its place: if
/// `name` became a link since it was looked at, this fails (ELOOP or ENOTDIR) instead of
/// opening what the link points to.
fn open_dir_at(parent: impl AsFd, name: impl rustix::path::Arg) -> std::io::Result<OwnedFd> {
    Ok(openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The entry `name` of `dir` itself, never what a link points to: an `O_PATH` handle opened
/// without following, and its metadata (type, size, modification time).
fn entry_metadata(dir: impl AsFd, name: &CStr) -> std::io::Result<std::fs::Metadata> {
    let fd = openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    std::fs::File::from(fd).metadata()
}

/// The walk goes through directory handles, never through path strings: each directory is
/// opened relative to its parent's handle without following symlinks, and each file is
/// deleted relative to its directory's handle. A directory swapped for a symlink between the
/// look at it and the deletions inside it therefore cannot lead the walk out of its root.
struct Walk<'a> {
    plan: &'a Plan,
    cutoff: SystemTime,
    tally: Tally,
    cx: &'a JobContext,
}

impl Walk<'_> {
    /// Purges the directory open as `dir`, at `rel` under the purge's `dir`. What cannot be
    /// read or deleted is noted in the tally and passed over: the rest is still purged.
    fn dir(&mut self, dir: &OwnedFd, rel: &Path, depth: usize) {
        if depth > MAX_DEPTH || self.cx.is_cancelled() {
            return;
        }
        let entries = match Dir::read_from(dir) {
            Ok(entries) => entries,
            Err(e) => return self.tally.skip(rel, "read the directory", &e.into()),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return self.tally.skip(rel, "read the directory", &e.into()),
            };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let file_name = OsStr::from_bytes(name.to_bytes());
            let path = rel.join(file_name);
            let meta = match entry_metadata(dir, name) {
                Ok(m) => m,
                // Gone since the directory was listed: someone else cleaned up.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.tally.skip(&path, "read", &e);
                    continue;
                }
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                match open_dir_at(dir, name) {
                    Ok(sub) => self.dir(&sub, &path, depth + 1),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => self.tally.skip(&path, "open the directory", &e),
                }
                continue;
            }
            if !(kind.is_file() || kind.is_symlink()) {
                continue;
            }
            let matched = if self.plan.by_name {
                self.plan.matcher.is_match(file_name)
            } else {
                self.plan.matcher.is_match(&path)
            };
            let old = meta.modified().is_ok_and(|m| m < self.cutoff);
            if !(matched && old) {
                continue;
            }
            if !self.plan.dry_run {
                // Relative to the directory's handle: the name itself, a file or a link,
                // never anything a link points to.
                match unlinkat(dir, name, AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::NOENT) => continue,
                    Err(e) => {
                        self.tally.skip(&path, "delete", &e.into());
                        continue;
                    }
                }
            }
            self.tally.deleted += 1;
            if kind.is_file() {
                self.tally.bytes += meta.len();
            }
            if self.tally.files.len() < LISTED_FILES {
                self.tally.files.push(path.to_string_lossy().into_owned());
            }
        }
    }
}

/// Opens `base` (a canonical path inside the canonical `root`) one component at a time from
/// the root's handle, never following a symlink: `base` has none, so one found now was put
/// there since `base` was resolved, and the purge refuses to go through it.
fn open_base(root: &Path, base: &Path, what: &str) -> Result<OwnedFd, JobError> {
    let io = |e: std::io::Error| io_error(what, &e);
    let mut fd: OwnedFd = openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    let rel = base
        .strip_prefix(root)
        .map_err(|_| JobError::permanent(format!("{what} is outside the files directory")))?;
    for part in rel.components() {
        fd = open_dir_at(&fd, part.as_os_str()).map_err(io)?;
    }
    Ok(fd)
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
            let root = files.existing(".")?;
            let dir = open_base(&root, &base, &format!("dir {:?}", plan.dir))?;
            let cutoff = SystemTime::now()
                .checked_sub(plan.age)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut walk = Walk {
                plan: &plan,
                cutoff,
                tally: Tally::default(),
                cx: &cx2,
            };
            walk.dir(&dir, Path::new(""), 0);
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
            "skipped": tally.skipped,
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
        assert_eq!(e.field, "payload.older_than");
        assert!(e.message.contains("older_than"), "{e}");
        let e = validate(json!({"records": true})).expect_err("records");
        assert!(e.message.contains("records"), "{e}");
        assert!(validate(json!({"older_than": "7d", "input": {"deleted": 0}})).is_ok());
    }
}
