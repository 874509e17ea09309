//! Decoding a record's value: Confluent frame → writer schema (from the registry, by id) → the
//! current version of a typed record, resolving data written with an earlier schema version.
//! Ingest decodes raw events with it, enrich validated events and reference records, sink
//! enriched events and orders.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::marker::PhantomData;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use boomerang_schemas::codec;
use boomerang_schemas::{AvroRecord, ResolvingReader};

use crate::dead_letter::Rejection;
use crate::error_kind::{DeadLetterKind, ErrorKind};
use crate::registry::{LookupError, WriterSchemas};
use crate::stage_loop::RetryableError;
use crate::wire::{self, FrameError};

/// Where writer schemas come from: the registry in production, a map in unit tests.
pub trait WriterSchemaSource: Send {
    fn writer_schema(
        &mut self,
        id: u32,
    ) -> impl Future<Output = Result<&'static Schema, LookupError>> + Send;
}

impl WriterSchemaSource for WriterSchemas {
    fn writer_schema(
        &mut self,
        id: u32,
    ) -> impl Future<Output = Result<&'static Schema, LookupError>> + Send {
        self.get(id)
    }
}

/// How records of one writer schema id are read.
enum Reader<T> {
    /// Written with the current schema: the fast path.
    Current,
    /// Written with another compatible version: resolved to the current one.
    Resolving(ResolvingReader<'static, T>),
    /// Cannot be read as a `T`: why, and the kind of dead letter it makes.
    Refused(DeadLetterKind, String),
}

#[derive(Debug)]
pub enum DecodeFailure {
    /// The record's fault: dead-letter it.
    Rejected(Rejection),
    /// Nobody's fault: retry.
    Retry(RetryableError),
}

#[derive(Debug)]
pub struct Decoded<T> {
    pub value: T,
    pub schema_id: u32,
}

/// Schema ids are few and small: hashing them with SipHash, twice per record, showed in
/// profiles of the stages' hot paths.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }

    fn write_u32(&mut self, id: u32) {
        // Spread the bits so hashbrown's top-7-bit tags differ between ids.
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Decodes framed values into `T`, caching one reader per writer schema id.
pub struct RecordDecoder<T, Source> {
    source: Source,
    readers: HashMap<u32, Reader<T>, std::hash::BuildHasherDefault<IdHasher>>,
    record: PhantomData<fn() -> T>,
}

impl<T: AvroRecord, Source: WriterSchemaSource> RecordDecoder<T, Source> {
    pub fn new(source: Source) -> Self {
        Self {
            source,
            readers: HashMap::default(),
            record: PhantomData,
        }
    }

    /// The schema id and datum of a framed value whose writer schema is already known to be
    /// the current one, for a caller that reads the datum in place. `None` for anything else
    /// (no frame, a schema id not seen yet, an earlier version): [`Self::decode`] it instead,
    /// which also says why a record is refused.
    pub fn current_datum<'value>(
        &self,
        value: Option<&'value [u8]>,
    ) -> Option<(u32, &'value [u8])> {
        let (schema_id, datum) = wire::parse(value?).ok()?;
        matches!(self.readers.get(&schema_id), Some(Reader::Current)).then_some((schema_id, datum))
    }

    pub async fn decode(&mut self, value: Option<&[u8]>) -> Result<Decoded<T>, DecodeFailure> {
        let rejected =
            |kind, message: String| DecodeFailure::Rejected(Rejection::new(kind, message));
        let (schema_id, datum) = wire::parse(value.unwrap_or_default()).map_err(|error| {
            let kind = match error {
                FrameError::Empty => DeadLetterKind::EmptyValue,
                FrameError::Truncated { .. } => DeadLetterKind::TruncatedFrame,
                FrameError::BadMagicByte { .. } => DeadLetterKind::BadMagicByte,
            };
            rejected(kind, error.to_string())
        })?;
        let with_id =
            |rejection: Rejection| DecodeFailure::Rejected(rejection.with_schema_id(schema_id));
        let reader = match self.readers.entry(schema_id) {
            Entry::Occupied(cached) => cached.into_mut(),
            Entry::Vacant(vacant) => {
                let reader = match self.source.writer_schema(schema_id).await {
                    Ok(writer) => reader_for(writer),
                    Err(LookupError::UnknownId(_)) => {
                        // Not cached: the id may be registered later.
                        return Err(with_id(Rejection::new(
                            DeadLetterKind::UnknownSchemaId,
                            format!("schema id {schema_id} is not in the schema registry"),
                        )));
                    }
                    Err(error @ LookupError::Unreadable { .. }) => {
                        Reader::Refused(DeadLetterKind::UnreadableSchema, error.to_string())
                    }
                    Err(error @ LookupError::NotYetKnown { .. }) => {
                        return Err(DecodeFailure::Retry(RetryableError {
                            kind: ErrorKind::SchemaIdNotYetKnown,
                            source: error.into(),
                        }));
                    }
                    Err(LookupError::Unavailable(source)) => {
                        return Err(DecodeFailure::Retry(RetryableError {
                            kind: ErrorKind::SchemaRegistryUnavailable,
                            source,
                        }));
                    }
                };
                vacant.insert(reader)
            }
        };
        let decoded = match reader {
            Reader::Current => codec::decode::<T>(datum),
            Reader::Resolving(reader) => reader.decode(datum),
            Reader::Refused(kind, reason) => {
                return Err(with_id(Rejection::new(*kind, reason.clone())));
            }
        };
        match decoded {
            Ok(value) => Ok(Decoded { value, schema_id }),
            Err(error) => Err(with_id(Rejection::new(
                DeadLetterKind::Undecodable,
                crate::config::error_chain(&error),
            ))),
        }
    }
}

fn reader_for<T: AvroRecord>(writer: &'static Schema) -> Reader<T> {
    let current = T::KIND.schema();
    if writer == current {
        return Reader::Current;
    }
    if let Err(error) = SchemaCompatibility::can_read(writer, current) {
        return Reader::Refused(
            DeadLetterKind::IncompatibleSchema,
            format!(
                "the writer schema cannot be read as the current {}: {error}",
                T::KIND.full_name()
            ),
        );
    }
    match ResolvingReader::new(writer) {
        Ok(reader) => Reader::Resolving(reader),
        Err(error) => Reader::Refused(
            DeadLetterKind::IncompatibleSchema,
            crate::config::error_chain(&error),
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use boomerang_schemas::{PostPurchaseEvent, SchemaKind};

    use super::*;

    /// Writer schemas from a map: id 1 = version 1, id 2 = current, id 9 = a Customer.
    pub struct MapSource(pub HashMap<u32, &'static Schema>);

    impl MapSource {
        pub fn standard() -> Self {
            let v1: &'static Schema = Box::leak(Box::new(
                Schema::parse_str(SchemaKind::PostPurchaseEvent.history()[0]).expect("v1"),
            ));
            Self(HashMap::from([
                (1, v1),
                (2, SchemaKind::PostPurchaseEvent.schema()),
                (9, SchemaKind::Customer.schema()),
            ]))
        }
    }

    impl WriterSchemaSource for MapSource {
        fn writer_schema(
            &mut self,
            id: u32,
        ) -> impl Future<Output = Result<&'static Schema, LookupError>> + Send {
            let found = self.0.get(&id).copied().ok_or(LookupError::UnknownId(id));
            async move { found }
        }
    }

    pub use boomerang_testkit::samples::event;

    fn kind(failure: DecodeFailure) -> DeadLetterKind {
        match failure {
            DecodeFailure::Rejected(rejection) => rejection.error_kind,
            DecodeFailure::Retry(error) => panic!("unexpected retry: {error}"),
        }
    }

    #[tokio::test]
    async fn current_and_version_1_data_decode() {
        let mut decoder = RecordDecoder::<PostPurchaseEvent, _>::new(MapSource::standard());
        let event = event();
        let datum = codec::encode(&event).expect("encode");
        let current = wire::frame(2, &datum);
        assert_eq!(
            decoder.current_datum(Some(&current)),
            None,
            "a schema id is read in place only once known to be the current one"
        );
        let decoded = decoder
            .decode(Some(&current))
            .await
            .expect("current decodes");
        assert_eq!((decoded.schema_id, decoded.value), (2, event.clone()));
        assert_eq!(decoder.current_datum(Some(&current)), Some((2, &datum[..])));
        assert_eq!(decoder.current_datum(Some(&current[..3])), None);
        assert_eq!(decoder.current_datum(None), None);

        let v1 = MapSource::standard().0[&1];
        let datum = codec::encode_for_writer_schema(&event, v1).expect("v1 datum");
        let decoded = decoder
            .decode(Some(&wire::frame(1, &datum)))
            .await
            .expect("v1 decodes");
        assert_eq!((decoded.schema_id, decoded.value), (1, event));
        assert_eq!(
            decoder.current_datum(Some(&wire::frame(1, &datum))),
            None,
            "an earlier version is resolved, never read in place"
        );
    }

    /// A registry that does not answer is nobody's fault: retry, never a dead letter.
    struct UnreachableRegistry;

    impl WriterSchemaSource for UnreachableRegistry {
        async fn writer_schema(&mut self, _id: u32) -> Result<&'static Schema, LookupError> {
            Err(LookupError::Unavailable(anyhow::anyhow!(
                "connection refused"
            )))
        }
    }

