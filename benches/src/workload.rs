//! The workloads (YCSB-style mixes, contended compare-and-swap, atomic
//! batches), the key choice, and the driver that runs client tasks in a
//! closed loop or at a fixed offered rate.
//!
//! At a fixed rate each client task schedules its operations at fixed
//! intervals and measures each latency from the operation's *intended* start,
//! so a stalled server shows up as latency instead of as fewer samples
//! (no coordinated omission).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use tokio::time::Instant;

use crate::store::{CasOutcome, Store};

/// One workload: what each operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// Reads only.
    C,
    /// Updates only.
    W,
    /// Read a contended key, compare-and-swap it from the value read to a
    /// new one, and retry on mismatch until it swaps.
    Cas,
    /// An atomic batch of puts to keys sharing a hash tag (a txn on etcd).
    Batch,
}

impl Workload {
    /// Every workload, in the order they are listed in the help.
    pub const ALL: [Workload; 6] = [
        Workload::W,
        Workload::A,
        Workload::B,
        Workload::C,
        Workload::Cas,
        Workload::Batch,
    ];

    /// The fraction of operations that are reads, for the YCSB mixes.
    fn read_fraction(self) -> f64 {
        match self {
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
            Workload::W | Workload::Cas | Workload::Batch => 0.0,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::W => "w",
            Workload::Cas => "cas",
            Workload::Batch => "batch",
        })
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.to_string().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown workload {s:?} (expected w, a, b, c, cas or batch)"))
    }
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Zipfian: a few keys take most operations.
    Zipf,
}

/// The parameters of one measured run, shared by every target.
#[derive(Clone, Debug)]
pub struct Params {
    /// Number of keys (for `batch`: of hash tags).
    pub keys: u64,
    /// How keys are chosen.
    pub dist: Dist,
    /// The zipfian exponent.
    pub zipf_exponent: f64,
    /// Bytes per value.
    pub value_size: usize,
    /// Concurrent client tasks.
    pub clients: usize,
    /// Offered load in operations per second, all clients together; `None`
    /// for a closed loop.
    pub rate: Option<f64>,
    /// Measured time.
    pub duration: Duration,
    /// Time run before measuring, not recorded.
    pub warmup: Duration,
    /// Keys per batch, for `batch`.
    pub batch_size: usize,
    /// Number of contended keys, for `cas`.
    pub cas_keys: u64,
}

/// The key of index `i` for the YCSB mixes.
pub fn data_key(i: u64) -> Vec<u8> {
    format!("k{i:010}").into_bytes()
}

/// The contended key of index `i` for `cas`.
pub fn cas_key(i: u64) -> Vec<u8> {
    format!("cas{i:04}").into_bytes()
}

/// Key `j` of the batch with hash tag `t<tag>`: all keys of one batch land
/// in one Atoll shard.
fn batch_key(tag: u64, j: usize) -> Vec<u8> {
    format!("{{t{tag}}}/{j}").into_bytes()
}

/// Picks key indexes in `0..n` from a distribution.
#[derive(Clone, Debug)]
pub struct KeyChooser {
    n: u64,
    zipf: Option<Zipf<f64>>,
}

impl KeyChooser {
    /// A chooser over `n` keys (at least one).
    pub fn new(n: u64, dist: Dist, exponent: f64) -> anyhow::Result<Self> {
        let n = n.max(1);
        let zipf = match dist {
            Dist::Uniform => None,
            Dist::Zipf => Some(
                Zipf::new(n as f64, exponent)
                    .map_err(|e| anyhow::anyhow!("zipf over {n} keys, s={exponent}: {e}"))?,
            ),
        };
        Ok(Self { n, zipf })
    }

    /// The next key index.
    pub fn pick(&self, rng: &mut StdRng) -> u64 {
        match &self.zipf {
            // Zipf samples ranks in 1..=n; rank 1 is the hottest key.
            Some(zipf) => (zipf.sample(rng) as u64).clamp(1, self.n) - 1,
            None => rng.random_range(0..self.n),
        }
    }
}

