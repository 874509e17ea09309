//! Avro datum encoding and decoding of the model (the bytes after a Confluent frame header).
//!
//! Encoding goes straight from serde to bytes with the current schema. Decoding data written
//! with the current schema does the same in reverse; data written with another (earlier)
//! version is resolved against the current schema first, so old producers keep working.

use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::catalog::SchemaKind;
use crate::specific::{Malformed, Reader};

/// A model type with a schema in the catalog.
pub trait AvroRecord: Serialize + DeserializeOwned {
    const KIND: SchemaKind;

    /// Appends the datum (current schema). By default through apache-avro's serde path; the
    /// records on every event's path override it with hand-written code (`specific.rs`) that
    /// the tests hold byte-equal to this default.
    fn write_datum(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        encode_generic_into(self, out)
    }

    /// Reads one datum (current schema) from the front of `datum`, leaving the rest.
    fn read_datum(datum: &mut &[u8]) -> Result<Self, CodecError> {
        read_generic(datum)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode {record}")]
    Encode {
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("cannot decode {record}")]
    Decode {
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("cannot decode {record}")]
    Malformed {
        record: &'static str,
        #[source]
        source: Malformed,
    },
    #[error("{trailing} bytes follow the {record} datum")]
    TrailingBytes {
        record: &'static str,
        trailing: usize,
    },
}

/// One writer and one reader per catalogued schema, built once; indexed by `SchemaKind::index`.
static WRITERS: LazyLock<Vec<GenericDatumWriter<'static>>> = LazyLock::new(|| {
    SchemaKind::ALL
        .iter()
        .map(|kind| {
            // Invariant: the catalogued schemas parse and resolve (tested in catalog).
            GenericDatumWriter::builder(kind.schema())
                .build()
                .unwrap_or_else(|error| panic!("{} does not resolve: {error}", kind.file_name()))
        })
        .collect()
});

static READERS: LazyLock<Vec<GenericDatumReader<'static>>> = LazyLock::new(|| {
    SchemaKind::ALL
        .iter()
        .map(|kind| {
            // Invariant: the catalogued schemas parse and resolve (tested in catalog).
            GenericDatumReader::builder(kind.schema())
                .build()
                .unwrap_or_else(|error| panic!("{} does not resolve: {error}", kind.file_name()))
        })
        .collect()
});

fn writer(kind: SchemaKind) -> &'static GenericDatumWriter<'static> {
    &WRITERS[kind.index()]
}

fn current_reader(kind: SchemaKind) -> &'static GenericDatumReader<'static> {
    &READERS[kind.index()]
}

/// Appends `value`'s Avro datum (current schema) to `out`.
pub fn encode_into<T: AvroRecord>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    value.write_datum(out)
}

/// [`encode_into`] through apache-avro's serde path, whatever the record: the reference the
/// hand-written codecs are tested and measured against.
pub fn encode_generic_into<T: AvroRecord>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    writer(T::KIND)
        .write_ser(out, value)
        .map(|_| ())
        .map_err(|source| CodecError::Encode {
            record: T::KIND.full_name(),
            source: Box::new(source),
        })
}

