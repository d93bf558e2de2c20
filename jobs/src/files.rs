//! The files directory (`[files] dir`): every path a payload gives is relative to it, and no
//! job reads or writes outside it. This module owns that rule, checked twice: lexically when
//! a payload is validated (no absolute path, no `..`), and against the real file system when
//! a job runs (canonical paths, so a symlink cannot lead out). It also reads input files
//! within a size limit ([`read_capped`]) and sorts I/O errors into retryable and permanent
//! ones. It does not decide file names (each kind does), only the
//! alphabet a job id is reduced to when a name is made of it ([`safe_name`]).

use std::io;
use std::path::{Component, Path, PathBuf};

use hopper_workers::JobError;

/// The root every relative path of a payload is resolved against.
#[derive(Clone, Debug)]
pub struct FilesDir {
    root: PathBuf,
}

/// Why a path from a payload cannot be used. Not public: the methods of [`FilesDir`] answer
/// with a [`JobError`] already sorted (a `From` impl would clash with the engine's blanket
/// conversion, which makes every error retryable).
#[derive(Debug, thiserror::Error)]
enum PathError {
    /// Absolute, empty, or with a `..` component.
    #[error("{path:?} {reason}")]
    Invalid { path: String, reason: &'static str },
    /// Resolves (through a symlink) to a place outside the files directory.
    #[error("{path:?} is outside the files directory")]
    Escapes { path: String },
    #[error("{path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl PathError {
    /// A path that is invalid or escapes is permanent; I/O errors are sorted by kind.
    fn into_job_error(self) -> JobError {
        match self {
            PathError::Io { path, source } => io_error(&path, &source),
            other => JobError::permanent(other),
        }
    }
}

/// Checks that `rel` is a plain relative path that stays inside the directory it is joined
/// to: not empty, not absolute, no `..`. Returns why not.
pub fn check_relative(rel: &str) -> Result<(), &'static str> {
    if rel.is_empty() {
        return Err("must not be empty");
    }
    if rel.contains('\0') {
        return Err("must not contain NUL");
    }
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("must not contain '..'"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be relative to the files directory");
            }
        }
    }
    Ok(())
}

impl FilesDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory as configured.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` joined to the root, after the lexical check.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, JobError> {
        self.resolve_path(rel).map_err(PathError::into_job_error)
    }

    /// An existing file or directory to read: its canonical path, refused when a symlink on
    /// the way leads outside the root.
    pub fn existing(&self, rel: &str) -> Result<PathBuf, JobError> {
        self.existing_path(rel).map_err(PathError::into_job_error)
    }

    /// A file to write: its parent directories are created and checked to be inside the
    /// root; a symlink in the file's own place is replaced, never written through.
    pub fn output(&self, rel: &str) -> Result<PathBuf, JobError> {
        self.output_path(rel).map_err(PathError::into_job_error)
    }

    fn resolve_path(&self, rel: &str) -> Result<PathBuf, PathError> {
        check_relative(rel).map_err(|reason| PathError::Invalid {
            path: rel.to_owned(),
            reason,
        })?;
        Ok(self.root.join(rel))
    }

    /// The canonical root, created if missing.
    fn canonical_root(&self) -> Result<PathBuf, PathError> {
        let io = |source| PathError::Io {
            path: self.root.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        self.root.canonicalize().map_err(io)
    }

    fn existing_path(&self, rel: &str) -> Result<PathBuf, PathError> {
        let joined = self.resolve_path(rel)?;
        let root = self.canonical_root()?;
        let real = joined.canonicalize().map_err(|source| PathError::Io {
            path: rel.to_owned(),
            source,
        })?;
        if !real.starts_with(&root) {
            return Err(PathError::Escapes {
                path: rel.to_owned(),
            });
        }
        Ok(real)
    }

    fn output_path(&self, rel: &str) -> Result<PathBuf, PathError> {
        let joined = self.resolve_path(rel)?;
        let root = self.canonical_root()?;
        let io = |source| PathError::Io {
            path: rel.to_owned(),
            source,
        };
        let name = joined.file_name().ok_or(PathError::Invalid {
            path: rel.to_owned(),
            reason: "must name a file",
        })?;
        let parent = joined.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent).map_err(io)?;
        let real_parent = parent.canonicalize().map_err(io)?;
        if !real_parent.starts_with(&root) {
            return Err(PathError::Escapes {
                path: rel.to_owned(),
            });
        }
        let target = real_parent.join(name);
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&target).map_err(io)?;
        }
        Ok(target)
    }

    /// `path` (inside the canonical root) as a path relative to the root, for results that a
    /// later chain step feeds back in.
    pub fn relative(&self, path: &Path) -> String {
        let root = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone());
        path.strip_prefix(&root)
            .or_else(|_| path.strip_prefix(&self.root))
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }
}

/// The bytes of the regular file at `path` (named `what` in errors) if it holds at most
/// `max_bytes`; else the error `over` makes. The size is checked before reading, so a huge
/// file is refused without being loaded, and the read is capped, so a file growing meanwhile
/// cannot take more. A FIFO or device (whose read may never end) is refused. Blocking: call
/// it from `spawn_blocking`.
pub(crate) fn read_capped(
    path: &Path,
    what: &str,
    max_bytes: u64,
    over: impl Fn() -> JobError,
) -> Result<Vec<u8>, JobError> {
    use std::io::Read;
    let io = |e: io::Error| io_error(what, &e);
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(JobError::permanent(format!("{what}: not a regular file")));
    }
    if meta.len() > max_bytes {
        return Err(over());
    }
    let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(path)
        .map_err(io)?
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(io)?;
    if body.len() as u64 > max_bytes {
        return Err(over());
    }
    Ok(body)
}

/// Sorts an I/O error: a missing file or a refused permission will not fix itself, a full
/// disk or an interrupted read may.
pub(crate) fn io_error(what: &str, e: &io::Error) -> JobError {
    use io::ErrorKind::*;
    let message = format!("{what}: {e}");
    match e.kind() {
        NotFound | PermissionDenied | InvalidInput | InvalidData | IsADirectory | NotADirectory
        | AlreadyExists => JobError::permanent(message),
        _ => JobError::retryable(message),
    }
}

/// `s` with every character but ASCII letters, digits and `-` replaced by `_`: a job id (a
/// UUID, but a job is data) made safe to use in a file or directory name.
pub(crate) fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_rules() {
        assert!(check_relative("a/b.png").is_ok());
        assert!(check_relative("./a").is_ok());
        assert!(check_relative("").is_err());
        assert!(check_relative("/etc/passwd").is_err());
        assert!(check_relative("a/../../b").is_err());
        assert!(check_relative("..").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_cannot_lead_out() {
        let outside = tempfile::tempdir().expect("tmp");
        let root = tempfile::tempdir().expect("tmp");
        std::fs::write(outside.path().join("secret"), b"x").expect("write");
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).expect("link");
        let files = FilesDir::new(root.path());
        assert!(matches!(
            files.existing_path("link/secret"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            files.output_path("link/new"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            files.existing("link/secret"),
            Err(JobError::Permanent { .. })
        ));
        let out = files.output("sub/ok.txt").expect("inside");
        assert_eq!(files.relative(&out), "sub/ok.txt");
    }
}
