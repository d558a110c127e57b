//! The consistency checkers that judge a recorded history: a per-key
//! linearizability search for registers, and direct checks for sets and
//! banks. Each returns a [`Verdict`]; `Unknown` is never a pass.

pub mod bank;
pub mod linearizable;
mod register;
mod search;
mod search_list;
pub mod set;
mod verdict;
mod window;

pub use bank::{check_bank_history, BankSpec};
pub use linearizable::{check_register_history, Budget, KeyReport};
pub use register::TTL_SLACK_NS;
pub use set::check_set_history;
pub use verdict::Verdict;
