//! `cleanup.purge` on a real directory tree with old and new files and symlinks.

use std::path::Path;
use std::time::{Duration, SystemTime};

use filetime::FileTime;
use serde_json::json;

use crate::common::{self, is_permanent, ok, run};

fn age(path: &Path, days: u64) {
    let t = FileTime::from_system_time(SystemTime::now() - Duration::from_secs(days * 86_400));
    filetime::set_symlink_file_times(path, t, t).expect("set mtime");
}

fn write(path: &Path, bytes: usize) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, vec![b'x'; bytes]).expect("write");
}

#[tokio::test]
async fn deletes_old_matching_files_and_never_follows_symlinks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    let files = config.files.dir.clone();
    let outside = tmp.path().join("outside");
    write(&files.join("old.tmp"), 100);
    write(&files.join("new.tmp"), 10);
    write(&files.join("old.log"), 10);
    write(&files.join("sub/deep/old2.tmp"), 50);
    write(&outside.join("victim.tmp"), 7);
    age(&files.join("old.tmp"), 10);
    age(&files.join("old.log"), 10);
    age(&files.join("sub/deep/old2.tmp"), 10);
    age(&outside.join("victim.tmp"), 10);
    // A directory link leading out, and a matching file link leading out.
    std::os::unix::fs::symlink(&outside, files.join("out_dir")).expect("link");
    std::os::unix::fs::symlink(outside.join("victim.tmp"), files.join("link.tmp")).expect("link");
    age(&files.join("link.tmp"), 10);
    let registry = common::registry(&config);

    let dry = ok(run(
        &registry,
        "cleanup.purge",
        json!({"older_than": "7d", "glob": "*.tmp", "dry_run": true}),
    )
    .await);
    assert_eq!(dry["deleted"], 3, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert!(files.join("old.tmp").exists(), "dry run deleted");

    let done = ok(run(
        &registry,
        "cleanup.purge",
        json!({"older_than": "7d", "glob": "*.tmp"}),
    )
    .await);
    assert_eq!(done["deleted"], 3, "{done}");
    assert_eq!(done["bytes"], 150);
    let mut listed: Vec<_> = done["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, ["link.tmp", "old.tmp", "sub/deep/old2.tmp"]);
    assert!(!files.join("old.tmp").exists());
    assert!(!files.join("sub/deep/old2.tmp").exists());
    assert!(
        std::fs::symlink_metadata(files.join("link.tmp")).is_err(),
        "the link itself goes"
    );
    assert!(files.join("new.tmp").exists(), "new file kept");
    assert!(files.join("old.log").exists(), "non-matching file kept");
    assert!(outside.join("victim.tmp").exists(), "file outside kept");
    assert!(files.join("out_dir").exists(), "directory link kept");
}

#[tokio::test]
async fn refuses_dirs_outside_the_files_dir() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    let outside = tmp.path().join("outside");
    write(&outside.join("victim.tmp"), 7);
    age(&outside.join("victim.tmp"), 10);
    std::fs::create_dir_all(&config.files.dir).expect("mkdir");
    std::os::unix::fs::symlink(&outside, config.files.dir.join("out_dir")).expect("link");
    let registry = common::registry(&config);
    let ran = run(
        &registry,
        "cleanup.purge",
        json!({"dir": "out_dir", "older_than": "1d"}),
    )
    .await;
    assert!(is_permanent(&ran.result), "{:?}", ran.result);
    assert!(outside.join("victim.tmp").exists());

    common::assert_refused(
        &registry,
        "cleanup.purge",
        vec![
            (json!({"dir": "../", "older_than": "1d"}), "payload.dir"),
            (json!({"dir": "/tmp", "older_than": "1d"}), "payload.dir"),
            (json!({"older_than": "soon"}), "payload.older_than"),
            (json!({"older_than": "1d", "glob": "a[" }), "payload.glob"),
            (json!({"glob": "*"}), "payload.older_than"),
        ],
    );
}

