//! The register checker on hand-written histories: each known-good one is
//! valid, each known-bad one invalid, with the failing window named.

use atoll_jepsen::{check_register_history, Budget, HistoryError, Op, OpKind, ProcessId, Verdict};

use crate::support::{
    cas, cas_mismatch, on, read, register_verdict, write, write_ambiguous, write_failed, KEY,
};

fn invalid_ops(verdict: &Verdict) -> Vec<usize> {
    match verdict {
        Verdict::Invalid { ops, .. } => ops.clone(),
        other => panic!("expected invalid, got {other}"),
    }
}

#[test]
fn valid_concurrent_history_is_linearizable() {
    let history = [
        write(1, (0, 10), 1),
        write(2, (5, 20), 2),
        read(3, (6, 8), Some(1)),
        read(4, (12, 14), Some(2)),
        read(5, (3, 30), Some(2)),
        cas(1, (22, 30), Some(2), 3),
        read(2, (25, 40), Some(3)),
        cas_mismatch(3, (41, 45), Some(2), 4, Some(3)),
        read(4, (50, 51), Some(3)),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn read_of_never_written_key_sees_absent() {
    let history = [
        read(1, (0, 5), None),
        cas(2, (6, 9), None, 1),
        read(1, (10, 12), Some(1)),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn stale_read_after_a_completed_write_is_invalid() {
    let history = [
        write(1, (0, 10), 1),
        write(2, (20, 30), 2),
        read(3, (40, 50), Some(1)),
    ];
    let verdict = register_verdict(&history);
    assert!(invalid_ops(&verdict).contains(&2), "{verdict}");
}

#[test]
fn lost_acknowledged_write_is_invalid() {
    // Write 2 is acknowledged; a read concurrent with it may still see 1,
    // but every read that starts after it must not.
    let history = [
        write(1, (0, 10), 1),
        write(2, (20, 30), 2),
        read(3, (25, 35), Some(1)),
        read(3, (40, 45), Some(1)),
        read(4, (50, 55), Some(1)),
    ];
    let verdict = register_verdict(&history);
    assert!(invalid_ops(&verdict).contains(&3), "{verdict}");
}

#[test]
fn overwritten_value_read_again_is_invalid() {
    let history = [
        write(1, (0, 10), 1),
        read(2, (15, 20), Some(1)),
        write(1, (25, 30), 2),
        read(2, (35, 40), Some(2)),
        read(3, (45, 50), Some(1)),
    ];
    assert!(register_verdict(&history).is_invalid());
}

#[test]
fn two_swaps_from_the_same_value_both_succeeding_is_invalid() {
    let history = [
        write(1, (0, 10), 0),
        cas(2, (20, 40), Some(0), 1),
        cas(3, (20, 40), Some(0), 2),
    ];
    let verdict = register_verdict(&history);
    assert_eq!(invalid_ops(&verdict), vec![0, 1, 2], "{verdict}");
}

#[test]
fn swap_mismatch_must_report_the_value_held() {
    let right = [
        write(1, (0, 10), 1),
        cas_mismatch(2, (20, 30), Some(5), 6, Some(1)),
    ];
    assert_eq!(register_verdict(&right), Verdict::Valid);
    let wrong = [
        write(1, (0, 10), 1),
        cas_mismatch(2, (20, 30), Some(5), 6, Some(7)),
    ];
    assert!(register_verdict(&wrong).is_invalid());
    let contradictory = [
        write(1, (0, 10), 1),
        cas_mismatch(2, (20, 30), Some(1), 6, Some(1)),
    ];
    assert!(register_verdict(&contradictory).is_invalid());
}

#[test]
fn ambiguous_write_that_took_effect_is_valid() {
    let history = [
        write(1, (0, 10), 1),
        write_ambiguous(2, (20, 30), 2),
        read(3, (100, 110), Some(2)),
        read(4, (120, 130), Some(2)),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn ambiguous_write_may_take_effect_long_after_its_client_gave_up() {
    let history = [
        write(1, (0, 10), 1),
        write_ambiguous(2, (20, 30), 2),
        read(3, (100, 110), Some(1)),
        read(4, (200, 210), Some(2)),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn ambiguous_write_that_never_took_effect_is_valid() {
    let history = [
        write(1, (0, 10), 1),
        write_ambiguous(2, (20, 30), 2),
        read(3, (100, 110), Some(1)),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn ambiguous_write_cannot_take_effect_before_its_invocation() {
    let history = [
        write(1, (0, 10), 1),
        read(3, (12, 15), Some(2)),
        write_ambiguous(2, (20, 30), 2),
    ];
    assert!(register_verdict(&history).is_invalid());
}

#[test]
fn ambiguous_write_seen_and_then_unseen_is_invalid() {
    let history = [
        write(1, (0, 10), 1),
        write_ambiguous(2, (20, 30), 2),
        read(3, (40, 50), Some(2)),
        read(4, (60, 70), Some(1)),
    ];
    assert!(register_verdict(&history).is_invalid());
}

#[test]
fn failed_write_whose_value_is_read_is_invalid() {
    let history = [
        write(1, (0, 10), 1),
        write_failed(2, (20, 30), 2),
        read(3, (40, 50), Some(2)),
    ];
    let verdict = register_verdict(&history);
    assert_eq!(invalid_ops(&verdict), vec![0, 1, 2], "{verdict}");
    let text = verdict.to_string();
    assert!(
        text.contains("Operations that wrote 2:\n  #1 p2 write 2 fail"),
        "{text}"
    );
}

#[test]
fn read_of_a_value_nobody_wrote_is_invalid() {
    let history = [write(1, (0, 10), 1), read(2, (20, 30), Some(9))];
    let verdict = register_verdict(&history);
    assert!(
        verdict.to_string().contains("No operation ever wrote 9."),
        "{verdict}"
    );
}

#[test]
fn operations_that_merely_touch_count_as_concurrent() {
    let history = [write(1, (0, 10), 1), read(2, (10, 20), None)];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn violation_names_the_key_and_the_failing_window() {
    let history = [
        on("other", write(9, (0, 1), 7)),
        write(1, (0, 10), 1),
        write(2, (20, 30), 2),
        read(3, (40, 50), Some(1)),
    ];
    let reports = check_register_history(&history, &Budget::default()).unwrap();
    assert_eq!(reports["other"].verdict, Verdict::Valid);
    let Verdict::Invalid { explanation, ops } = &reports[KEY].verdict else {
        panic!("expected invalid: {:?}", reports[KEY]);
    };
    assert!(explanation.contains("key \"x\""), "{explanation}");
    assert!(explanation.contains("#3 p3 read -> 1 ["), "{explanation}");
    assert!(explanation.contains("register at 2"), "{explanation}");
    assert_eq!(ops, &vec![1, 2, 3], "{explanation}");
}

#[test]
fn exhausted_step_budget_is_unknown_not_valid() {
    let history: Vec<Op> = (0..20).map(|i| write(i, (0, 100), i as i64)).collect();
    let tight = Budget {
        max_steps: 5,
        ..Budget::default()
    };
    let reports = check_register_history(&history, &tight).unwrap();
    let verdict = &reports[KEY].verdict;
    assert!(verdict.is_unknown(), "{verdict}");
    assert!(!verdict.is_valid());
    assert!(!Verdict::combine([&Verdict::Valid, verdict]).is_valid());
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn exhausted_budget_on_a_bad_history_is_unknown_too() {
    let mut history: Vec<Op> = (0..10).map(|i| write(i, (0, 100), i as i64)).collect();
    history.push(read(99, (200, 210), Some(1000)));
    let tight = Budget {
        max_steps: 50,
        ..Budget::default()
    };
    let reports = check_register_history(&history, &tight).unwrap();
    assert!(reports[KEY].verdict.is_unknown(), "{:?}", reports[KEY]);
    assert!(register_verdict(&history).is_invalid());
}

#[test]
fn other_workloads_are_refused() {
    let add = Op::invoked(ProcessId(1), KEY, OpKind::Add { element: 1 }, 0);
    let result = check_register_history(&[add], &Budget::default());
    assert!(matches!(
        result,
        Err(HistoryError::WrongWorkload { index: 0, .. })
    ));
}
