//! Every error a client can see, with its stable code, mapped to a
//! `tonic::Status` in one place ([`ApiError::into_status`]).

use atoll_proto::v1::{ErrorCode, ErrorDetail, KeyValue, LeaderHint, Limit};
use prost::Message;
use tonic::{Code, Status};

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("not the leader of this shard")]
    NotLeader { leader: Option<LeaderHint> },
    #[error("stale cluster map: {message}")]
    StaleMap { map_version: u64, message: String },
    #[error("shard unavailable: {0}")]
    ShardUnavailable(String),
    #[error("compare failed on key {key}")]
    CasFailed {
        key: String,
        current: Option<KeyValue>,
        /// `current` lacks its value (see `ErrorDetail`).
        value_omitted: bool,
    },
    #[error("{message}")]
    InvalidArgument { limit: Limit, message: String },
    #[error("data corruption: {0}")]
    DataCorruption(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("session expired: {0}")]
    SessionExpired(String),
    /// A change of the cluster map whose precondition does not hold (the
    /// code says it is a refusal; the message is the reason alone).
    #[error("{0}")]
    Refused(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(limit: Limit, message: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            limit,
            message: message.into(),
        }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::NotLeader { .. } => ErrorCode::NotLeader,
            ApiError::StaleMap { .. } => ErrorCode::StaleMap,
            ApiError::ShardUnavailable(_) => ErrorCode::ShardUnavailable,
            ApiError::CasFailed { .. } => ErrorCode::CasFailed,
            ApiError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            ApiError::DataCorruption(_) => ErrorCode::DataCorruption,
            ApiError::Timeout(_) => ErrorCode::Timeout,
            ApiError::Overloaded(_) => ErrorCode::Overloaded,
            ApiError::SessionExpired(_) => ErrorCode::SessionExpired,
            ApiError::Refused(_) => ErrorCode::Refused,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The gRPC status, with an `ErrorDetail` in its details.
    pub fn into_status(self) -> Status {
        let message = self.to_string();
        let grpc = match &self {
            ApiError::NotLeader { .. }
            | ApiError::StaleMap { .. }
            | ApiError::CasFailed { .. }
            | ApiError::SessionExpired(_)
            | ApiError::Refused(_) => Code::FailedPrecondition,
            ApiError::ShardUnavailable(_) => Code::Unavailable,
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::DataCorruption(_) => Code::DataLoss,
            ApiError::Timeout(_) => Code::DeadlineExceeded,
            ApiError::Overloaded(_) => Code::ResourceExhausted,
            ApiError::Internal(_) => Code::Internal,
        };
        let mut detail = ErrorDetail {
            code: self.code() as i32,
            message: message.clone(),
            ..Default::default()
        };
        match self {
            ApiError::NotLeader { leader } => detail.leader = leader,
            ApiError::StaleMap { map_version, .. } => detail.map_version = map_version,
            ApiError::CasFailed {
                current,
                value_omitted,
                ..
            } => {
                detail.current = current;
                detail.current_value_omitted = value_omitted;
            }
            ApiError::InvalidArgument { limit, .. } => detail.limit = limit as i32,
            _ => {}
        }
        Status::with_details(grpc, message, detail.encode_to_vec().into())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        e.into_status()
    }
}

impl From<atoll_storage::EngineError> for ApiError {
    fn from(e: atoll_storage::EngineError) -> Self {
        match e {
            atoll_storage::EngineError::Corruption(m) => ApiError::DataCorruption(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
