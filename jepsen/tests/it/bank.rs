//! The bank checker: every ok read shows the initial total over exactly the
//! bank's accounts, and no negative balance when transfers are guarded.

use std::collections::BTreeMap;

use atoll_jepsen::{check_bank_history, BankSpec, Op, OpKind, Outcome, ProcessId, Reply, Verdict};

fn spec(allow_negative: bool) -> BankSpec {
    let initial = [("a", 50), ("b", 50)].map(|(k, v)| (k.to_string(), v));
    BankSpec {
        initial: BTreeMap::from(initial),
        allow_negative,
    }
}

fn transfer(t: u64, amount: i64) -> Op {
    let kind = OpKind::Transfer {
        from: "a".into(),
        to: "b".into(),
        amount,
    };
    Op::invoked(ProcessId(1), "{bank}", kind, t).completed(Outcome::Ok(Reply::Done), t + 5)
}

fn read(t: u64, balances: &[(&str, i64)]) -> Op {
    let map = balances.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    let outcome = Outcome::Ok(Reply::Balances(map));
    Op::invoked(ProcessId(2), "{bank}", OpKind::ReadBalances, t).completed(outcome, t + 5)
}

#[test]
fn conserved_total_is_valid() {
    let history = [
        read(0, &[("a", 50), ("b", 50)]),
        transfer(10, 20),
        read(20, &[("a", 30), ("b", 70)]),
    ];
    assert_eq!(
        check_bank_history(&history, &spec(false)).unwrap(),
        Verdict::Valid
    );
}

#[test]
fn read_with_a_changed_total_is_invalid_and_named() {
    let history = [
        read(0, &[("a", 50), ("b", 50)]),
        transfer(10, 20),
        read(20, &[("a", 30), ("b", 50)]),
    ];
    let verdict = check_bank_history(&history, &spec(false)).unwrap();
    let Verdict::Invalid { explanation, ops } = verdict else {
        panic!("expected invalid, got {verdict}");
    };
    assert_eq!(ops, vec![2]);
    assert!(
        explanation.contains("#2 p2 read-balances -> {a=30, b=50}"),
        "{explanation}"
    );
    assert!(explanation.contains("total 80"), "{explanation}");
}

#[test]
fn negative_balance_is_invalid_only_when_transfers_are_guarded() {
    let history = [transfer(10, 60), read(20, &[("a", -10), ("b", 110)])];
    let guarded = check_bank_history(&history, &spec(false)).unwrap();
    assert!(guarded.is_invalid(), "{guarded}");
    assert_eq!(
        check_bank_history(&history, &spec(true)).unwrap(),
        Verdict::Valid
    );
}

#[test]
fn read_missing_an_account_is_invalid() {
    let history = [read(0, &[("a", 100)])];
    let verdict = check_bank_history(&history, &spec(false)).unwrap();
    assert!(
        verdict.to_string().contains("missing accounts b"),
        "{verdict}"
    );
}

#[test]
fn bank_without_a_successful_read_is_unknown() {
    let history = [transfer(10, 20)];
    assert!(check_bank_history(&history, &spec(false))
        .unwrap()
        .is_unknown());
}
