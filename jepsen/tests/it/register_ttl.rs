//! The register checker on hand-written histories with TTLs: a value may
//! expire at any time from its write's invocation plus its TTL on, or stay
//! arbitrarily long; once expired, the key is absent until the next write.

use atoll_jepsen::{read_jsonl, write_jsonl, Op, OpKind, Verdict};

use crate::support::{
    cas, cas_mismatch, read, register_verdict, with_ttl, write, write_ambiguous, write_failed,
};

/// A millisecond, in the histories' nanoseconds.
const MS: u64 = 1_000_000;

/// `(from, to)` in milliseconds.
fn ms(from: u64, to: u64) -> (u64, u64) {
    (from * MS, to * MS)
}

/// A write of `value` at `t` (milliseconds) with a TTL of `ttl` ms.
fn write_ttl(p: u64, t: (u64, u64), value: i64, ttl: u64) -> Op {
    with_ttl(write(p, ms(t.0, t.1), value), ttl)
}

#[test]
fn read_of_absent_after_invoke_plus_ttl_is_valid() {
    let history = [
        write_ttl(1, (0, 10), 1, 200),
        read(2, ms(100, 110), Some(1)),
        read(2, ms(250, 260), None),
        read(3, ms(300, 310), None),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn read_of_absent_before_invoke_plus_ttl_is_invalid() {
    let history = [write_ttl(1, (0, 10), 1, 200), read(2, ms(100, 110), None)];
    let verdict = register_verdict(&history);
    let Verdict::Invalid { explanation, ops } = &verdict else {
        panic!("expected invalid, got {verdict}");
    };
    assert_eq!(ops, &vec![0, 1]);
    assert!(
        explanation.contains("The value #0 wrote may expire from 199.000ms on"),
        "{explanation}"
    );
    // Without the TTL, the read of absent is as wrong.
    let history = [write(1, ms(0, 10), 1), read(2, ms(300, 310), None)];
    assert!(register_verdict(&history).is_invalid());
}

#[test]
fn read_of_absent_overlapping_the_expiry_time_is_valid() {
    // The read may take effect at 205 ms, after the value may expire.
    let history = [write_ttl(1, (0, 10), 1, 200), read(2, ms(150, 205), None)];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn expiry_counts_from_the_write_invocation_not_its_completion() {
    // Applied at the latest at 150 ms; the server never expires before its
    // apply time plus the TTL, but the checker only knows the invocation.
    let history = [write_ttl(1, (0, 150), 1, 200), read(2, ms(205, 210), None)];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn value_may_outlive_its_ttl_arbitrarily_long() {
    let history = [
        write_ttl(1, (0, 10), 1, 200),
        read(2, ms(1_000, 1_010), Some(1)),
        read(3, ms(60_000, 60_010), Some(1)),
        read(2, ms(60_100, 60_110), None),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
}

#[test]
fn value_reappearing_after_it_was_read_absent_is_invalid() {
    let history = [
        write_ttl(1, (0, 10), 1, 200),
        read(2, ms(250, 260), None),
        read(3, ms(300, 310), Some(1)),
    ];
    let verdict = register_verdict(&history);
    assert!(verdict.is_invalid(), "{verdict}");
    let text = verdict.to_string();
    assert!(text.contains("the value #0 wrote expires"), "{text}");
}

#[test]
fn swap_of_a_value_already_read_as_expired_is_invalid() {
    let history = [
        write_ttl(1, (0, 10), 1, 200),
        read(2, ms(250, 260), None),
        with_ttl(cas(3, ms(300, 310), Some(1), 2), 200),
    ];
    assert!(register_verdict(&history).is_invalid());
}

#[test]
fn swaps_after_an_expiry_find_the_key_absent() {
    let history = [
        write_ttl(1, (0, 10), 1, 200),
        with_ttl(cas_mismatch(2, ms(250, 260), Some(1), 2, None), 300),
        with_ttl(cas(3, ms(270, 280), None, 3), 300),
        read(2, ms(290, 300), Some(3)),
        // A swap's TTL counts too: 3 may expire from 569 ms.
        read(2, ms(600, 610), None),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
    let early = [
        write_ttl(1, (0, 10), 1, 200),
        with_ttl(cas(3, ms(270, 280), None, 3), 300),
        read(2, ms(290, 300), Some(3)),
        read(2, ms(400, 410), None),
    ];
    assert!(register_verdict(&early).is_invalid());
}

#[test]
fn expiry_of_an_overwritten_value_cannot_empty_the_key() {
    let history = [
        write_ttl(1, (0, 10), 1, 200),
        write(2, ms(20, 30), 2),
        read(3, ms(500, 510), None),
    ];
    assert!(register_verdict(&history).is_invalid());
    // When the second write has a TTL too, its own expiry explains it.
    let history = [
        write_ttl(1, (0, 10), 1, 200),
        write_ttl(2, (20, 30), 2, 200),
        read(3, ms(500, 510), None),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
    // But not before its TTL from its own invocation.
    let history = [
        write_ttl(1, (0, 10), 1, 200),
        write_ttl(2, (100, 110), 2, 200),
        read(3, ms(250, 260), None),
    ];
    assert!(register_verdict(&history).is_invalid());
}

#[test]
fn ambiguous_write_with_a_ttl_may_have_taken_effect_and_expired() {
    // Nobody saw 2; only its taking effect and expiring explains absent.
    let history = [
        write(1, ms(0, 10), 1),
        read(2, ms(20, 30), Some(1)),
        with_ttl(write_ambiguous(3, ms(40, 50), 2), 200),
        read(2, ms(300, 310), None),
        read(2, ms(320, 330), None),
    ];
    assert_eq!(register_verdict(&history), Verdict::Valid);
    let too_early = [
        write(1, ms(0, 10), 1),
        with_ttl(write_ambiguous(3, ms(40, 50), 2), 200),
        read(2, ms(100, 110), None),
    ];
    assert!(register_verdict(&too_early).is_invalid());
    let failed = [
        write(1, ms(0, 10), 1),
        with_ttl(write_failed(3, ms(40, 50), 2), 200),
        read(2, ms(300, 310), None),
    ];
    assert!(register_verdict(&failed).is_invalid());
}

#[test]
fn read_of_the_old_value_after_an_expiry_and_a_rewrite_is_invalid() {
    let history = [
        write_ttl(1, (0, 10), 1, 200),
        read(2, ms(250, 260), None),
        write_ttl(1, (270, 280), 2, 200),
        read(3, ms(290, 300), Some(2)),
        read(3, ms(310, 320), Some(1)),
    ];
    assert!(register_verdict(&history).is_invalid());
}

#[test]
fn ttl_is_kept_in_json_and_optional() {
    let history = vec![
        write_ttl(1, (0, 10), 1, 250),
        with_ttl(cas(2, ms(20, 30), Some(1), 2), 900),
        write(3, ms(40, 50), 3),
    ];
    let mut bytes = Vec::new();
    write_jsonl(&mut bytes, &history).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.contains(r#""ttl_ms":250"#), "{text}");
    assert!(!text.lines().nth(2).unwrap().contains("ttl_ms"), "{text}");
    assert_eq!(read_jsonl(bytes.as_slice()).unwrap(), history);
    assert_eq!(
        history[1].to_string(),
        "p2 cas 1 -> 2 ttl 900ms ok [20.000ms, 30.000ms]"
    );
    let old = r#"{"process":4,"key":"x","kind":{"type":"write","value":6},"invoke_ns":30,"outcome":"ambiguous"}"#;
    let ops = read_jsonl(old.as_bytes()).unwrap();
    assert_eq!(ops[0].kind, OpKind::write(6));
    assert_eq!(ops[0].kind.ttl_ms(), None);
}