/// A value of `size` bytes whose first bytes are unique to `(task, seq)`,
/// so that a compare-and-swap never writes the value it expects.
fn value(buf: &mut [u8], task: u64, seq: u64) -> Vec<u8> {
    let stamp = [task.to_be_bytes(), seq.to_be_bytes()].concat();
    let n = stamp.len().min(buf.len());
    buf[..n].copy_from_slice(&stamp[..n]);
    buf.to_vec()
}

/// What the client tasks of one run observed.
#[derive(Debug)]
pub struct Tally {
    /// Latencies of successful operations started in the measured window,
    /// in microseconds.
    pub hist: Histogram<u64>,
    /// The same, reads only (`get`).
    pub reads: Histogram<u64>,
    /// The same, writes only (put, compare-and-swap loop, batch).
    pub writes: Histogram<u64>,
    /// Every successful measured operation as (start, in ms since the
    /// measured window began; latency in µs), for the per-second charts.
    pub samples: Vec<(u32, u32)>,
    /// Failed operations started in the measured window.
    pub errors: u64,
    /// Compare-and-swap mismatches (each followed by a retry).
    pub conflicts: u64,
    /// Compare-and-swap loops still retrying when the run ended: neither
    /// recorded nor counted as errors.
    pub abandoned: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: new_histogram()?,
            reads: new_histogram()?,
            writes: new_histogram()?,
            samples: Vec::new(),
            errors: 0,
            conflicts: 0,
            abandoned: 0,
            first_error: None,
        })
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.hist.add(&other.hist)?;
        self.reads.add(&other.reads)?;
        self.writes.add(&other.writes)?;
        self.samples.extend(other.samples);
        self.errors += other.errors;
        self.conflicts += other.conflicts;
        self.abandoned += other.abandoned;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// A histogram of microseconds from 1 µs to one hour, 3 significant digits.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// Runs `workload` against `store` with `params`: warm-up, then the
