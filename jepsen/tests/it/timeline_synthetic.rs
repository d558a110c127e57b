//! Deterministic synthetic histories for the timeline tests and the sample
//! chart: a steady load of register operations that slows down, fails and
//! times out while a fault is active.

use atoll_jepsen::history::{Op, OpKind, Outcome, ProcessId, Reply};
use atoll_jepsen::timeline::FaultWindow;

/// A tiny deterministic generator (64-bit LCG, high bits).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `ops` operations spread evenly over `run_ms`, issued by 16 processes.
/// Inside a fault window latencies grow tenfold, 15% fail and 10% time out
/// as ambiguous after 1 s; the last 20 operations never complete.
pub fn history(ops: usize, run_ms: u64, faults: &[FaultWindow], seed: u64) -> Vec<Op> {
    let mut rng = Lcg::new(seed);
    let run_ns = run_ms * 1_000_000;
    (0..ops)
        .map(|i| {
            let invoke_ns = (i as u64 * run_ns) / ops.max(1) as u64;
            let ms = invoke_ns / 1_000_000;
            let faulty = faults.iter().any(|f| f.start_ms <= ms && ms < f.end_ms);
            let kind = match i % 3 {
                0 => OpKind::Read,
                1 => OpKind::write(i as i64),
                _ => OpKind::cas(Some(i as i64 - 1), i as i64),
            };
            let op = Op::invoked(
                ProcessId(i as u64 % 16),
                format!("r{}", i % 4),
                kind.clone(),
                invoke_ns,
            );
            if i + 20 >= ops {
                return op;
            }
            // Log-normal-ish latency around 2 ms, x10 during faults.
            let base_ms =
                2.0 * (3.0 * (rng.next_f64() - 0.5)).exp() * (1.0 + 8.0 * rng.next_f64().powi(12));
            let lat_ms = if faulty { base_ms * 10.0 } else { base_ms };
            let roll = rng.next_f64();
            let (outcome, lat_ms) = if faulty && roll < 0.10 {
                (Outcome::Ambiguous, 1000.0)
            } else if (faulty && roll < 0.25) || roll < 0.002 {
                (Outcome::Fail, lat_ms)
            } else {
                let reply = match kind {
                    OpKind::Read => Reply::Value(Some(1)),
                    _ => Reply::Done,
                };
                (Outcome::Ok(reply), lat_ms)
            };
            let complete_ns = invoke_ns + (lat_ms * 1e6) as u64;
            op.completed(outcome, complete_ns)
        })
        .collect()
}

/// Two fault windows in a 60 s run.
pub fn two_faults() -> Vec<FaultWindow> {
    vec![
        FaultWindow {
            start_ms: 12_000,
            end_ms: 22_000,
            label: "kill -9 node 2".into(),
        },
        FaultWindow {
            start_ms: 35_000,
            end_ms: 47_500,
            label: "partition {1,2} | {3} <majority> & \"quoted\"".into(),
        },
    ]
}
