//! The verdict every checker returns. `Unknown` is not a pass: a run whose
//! checker ran out of budget, or had nothing to judge, has proved nothing.

use std::fmt;

use serde::Serialize;

/// What a checker concluded about a history (or one key of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The history keeps the promise checked.
    Valid,
    /// The history breaks it.
    Invalid {
        /// What is wrong, for humans, naming the operations involved.
        explanation: String,
        /// Indices (into the checked history) of the operations involved,
        /// ascending.
        ops: Vec<usize>,
    },
    /// The checker could not decide: out of budget, or nothing to check.
    Unknown {
        /// Why, for humans.
        reason: String,
    },
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Valid`]; `Unknown` is not.
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid)
    }

    /// Whether the verdict is [`Verdict::Invalid`].
    pub fn is_invalid(&self) -> bool {
        matches!(self, Verdict::Invalid { .. })
    }

    /// Whether the verdict is [`Verdict::Unknown`].
    pub fn is_unknown(&self) -> bool {
        matches!(self, Verdict::Unknown { .. })
    }

    /// The verdict of a whole made of parts: invalid if any part is (their
    /// explanations joined), else unknown if any part is, else valid. An
    /// empty whole is valid.
    pub fn combine<'a>(parts: impl IntoIterator<Item = &'a Verdict>) -> Verdict {
        let mut explanations = Vec::new();
        let mut ops = Vec::new();
        let mut reasons = Vec::new();
        for part in parts {
            match part {
                Verdict::Valid => {}
                Verdict::Invalid {
                    explanation,
                    ops: part_ops,
                } => {
                    explanations.push(explanation.as_str());
                    ops.extend_from_slice(part_ops);
                }
                Verdict::Unknown { reason } => reasons.push(reason.as_str()),
            }
        }
        if !explanations.is_empty() {
            ops.sort_unstable();
            ops.dedup();
            return Verdict::Invalid {
                explanation: explanations.join("\n\n"),
                ops,
            };
        }
        if !reasons.is_empty() {
            return Verdict::Unknown {
                reason: reasons.join("\n"),
            };
        }
        Verdict::Valid
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid => write!(f, "valid"),
            Verdict::Invalid { explanation, .. } => write!(f, "INVALID: {explanation}"),
            Verdict::Unknown { reason } => write!(f, "UNKNOWN (not a pass): {reason}"),
        }
    }
}
