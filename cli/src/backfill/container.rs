//! A fast reader of Avro object container files written with the current schema and no
//! compression — what `boomerang gen --out` and most exports write: the file's blocks are
//! split into datums by the model's own reader (hand-written for events, `specific.rs`), with
//! no generic `Value` built per record. Any other file goes through apache-avro's reader
//! (`input.rs`), which resolves its schema.
//!
//! The format (Avro specification, "Object Container Files"): `Obj\x01`, a metadata map
//! (`avro.schema`, `avro.codec`), a 16-byte sync marker, then blocks: a record count, a byte
//! size, the records, the sync marker.

use std::collections::HashMap;
use std::io::{BufRead, ErrorKind, Read};

use boomerang_schemas::AvroRecord;

use super::input::Item;

/// Reads a zig-zag varint `long`.
fn read_long(reader: &mut impl Read) -> std::io::Result<i64> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let mut byte = [0u8; 1];
        reader.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "a varint too long",
            ));
        }
    }
    Ok((value >> 1) as i64 ^ -((value & 1) as i64))
}

/// The most bytes one block (or one header entry) may declare: a corrupt length must not make
/// the reader allocate what the machine does not have. Writers cut blocks at tens of KiB to a
/// few MiB.
const MAX_BLOCK_BYTES: usize = 256 << 20;

/// A declared length, checked against [`MAX_BLOCK_BYTES`].
fn length(declared: i64) -> std::io::Result<usize> {
    usize::try_from(declared)
        .ok()
        .filter(|length| *length <= MAX_BLOCK_BYTES)
        .ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::InvalidData,
                format!("a length of {declared} bytes: the file is corrupt"),
            )
        })
}

fn read_bytes(reader: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let length = length(read_long(reader)?)?;
    let mut bytes = vec![0u8; length];
    reader.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The header: its metadata and sync marker.
pub struct Header {
    pub metadata: HashMap<String, Vec<u8>>,
    pub sync: [u8; 16],
}

pub fn read_header(reader: &mut impl Read) -> std::io::Result<Header> {
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic)?;
    if &magic != b"Obj\x01" {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "not an Avro object container file",
        ));
    }
    let mut metadata = HashMap::new();
    loop {
        let mut count = read_long(reader)?;
        if count == 0 {
            break;
        }
        if count < 0 {
            count = -count;
            read_long(reader)?; // the block's size in bytes
        }
        for _ in 0..count {
            let key = String::from_utf8_lossy(&read_bytes(reader)?).into_owned();
            let value = read_bytes(reader)?;
            metadata.insert(key, value);
        }
    }
    let mut sync = [0u8; 16];
    reader.read_exact(&mut sync)?;
    Ok(Header { metadata, sync })
}

/// Whether the fast path can read a file with this header: written with the current schema
/// of `T`, not compressed.
pub fn fast_path_fits<T: AvroRecord>(header: &Header) -> bool {
    let codec = header
        .metadata
        .get("avro.codec")
        .map_or("null", |codec| std::str::from_utf8(codec).unwrap_or("?"));
    let Some(schema) = header.metadata.get("avro.schema") else {
        return false;
    };
    let Ok(writer) = apache_avro::Schema::parse_str(&String::from_utf8_lossy(schema)) else {
        return false;
    };
    codec == "null" && writer.canonical_form() == T::KIND.schema().canonical_form()
}

/// The records of the blocks after a header, in order. A block that does not split into its
/// count of records ends the file with an error: its bytes are not records.
pub struct Blocks<R, T> {
    reader: R,
    sync: [u8; 16],
    block: Vec<u8>,
    at: usize,
    left: i64,
    shown: String,
    record: std::marker::PhantomData<fn() -> T>,
}

impl<R: BufRead, T: AvroRecord> Blocks<R, T> {
    pub fn new(reader: R, header: &Header, shown: String) -> Self {
        Self {
            reader,
            sync: header.sync,
            block: Vec::new(),
            at: 0,
            left: 0,
            shown,
            record: std::marker::PhantomData,
        }
    }

