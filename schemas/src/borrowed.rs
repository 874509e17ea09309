//! Events read in place: every field a stage needs, strings borrowed from the datum, nothing
//! allocated.
//!
//! The sink turns each enriched event into a ClickHouse row. Decoding it into an owned
//! [`EnrichedPostPurchaseEvent`] first built a dozen `String`s and the attributes map only to
//! move them into the row, or drop them (the attributes, which no column holds): about a third
//! of the sink's own processing in a `perf` profile. Ingest validates and de-duplicates a raw
//! event the same way ([`EventDatum`]), and passes its datum on as it came.
//! [`EnrichedEventRef::read`] and [`EventDatum::read`] accept exactly the datums
//! [`crate::codec::decode`] accepts, with the same errors, and read the same values
//! (`schemas/tests/specific_codec.rs` holds them to the decoder on arbitrary and damaged
//! bytes); [`EnrichedEventRef::of`] and [`EventRef::of`] borrow a decoded event, so one row
//! builder, or one validation, serves both.

use crate::AvroRecord;
use crate::codec::CodecError;
use crate::enriched::EnrichedPostPurchaseEvent;
use crate::event::{
    Channel, Disposition, EventType, Outcome, PostPurchaseEvent, ReasonCode, ReturnMethod,
    WarrantyResolution,
};
use crate::primitives::TimestampMicros;
use crate::specific::{Malformed, Reader};
use crate::splice::{Enrichment, MoneyRef};

/// A `PostPurchaseEvent`'s fields, strings borrowed; its attributes are checked when read, not
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub event_id: &'a str,
    pub idempotency_key: &'a str,
    pub event_type: EventType,
    pub case_id: &'a str,
    pub order_id: &'a str,
    pub order_line_id: &'a str,
    pub customer_id: &'a str,
    pub sku: &'a str,
    pub quantity: i32,
    pub reason: Option<ReasonCode>,
    pub reason_text: Option<&'a str>,
    pub amount: Option<MoneyRef<'a>>,
    pub method: Option<ReturnMethod>,
    pub channel: Channel,
    pub outcome: Outcome,
    pub occurred_at: TimestampMicros,
    pub source_system: &'a str,
    pub replacement_sku: Option<&'a str>,
    pub warranty_resolution: Option<WarrantyResolution>,
    pub disposition: Option<Disposition>,
}

impl<'a> EventRef<'a> {
    /// Borrows a decoded event.
    pub fn of(event: &'a PostPurchaseEvent) -> Self {
        Self {
            event_id: &event.event_id,
            idempotency_key: &event.idempotency_key,
            event_type: event.event_type,
            case_id: &event.case_id,
            order_id: &event.order_id,
            order_line_id: &event.order_line_id,
            customer_id: &event.customer_id,
            sku: &event.sku,
            quantity: event.quantity,
            reason: event.reason,
            reason_text: event.reason_text.as_deref(),
            amount: event.amount.as_ref().map(MoneyRef::from),
            method: event.method,
            channel: event.channel,
            outcome: event.outcome,
            occurred_at: event.occurred_at,
            source_system: &event.source_system,
            replacement_sku: event.replacement_sku.as_deref(),
            warranty_resolution: event.warranty_resolution,
            disposition: event.disposition,
        }
    }
}

/// An `EnrichedPostPurchaseEvent`'s fields, strings borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichedEventRef<'a> {
    pub event: EventRef<'a>,
    pub enrichment: Enrichment<'a>,
}

impl<'a> EnrichedEventRef<'a> {
    /// Reads a whole datum of the current schema: what [`crate::codec::decode`] refuses, this
    /// refuses with the same error.
    pub fn read(datum: &'a [u8]) -> Result<Self, CodecError> {
        read_whole::<EnrichedPostPurchaseEvent, _>(datum, |reader| {
            Ok(Self {
                event: read_event(reader)?,
                enrichment: read_enrichment(reader)?,
            })
        })
    }

    /// Borrows a decoded event.
    pub fn of(enriched: &'a EnrichedPostPurchaseEvent) -> Self {
        Self {
            event: EventRef::of(&enriched.event),
            enrichment: Enrichment::of(enriched),
        }
    }
}

/// A `PostPurchaseEvent` datum read in place, as ingest validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDatum<'a> {
    pub event: EventRef<'a>,
    /// How many entries the attributes map was written with. A key written twice counts
    /// twice, where the decoded event's map keeps one: a count above a limit is a reason to
    /// decode the event and count again, not to refuse it.
    pub attribute_entries: usize,
}

impl<'a> EventDatum<'a> {
    /// Reads a whole datum of the current schema: what [`crate::codec::decode`] refuses, this
    /// refuses with the same error.
    pub fn read(datum: &'a [u8]) -> Result<Self, CodecError> {
        read_whole::<PostPurchaseEvent, _>(datum, |reader| {
            Ok(Self {
                event: read_event_fields(reader)?,
                attribute_entries: reader.skip_string_map()?,
            })
        })
    }
}

