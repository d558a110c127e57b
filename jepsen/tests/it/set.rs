//! The set checker: lost, phantom, failed-but-present and duplicated
//! elements are reported; ambiguous adds may go either way.

use atoll_jepsen::{check_set_history, Element, Op, OpKind, Outcome, ProcessId, Reply, Verdict};

fn add(p: u64, (invoke, complete): (u64, u64), element: Element, outcome: Outcome) -> Op {
    Op::invoked(ProcessId(p), "s", OpKind::Add { element }, invoke).completed(outcome, complete)
}

fn ok() -> Outcome {
    Outcome::Ok(Reply::Done)
}

fn read_all(p: u64, (invoke, complete): (u64, u64), elements: &[Element]) -> Op {
    let outcome = Outcome::Ok(Reply::Elements(elements.to_vec()));
    Op::invoked(ProcessId(p), "s", OpKind::ReadAll, invoke).completed(outcome, complete)
}

fn verdict(ops: &[Op]) -> Verdict {
    check_set_history(ops).unwrap()["s"].clone()
}

fn explanation(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Invalid { explanation, .. } => explanation,
        other => panic!("expected invalid, got {other}"),
    }
}

#[test]
fn acknowledged_adds_present_and_ambiguous_ones_either_way_is_valid() {
    let history = [
        add(1, (0, 10), 1, ok()),
        add(2, (5, 15), 2, Outcome::Ambiguous),
        add(3, (5, 15), 3, Outcome::Ambiguous),
        add(4, (20, 30), 4, Outcome::Fail),
        add(5, (40, 60), 5, ok()),
        read_all(6, (50, 55), &[1, 2]),
        read_all(6, (100, 110), &[2, 1, 5]),
    ];
    assert_eq!(verdict(&history), Verdict::Valid);
}

#[test]
fn acknowledged_add_missing_from_a_later_read_is_lost() {
    let history = [
        add(1, (0, 10), 1, ok()),
        add(2, (0, 10), 2, ok()),
        read_all(3, (20, 30), &[2]),
    ];
    let v = verdict(&history);
    assert!(explanation(&v).contains("1 lost"), "{v}");
    assert_eq!(
        v,
        Verdict::Invalid {
            explanation: explanation(&v).to_string(),
            ops: vec![0, 2]
        }
    );
}

#[test]
fn element_seen_and_then_missing_is_lost() {
    let history = [
        add(1, (0, 100), 1, Outcome::Ambiguous),
        read_all(2, (20, 30), &[1]),
        read_all(2, (40, 50), &[]),
    ];
    assert!(explanation(&verdict(&history)).contains("1 lost"));
}

#[test]
fn element_never_added_is_a_phantom() {
    let history = [add(1, (0, 10), 1, ok()), read_all(2, (20, 30), &[1, 99])];
    let v = verdict(&history);
    assert!(
        explanation(&v).contains("phantom (never added, or added only after this read): 99"),
        "{v}"
    );
}

#[test]
fn element_read_before_its_add_was_invoked_is_a_phantom() {
    let history = [read_all(2, (0, 10), &[1]), add(1, (20, 30), 1, ok())];
    assert!(explanation(&verdict(&history)).contains("phantom"));
}

#[test]
fn element_whose_add_failed_must_not_be_present() {
    let history = [
        add(1, (0, 10), 1, Outcome::Fail),
        read_all(2, (20, 30), &[1]),
    ];
    assert!(explanation(&verdict(&history)).contains("every add of it failed: 1"));
}

#[test]
fn element_read_twice_in_one_read_is_duplicated() {
    let history = [add(1, (0, 10), 1, ok()), read_all(2, (20, 30), &[1, 1])];
    assert!(explanation(&verdict(&history)).contains("1 duplicated: 1"));
}

#[test]
fn set_without_a_successful_read_is_unknown() {
    let failed_read =
        Op::invoked(ProcessId(2), "s", OpKind::ReadAll, 20).completed(Outcome::Fail, 30);
    let history = [add(1, (0, 10), 1, ok()), failed_read];
    assert!(verdict(&history).is_unknown());
}
