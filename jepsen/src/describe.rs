//! Human-readable rendering of operations, as checker explanations print
//! them: `p3 cas 4 -> 7 ok [1.200ms, 1.950ms]`, `p5 write 9 ambiguous
//! [2.000ms, ∞)`.

use std::fmt;

use crate::history::{Op, OpKind, Outcome, Reply, Value};

/// Renders a register value, with `None` as `absent`.
pub(crate) fn value(v: Option<Value>) -> String {
    v.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

fn millis(ns: u64) -> String {
    format!("{}.{:03}ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::Read => write!(f, "read"),
            OpKind::Write { value, .. } => write!(f, "write {value}"),
            OpKind::Cas { expected, new, .. } => write!(f, "cas {} -> {new}", value(*expected)),
            OpKind::Add { element } => write!(f, "add {element}"),
            OpKind::ReadAll => write!(f, "read-all"),
            OpKind::Transfer { from, to, amount } => write!(f, "transfer {amount} {from} -> {to}"),
            OpKind::ReadBalances => write!(f, "read-balances"),
        }?;
        match self.ttl_ms() {
            Some(ttl) => write!(f, " ttl {ttl}ms"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Done => write!(f, "ok"),
            Reply::Value(v) => write!(f, "-> {}", value(*v)),
            Reply::Mismatch { current } => write!(f, "mismatch (found {})", value(*current)),
            Reply::Elements(elements) => write!(f, "-> {} elements", elements.len()),
            Reply::Balances(balances) => {
                let parts: Vec<String> = balances.iter().map(|(a, b)| format!("{a}={b}")).collect();
                write!(f, "-> {{{}}}", parts.join(", "))
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(reply) => write!(f, "{reply}"),
            Outcome::Fail => write!(f, "fail"),
            Outcome::Ambiguous => write!(f, "ambiguous"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} [{}, ",
            self.process,
            self.kind,
            self.outcome,
            millis(self.invoke_ns)
        )?;
        match (&self.outcome, self.complete_ns) {
            (Outcome::Ambiguous, _) | (_, None) => write!(f, "∞)"),
            (_, Some(done)) => write!(f, "{}]", millis(done)),
        }
    }
}