    fn next_block(&mut self) -> anyhow::Result<bool> {
        if self.reader.fill_buf()?.is_empty() {
            return Ok(false);
        }
        let count = read_long(&mut self.reader)?;
        let size = length(read_long(&mut self.reader)?)?;
        self.block.resize(size, 0);
        self.reader.read_exact(&mut self.block)?;
        let mut sync = [0u8; 16];
        self.reader.read_exact(&mut sync)?;
        anyhow::ensure!(sync == self.sync, "a block's sync marker does not match");
        self.at = 0;
        self.left = count;
        Ok(true)
    }
}

impl<R: BufRead, T: AvroRecord> Iterator for Blocks<R, T> {
    type Item = anyhow::Result<Item<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.left == 0 {
            match self.next_block() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(error) => return Some(Err(error.context(self.shown.clone()))),
            }
        }
        let mut rest = &self.block[self.at..];
        let before = rest.len();
        let read = T::read_datum(&mut rest);
        self.at += before - rest.len();
        self.left -= 1;
        Some(match read {
            Ok(record) => Ok(Item::Record(record)),
            Err(error) => {
                self.left = 0;
                Err(anyhow::Error::new(error).context(format!("{}: a corrupt block", self.shown)))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boomerang_schemas::PostPurchaseEvent;

    fn sample(n: usize) -> PostPurchaseEvent {
        let mut event = boomerang_testkit::samples::event();
        event.idempotency_key = format!("key-{n}");
        event.occurred_at =
            boomerang_schemas::TimestampMicros::from_unix_micros(1_700_000_000_000_000);
        event
    }

    #[test]
    fn a_file_written_by_apache_avro_is_read_back_record_for_record() {
        let mut file = Vec::new();
        {
            let mut writer = apache_avro::Writer::with_codec(
                <PostPurchaseEvent as AvroRecord>::KIND.schema(),
                &mut file,
                apache_avro::Codec::Null,
            )
            .expect("writer");
            for n in 0..2_500 {
                writer.append_ser(sample(n)).expect("append");
            }
            writer.flush().expect("flush");
        }
        let mut reader = std::io::BufReader::new(file.as_slice());
        let header = read_header(&mut reader).expect("header");
        assert!(fast_path_fits::<PostPurchaseEvent>(&header));
        let records: Vec<PostPurchaseEvent> = Blocks::new(reader, &header, "test".into())
            .map(|item| match item.expect("a record") {
                Item::Record(record) => record,
                Item::Unreadable { why, .. } => panic!("{why}"),
            })
            .collect();
        assert_eq!(records.len(), 2_500);
        assert_eq!(records[1_234], sample(1_234));
    }

    #[test]
    fn a_corrupt_length_is_refused_not_allocated() {
        assert!(length(-1).is_err());
        assert!(length(i64::MAX).is_err());
        assert_eq!(length(1024).ok(), Some(1024));
        // A header whose first metadata entry claims 2^62 bytes.
        let mut file = b"Obj\x01".to_vec();
        file.push(2); // one entry
        file.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(read_header(&mut file.as_slice()).is_err());
    }

    #[test]
    fn a_compressed_file_or_another_schema_takes_the_general_path() {
        let mut file = Vec::new();
        {
            let mut writer = apache_avro::Writer::with_codec(
                <PostPurchaseEvent as AvroRecord>::KIND.schema(),
                &mut file,
                apache_avro::Codec::Deflate(Default::default()),
            )
            .expect("writer");
            writer.append_ser(sample(1)).expect("append");
            writer.flush().expect("flush");
        }
        let header = read_header(&mut file.as_slice()).expect("header");
        assert!(!fast_path_fits::<PostPurchaseEvent>(&header));
        assert!(read_header(&mut b"{\"json\": 1}".as_slice()).is_err());
    }
}
