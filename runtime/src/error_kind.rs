//! Every `error_kind` a stage reports, defined once: why a record was dead-lettered
//! ([`DeadLetterKind`]: the `boomerang.dlq.error_kind` header and
//! `boomerang_dead_lettered_events_total{error_kind}`), and what failed without being any
//! record's fault ([`ErrorKind`]: `boomerang_errors_total{error_kind}`). The README's tables
//! are checked against these lists (`runtime/tests/error_kinds.rs`), so a kind added here and
//! not documented fails the tests, and the other way round.

macro_rules! kinds {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($variant:ident => $text:literal, [$($stage:literal),+], $meaning:literal;)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $(#[doc = $meaning] $variant,)+
        }

        impl $name {
            /// Every kind, in the order of the README's table.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable, low-cardinality name: the label value and header.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The stages that report it.
            pub const fn stages(self) -> &'static [&'static str] {
                match self {
                    $($name::$variant => &[$($stage),+],)+
                }
            }

            /// What it means, in a user's words.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $($name::$variant => $meaning,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    };
}

kinds! {
    /// Why a record was dead-lettered.
    pub enum DeadLetterKind {
        EmptyValue => "empty_value", ["ingest", "enrich", "sink"],
            "the record has no value";
        TruncatedFrame => "truncated_frame", ["ingest", "enrich", "sink"],
            "the value is shorter than the 5-byte Confluent header";
        BadMagicByte => "bad_magic_byte", ["ingest", "enrich", "sink"],
            "the value does not start with the Confluent magic byte";
        UnknownSchemaId => "unknown_schema_id", ["ingest", "enrich", "sink"],
            "the registry has no schema with the record's id, and has shown it has read far enough to know (or --schema-registry-unknown-id-grace-ms passed)";
        UnreadableSchema => "unreadable_schema", ["ingest", "enrich", "sink"],
            "the registry's schema for the id cannot be parsed";
        IncompatibleSchema => "incompatible_schema", ["ingest", "enrich", "sink"],
            "the writer schema cannot be resolved to the topic's current schema";
        Undecodable => "undecodable", ["ingest", "enrich", "sink"],
            "the Avro datum does not decode with its writer schema";
        RecordTooLarge => "record_too_large", ["ingest", "enrich", "backfill"],
            "the record's output would exceed --max-record-bytes";
        EmptyIdentifier => "empty_identifier", ["ingest"],
            "an identifier (event, key, case, order, line, customer, SKU) is empty";
        TooManyAttributes => "too_many_attributes", ["ingest"],
            "the attributes map has more entries than --max-attributes";
        NonPositiveQuantity => "non_positive_quantity", ["ingest"],
            "quantity is zero or negative";
        NegativeAmount => "negative_amount", ["ingest"],
            "the amount is negative";
        InvalidCurrency => "invalid_currency", ["ingest"],
            "the currency is not three upper-case letters";
        MissingAmount => "missing_amount", ["ingest"],
            "a refund or store credit without an amount";
        OccurredInFuture => "occurred_in_future", ["ingest"],
            "occurred_at lies further ahead than --max-future-skew-secs";
        OccurredTooLongAgo => "occurred_too_long_ago", ["ingest"],
            "occurred_at lies further back than --max-event-age-secs";
        MissingReplacementSku => "missing_replacement_sku", ["ingest"],
            "an exchange shipment without a replacement SKU";
        MissingWarrantyResolution => "missing_warranty_resolution", ["ingest"],
            "a decided warranty claim without a resolution";
        EncodeFailed => "encode_failed", ["ingest", "enrich"],
            "the validated or enriched event cannot be encoded with its output schema";
        RejectedByClickhouse => "rejected_by_clickhouse", ["sink"],
            "ClickHouse refused the row alone (after the batch was split down to it)";
        TombstoneWithoutKey => "tombstone_without_key", ["sink"],
            "a reference tombstone (null value) without a UTF-8 key";
        UnexpectedTopic => "unexpected_topic", ["sink"],
            "a record from a topic the sink does not write (a misconfigured subscription)";
        InvalidErasureRequest => "invalid_erasure_request", ["sink"],
            "an erasure request without a request id or customer id, or with a salt shorter than 32 hex digits";
        UnreadableBackfillRecord => "unreadable_backfill_record", ["backfill"],
            "a customer or order in a backfill file that does not parse as its schema (the file and line are in the message; an unreadable event goes through ingest instead)";
    }
}

kinds! {
    /// A failure that is no record's fault: counted, retried or stopped on, never
    /// dead-lettered.
    pub enum ErrorKind {
        SchemaRegistryUnavailable => "schema_registry_unavailable", ["ingest", "enrich", "sink"],
            "the registry did not answer for a writer schema; the record waits and is retried";
        SchemaIdNotYetKnown => "schema_id_not_yet_known", ["ingest", "enrich", "sink"],
            "the registry has no schema with a record's id yet and has not shown it has read all its schemas (just started, or a follower behind); the record waits and is retried";
        RestoreFailed => "restore_failed", ["ingest"],
            "a partition's de-duplication state could not be read back; retried";
        ConsumeFailed => "consume_failed", ["ingest", "enrich", "sink"],
            "the consumer reported an error (a broker down, a fetch failed); librdkafka retries";
        ConsumerFatal => "consumer_fatal", ["ingest", "enrich", "sink"],
            "the consumer failed for good (e.g. fenced): the stage stops for its supervisor to restart it";
        CommitFailed => "commit_failed", ["ingest", "enrich", "sink"],
            "an offset commit was refused (a rebalance, a broker restarting); made again";
        ProduceFailed => "produce_failed", ["ingest", "enrich", "sink"],
            "an output or write was not acknowledged: nothing from its batch on is committed, and the stage stops";
        BrokersUnavailable => "brokers_unavailable", ["ingest", "enrich", "sink"],
            "the Kafka brokers did not answer a metadata request at start-up; asked again";
        TopicUnavailable => "topic_unavailable", ["ingest", "enrich", "sink"],
            "a topic's metadata or offsets could not be read at start-up (not created yet, a broker busy); asked again";
        ClickhouseUnavailable => "clickhouse_unavailable", ["sink"],
            "ClickHouse did not answer, timed out or refused a batch for a passing reason; the batch is inserted again";
        MigrationsPending => "migrations_pending", ["sink"],
            "ClickHouse lacks a migration `boomerang migrate` applies; the sink checks again before it writes";
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_within_a_family() {
        let dead_letters: HashSet<_> = DeadLetterKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(dead_letters.len(), DeadLetterKind::ALL.len());
        let errors: HashSet<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(errors.len(), ErrorKind::ALL.len());
    }
}
