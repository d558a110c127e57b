//! The harness binary end to end: a short register run against real
//! `atoll` processes with the kill nemesis must record a valid history.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_short_register_run_under_kill_is_valid() {
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_atoll-jepsen"));
    let atoll = harness.with_file_name("atoll");
    assert!(
        atoll.exists(),
        "{} is missing: run the whole workspace's tests",
        atoll.display()
    );
    let out = tempfile_dir();
    let output = Command::new(&harness)
        .args([
            "--workload",
            "register",
            "--nemesis",
            "kill",
            "--time",
            "10s",
            "--fault-period",
            "2s",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("verdict: valid"), "{stdout}");
    assert!(stdout.contains("recovered true"), "{stdout}");
    assert!(
        !stdout.contains("faults 0;"),
        "the nemesis really killed nodes: {stdout}"
    );
    assert!(out.join("history.jsonl").exists());
    let _ = std::fs::remove_dir_all(&out);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("atoll-jepsen-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
