//! The bank workload: accounts under one hash tag; clients move money
//! between two accounts with an atomic batch guarded by version checks, and
//! read every balance at once.

use std::collections::BTreeMap;

use atoll_client::{BatchOp, Client, Consistency, Error};
use atoll_jepsen::{BankSpec, Op, OpKind, Outcome, Reply};
use rand::Rng;
use tokio::time::Instant;

use super::{over, processes, write_outcome, Recorder};

/// Every account's starting balance.
const INITIAL: i64 = 100;

fn account(i: usize) -> String {
    format!("{{bank}}a{i}")
}

/// A key of the bank (for finding its shard).
pub fn sample_key() -> String {
    account(0)
}

/// The bank of `accounts` accounts, as the checker sees it.
pub fn spec(accounts: usize) -> BankSpec {
    BankSpec {
        initial: (0..accounts).map(|i| (account(i), INITIAL)).collect(),
        allow_negative: false,
    }
}

/// Opens every account (before the run's clock starts).
pub async fn setup(client: &Client, accounts: usize) -> Result<(), Error> {
    let ops = (0..accounts)
        .map(|i| BatchOp::put(account(i), INITIAL.to_string()))
        .collect();
    client.batch(ops).await.map(|_| ())
}

fn parse(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Balances and versions of `names`, read in one request.
async fn balances(client: &Client, names: &[String]) -> Result<Vec<(i64, u64)>, Error> {
    let kvs = client.batch_get(names, Consistency::Linearizable).await?;
    names
        .iter()
        .zip(kvs)
        .map(|(name, kv)| {
            let kv = kv.ok_or_else(|| Error::Internal(format!("account {name} is missing")))?;
            let balance = parse(&kv.value)
                .ok_or_else(|| Error::Internal(format!("account {name} holds no number")))?;
            Ok((balance, kv.version))
        })
        .collect()
}

/// Reads both balances, then moves `amount` if `from` covers it, in one
/// batch that checks neither account changed since.
async fn transfer(client: &Client, from: &str, to: &str, amount: i64) -> Outcome {
    let names = [from.to_string(), to.to_string()];
    let Ok(read) = balances(client, &names).await else {
        return Outcome::Fail;
    };
    let [(from_balance, from_version), (to_balance, to_version)] = read[..] else {
        return Outcome::Fail;
    };
    if from_balance < amount {
        return Outcome::Fail;
    }
    let ops = vec![
        BatchOp::check(from, from_version),
        BatchOp::check(to, to_version),
        BatchOp::put(from, (from_balance - amount).to_string()),
        BatchOp::put(to, (to_balance + amount).to_string()),
    ];
    write_outcome(client.batch(ops).await.map(|_| ()))
}

/// Runs `count` clients until `until` over `accounts` accounts.
pub async fn run(
    client: Client,
    count: u64,
    accounts: usize,
    recorder: Recorder,
    until: Instant,
) -> Vec<Op> {
    let r = recorder.clone();
    let names: Vec<String> = (0..accounts).map(account).collect();
    processes(count, move |mut process| {
        let (client, recorder, names) = (client.clone(), r.clone(), names.clone());
        async move {
            while !over(until) {
                if rand::rng().random_range(0..2) == 0 {
                    recorder
                        .record(&mut process, "bank", OpKind::ReadBalances, async {
                            match balances(&client, &names).await {
                                Ok(read) => Outcome::Ok(Reply::Balances(
                                    names
                                        .iter()
                                        .cloned()
                                        .zip(read.into_iter().map(|(b, _)| b))
                                        .collect::<BTreeMap<_, _>>(),
                                )),
                                Err(_) => Outcome::Fail,
                            }
                        })
                        .await;
                    continue;
                }
                let from = rand::rng().random_range(0..accounts);
                let to = (from + rand::rng().random_range(1..accounts)) % accounts;
                let amount = rand::rng().random_range(1..=5);
                let kind = OpKind::Transfer {
                    from: names[from].clone(),
                    to: names[to].clone(),
                    amount,
                };
                recorder
                    .record(
                        &mut process,
                        "bank",
                        kind,
                        transfer(&client, &names[from], &names[to], amount),
                    )
                    .await;
            }
        }
    })
    .await;
    recorder.history()
}
