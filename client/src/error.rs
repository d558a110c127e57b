//! The client's error type: one variant per stable server code, plus the
//! outcomes only a client can see (transport failures, ambiguity).

use atoll_proto::v1::{ErrorCode, ErrorDetail, KeyValue, LeaderHint, Limit};
use prost::Message;
use tonic::{Code, Status};

/// Everything a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The contacted replica does not lead the shard (retried internally;
    /// seen only when retries run out).
    #[error("not leader (leader hint: {leader:?})")]
    NotLeader {
        /// Where the leader is, if the server knew.
        leader: Option<LeaderHint>,
    },
    /// The request was routed with an old cluster map.
    #[error("stale cluster map: {0}")]
    StaleMap(String),
    /// The shard has no leader or quorum right now.
    #[error("shard unavailable: {0}")]
    ShardUnavailable(String),
    /// A compare-and-swap or batch check did not hold; nothing was written.
    #[error("compare failed on key {key:?}")]
    CasFailed {
        /// The key whose check failed (empty if it does not exist).
        key: Vec<u8>,
        /// Its current value; `None` if it does not exist.
        current: Option<KeyValue>,
        /// Set on the answer to a retry when the value the check saw was
        /// too large to keep and has changed since: `current` then has the
        /// version and expiry the check saw, and an empty value. Read the
        /// key again for its value.
        value_omitted: bool,
    },
    /// The request broke a limit or was malformed; nothing was written.
    #[error("invalid argument ({limit:?}): {message}")]
    InvalidArgument {
        /// The limit broken (`Unspecified` for other malformed input).
        limit: Limit,
        /// What was wrong, for humans.
        message: String,
    },
    /// A stored record failed its checksum on the server.
    #[error("data corruption: {0}")]
    DataCorruption(String),
    /// The request lacked valid credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The deadline passed without an answer: for a read, or for a write
    /// known not to have been applied (otherwise the error is `Ambiguous`).
    #[error("deadline exceeded: {0}")]
    Timeout(String),
    /// A write may or may not have been applied: it was sent, and no
    /// definite answer came back before the deadline.
    #[error("outcome unknown (the write may or may not have been applied): {0}")]
    Ambiguous(String),
    /// The server could not be reached.
    #[error("transport: {0}")]
    Transport(String),
    /// No endpoint answered, or none was given.
    #[error("no reachable endpoint: {0}")]
    NoEndpoint(String),
    /// The server had too much queued to take the request; it was not
    /// applied (retried internally, after a pause).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The shard refused the write because its session is gone or no
    /// longer keeps its outcome, again after the client opened a new
    /// session for it: it was not applied. (When an earlier attempt may
    /// have applied, the error is `Ambiguous` instead.)
    #[error("session expired: {0}")]
    SessionExpired(String),
    /// The cluster refused an administrative change (a node's state or
    /// capacity, a join) because its precondition does not hold; the
    /// message says which. Nothing changed.
    #[error("refused: {0}")]
    Refused(String),
    /// The server failed in a way not covered above.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Whether trying again (with the same write id) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::StaleMap(_)
                | Error::ShardUnavailable(_)
                | Error::Timeout(_)
                | Error::Ambiguous(_)
                | Error::Transport(_)
                | Error::NoEndpoint(_)
                | Error::Overloaded(_)
                | Error::SessionExpired(_)
        )
    }

    /// The leader the server pointed to, for `NotLeader`.
    pub fn leader_hint(&self) -> Option<&LeaderHint> {
        match self {
            Error::NotLeader { leader } => leader.as_ref(),
            _ => None,
        }
    }

    /// The stable server code, if the error came from a server.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::NotLeader { .. } => ErrorCode::NotLeader,
            Error::StaleMap(_) => ErrorCode::StaleMap,
            Error::ShardUnavailable(_) => ErrorCode::ShardUnavailable,
            Error::CasFailed { .. } => ErrorCode::CasFailed,
            Error::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Error::DataCorruption(_) => ErrorCode::DataCorruption,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::Timeout(_) => ErrorCode::Timeout,
            Error::Overloaded(_) => ErrorCode::Overloaded,
            Error::SessionExpired(_) => ErrorCode::SessionExpired,
            Error::Refused(_) => ErrorCode::Refused,
            Error::Internal(_) => ErrorCode::Internal,
            Error::Ambiguous(_) | Error::Transport(_) | Error::NoEndpoint(_) => return None,
        })
    }

    /// Whether the server may have received (and applied) the request.
    pub(crate) fn may_have_applied(&self) -> bool {
        matches!(
            self,
            Error::Timeout(_) | Error::Transport(_) | Error::ShardUnavailable(_)
        )
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let detail = ErrorDetail::decode(status.details())
            .ok()
            .filter(|d| d.code != 0);
        let Some(detail) = detail else {
            // No Atoll detail: the failure is in transport or tonic itself.
            return match status.code() {
                Code::Unavailable | Code::Cancelled | Code::Unknown => {
                    Error::Transport(status.message().to_string())
                }
                Code::DeadlineExceeded => Error::Timeout(status.message().to_string()),
                Code::InvalidArgument => Error::InvalidArgument {
                    limit: Limit::Unspecified,
                    message: status.message().to_string(),
                },
                Code::Unauthenticated => Error::Unauthenticated(status.message().to_string()),
                _ => Error::Internal(format!("{:?}: {}", status.code(), status.message())),
            };
        };
        let message = detail.message.clone();
        match ErrorCode::try_from(detail.code).unwrap_or(ErrorCode::Internal) {
            ErrorCode::NotLeader => Error::NotLeader {
                leader: detail.leader,
            },
            ErrorCode::StaleMap => Error::StaleMap(message),
            ErrorCode::ShardUnavailable => Error::ShardUnavailable(message),
            ErrorCode::CasFailed => Error::CasFailed {
                key: detail
                    .current
                    .as_ref()
                    .map(|c| c.key.clone())
                    .unwrap_or_default(),
                current: detail.current,
                value_omitted: detail.current_value_omitted,
            },
            ErrorCode::InvalidArgument => Error::InvalidArgument {
                limit: Limit::try_from(detail.limit).unwrap_or(Limit::Unspecified),
                message,
            },
            ErrorCode::DataCorruption => Error::DataCorruption(message),
            ErrorCode::Unauthenticated => Error::Unauthenticated(message),
            ErrorCode::Timeout => Error::Timeout(message),
            ErrorCode::Overloaded => Error::Overloaded(message),
            ErrorCode::SessionExpired => Error::SessionExpired(message),
            ErrorCode::Refused => Error::Refused(message),
            ErrorCode::Internal | ErrorCode::Unspecified => Error::Internal(message),
        }
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
