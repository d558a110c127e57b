//! The history model: JSON lines in and out, and malformed operations
//! refused before any checker sees them.

use atoll_jepsen::{read_jsonl, write_jsonl, HistoryError, Op, OpKind, Outcome, ProcessId, Reply};

use crate::support::{cas_mismatch, read, write, write_ambiguous};

#[test]
fn jsonl_round_trip_preserves_every_op() {
    let history = vec![
        write(1, (0, 10), 1),
        read(2, (5, 15), Some(1)),
        cas_mismatch(3, (20, 30), None, 2, Some(1)),
        write_ambiguous(4, (40, 50), 3),
        Op::invoked(ProcessId(5), "x", OpKind::Read, 60),
    ];
    let mut bytes = Vec::new();
    write_jsonl(&mut bytes, &history).unwrap();
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), history.len());
    assert_eq!(read_jsonl(bytes.as_slice()).unwrap(), history);
}

#[test]
fn hand_written_json_line_parses() {
    let text = r#"
{"process":3,"key":"x","kind":{"type":"cas","expected":null,"new":5},"invoke_ns":10,"complete_ns":20,"outcome":{"ok":{"mismatch":{"current":4}}}}
{"process":4,"key":"x","kind":{"type":"write","value":6},"invoke_ns":30,"outcome":"ambiguous"}
"#;
    let ops = read_jsonl(text.as_bytes()).unwrap();
    assert_eq!(ops[0].kind, OpKind::cas(None, 5));
    assert_eq!(
        ops[0].outcome,
        Outcome::Ok(Reply::Mismatch { current: Some(4) })
    );
    assert_eq!(ops[1].complete_ns, None);
    assert_eq!(
        ops[0].to_string(),
        "p3 cas absent -> 5 mismatch (found 4) [0.000ms, 0.000ms]"
    );
    assert_eq!(ops[1].to_string(), "p4 write 6 ambiguous [0.000ms, ∞)");
}

#[test]
fn invalid_json_names_its_line() {
    let text = "\n{\"process\":1}\n";
    assert!(matches!(
        read_jsonl(text.as_bytes()),
        Err(HistoryError::Json { line: 2, .. })
    ));
}

#[test]
fn ok_outcome_without_completion_time_is_malformed() {
    let mut op = write(1, (0, 10), 1);
    op.complete_ns = None;
    assert!(matches!(
        op.validate(7),
        Err(HistoryError::Malformed { index: 7, .. })
    ));
}

#[test]
fn completion_before_invocation_is_malformed() {
    let op = write(1, (10, 5), 1);
    assert!(matches!(
        op.validate(0),
        Err(HistoryError::Malformed { .. })
    ));
}

#[test]
fn reply_that_does_not_fit_the_kind_is_malformed() {
    let op = Op::invoked(ProcessId(1), "x", OpKind::Read, 0).completed(Outcome::Ok(Reply::Done), 5);
    assert!(matches!(
        op.validate(0),
        Err(HistoryError::Malformed { .. })
    ));
}
