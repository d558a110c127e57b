//! Reads of large values page at the node's read page budget (4 MiB by
//! default): `atollctl scan-all` and the client read 200 values of 1 MiB
//! whole, while no node's memory grows by more than 3 pages.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atoll_client::{Client, Consistency};

use crate::processes::{atollctl_bin, ProcCluster};

const VALUES: usize = 200;
const VALUE_BYTES: usize = 1 << 20;
const READ_PAGE: u64 = 4 << 20;

/// Value `i`: printable, so `atollctl` prints one line per key.
fn value_of(i: usize) -> Vec<u8> {
    vec![b'a' + (i % 26) as u8; VALUE_BYTES]
}

/// A process's resident set, in bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib << 10
}

/// Samples every node's RSS until `done`; returns each node's peak.
pub(crate) fn sample_peaks(
    pids: Vec<u32>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut peaks = vec![0; pids.len()];
        while !done.load(Ordering::SeqCst) {
            for (peak, &pid) in peaks.iter_mut().zip(&pids) {
                *peak = (*peak).max(rss(pid));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peaks
    })
}

async fn scan_all_keys(client: &Client) -> HashSet<Vec<u8>> {
    let mut keys = HashSet::new();
    let mut cursor = None;
    loop {
        let page = client.scan_all(cursor.as_ref(), 1000).await.unwrap();
        for kv in page.kvs {
            assert_eq!(kv.value.len(), VALUE_BYTES);
            assert!(keys.insert(kv.key), "a key came twice");
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return keys,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_and_batch_gets_of_large_values_page_in_bounded_memory() {
    let procs = ProcCluster::start(&["a", "b", "c"], 2);
    let client = procs.client(None).await;
    procs.wait_healthy(&client).await;
    let keys: Vec<Vec<u8>> = (0..VALUES)
        .map(|i| format!("big-{i:03}").into_bytes())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        client.put(key, value_of(i)).await.unwrap();
    }
    // Let flushes and compactions of the writes settle before the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids: Vec<u32> = (0..3).map(|i| procs.cluster.pid(i).unwrap()).collect();
    let before: Vec<u64> = pids.iter().map(|&p| rss(p)).collect();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_peaks(pids.clone(), done.clone());

    let endpoints = procs.cluster.addresses.join(",");
    let out = Command::new(atollctl_bin())
        .args(["scan-all", "--limit", "0", "--endpoints", &endpoints])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).lines().count();
    let ctl_ok = out.status.success();
    let by_client = scan_all_keys(&client).await;
    done.store(true, Ordering::SeqCst);
    let peaks = sampler.join().unwrap();

    // BatchGet reads by point lookups, which go through the block cache
    // (bounded by storage.block_cache, not by the page): checked for
    // paging, its memory reported apart.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_peaks(pids.clone(), done.clone());
    let got = client.batch_get(&keys, Consistency::Linearizable).await;
    done.store(true, Ordering::SeqCst);
    let batch_peaks = sampler.join().unwrap();
    eprintln!(
        "RSS rise during BatchGet: {:?} bytes",
        batch_peaks
            .iter()
            .zip(&before)
            .map(|(&p, &b)| p as i64 - b as i64)
            .collect::<Vec<_>>()
    );
    assert!(
        ctl_ok,
        "atollctl scan-all: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listed, VALUES, "atollctl scan-all lists every key");
    assert_eq!(by_client.len(), VALUES, "the client's scan sees every key");
    let got = got.unwrap();
    for (i, kv) in got.iter().enumerate() {
        assert_eq!(kv.as_ref().unwrap().value, value_of(i));
    }
    let rises: Vec<i64> = peaks
        .iter()
        .zip(&before)
        .map(|(&peak, &base)| peak as i64 - base as i64)
        .collect();
    eprintln!("RSS before {before:?}, rise during the scans {rises:?} bytes");
    for rise in rises {
        assert!(
            rise < 3 * READ_PAGE as i64,
            "a node's RSS rose by {} MiB while reading, over 3 read pages",
            rise >> 20
        );
    }
}
