//! Group commit: one fsync makes the log appends of every shard on the node
//! durable at once (DESIGN section 3).
//!
//! Writers put their batch into the engine without syncing (so it is visible
//! to readers at once), then ask the committer to call them back once it is
//! durable. A single thread takes every waiting callback, syncs the engine's
//! write-ahead log once, and calls them all. Since the log is sequential, one
//! sync covers every write that returned before it started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use crate::engine::Engine;
use crate::error::{EngineError, Result};

type Waiter = Box<dyn FnOnce(Result<()>) + Send>;

/// Counters of the committer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct GroupCommitStats {
    /// WAL syncs performed.
    pub syncs: AtomicU64,
    /// Callbacks served; `waiters / syncs` is the mean group size.
    pub waiters: AtomicU64,
    /// Time spent in syncs, in microseconds.
    pub sync_micros: AtomicU64,
    /// Syncs that took longer than [`SLOW_SYNC`].
    pub slow_syncs: AtomicU64,
}

/// A WAL sync slower than this is counted as slow.
pub const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(100);

/// The node's single durable-sync thread.
pub struct GroupCommitter {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<thread::JoinHandle<()>>,
    stats: Arc<GroupCommitStats>,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter").finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Starts the sync thread. Dropping the committer stops it and waits
    /// for it, so the engine it holds is released before the drop returns.
    pub fn start(engine: Arc<dyn Engine>) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let stats = Arc::new(GroupCommitStats::default());
        let thread_stats = stats.clone();
        let thread = thread::Builder::new()
            .name("atoll-group-commit".into())
            .spawn(move || run(engine, rx, &thread_stats))
            .map_err(|e| EngineError::Io(format!("spawn group-commit thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Calls `done` once every write that returned before this call is
    /// durable (or with the error that prevented it).
    pub fn after_sync(&self, done: impl FnOnce(Result<()>) + Send + 'static) {
        let waiter: Waiter = Box::new(done);
        let unsent = match &self.tx {
            Some(tx) => tx.send(waiter).err().map(|mpsc::SendError(w)| w),
            None => Some(waiter),
        };
        if let Some(waiter) = unsent {
            waiter(Err(EngineError::Closed));
        }
    }

    /// Waits until every write that returned before this call is durable.
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_sync(move |res| {
            let _ = tx.send(res);
        });
        rx.await.unwrap_or(Err(EngineError::Closed))
    }

    pub fn stats(&self) -> &GroupCommitStats {
        &self.stats
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the waiters
        // already queued are served.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // A waiter that dropped the last committer would run on the
            // thread itself, which cannot wait for itself.
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn run(engine: Arc<dyn Engine>, rx: mpsc::Receiver<Waiter>, stats: &GroupCommitStats) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let result = engine.sync_wal();
        let took = started.elapsed();
        stats
            .sync_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if took > SLOW_SYNC {
            stats.slow_syncs.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "WAL sync failed; {} writes are not durable", group.len());
        }
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats
            .waiters
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        for waiter in group {
            waiter(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemEngine;

    #[test]
    fn every_waiter_is_called() {
        let committer = GroupCommitter::start(Arc::new(MemEngine::new())).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..100 {
            let tx = tx.clone();
            committer.after_sync(move |res| tx.send((i, res)).unwrap());
        }
        let mut seen: Vec<_> = (0..100).map(|_| rx.recv().unwrap()).collect();
        seen.sort_by_key(|(i, _)| *i);
        assert!(seen.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(seen.len(), 100);
        let stats = committer.stats();
        assert_eq!(stats.waiters.load(Ordering::Relaxed), 100);
        assert!(stats.syncs.load(Ordering::Relaxed) <= 100);
    }

    #[test]
    fn dropping_the_committer_releases_the_engine() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let committer = GroupCommitter::start(engine.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        committer.after_sync(move |res| tx.send(res).unwrap());
        drop(committer);
        assert!(rx.recv().unwrap().is_ok());
        assert_eq!(Arc::strong_count(&engine), 1);
    }
}
