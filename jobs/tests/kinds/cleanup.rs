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
            (json!({"glob": "*"}), "payload"),
        ],
    );
}