/// measured window. `progress` shows elapsed time and operations done.
pub async fn run<S: Store>(
    store: &S,
    workload: Workload,
    params: &Params,
    progress: &ProgressBar,
) -> anyhow::Result<Tally> {
    let start = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let chooser = match workload {
        Workload::Cas => KeyChooser::new(params.cas_keys, params.dist, params.zipf_exponent)?,
        _ => KeyChooser::new(params.keys, params.dist, params.zipf_exponent)?,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..params.clients {
        let client = ClientTask {
            store: store.clone(),
            workload,
            params: params.clone(),
            chooser: chooser.clone(),
            task: task as u64,
            done: done.clone(),
        };
        tasks.spawn(client.run(start));
    }
    let total = params.warmup + params.duration;
    progress.set_length(total.as_millis() as u64);
    let ticker = {
        let (progress, done, warmup) = (progress.clone(), done.clone(), params.warmup);
        tokio::spawn(async move {
            loop {
                let elapsed = start.elapsed();
                progress.set_position(elapsed.min(total).as_millis() as u64);
                let phase = if elapsed < warmup {
                    "warm-up"
                } else if elapsed < total {
                    "measuring"
                } else {
                    "finishing"
                };
                progress.set_message(format!("{phase}, {} ops", done.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut tally = Tally::new()?;
    while let Some(joined) = tasks.join_next().await {
        tally.merge(joined??)?;
    }
    ticker.abort();
    Ok(tally)
}

/// How one operation went, when it did not fail.
#[derive(Debug, Default)]
struct OpDone {
    /// It was a read (a `get`); otherwise a write.
    read: bool,
    /// Compare-and-swap mismatches it went through.
    conflicts: u64,
    /// It was a compare-and-swap loop still retrying at the end of the run.
    abandoned: bool,
}

/// One client task: its own store handle, random source and histogram.
struct ClientTask<S> {
    store: S,
    workload: Workload,
    params: Params,
    chooser: KeyChooser,
    task: u64,
    done: Arc<AtomicU64>,
}

impl<S: Store> ClientTask<S> {
    async fn run(self, start: Instant) -> anyhow::Result<Tally> {
        let measure_from = start + self.params.warmup;
        let end = measure_from + self.params.duration;
        let mut rng = StdRng::seed_from_u64(rand::random::<u64>() ^ self.task);
        let mut buf = vec![0u8; self.params.value_size];
        rng.fill(&mut buf[..]);
        let mut tally = Tally::new()?;
        // Open loop: each task offers rate/clients operations per second,
        // the tasks staggered over one interval.
        let interval = self
            .params
            .rate
            .map(|rate| Duration::from_secs_f64(self.params.clients as f64 / rate.max(1e-9)));
        let mut next = match interval {
            Some(iv) => start + iv.mul_f64(self.task as f64 / self.params.clients as f64),
            None => start,
        };
        let mut seq = 0u64;
        loop {
            let intended = match interval {
                Some(iv) => {
                    tokio::time::sleep_until(next).await;
                    let intended = next;
                    next += iv;
                    intended
                }
                None => Instant::now(),
            };
            if intended >= end {
                break;
            }
            seq += 1;
            let result = self.op(&mut rng, &mut buf, seq, end).await;
            let latency = intended.elapsed();
            self.done.fetch_add(1, Ordering::Relaxed);
            let measured = intended >= measure_from;
            match result {
                Ok(done) if measured => {
                    tally.conflicts += done.conflicts;
                    if done.abandoned {
                        tally.abandoned += 1;
                    } else {
                        let us = (latency.as_micros() as u64).max(1);
                        tally.hist.saturating_record(us);
                        let by_kind = if done.read {
                            &mut tally.reads
                        } else {
                            &mut tally.writes
                        };
                        by_kind.saturating_record(us);
                        let start_ms = (intended - measure_from).as_millis();
                        tally.samples.push((
                            u32::try_from(start_ms).unwrap_or(u32::MAX),
                            u32::try_from(us).unwrap_or(u32::MAX),
                        ));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if measured {
                        tally.errors += 1;
                        if tally.first_error.is_none() {
                            tally.first_error = Some(format!("{e:#}"));
                        }
                    }
                    if interval.is_none() {
                        // Do not spin on a store that is down.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
        Ok(tally)
    }

    /// One operation.
    async fn op(
        &self,
        rng: &mut StdRng,
        buf: &mut [u8],
        seq: u64,
        end: Instant,
    ) -> anyhow::Result<OpDone> {
        let store = &self.store;
        match self.workload {
            Workload::A | Workload::B | Workload::C | Workload::W => {
                let key = data_key(self.chooser.pick(rng));
                let read = rng.random_bool(self.workload.read_fraction());
                if read {
                    store.get(&key).await?;
                } else {
                    store.put(&key, &value(buf, self.task, seq)).await?;
                }
                Ok(OpDone {
                    read,
                    ..OpDone::default()
                })
            }
            Workload::Cas => {
                let key = cas_key(self.chooser.pick(rng));
                let new = value(buf, self.task, seq);
                let mut conflicts = 0;
                loop {
                    let current = store.get(&key).await?;
                    match store.cas(&key, current.as_deref(), &new).await? {
                        CasOutcome::Swapped => {
                            return Ok(OpDone {
                                conflicts,
                                ..OpDone::default()
                            })
                        }
                        CasOutcome::Mismatch => conflicts += 1,
                    }
                    if Instant::now() >= end {
                        return Ok(OpDone {
                            conflicts,
                            abandoned: true,
                            ..OpDone::default()
                        });
                    }
                }
            }
            Workload::Batch => {
                let tag = self.chooser.pick(rng);
                let v = value(buf, self.task, seq);
                let pairs = (0..self.params.batch_size)
                    .map(|j| (batch_key(tag, j), v.clone()))
                    .collect();
                store.batch_put(pairs).await?;
                Ok(OpDone::default())
            }
        }
    }
}
