//! The set checker: unique adds, whole-set reads.
//!
//! Each key is a separate set. Every ok read-all is checked against the
//! adds around it:
//! - *lost*: an add acknowledged before the read was invoked, or an element
//!   an earlier read (completed before this one was invoked) returned, is
//!   absent;
//! - *phantom*: an element no add ever attempted, or whose adds all came
//!   after the read completed, is present;
//! - *failed but present*: an element whose every add failed is present;
//! - *duplicated*: an element appears twice in one read.
//!
//! Ambiguous adds may or may not be present. This needs only that each read
//! sees every element linearizably, not that a read is one snapshot; a
//! harness doing stale reads must not record them as read-alls. A key with
//! adds but no ok read proves nothing and is `Unknown`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::verdict::Verdict;
use crate::history::{Element, HistoryError, Op, OpKind, Outcome, Reply, Workload};

/// How many elements of each kind of problem an explanation lists.
const SHOWN: usize = 20;

/// Checks each key of a set history; one verdict per key. Fails if an
/// operation is malformed or not a set operation; `Invalid` verdicts name
/// operations by their index in `ops`.
pub fn check_set_history(ops: &[Op]) -> Result<BTreeMap<String, Verdict>, HistoryError> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        op.validate(index)?;
        let found = op.kind.workload();
        if found != Workload::Set {
            return Err(HistoryError::WrongWorkload {
                index,
                expected: Workload::Set,
                found,
            });
        }
        by_key.entry(&op.key).or_default().push(index);
    }
    Ok(by_key
        .into_iter()
        .map(|(key, indices)| (key.to_string(), check_key(key, ops, &indices)))
        .collect())
}

/// What the history says about one element's adds.
#[derive(Default)]
struct Adds {
    /// Indices of all its adds.
    ops: Vec<usize>,
    /// Earliest invocation of a non-failed add.
    first_invoke: Option<u64>,
    /// Earliest acknowledgement of an ok add.
    acked_at: Option<(u64, usize)>,
}

fn check_key(key: &str, ops: &[Op], indices: &[usize]) -> Verdict {
    let mut adds: HashMap<Element, Adds> = HashMap::new();
    let mut reads: Vec<(usize, &[Element])> = Vec::new();
    for &index in indices {
        let op = &ops[index];
        match (&op.kind, &op.outcome) {
            (OpKind::Add { element }, outcome) => {
                let entry = adds.entry(*element).or_default();
                entry.ops.push(index);
                if *outcome != Outcome::Fail {
                    entry.first_invoke = Some(
                        entry
                            .first_invoke
                            .map_or(op.invoke_ns, |t| t.min(op.invoke_ns)),
                    );
                }
                if let (Outcome::Ok(_), Some(done)) = (outcome, op.complete_ns) {
                    if entry.acked_at.is_none_or(|(t, _)| done < t) {
                        entry.acked_at = Some((done, index));
                    }
                }
            }
            (OpKind::ReadAll, Outcome::Ok(Reply::Elements(elements))) => {
                reads.push((index, elements))
            }
            _ => {}
        }
    }
    if reads.is_empty() {
        return Verdict::Unknown {
            reason: format!("set {key:?}: no successful read-all, so nothing was checked"),
        };
    }
    reads.sort_by_key(|&(index, _)| (ops[index].invoke_ns, index));
    let mut problems = Vec::new();
    let mut involved = BTreeSet::new();
    for (n, &(index, elements)) in reads.iter().enumerate() {
        let read = &ops[index];
        let invoked = read.invoke_ns;
        let completed = read.complete_ns.unwrap_or(u64::MAX);
        let present: HashSet<Element> = elements.iter().copied().collect();
        let mut found = Found::default();
        let mut seen = HashSet::new();
        for &e in elements {
            if !seen.insert(e) {
                found.duplicated.insert(e);
            }
            match adds.get(&e) {
                None => found.phantom.insert(e),
                Some(a) => match a.first_invoke {
                    None => found.failed.insert(e),
                    Some(t) if t > completed => found.phantom.insert(e),
                    Some(_) => false,
                },
            };
        }
        for (&e, a) in &adds {
            if let Some((acked, add)) = a.acked_at {
                if acked < invoked && !present.contains(&e) {
                    found.lost.insert(e);
                    involved.insert(add);
                }
            }
        }
        for &(earlier, earlier_elements) in &reads[..n] {
            if ops[earlier].complete_ns.is_some_and(|t| t < invoked) {
                for e in earlier_elements.iter().filter(|e| !present.contains(e)) {
                    if found.lost.insert(*e) {
                        involved.insert(earlier);
                    }
                }
            }
        }
        if !found.is_empty() {
            involved.insert(index);
            for e in found.phantom.iter().chain(&found.failed) {
                involved.extend(adds.get(e).into_iter().flat_map(|a| a.ops.iter().copied()));
            }
            problems.push(format!("read #{index} {read}:\n{}", found.describe()));
        }
    }
    if problems.is_empty() {
        return Verdict::Valid;
    }
    Verdict::Invalid {
        explanation: format!("set {key:?}:\n{}", problems.join("\n")),
        ops: involved.into_iter().collect(),
    }
}

/// The problems found in one read.
#[derive(Default)]
struct Found {
    lost: BTreeSet<Element>,
    phantom: BTreeSet<Element>,
    failed: BTreeSet<Element>,
    duplicated: BTreeSet<Element>,
}

impl Found {
    fn is_empty(&self) -> bool {
        self.lost.is_empty()
            && self.phantom.is_empty()
            && self.failed.is_empty()
            && self.duplicated.is_empty()
    }

    fn describe(&self) -> String {
        [
            (
                "lost (acknowledged or seen earlier, absent here)",
                &self.lost,
            ),
            (
                "phantom (never added, or added only after this read)",
                &self.phantom,
            ),
            ("present although every add of it failed", &self.failed),
            ("duplicated", &self.duplicated),
        ]
        .into_iter()
        .filter(|(_, elements)| !elements.is_empty())
        .map(|(what, elements)| {
            let mut listed: Vec<String> =
                elements.iter().take(SHOWN).map(|e| e.to_string()).collect();
            if elements.len() > SHOWN {
                listed.push(format!("... and {} more", elements.len() - SHOWN));
            }
            format!("  {} {what}: {}", elements.len(), listed.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
    }
}