pub fn encode<T: AvroRecord>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// `value` framed for the wire: the Confluent header for `schema_id`, then its datum.
pub fn encode_framed<T: AvroRecord>(schema_id: u32, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    crate::wire::start_frame(schema_id, &mut out);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a datum written with the current schema.
pub fn decode<T: AvroRecord>(datum: &[u8]) -> Result<T, CodecError> {
    let mut remaining = datum;
    let value = T::read_datum(&mut remaining)?;
    ensure_consumed::<T>(remaining)?;
    Ok(value)
}

/// [`decode`] through apache-avro's serde path, whatever the record.
pub fn decode_generic<T: AvroRecord>(datum: &[u8]) -> Result<T, CodecError> {
    let mut remaining = datum;
    let value = read_generic(&mut remaining)?;
    ensure_consumed::<T>(remaining)?;
    Ok(value)
}

fn read_generic<T: AvroRecord>(datum: &mut &[u8]) -> Result<T, CodecError> {
    current_reader(T::KIND)
        .read_deser(datum)
        .map_err(|source| decode_error::<T>(source))
}

/// Runs a hand-written reader over the front of `datum`.
pub(crate) fn read_specific<T: AvroRecord>(
    datum: &mut &[u8],
    read: impl FnOnce(&mut Reader<'_>) -> Result<T, Malformed>,
) -> Result<T, CodecError> {
    let mut reader = Reader { rest: datum };
    let value = read(&mut reader).map_err(|source| CodecError::Malformed {
        record: T::KIND.full_name(),
        source,
    })?;
    *datum = reader.rest;
    Ok(value)
}

/// Decodes a datum written with `writer_schema`, resolved to the current schema: fields the
/// writer lacks take their defaults, fields the reader lacks are skipped. Builds the resolution
/// on every call: keep a [`ResolvingReader`] to decode many datums of one writer schema.
pub fn decode_written_with<T: AvroRecord>(
    datum: &[u8],
    writer_schema: &Schema,
) -> Result<T, CodecError> {
    if writer_schema == T::KIND.schema() {
        return decode(datum);
    }
    ResolvingReader::<T>::new(writer_schema)?.decode(datum)
}

/// Decodes datums written with one (other) writer schema into the current model, with the
/// schema resolution built once.
pub struct ResolvingReader<'writer, T> {
    reader: GenericDatumReader<'writer>,
    record: std::marker::PhantomData<fn() -> T>,
}

impl<'writer, T: AvroRecord> ResolvingReader<'writer, T> {
    pub fn new(writer_schema: &'writer Schema) -> Result<Self, CodecError> {
        let reader = GenericDatumReader::builder(writer_schema)
            .reader_schema(T::KIND.schema())
            .build()
            .map_err(|source| decode_error::<T>(source))?;
        Ok(Self {
            reader,
            record: std::marker::PhantomData,
        })
    }

    pub fn decode(&self, datum: &[u8]) -> Result<T, CodecError> {
        let mut remaining = datum;
        let value = self
            .reader
            .read_value(&mut remaining)
            .map_err(|source| decode_error::<T>(source))?;
        ensure_consumed::<T>(remaining)?;
        apache_avro::from_value(&value).map_err(|source| decode_error::<T>(source))
    }
}

/// Encodes `value` with another (earlier) version of its schema, as a producer still on that
/// version would: fields the writer schema lacks are left out. For generators and tests of
/// schema evolution; stages always write the current version.
pub fn encode_for_writer_schema<T: AvroRecord>(
    value: &T,
    writer_schema: &Schema,
) -> Result<Vec<u8>, CodecError> {
    let encode_error = |source| CodecError::Encode {
        record: T::KIND.full_name(),
        source: Box::new(source),
    };
    let mut current = apache_avro::to_value(value).map_err(encode_error)?;
    if let (apache_avro::types::Value::Record(fields), Schema::Record(writer_record)) =
        (&mut current, writer_schema)
    {
        fields.retain(|(name, _)| writer_record.lookup.contains_key(name));
    }
    GenericDatumWriter::builder(writer_schema)
        .build()
        .and_then(|writer| writer.write_value_to_vec(current))
        .map_err(encode_error)
}

fn decode_error<T: AvroRecord>(source: apache_avro::Error) -> CodecError {
    CodecError::Decode {
        record: T::KIND.full_name(),
        source: Box::new(source),
    }
}

pub(crate) fn ensure_consumed<T: AvroRecord>(remaining: &[u8]) -> Result<(), CodecError> {
    if remaining.is_empty() {
        return Ok(());
    }
    Err(CodecError::TrailingBytes {
        record: T::KIND.full_name(),
        trailing: remaining.len(),
    })
}
