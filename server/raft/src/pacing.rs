//! Pacing of snapshot sends (docs/design/elastic.md, "Snapshots that
//! scale"): one byte rate shared by every snapshot a node sends, and
//! deadlines by progress rather than by size, so a large snapshot is never
//! cut off while it moves, and a stalled one is given up soon.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How a node paces its snapshot sends.
#[derive(Debug)]
pub struct SnapshotPacing {
    /// The rate limit; changed when an operator sets another
    /// ([`SnapshotPacing::set_rate`]).
    bucket: Mutex<Bucket>,
    /// One permit per snapshot the node may send at once.
    slots: tokio::sync::Semaphore,
    /// A send that hands over no chunk for this long (throttling aside)
    /// has stalled.
    pub stall_after: Duration,
    /// Bytes let through since the node started (every send's chunks).
    sent: AtomicU64,
}

/// A token bucket. Its tokens may go below zero: a chunk is taken at once
/// and its bytes owed, and its sender waits until the debt is paid, so the
/// rate holds however small the bucket and however large the chunk.
#[derive(Debug)]
struct Bucket {
    /// 0: no limit.
    bytes_per_sec: u64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec as f64).min(self.capacity);
        self.refilled = now;
    }

    /// Takes `bytes` at `now`; returns how long their sender waits before
    /// sending them (until the bucket's debt, theirs included, is paid).
    fn take(&mut self, now: Instant, bytes: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= bytes as f64;
        match self.tokens < 0.0 {
            true => Duration::from_secs_f64(-self.tokens / self.bytes_per_sec as f64),
            false => Duration::ZERO,
        }
    }
}

impl SnapshotPacing {
    /// Pacing at `bytes_per_sec` (0: unlimited), with bursts of at most
    /// `burst` bytes, and at most `concurrent` sends at once (at least one).
    pub fn new(bytes_per_sec: u64, burst: u64, concurrent: usize, stall_after: Duration) -> Self {
        let bucket = Bucket {
            bytes_per_sec,
            capacity: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            refilled: Instant::now(),
        };
        Self {
            bucket: Mutex::new(bucket),
            slots: tokio::sync::Semaphore::new(concurrent.max(1)),
            stall_after,
            sent: AtomicU64::new(0),
        }
    }

    /// No rate limit, 8 sends at once; stalls after 10 s.
    pub fn unlimited() -> Self {
        Self::new(0, 0, 8, Duration::from_secs(10))
    }

    /// Waits for a turn to send a snapshot; the turn ends when the permit
    /// is dropped.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.slots.acquire().await.ok()
    }

    /// Waits until `bytes` more may be sent. Each call owes its bytes from
    /// the moment it is made and waits for everything owed before it, so
    /// concurrent sends share the rate in the order they asked.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.bucket().take(Instant::now(), bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.sent.fetch_add(bytes, Ordering::Relaxed);
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rate in bytes per second (0: no limit).
    pub fn rate(&self) -> u64 {
        self.bucket().bytes_per_sec
    }

    /// Changes the rate (0: no limit). Bytes already owed are paid at the
    /// old rate; from now on the bucket fills at the new one.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        let mut bucket = self.bucket();
        if bucket.bytes_per_sec == bytes_per_sec {
            return;
        }
        let now = Instant::now();
        if bucket.bytes_per_sec > 0 {
            bucket.refill(now);
        } else {
            // Coming from no limit: at most one burst, as a new bucket has.
            bucket.tokens = bucket.tokens.min(bucket.capacity);
            bucket.refilled = now;
        }
        bucket.bytes_per_sec = bytes_per_sec;
    }
}

impl SnapshotPacing {
    /// Snapshot bytes this node has sent since it started (counted as the
    /// rate lets each chunk through).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// What one send has done so far, for its progress deadline.
#[derive(Debug)]
pub struct SendProgress {
    started: Instant,
    /// Milliseconds after `started` of the last progress.
    last_ms: AtomicU64,
    bytes: AtomicU64,
    throttled: AtomicBool,
    all_sent: AtomicBool,
}

impl Default for SendProgress {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            throttled: AtomicBool::new(false),
            all_sent: AtomicBool::new(false),
        }
    }
}

