//! The harness binary end to end, against real `atoll` processes: short
//! runs of the register and set workloads under kills, partitions and power
//! losses must record valid histories, and the planted bugs (stale reads,
//! acknowledging before fsync) must be caught.
//! The runs take turns: several clusters at once on a small machine only
//! measure the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Builds `atoll-lazyfs` (its own workspace) into `<target>/lazyfs`, as
/// `scripts/lazyfs.sh` does, and returns the binary.
fn lazyfs() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_BIN_EXE_atoll-jepsen"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("lazyfs");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("lazyfs/Cargo.toml");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "building {}", manifest.display());
    target.join("debug/atoll-lazyfs")
}

/// Runs the harness with `args`; returns its stdout and whether it passed.
fn harness(name: &str, args: &[&str]) -> (String, bool) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lazyfs = lazyfs();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_atoll-jepsen"));
    let atoll = binary.with_file_name("atoll");
    assert!(
        atoll.exists(),
        "{} is missing: run the whole workspace's tests",
        atoll.display()
    );
    let out = std::env::temp_dir().join(format!("atoll-jepsen-{name}-{}", std::process::id()));
    let output: Output = Command::new(&binary)
        .args(args)
        .arg("--lazyfs")
        .arg(&lazyfs)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for file in [
        "history.jsonl",
        "events.json",
        "verdict.txt",
        "timeline.svg",
    ] {
        assert!(
            Path::new(&out).join(file).exists(),
            "{file} missing\n{report}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    (report, output.status.success())
}

#[test]
fn a_short_register_run_under_kill_is_valid() {
    let (report, passed) = harness(
        "register-kill",
        &[
            "--workload",
            "register",
            "--nemesis",
            "kill",
            "--time",
            "10s",
            "--fault-period",
            "2s",
        ],
    );
    assert!(passed, "{report}");
    assert!(report.contains("verdict: valid"), "{report}");
    assert!(report.contains("recovered true"), "{report}");
    assert!(
        report.contains("missed []"),
        "the nemesis hit a leader: {report}"
    );
}

/// Keys with short TTLs expire while a node is paused: no read sees a key
/// gone before its time, or back after it.
#[test]
fn a_short_register_ttl_run_under_pause_is_valid() {
    let (report, passed) = harness(
        "register-ttl-pause",
        &[
            "--workload",
            "register-ttl",
            "--nemesis",
            "pause",
            "--time",
            "10s",
            "--fault-period",
            "2s",
        ],
    );
    assert!(passed, "{report}");
    assert!(report.contains("verdict: valid"), "{report}");
}

#[test]
fn a_short_set_run_under_partitions_is_valid() {
    let (report, passed) = harness(
        "set-partition",
        &[
            "--workload",
            "set",
            "--nemesis",
            "partition",
            "--time",
            "12s",
            "--fault-period",
            "2s",
        ],
    );
    assert!(passed, "{report}");
    assert!(report.contains("verdict: valid"), "{report}");
    assert!(
        report.contains("missed []"),
        "a partition cut off a leader: {report}"
    );
}

#[test]
fn the_planted_stale_read_bug_is_caught_under_partitions() {
    let (report, passed) = harness(
        "stale-partition",
        &[
            "--workload",
            "register",
            "--nemesis",
            "partition",
            "--time",
            "20s",
            "--fault-period",
            "3s",
            "--planted-bug",
            "stale-reads",
        ],
    );
    assert!(!passed, "{report}");
    assert!(report.contains("verdict: Invalid"), "{report}");
}

#[test]
fn a_power_loss_loses_no_acknowledged_add() {
    let (report, passed) = harness(
        "set-lose-unsynced",
        &[
            "--workload",
            "set",
            "--nemesis",
            "lose-unsynced",
            "--time",
            "12s",
            "--fault-period",
            "2s",
        ],
    );
    assert!(passed, "{report}");
    assert!(report.contains("verdict: valid"), "{report}");
    assert!(report.contains("missed []"), "{report}");
    assert!(report.contains("not fsynced dropped"), "{report}");
}

#[test]
fn acknowledging_before_fsync_loses_adds_in_a_power_loss() {
    let (report, passed) = harness(
        "set-ack-before-fsync",
        &[
            "--workload",
            "set",
            "--nemesis",
            "lose-unsynced",
            // 12 s (two or three power losses) once missed the bug in a CI
            // run under load: every loss happened to drop no acknowledged
            // add. 20 s gives it four or five chances.
            "--time",
            "20s",
            "--fault-period",
            "2s",
            "--planted-bug",
            "ack-before-fsync",
        ],
    );
    assert!(!passed, "{report}");
    assert!(report.contains("lost (acknowledged"), "{report}");
}

/// The harness against a system we did not write: etcd 3.4 (Debian's
/// etcd-server) with serializable reads is caught under partitions, with
/// linearizable reads it passes.
#[test]
fn etcd_serializable_reads_are_caught_and_linearizable_reads_pass() {
    let etcd = [
        "--target",
        "etcd",
        "--nemesis",
        "partition",
        "--time",
        "12s",
        "--fault-period",
        "2s",
    ];
    let serializable = [&etcd[..], &["--etcd-reads", "serializable"]].concat();
    let (report, passed) = harness("etcd-serializable", &serializable);
    assert!(!passed, "{report}");
    assert!(report.contains("verdict: Invalid"), "{report}");
    let linearizable = [&etcd[..], &["--etcd-reads", "linearizable"]].concat();
    let (report, passed) = harness("etcd-linearizable", &linearizable);
    assert!(passed, "{report}");
    assert!(report.contains("verdict: valid"), "{report}");
    assert!(
        report.contains("missed []"),
        "a partition cut off etcd's leader: {report}"
    );
}

/// fsync failing with EIO (and losing the unsynced data, as Linux does) or
/// a full disk on one node: the node may stop serving, but no
/// acknowledged add is lost, and once the disk is repaired and the node
/// restarted the cluster serves again.
#[test]
fn a_failing_disk_loses_no_acknowledged_add() {
    let (report, passed) = harness(
        "set-disk-fault",
        &[
            "--workload",
            "set",
            "--nemesis",
            "disk-fault",
            "--time",
            "12s",
            "--fault-period",
            "2s",
        ],
    );
    assert!(passed, "{report}");
    assert!(report.contains("verdict: valid"), "{report}");
    assert!(report.contains("missed []"), "{report}");
}
