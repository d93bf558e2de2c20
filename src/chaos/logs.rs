//! What the workers' logs say: the stale writes the broker refused.
//!
//! A write of an attempt whose lease was taken over carries a stale lease token; the broker
//! refuses it and the worker logs it at warn: a completion (`completion refused: stale lease
//! token`) or a heartbeat (`lease lost: stopped its handler`). The campaign captures every
//! worker's stderr and counts those lines.

use std::path::Path;

use anyhow::{Context, Result};

/// The log messages of a refused stale write.
const REFUSALS: [&str; 2] = [
    "completion refused: stale lease token",
    "lease lost: stopped its handler",
];

/// Counts the refused stale writes in the `worker-*.log` files of `dir`.
pub(super) fn stale_writes_refused(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for file in std::fs::read_dir(dir).context("reading the log directory")? {
        let path = file.context("reading the log directory")?.path();
        let is_worker = path
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with("worker-"));
        if !is_worker {
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        n += text
            .lines()
            .filter(|l| REFUSALS.iter().any(|r| l.contains(r)))
            .count() as u64;
    }
    Ok(n)
}
