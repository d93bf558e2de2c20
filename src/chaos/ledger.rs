//! The ledger check: reads every process's ledger file back and holds each acknowledged job
//! against it and against the broker's final word.
//!
//! - `lost`: an acknowledged job that no ledger line shows completing, or that the broker
//!   does not show `succeeded`.
//! - `completed_twice`: a job with more than one `done` line. That is at-least-once delivery
//!   at work when the job was interrupted (its lease expired and it was fetched again: a
//!   second lease token in its `start` lines, or interruptions counted by the broker);
//!   without an interruption it is a fencing bug, and the campaign fails.
//! - `unexplained` also counts a succeeded job whose completion the broker accepted (the lease
//!   token of its result, see `kind`) is not the newest lease the ledger shows it started
//!   under, or has no `done` line: the broker took a stale token's completion. A `done` line
//!   is written before the acknowledgement, so without this a stale completion the broker
//!   wrongly accepted would look like one it refused.
//! - `interruptions`: starts that were not the job's one counted completion, i.e. every start
//!   beyond the first per completed job (a job is only started again after its lease
//!   expired).
//!
//! Not here: writing the lines (`kind`), the broker's answers (`client`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};

use super::client::Final;

/// What the ledger says about one job.
#[derive(Debug, Default)]
struct Entry {
    starts: u64,
    /// The lease tokens of its starts: one per fetch.
    tokens: BTreeSet<u64>,
    /// The lease tokens of its completions.
    done: Vec<u64>,
}

/// The counts of the check.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub lost: u64,
    pub completed_twice: u64,
    /// Jobs completed twice with no interruption to explain it.
    pub unexplained: u64,
    pub starts: u64,
    pub interruptions: u64,
    /// A few of the lost and unexplained jobs, for the progress lines.
    pub examples: Vec<String>,
}

