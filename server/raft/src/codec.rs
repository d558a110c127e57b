//! Encoding of what the raft crate persists: postcard inside a crc32
//! [frame](atoll_storage::frame), format version 1.

use atoll_storage::{frame, EngineError};
use openraft::{AnyError, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::StorageError;
use atoll_proto::ReplicaId;

const FORMAT: u8 = 1;

/// Frames the postcard encoding of `value`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    let payload =
        postcard::to_allocvec(value).map_err(|e| EngineError::Io(format!("encode: {e}")))?;
    Ok(frame::encode(FORMAT, &payload))
}

/// Checks and decodes a frame written by [`encode`].
pub fn decode<T: DeserializeOwned>(stored: &[u8], what: &str) -> Result<T, EngineError> {
    let payload = frame::decode(stored, FORMAT, what)?;
    postcard::from_bytes(payload).map_err(|e| EngineError::Corruption(format!("{what}: {e}")))
}

/// Wraps an engine error for openraft, as a read of `what`.
pub fn read_err(e: &EngineError) -> StorageError {
    StorageIOError::<ReplicaId>::read(AnyError::new(e)).into()
}

/// Wraps an engine error for openraft, as a write.
pub fn write_err(e: &EngineError) -> StorageError {
    StorageIOError::<ReplicaId>::write(AnyError::new(e)).into()
}
