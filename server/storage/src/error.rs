//! Storage errors.

/// What can go wrong below the state machine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A stored value failed its checksum or could not be decoded. Never
    /// returned as data: the caller must fail the request.
    #[error("data corruption: {0}")]
    Corruption(String),
    /// The underlying engine (RocksDB, the file system) failed.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// The engine has been closed.
    #[error("storage engine is closed")]
    Closed,
}

/// Result with [`EngineError`].
pub type Result<T> = std::result::Result<T, EngineError>;