/// Runs `cleanup.purge` with `payload` on a thread of its own, without the capabilities that
/// let root read any directory (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`), so that a mode-000
/// directory is unreadable even when the tests run as root. Capabilities are per thread and
/// inherited by the threads a thread starts, so the runtime built here (and its blocking pool,
/// where the walk runs) has none of them, while the other tests keep theirs. Returns the run,
/// and whether `locked` was really unreadable there (false where capabilities cannot be
/// dropped, e.g. outside Linux).
fn run_without_dac_override(
    config: &hopper_jobs::JobsConfig,
    payload: serde_json::Value,
    locked: &Path,
) -> (common::Ran, bool) {
    let config = config.clone();
    let locked = locked.to_owned();
    std::thread::spawn(move || {
        use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
        if let Ok(mut sets) = capabilities(None) {
            sets.effective
                .remove(CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH);
            // Lowering the effective set is always allowed; if it fails, the probe says so.
            let _ = set_capabilities(None, sets);
        }
        let unreadable = std::fs::read_dir(&locked).is_err();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let registry = common::registry(&config);
        let ran = runtime.block_on(run(&registry, "cleanup.purge", payload));
        (ran, unreadable)
    })
    .join()
    .expect("purge thread")
}

/// A directory the worker cannot read (mode 000, someone else's) used to fail the whole
/// purge at that directory, permanently, leaving whatever came after it. Now the rest is
/// purged, and the result names what could not be read and why.
#[tokio::test]
async fn an_unreadable_directory_is_named_and_the_rest_purged() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    let files = config.files.dir.clone();
    // Several files and directories around the locked one, whatever order the walk takes.
    for path in [
        "a/old.tmp",
        "b_locked/old.tmp",
        "c/old.tmp",
        "old.tmp",
        "z/y/old.tmp",
    ] {
        write(&files.join(path), 10);
        age(&files.join(path), 10);
    }
    let locked = files.join("b_locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let (ran, unreadable) = run_without_dac_override(
        &config,
        json!({"older_than": "7d", "glob": "*.tmp"}),
        &locked,
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if !unreadable {
        // Root with capabilities that could not be dropped reads a mode-000 directory:
        // nothing is unreadable here, so only check that the purge went through it.
        eprintln!("skipped: a mode-000 directory is readable here (root with CAP_DAC_OVERRIDE)");
        let done = ok(ran);
        assert_eq!(done["deleted"], 5, "{done}");
        return;
    }
    let done = ok(ran);
    assert_eq!(done["deleted"], 4, "{done}");
    for path in ["a/old.tmp", "c/old.tmp", "old.tmp", "z/y/old.tmp"] {
        assert!(!files.join(path).exists(), "{path} kept: {done}");
    }
    assert!(files.join("b_locked/old.tmp").exists());
    let skipped = done["skipped"].as_array().expect("skipped listed");
    assert_eq!(skipped.len(), 1, "{done}");
    assert_eq!(skipped[0]["path"], "b_locked", "{done}");
    let error = skipped[0]["error"].as_str().expect("error");
    assert!(error.contains("ermission denied"), "{error}");
}

/// A directory under the purge root swapped for a symlink leading out, between the walk's
/// look at it and its deletions inside it: the walk must not delete through the link. A
/// thread swaps `files/swap` (a directory) and `files/swap_link` (a link to `outside`)
/// atomically, as fast as it can, while purges run; the old matching files outside must all
/// survive. (The walk used to re-resolve `files/swap/...` strings, and deleted them.)
#[tokio::test]
async fn a_directory_swapped_for_a_symlink_is_not_followed() {
    use rustix::fs::{CWD, RenameFlags, renameat_with};

    let tmp = tempfile::tempdir().expect("tmp");
    let config = common::config(tmp.path());
    let files = config.files.dir.clone();
    let outside = tmp.path().join("outside");
    let victims: Vec<_> = (0..40)
        .map(|i| outside.join(format!("victim{i}.tmp")))
        .collect();
    for v in &victims {
        write(v, 1);
        age(v, 10);
    }
    std::fs::create_dir_all(files.join("swap")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, files.join("swap_link")).expect("link");
    let registry = common::registry(&config);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, files) = (stop.clone(), files.clone());
        std::thread::spawn(move || {
            let (a, b) = (files.join("swap"), files.join("swap_link"));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).expect("exchange");
            }
        })
    };
    let started = std::time::Instant::now();
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let ran = run(
            &registry,
            "cleanup.purge",
            json!({"older_than": "7d", "glob": "*.tmp"}),
        )
        .await;
        runs += 1;
        let gone: Vec<_> = victims.iter().filter(|v| !v.exists()).collect();
        if !gone.is_empty() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = swapper.join();
            panic!(
                "run {runs} deleted {} files outside the root ({:?}): {:?}",
                gone.len(),
                gone[0],
                ran.result
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().expect("swapper");
    assert!(runs > 10, "only {runs} runs");
}
