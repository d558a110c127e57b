//! The set workload: clients add unique elements to a few sets and now and
//! then read a whole set; after the run every set is read once more.
//!
//! Set `s` is the keys `{s}e<element>`: one hash tag, so one shard, and a
//! read is a linearizable scan of the tag (page by page).

use atoll_client::Client;
use atoll_jepsen::{Element, Op, OpKind, Outcome, Reply};
use rand::Rng;
use tokio::time::Instant;

use super::{over, processes, write_outcome, Process, Recorder};

/// Out of 100 operations, how many are whole-set reads.
const READ_PERCENT: u32 = 2;

fn set_name(i: usize) -> String {
    format!("s{i}")
}

/// A key of set `i` (for finding its shard).
pub fn sample_key(i: usize) -> String {
    element_key(&set_name(i), 0)
}

fn element_key(set: &str, element: Element) -> String {
    format!("{{{set}}}e{element}")
}

/// Every element of `set`, by scanning its hash tag.
async fn read_all(client: &Client, set: &str) -> Result<Vec<Element>, atoll_client::Error> {
    let prefix = format!("{{{set}}}e");
    let mut elements = Vec::new();
    let mut start = prefix.clone().into_bytes();
    loop {
        let page = client.scan(&start, b"", 1000).await?;
        for kv in &page.kvs {
            let element = kv
                .key
                .strip_prefix(prefix.as_bytes())
                .and_then(|e| std::str::from_utf8(e).ok())
                .and_then(|e| e.parse().ok());
            if let Some(element) = element {
                elements.push(element);
            }
        }
        match page.resume_key {
            Some(key) => start = key,
            None => return Ok(elements),
        }
    }
}

async fn read_op(client: &Client, recorder: &Recorder, process: &mut Process, set: &str) -> bool {
    let outcome = recorder
        .record(process, set, OpKind::ReadAll, async {
            match read_all(client, set).await {
                Ok(elements) => Outcome::Ok(Reply::Elements(elements)),
                Err(_) => Outcome::Fail,
            }
        })
        .await;
    matches!(outcome, Outcome::Ok(_))
}

/// Runs `count` clients until `until` on sets `s0..s{sets}`.
pub async fn run(
    client: Client,
    count: u64,
    sets: usize,
    recorder: Recorder,
    until: Instant,
) -> Vec<Op> {
    let r = recorder.clone();
    let c = client.clone();
    processes(count, move |mut process| {
        let (client, recorder) = (c.clone(), r.clone());
        async move {
            let mut next: Element = 0;
            while !over(until) {
                let set = set_name(rand::rng().random_range(0..sets));
                if rand::rng().random_range(0..100) < READ_PERCENT {
                    read_op(&client, &recorder, &mut process, &set).await;
                    continue;
                }
                next += 1;
                let element = (process.id % count + 1) as Element * 1_000_000_000 + next;
                let key = element_key(&set, element);
                recorder
                    .record(&mut process, &set, OpKind::Add { element }, async {
                        write_outcome(client.put(&key, "1").await.map(|_| ()))
                    })
                    .await;
            }
        }
    })
    .await;
    recorder.history()
}

/// After the run (and the heal): reads every set once, retrying for up to
/// `patience`. Returns whether every set was read.
pub async fn final_reads(
    client: &Client,
    count: u64,
    sets: usize,
    recorder: &Recorder,
    patience: std::time::Duration,
) -> bool {
    let deadline = Instant::now() + patience;
    let mut process = Process::new(count, count + 1);
    for i in 0..sets {
        let set = set_name(i);
        loop {
            if read_op(client, recorder, &mut process, &set).await {
                break;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    true
}