/// What ingest's de-duplication needs of an event: its idempotency key and its time, read from
/// the front of a `PostPurchaseEvent` datum, or of an `EnrichedPostPurchaseEvent` one (which
/// starts with the event).
///
/// Every version of the event's schema (`schemas/avro/history/` and the current one) starts
/// with the same sixteen fields, `event_id` to `occurred_at`; this reads only those, enum
/// symbols as bare indexes, so a datum of any version reads alike and nothing past
/// `occurred_at` is looked at. Ingest's restore reads the validated topic back with it: a
/// validated record carries no header with the key (`--validated-headers lean`), and may have
/// been written with an earlier schema. A test holds every schema version to that prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupFacts<'a> {
    pub idempotency_key: &'a str,
    pub occurred_at: TimestampMicros,
}

impl<'a> DedupFacts<'a> {
    pub fn read(datum: &'a [u8]) -> Result<Self, CodecError> {
        let mut reader = Reader { rest: datum };
        read_dedup_facts(&mut reader).map_err(|source| CodecError::Malformed {
            record: PostPurchaseEvent::KIND.full_name(),
            source,
        })
    }

    /// [`Self::read`] of a Confluent-framed value (a validated or an enriched record's),
    /// whatever schema id it names; `None` when it is not framed or cannot be read.
    pub fn of_framed(value: &'a [u8]) -> Option<Self> {
        let (_schema_id, datum) = crate::wire::parse(value).ok()?;
        Self::read(datum).ok()
    }
}

/// The fields every version of the event's schema starts with, in order, up to `occurred_at`.
fn read_dedup_facts<'a>(datum: &mut Reader<'a>) -> Result<DedupFacts<'a>, Malformed> {
    datum.bytes()?; // event_id
    let idempotency_key = datum.str()?;
    datum.long()?; // event_type
    for _id in ["case_id", "order_id", "order_line_id", "customer_id", "sku"] {
        datum.bytes()?;
    }
    datum.long()?; // quantity
    datum.optional(Reader::long)?; // reason
    datum.optional(Reader::bytes)?; // reason_text
    datum.optional(Reader::money_ref)?; // amount
    datum.optional(Reader::long)?; // method
    datum.long()?; // channel
    datum.long()?; // outcome
    Ok(DedupFacts {
        idempotency_key,
        occurred_at: datum.timestamp()?,
    })
}

/// Reads a whole datum of record `T` with `read`, refusing it as [`crate::codec::decode`]
/// does: malformed, or with bytes left over.
fn read_whole<'a, T: AvroRecord, Read>(
    datum: &'a [u8],
    read: impl FnOnce(&mut Reader<'a>) -> Result<Read, Malformed>,
) -> Result<Read, CodecError> {
    let mut reader = Reader { rest: datum };
    let read = read(&mut reader).map_err(|source| CodecError::Malformed {
        record: T::KIND.full_name(),
        source,
    })?;
    crate::codec::ensure_consumed::<T>(reader.rest)?;
    Ok(read)
}

/// The fields in schema order, as `specific::read_event` reads them; the attributes are
/// checked and passed over.
fn read_event<'a>(datum: &mut Reader<'a>) -> Result<EventRef<'a>, Malformed> {
    let event = read_event_fields(datum)?;
    datum.skip_string_map()?; // attributes
    Ok(event)
}

/// The fields before the attributes, in schema order.
fn read_event_fields<'a>(datum: &mut Reader<'a>) -> Result<EventRef<'a>, Malformed> {
    let event = EventRef {
        event_id: datum.str()?,
        idempotency_key: datum.str()?,
        event_type: datum.symbol()?,
        case_id: datum.str()?,
        order_id: datum.str()?,
        order_line_id: datum.str()?,
        customer_id: datum.str()?,
        sku: datum.str()?,
        quantity: datum.int()?,
        reason: datum.optional(Reader::symbol)?,
        reason_text: datum.optional(Reader::str)?,
        amount: datum.optional(Reader::money_ref)?,
        method: datum.optional(Reader::symbol)?,
        channel: datum.symbol()?,
        outcome: datum.symbol()?,
        occurred_at: datum.timestamp()?,
        source_system: datum.str()?,
        replacement_sku: datum.optional(Reader::str)?,
        warranty_resolution: datum.optional(Reader::symbol)?,
        disposition: datum.optional(Reader::symbol)?,
    };
    Ok(event)
}

/// The fields enrich adds, in schema order: the one reader of them, for the sink's in-place
/// read and for the owned decoder (`specific::read_enriched`) alike.
pub(crate) fn read_enrichment<'a>(datum: &mut Reader<'a>) -> Result<Enrichment<'a>, Malformed> {
    Ok(Enrichment {
        customer_missing: datum.boolean()?,
        order_missing: datum.boolean()?,
        order_line_missing: datum.boolean()?,
        customer_pseudonymised: datum.boolean()?,
        customer_segment: datum.optional(Reader::str)?,
        customer_region: datum.optional(Reader::str)?,
        order_channel: datum.optional(Reader::symbol)?,
        order_placed_at: datum.optional(Reader::timestamp)?,
        order_delivered_at: datum.optional(Reader::timestamp)?,
        line_category: datum.optional(Reader::str)?,
        line_unit_price: datum.optional(Reader::money_ref)?,
        days_since_delivery: datum.optional(Reader::int)?,
        within_return_window: datum.optional(Reader::boolean)?,
        enriched_at: datum.timestamp()?,
    })
}
