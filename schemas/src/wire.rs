//! The Confluent wire format: a zero magic byte, the writer schema's registry id (4 bytes, big
//! endian), then the Avro datum. Pure functions, no I/O.

pub const MAGIC_BYTE: u8 = 0;
pub const HEADER_BYTES: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the record has no value")]
    Empty,
    #[error("the value is {length} bytes, shorter than the 5-byte Confluent header")]
    Truncated { length: usize },
    #[error("the value starts with byte {found:#04x}, not the Confluent magic byte 0x00")]
    BadMagicByte { found: u8 },
}

/// Splits a framed value into its schema id and Avro datum.
pub fn parse(value: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    let Some(&first) = value.first() else {
        return Err(FrameError::Empty);
    };
    if first != MAGIC_BYTE {
        return Err(FrameError::BadMagicByte { found: first });
    }
    let Some((header, datum)) = value.split_at_checked(HEADER_BYTES) else {
        return Err(FrameError::Truncated {
            length: value.len(),
        });
    };
    let schema_id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    Ok((schema_id, datum))
}

/// Writes the header for `schema_id`; the caller appends the datum.
pub fn start_frame(schema_id: u32, out: &mut Vec<u8>) {
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

/// `datum` framed for `schema_id` (an Avro record: `codec::encode_framed`).
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + datum.len());
    start_frame(schema_id, &mut out);
    out.extend_from_slice(datum);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut framed = Vec::new();
        start_frame(258, &mut framed);
        framed.extend_from_slice(b"datum");
        assert_eq!(framed[..5], [0, 0, 0, 1, 2]);
        assert_eq!(parse(&framed), Ok((258, &b"datum"[..])));
    }

    #[test]
    fn malformed_frames_are_told_apart() {
        assert_eq!(parse(b""), Err(FrameError::Empty));
        assert_eq!(
            parse(b"\x01abcdef"),
            Err(FrameError::BadMagicByte { found: 1 })
        );
        assert_eq!(
            parse(b"\x00\x00\x01"),
            Err(FrameError::Truncated { length: 3 })
        );
        assert_eq!(parse(b"\x00\x00\x00\x00\x07"), Ok((7, &b""[..])));
    }
}
