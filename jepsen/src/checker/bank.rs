//! The bank checker: transfers between accounts, snapshot reads of every
//! balance.
//!
//! Transfers move money and never create or destroy it, so every ok read
//! must show exactly the bank's accounts with the initial total. When
//! transfers are guarded (a transfer that would overdraw is refused), no
//! read may show a negative balance either. The whole history is one bank;
//! `Op::key` is informational (the accounts' shared hash tag). A history
//! with no ok read proves nothing and is `Unknown`.

use std::collections::BTreeMap;

use super::verdict::Verdict;
use crate::history::{HistoryError, Op, OpKind, Outcome, Reply, Workload};

/// How many bad reads an explanation lists.
const SHOWN: usize = 20;

/// The bank a history ran against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankSpec {
    /// Every account with its balance before the run.
    pub initial: BTreeMap<String, i64>,
    /// Whether a balance may go below zero (false when transfers check
    /// the balance they debit).
    pub allow_negative: bool,
}

impl BankSpec {
    /// The total every read must show.
    pub fn total(&self) -> i128 {
        self.initial.values().map(|&b| i128::from(b)).sum()
    }
}

/// Checks every ok balance read of a bank history. Fails if an operation is
/// malformed or not a bank operation; an `Invalid` verdict names the bad
/// reads by their index in `ops`.
pub fn check_bank_history(ops: &[Op], spec: &BankSpec) -> Result<Verdict, HistoryError> {
    let total = spec.total();
    let mut reads = 0;
    let mut bad = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        op.validate(index)?;
        let found = op.kind.workload();
        if found != Workload::Bank {
            return Err(HistoryError::WrongWorkload {
                index,
                expected: Workload::Bank,
                found,
            });
        }
        if let (OpKind::ReadBalances, Outcome::Ok(Reply::Balances(balances))) =
            (&op.kind, &op.outcome)
        {
            reads += 1;
            let problems = read_problems(balances, spec, total);
            if !problems.is_empty() {
                bad.push((index, problems));
            }
        }
    }
    if reads == 0 {
        return Ok(Verdict::Unknown {
            reason: "bank: no successful balance read, so nothing was checked".to_string(),
        });
    }
    if bad.is_empty() {
        return Ok(Verdict::Valid);
    }
    let mut explanation = format!(
        "bank: {} of {reads} reads are wrong (expected total {total}):",
        bad.len()
    );
    for (index, problems) in bad.iter().take(SHOWN) {
        explanation.push_str(&format!(
            "\n  #{index} {}: {}",
            ops[*index],
            problems.join("; ")
        ));
    }
    if bad.len() > SHOWN {
        explanation.push_str(&format!("\n  ... and {} more", bad.len() - SHOWN));
    }
    Ok(Verdict::Invalid {
        explanation,
        ops: bad.into_iter().map(|(index, _)| index).collect(),
    })
}

/// What is wrong with one read, if anything.
fn read_problems(balances: &BTreeMap<String, i64>, spec: &BankSpec, total: i128) -> Vec<String> {
    let mut problems = Vec::new();
    let sum: i128 = balances.values().map(|&b| i128::from(b)).sum();
    if sum != total {
        problems.push(format!("total {sum}"));
    }
    let missing: Vec<&str> = spec
        .initial
        .keys()
        .filter(|a| !balances.contains_key(*a))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        problems.push(format!("missing accounts {}", missing.join(", ")));
    }
    let unknown: Vec<&str> = balances
        .keys()
        .filter(|a| !spec.initial.contains_key(*a))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        problems.push(format!("unknown accounts {}", unknown.join(", ")));
    }
    if !spec.allow_negative {
        let negative: Vec<String> = balances
            .iter()
            .filter(|(_, &b)| b < 0)
            .map(|(a, b)| format!("{a}={b}"))
            .collect();
        if !negative.is_empty() {
            problems.push(format!("negative balances {}", negative.join(", ")));
        }
    }
    problems
}
