//! Checksummed framing for everything a node persists or streams:
//! `crc32 (4 bytes BE) ++ format version (1 byte) ++ payload`, where the crc32
//! (crc32fast) covers the version byte and the payload. A frame that fails
//! the check is [`EngineError::Corruption`], never data.

use crate::error::{EngineError, Result};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 5;

/// Frames `payload` with format `version`.
pub fn encode(version: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&[0; 4]);
    out.push(version);
    out.extend_from_slice(payload);
    seal(&mut out);
    out
}

/// Writes the checksum of `frame[4..]` into `frame[..4]`; for callers that
/// build a frame in place (4 placeholder bytes, version, payload).
pub fn seal(frame: &mut [u8]) {
    if frame.len() < HEADER_LEN {
        return;
    }
    let crc = crc32fast::hash(&frame[4..]);
    frame[..4].copy_from_slice(&crc.to_be_bytes());
}

/// Checks a frame and returns its payload, which must be in format
/// `expected_version`. `what` names the frame's kind in errors.
pub fn decode<'a>(frame: &'a [u8], expected_version: u8, what: &str) -> Result<&'a [u8]> {
    if frame.len() < HEADER_LEN {
        return Err(EngineError::Corruption(format!(
            "{what}: frame of {} bytes is shorter than its header",
            frame.len()
        )));
    }
    let stored = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let actual = crc32fast::hash(&frame[4..]);
    if stored != actual {
        return Err(EngineError::Corruption(format!(
            "{what}: crc32 mismatch (stored {stored:#010x}, computed {actual:#010x})"
        )));
    }
    let version = frame[4];
    if version != expected_version {
        return Err(EngineError::Corruption(format!(
            "{what}: unknown format version {version} (expected {expected_version})"
        )));
    }
    Ok(&frame[HEADER_LEN..])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trips() {
        let frame = encode(1, b"hello");
        assert_eq!(decode(&frame, 1, "t").unwrap(), b"hello");
    }

    #[test]
    fn wrong_version_is_corruption() {
        let frame = encode(2, b"hello");
        assert!(matches!(
            decode(&frame, 1, "t"),
            Err(EngineError::Corruption(_))
        ));
    }

    #[test]
    fn short_frame_is_corruption() {
        assert!(matches!(
            decode(b"abc", 1, "t"),
            Err(EngineError::Corruption(_))
        ));
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..64), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut frame = encode(1, &payload);
            let i = pos.index(frame.len());
            frame[i] ^= 1 << bit;
            prop_assert!(decode(&frame, 1, "t").is_err());
        }
    }
}
