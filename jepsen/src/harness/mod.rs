//! The parts of a run besides the cluster ([`atoll_jepsen::cluster`]): the
//! clients of each workload, and the nemesis that injects faults.

pub mod bank;
pub mod etcd;
pub mod nemesis;
pub mod register;
pub mod register_ttl;
pub mod set;
pub mod settled;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_client::Error;
use atoll_jepsen::{Op, OpKind, Outcome, ProcessId};
use tokio::time::Instant;

/// Records operations with their times on the run's clock. Cloned into
/// every client task.
#[derive(Clone)]
pub struct Recorder {
    t0: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new(t0: Instant) -> Recorder {
        Recorder {
            t0,
            ops: Arc::default(),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Records `kind` as invoked now by `process`, awaits `call`, and
    /// records its outcome. After an ambiguous outcome the process goes on
    /// under a fresh id (the ambiguous operation may still be in flight),
    /// a little later, so as not to pile ambiguous operations onto a key.
    pub async fn record<F>(
        &self,
        process: &mut Process,
        key: &str,
        kind: OpKind,
        call: F,
    ) -> Outcome
    where
        F: std::future::Future<Output = Outcome>,
    {
        let call = async { (call.await, ()) };
        self.record_with(process, key, kind, call).await.0
    }

    /// [`Recorder::record`] for a call that also returns something besides
    /// its outcome (which the history does not keep).
    pub async fn record_with<F, T>(
        &self,
        process: &mut Process,
        key: &str,
        kind: OpKind,
        call: F,
    ) -> (Outcome, T)
    where
        F: std::future::Future<Output = (Outcome, T)>,
    {
        let op = Op::invoked(ProcessId(process.id), key.to_string(), kind, self.now());
        let (outcome, extra) = call.await;
        let op = op.completed(outcome.clone(), self.now());
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
        if outcome == Outcome::Ambiguous {
            process.id += process.stride;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (outcome, extra)
    }

    /// Every operation recorded so far.
    pub fn history(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One client process of a workload: its id in the history, and how far
/// to skip for a fresh one.
pub struct Process {
    pub id: u64,
    stride: u64,
}

impl Process {
    /// Process `index` of `count`.
    pub fn new(index: u64, count: u64) -> Process {
        Process {
            id: index,
            stride: count.max(1),
        }
    }
}

/// The outcome of a write: `Ok` applied, `Ambiguous` may have been,
/// `Fail` definitely not (refused, or never sent).
pub fn write_outcome(result: Result<(), Error>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ok(atoll_jepsen::Reply::Done),
        Err(Error::Ambiguous(_)) => Outcome::Ambiguous,
        Err(_) => Outcome::Fail,
    }
}

/// Runs `task(process)` for `count` processes concurrently until all
/// return.
pub async fn processes<F, Fut>(count: u64, task: F)
where
    F: Fn(Process) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..count)
        .map(|p| tokio::spawn(task(Process::new(p, count))))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// Whether the run's client phase is over.
pub fn over(until: Instant) -> bool {
    Instant::now() >= until
}