    #[tokio::test]
    async fn an_unreachable_registry_means_retry_and_nothing_is_cached() {
        let mut decoder = RecordDecoder::<PostPurchaseEvent, _>::new(UnreachableRegistry);
        let value = wire::frame(2, &codec::encode(&event()).expect("encode"));
        for _ in 0..2 {
            match decoder.decode(Some(&value)).await {
                Err(DecodeFailure::Retry(error)) => {
                    assert_eq!(error.kind, ErrorKind::SchemaRegistryUnavailable)
                }
                other => panic!("expected a retry, got {other:?}"),
            }
        }
        assert!(decoder.readers.is_empty());
    }

    #[tokio::test]
    async fn each_bad_frame_has_its_kind() {
        let mut decoder = RecordDecoder::<PostPurchaseEvent, _>::new(MapSource::standard());
        let datum = codec::encode(&event()).expect("encode");
        let cases: Vec<(Option<Vec<u8>>, DeadLetterKind)> = vec![
            (None, DeadLetterKind::EmptyValue),
            (Some(vec![]), DeadLetterKind::EmptyValue),
            (Some(vec![0, 0, 1]), DeadLetterKind::TruncatedFrame),
            (
                Some(b"{\"json\": true}".to_vec()),
                DeadLetterKind::BadMagicByte,
            ),
            (
                Some(wire::frame(77, &datum)),
                DeadLetterKind::UnknownSchemaId,
            ),
            (
                Some(wire::frame(9, &datum)),
                DeadLetterKind::IncompatibleSchema,
            ),
            (
                Some(wire::frame(2, &datum[..datum.len() / 2])),
                DeadLetterKind::Undecodable,
            ),
            (
                Some(wire::frame(2, &[0xff; 16])),
                DeadLetterKind::Undecodable,
            ),
        ];
        for (value, expected) in cases {
            let failure = decoder
                .decode(value.as_deref())
                .await
                .expect_err("must fail");
            assert_eq!(kind(failure), expected, "{value:?}");
        }
    }
}