/// Reads every `ledger-*.log` in `dir`.
fn read(dir: &Path) -> Result<HashMap<String, Entry>> {
    let mut jobs: HashMap<String, Entry> = HashMap::new();
    for file in std::fs::read_dir(dir).context("reading the ledger directory")? {
        let path = file.context("reading the ledger directory")?.path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines() {
            // EVENT JOB ATTEMPT TOKEN PID MS; a line cut short cannot happen (one write per
            // line), but a file is never trusted to be well formed.
            let mut f = line.split(' ');
            let (Some(event), Some(job), Some(_attempt), Some(token)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let Ok(token) = token.parse::<u64>() else {
                continue;
            };
            let e = jobs.entry(job.to_owned()).or_default();
            match event {
                "start" => {
                    e.starts += 1;
                    e.tokens.insert(token);
                }
                "done" => e.done.push(token),
                _ => {}
            }
        }
    }
    Ok(jobs)
}

/// Checks every `acknowledged` job against the ledger in `dir` and the broker's `finals`.
pub(super) fn check(
    dir: &Path,
    acknowledged: &[String],
    finals: &HashMap<String, Final>,
) -> Result<Tally> {
    let ledger = read(dir)?;
    let mut t = Tally::default();
    let empty = Entry::default();
    for id in acknowledged {
        let e = ledger.get(id).unwrap_or(&empty);
        let broker = finals.get(id);
        t.starts += e.starts;
        if e.done.is_empty() || broker.is_none_or(|f| f.state != "succeeded") {
            t.lost += 1;
            if t.examples.len() < 10 {
                let state = broker.map_or("missing", |f| f.state.as_str());
                t.examples.push(format!(
                    "lost {id}: {} completions in the ledger, {state} in the broker",
                    e.done.len()
                ));
            }
            continue;
        }
        t.interruptions += e.starts.saturating_sub(1);
        if let Some(accepted) = broker.and_then(|f| f.accepted_token)
            && (!e.done.contains(&accepted) || e.tokens.iter().any(|t| *t > accepted))
        {
            t.unexplained += 1;
            if t.examples.len() < 10 {
                t.examples.push(format!(
                    "{id}: the broker accepted the completion of lease {accepted}, \
                     not the newest one (started under {:?}, completed under {:?})",
                    e.tokens, e.done
                ));
            }
            if e.done.len() > 1 {
                t.completed_twice += 1;
            }
            continue;
        }
        if e.done.len() > 1 {
            t.completed_twice += 1;
            let fetched_again = e.tokens.len() > 1;
            let distinct_done: BTreeSet<u64> = e.done.iter().copied().collect();
            let explained = (fetched_again || broker.is_some_and(|f| f.interruptions > 0))
                && distinct_done.len() == e.done.len();
            if !explained {
                t.unexplained += 1;
                if t.examples.len() < 10 {
                    t.examples.push(format!(
                        "{id} completed {} times without an interruption (tokens {:?})",
                        e.done.len(),
                        e.done
                    ));
                }
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn done(state: &str, interruptions: u64) -> Final {
        Final {
            state: state.into(),
            interruptions,
            accepted_token: None,
        }
    }

    fn accepted(interruptions: u64, token: u64) -> Final {
        Final {
            accepted_token: Some(token),
            ..done("succeeded", interruptions)
        }
    }

    #[test]
    fn a_stale_completion_the_broker_accepted_is_unexplained() {
        let dir = tempfile::tempdir().unwrap();
        // f's lease 1 expired, lease 2 started; both wrote `done` before acknowledging.
        std::fs::write(
            dir.path().join("ledger-1.log"),
            "start f 1 1 1 0
start f 1 2 1 9
done f 1 1 1 10
done f 1 2 1 15
             start g 1 1 1 0
start g 1 2 1 9
done g 1 1 1 10
done g 1 2 1 15
             start h 1 3 1 0
done h 1 3 1 5
             start i 1 1 1 0
done i 1 1 1 5
",
        )
        .unwrap();
        let finals = HashMap::from([
            // The broker took lease 1's: stale, as lease 2 had started.
            ("f".to_owned(), accepted(1, 1)),
            // The broker took lease 2's and refused lease 1's: at-least-once, explained.
            ("g".to_owned(), accepted(1, 2)),
            // The broker names a completion no `done` line shows.
            ("h".to_owned(), accepted(0, 4)),
            ("i".to_owned(), accepted(0, 1)),
        ]);
        let ids: Vec<String> = ["f", "g", "h", "i"].map(String::from).into();
        let t = check(dir.path(), &ids, &finals).unwrap();
        assert_eq!(t.lost, 0, "{t:?}");
        assert_eq!(t.completed_twice, 2, "{t:?}");
        assert_eq!(t.unexplained, 2, "{t:?}"); // f and h
        assert!(
            t.examples.iter().any(|e| e.starts_with("f:")),
            "{:?}",
            t.examples
        );
    }

    #[test]
    fn counts_lost_duplicated_and_interrupted_jobs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ledger-1.log"),
            "start a 1 1 1 0\ndone a 1 1 1 5\n\
             start b 1 1 1 0\n\
             start c 1 1 1 0\ndone c 1 1 1 5\nstart c 1 2 1 9\ndone c 1 2 1 15\n\
             start d 1 4 1 0\ndone d 1 4 1 5\n",
        )
        .unwrap();
        // d completes again under the same token in another process: a fencing bug.
        std::fs::write(
            dir.path().join("ledger-2.log"),
            "start d 1 4 2 0\ndone d 1 4 2 5\nstart b 1 2 2 0\ngarbage\n",
        )
        .unwrap();
        let finals = HashMap::from([
            ("a".to_owned(), done("succeeded", 0)),
            ("b".to_owned(), done("running", 1)),
            ("c".to_owned(), done("succeeded", 1)),
            ("d".to_owned(), done("succeeded", 0)),
        ]);
        let ids: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
        let t = check(dir.path(), &ids, &finals).unwrap();
        assert_eq!(t.lost, 2, "{t:?}"); // b never completed, e is nowhere
        assert_eq!(t.completed_twice, 2);
        assert_eq!(t.unexplained, 1);
        assert_eq!(t.starts, 7);
        assert_eq!(t.interruptions, 2); // c's second start and d's
    }
}
