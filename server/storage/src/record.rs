//! The stored form of one key's value in the `data` column family:
//! a [frame](crate::frame) whose payload is
//! `flags (1) ++ version (8 BE) ++ expires_at_ms (8 BE) ++ value`.

use crate::error::{EngineError, Result};
use crate::frame;

/// Format version of records.
const FORMAT: u8 = 1;
const FIXED: usize = 1 + 8 + 8;

/// One key's current value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Log index of the write that made this value.
    pub version: u64,
    /// Unix milliseconds after which the record reads as absent; 0 = never.
    pub expires_at_ms: u64,
    pub value: Vec<u8>,
}

impl Record {
    /// Whether the record has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(frame::HEADER_LEN + FIXED + self.value.len());
        out.extend_from_slice(&[0; 4]);
        out.push(FORMAT);
        out.push(0); // flags: none defined yet
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.extend_from_slice(&self.value);
        frame::seal(&mut out);
        out
    }

    pub fn decode(stored: &[u8]) -> Result<Self> {
        let payload = frame::decode(stored, FORMAT, "record")?;
        if payload.len() < FIXED {
            return Err(EngineError::Corruption(format!(
                "record: payload of {} bytes is shorter than {FIXED}",
                payload.len()
            )));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Record {
            version: u64_at(1),
            expires_at_ms: u64_at(9),
            value: payload[FIXED..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = Record {
            version: 7,
            expires_at_ms: 99,
            value: b"v".to_vec(),
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn a_flipped_value_byte_is_corruption() {
        let r = Record {
            version: 7,
            expires_at_ms: 0,
            value: b"value".to_vec(),
        };
        let mut stored = r.encode();
        let last = stored.len() - 1;
        stored[last] ^= 0x01;
        assert!(matches!(
            Record::decode(&stored),
            Err(EngineError::Corruption(_))
        ));
    }

    #[test]
    fn expiry_zero_never_expires() {
        let r = Record {
            version: 1,
            expires_at_ms: 0,
            value: vec![],
        };
        assert!(!r.is_expired(u64::MAX));
        let r = Record {
            version: 1,
            expires_at_ms: 10,
            value: vec![],
        };
        assert!(r.is_expired(10));
        assert!(!r.is_expired(9));
    }
}