impl SendProgress {
    /// Something moved: the transport took a chunk, or asked for the next.
    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// `bytes` more were handed to the transport.
    pub fn sent(&self, bytes: u64, last: bool) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if last {
            self.all_sent.store(true, Ordering::Relaxed);
        }
        self.touch();
    }

    /// Marks the time spent waiting for the rate limit, which is not a
    /// stall.
    pub fn set_throttled(&self, throttled: bool) {
        self.throttled.store(throttled, Ordering::Relaxed);
        self.touch();
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn all_sent(&self) -> bool {
        self.all_sent.load(Ordering::Relaxed)
    }

    /// How long nothing has moved (zero while throttled).
    pub fn idle(&self) -> Duration {
        if self.throttled.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// How long the receiver may take to install a snapshot of `bytes` once
/// all of it is sent: a minute per GiB, at least a minute.
pub fn install_deadline(bytes: u64) -> Duration {
    const GIB: u64 = 1 << 30;
    Duration::from_secs(60 * bytes.div_ceil(GIB).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_sends_share_the_rate() {
        const MIB: u64 = 1 << 20;
        let pacing = std::sync::Arc::new(SnapshotPacing::new(
            16 * MIB,
            MIB,
            2,
            Duration::from_secs(10),
        ));
        let start = std::time::Instant::now();
        let sends: Vec<_> = (0..2)
            .map(|_| {
                let pacing = pacing.clone();
                tokio::spawn(async move {
                    for _ in 0..8 {
                        pacing.acquire(MIB).await;
                    }
                })
            })
            .collect();
        for send in sends {
            send.await.unwrap();
        }
        // 16 MiB at 16 MiB/s, less the first chunk the full bucket allows:
        // never faster than the rate, however the two sends interleave.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(930), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_rate_set_later_holds_from_then_on() {
        const MIB: u64 = 1 << 20;
        let pacing = SnapshotPacing::new(0, 0, 1, Duration::from_secs(10));
        assert_eq!(pacing.rate(), 0);
        pacing.acquire(64 * MIB).await;
        pacing.set_rate(16 * MIB);
        assert_eq!(pacing.rate(), 16 * MIB);
        let start = std::time::Instant::now();
        for _ in 0..8 {
            pacing.acquire(MIB).await;
        }
        // 8 MiB at 16 MiB/s: never faster than the new rate.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(490), "{elapsed:?}");
        assert_eq!(pacing.bytes_sent(), 72 * MIB);
    }

    /// Chunks far larger than the bucket (the snapshot sender's 1 MiB
    /// chunks against a bucket of one byte) go at the rate: each waits for
    /// its own bytes, not twice.
    #[test]
    fn chunks_larger_than_the_bucket_go_at_the_rate() {
        const MIB: u64 = 1 << 20;
        let start = Instant::now();
        let mut bucket = Bucket {
            bytes_per_sec: 8 * MIB,
            capacity: 1.0,
            tokens: 1.0,
            refilled: start,
        };
        let mut now = start;
        for _ in 0..64 {
            // The sender sends once its wait is over, then asks again.
            now += bucket.take(now, MIB);
        }
        // 64 chunks of 1 MiB at 8 MiB/s: the last is sent 8 s in.
        let took = now.duration_since(start).as_secs_f64();
        assert!((took - 8.0).abs() < 0.01, "{took}");
    }

    #[tokio::test]
    async fn idleness_counts_from_the_last_progress_and_not_while_throttled() {
        let progress = SendProgress::default();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = progress.idle();
        assert!(before >= Duration::from_millis(300), "{before:?}");
        progress.sent(100, false);
        assert!(progress.idle() < before);
        progress.set_throttled(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(progress.idle(), Duration::ZERO);
        assert_eq!(progress.bytes(), 100);
        assert!(!progress.all_sent());
        progress.sent(1, true);
        assert!(progress.all_sent());
    }

    #[tokio::test]
    async fn at_most_the_configured_sends_run_at_once() {
        let pacing = SnapshotPacing::new(0, 0, 2, Duration::from_secs(10));
        let first = pacing.turn().await;
        let second = pacing.turn().await;
        let third = tokio::time::timeout(Duration::from_millis(100), pacing.turn()).await;
        assert!(third.is_err(), "a third send waits");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), pacing.turn()).await;
        assert!(third.is_ok_and(|t| t.is_some()), "and goes once one ends");
        drop(second);
    }

    #[test]
    fn install_deadlines_grow_with_size() {
        assert_eq!(install_deadline(0), Duration::from_secs(60));
        assert_eq!(install_deadline(1 << 30), Duration::from_secs(60));
        assert_eq!(install_deadline((2 << 30) + 1), Duration::from_secs(180));
    }
}
