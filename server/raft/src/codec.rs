//! Encoding of what the raft crate persists: postcard inside a crc32
//! [frame](atoll_storage::frame), format version 1.

use atoll_storage::{frame, EngineError};
use serde::de::DeserializeOwned;
use serde::Serialize;

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

/// An engine error as openraft's storage traits report it: corruption is
/// invalid data, the rest is I/O.
pub fn io_err(e: EngineError) -> std::io::Error {
    match e {
        EngineError::Corruption(_) => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        e => std::io::Error::other(e),
    }
}
