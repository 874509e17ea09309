//! An enriched event written from a validated event's bytes, without decoding it.
//!
//! An `EnrichedPostPurchaseEvent` datum is its `event` datum followed by what enrich adds. So
//! when a validated event is written with the current schema, enrich reads in place only what
//! its join needs ([`EventView`]) and writes the enriched datum as the event's own bytes, less
//! its PII field `reason_text` (written as null) and with `customer_id` replaced when the
//! customer is pseudonymised, followed by the [`Enrichment`]. Decoding every field into its
//! own `String` and encoding it again had been most of enrich's own CPU per event.
//!
//! [`EventView::read`] accepts exactly the datums [`crate::codec::decode`] accepts, with the
//! same errors, and what it writes decodes to what decode, join and encode would have written
//! (`schemas/tests/splice.rs` holds both on arbitrary events and arbitrary bytes).

use crate::codec::CodecError;
use crate::enriched::EnrichedPostPurchaseEvent;
use crate::event::{
    Channel, Disposition, EventType, Outcome, ReasonCode, ReturnMethod, WarrantyResolution,
};
use crate::primitives::{Money, TimestampMicros};
use crate::specific::{Malformed, Reader, Writer};
use crate::{AvroRecord, PostPurchaseEvent};

/// An amount of money, its currency borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoneyRef<'a> {
    pub amount_minor: i64,
    pub currency: &'a str,
}

impl<'a> From<&'a Money> for MoneyRef<'a> {
    fn from(money: &'a Money) -> Self {
        Self {
            amount_minor: money.amount_minor,
            currency: &money.currency,
        }
    }
}

/// A `PostPurchaseEvent` datum of the current schema, read in place: the fields a join reads,
/// and the bytes around the two fields enrich rewrites.
#[derive(Debug, Clone)]
pub struct EventView<'a> {
    pub event_type: EventType,
    pub order_id: &'a str,
    pub order_line_id: &'a str,
    pub customer_id: &'a str,
    pub quantity: i32,
    pub amount: Option<MoneyRef<'a>>,
    pub occurred_at: TimestampMicros,
    /// The datum up to `customer_id`.
    before_customer_id: &'a [u8],
    /// From after `customer_id` up to `reason_text`.
    before_reason_text: &'a [u8],
    /// From after `reason_text` to the end.
    after_reason_text: &'a [u8],
}

impl<'a> EventView<'a> {
    /// Reads a whole datum: what [`crate::codec::decode`] refuses, this refuses with the same
    /// error.
    pub fn read(datum: &'a [u8]) -> Result<Self, CodecError> {
        let malformed = |source| CodecError::Malformed {
            record: PostPurchaseEvent::KIND.full_name(),
            source,
        };
        let mut reader = Reader { rest: datum };
        let view = read_view(datum, &mut reader).map_err(malformed)?;
        if !reader.rest.is_empty() {
            return Err(CodecError::TrailingBytes {
                record: PostPurchaseEvent::KIND.full_name(),
                trailing: reader.rest.len(),
            });
        }
        Ok(view)
    }

    /// Appends the enriched datum: this event's bytes with `reason_text` null and `customer_id`
    /// as given, then `enrichment`.
    pub fn write_enriched(
        &self,
        customer_id: &str,
        enrichment: &Enrichment<'_>,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(self.before_customer_id);
        Writer(out).string(customer_id);
        out.extend_from_slice(self.before_reason_text);
        Writer(out).optional(None::<&str>, Writer::string);
        out.extend_from_slice(self.after_reason_text);
        write_enrichment(enrichment, &mut Writer(out));
    }
}

/// The ids an event joins on, as their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinIds<'a> {
    pub order_id: &'a [u8],
    pub customer_id: &'a [u8],
}

impl<'a> JoinIds<'a> {
    /// Reads `order_id` and `customer_id` from the front of a datum of the current schema, and
    /// nothing after them: no UTF-8 check, no end check. For a hint only (enrich looks the ids
    /// up ahead of the join, to warm its caches); [`EventView::read`] decides whether the
    /// datum is an event. `None` for bytes that do not get as far as `customer_id`.
    pub fn read(datum: &'a [u8]) -> Option<Self> {
        let mut reader = Reader { rest: datum };
        reader.bytes().ok()?; // event_id
        reader.bytes().ok()?; // idempotency_key
        reader.long().ok()?; // event_type
        reader.bytes().ok()?; // case_id
        let order_id = reader.bytes().ok()?;
        reader.bytes().ok()?; // order_line_id
        let customer_id = reader.bytes().ok()?;
        Some(Self {
            order_id,
            customer_id,
        })
    }
}

fn read_view<'a>(datum: &'a [u8], reader: &mut Reader<'a>) -> Result<EventView<'a>, Malformed> {
    // Where the reader is in `datum`: its rest is always a suffix of it.
    let position = |reader: &Reader<'a>| datum.len() - reader.rest.len();
    reader.str()?; // event_id
    reader.str()?; // idempotency_key
    let event_type = reader.symbol::<EventType>()?;
    reader.str()?; // case_id
    let order_id = reader.str()?;
    let order_line_id = reader.str()?;
    let customer_id_start = position(reader);
    let customer_id = reader.str()?;
    let customer_id_end = position(reader);
    reader.str()?; // sku
    let quantity = reader.int()?;
    reader.optional(Reader::symbol::<ReasonCode>)?;
    let reason_text_start = position(reader);
    reader.optional(Reader::str)?;
    let reason_text_end = position(reader);
    let amount = reader.optional(Reader::money_ref)?;
    reader.optional(Reader::symbol::<ReturnMethod>)?;
    reader.symbol::<Channel>()?;
    reader.symbol::<Outcome>()?;
    let occurred_at = reader.timestamp()?;
    reader.str()?; // source_system
    reader.optional(Reader::str)?; // replacement_sku
    reader.optional(Reader::symbol::<WarrantyResolution>)?;
    reader.optional(Reader::symbol::<Disposition>)?;
    reader.skip_string_map()?; // attributes
    let end = position(reader);
    // The positions were taken in order as the reader moved forward through `datum`, so each
    // range lies within it and after the one before.
    Ok(EventView {
        event_type,
        order_id,
        order_line_id,
        customer_id,
        quantity,
        amount,
        occurred_at,
        before_customer_id: &datum[..customer_id_start],
        before_reason_text: &datum[customer_id_end..reason_text_start],
        after_reason_text: &datum[reason_text_end..end],
    })
}

/// What enrich adds to an event, as the `EnrichedPostPurchaseEvent` fields after `event`;
/// strings borrowed (from the reference tables, or from an enriched event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrichment<'a> {
    pub customer_missing: bool,
    pub order_missing: bool,
    pub order_line_missing: bool,
    pub customer_pseudonymised: bool,
    pub customer_segment: Option<&'a str>,
    pub customer_region: Option<&'a str>,
    pub order_channel: Option<Channel>,
    pub order_placed_at: Option<TimestampMicros>,
    pub order_delivered_at: Option<TimestampMicros>,
    pub line_category: Option<&'a str>,
    pub line_unit_price: Option<MoneyRef<'a>>,
    pub days_since_delivery: Option<i32>,
    pub within_return_window: Option<bool>,
    pub enriched_at: TimestampMicros,
}

impl<'a> Enrichment<'a> {
    /// What `enriched` adds to its event.
    pub fn of(enriched: &'a EnrichedPostPurchaseEvent) -> Self {
        Self {
            customer_missing: enriched.customer_missing,
            order_missing: enriched.order_missing,
            order_line_missing: enriched.order_line_missing,
            customer_pseudonymised: enriched.customer_pseudonymised,
            customer_segment: enriched.customer_segment.as_deref(),
            customer_region: enriched.customer_region.as_deref(),
            order_channel: enriched.order_channel,
            order_placed_at: enriched.order_placed_at,
            order_delivered_at: enriched.order_delivered_at,
            line_category: enriched.line_category.as_deref(),
            line_unit_price: enriched.line_unit_price.as_ref().map(MoneyRef::from),
            days_since_delivery: enriched.days_since_delivery,
            within_return_window: enriched.within_return_window,
            enriched_at: enriched.enriched_at,
        }
    }

    /// `event` enriched with this.
    pub fn apply(&self, event: PostPurchaseEvent) -> EnrichedPostPurchaseEvent {
        let owned = |text: Option<&str>| text.map(str::to_string);
        EnrichedPostPurchaseEvent {
            event,
            customer_missing: self.customer_missing,
            order_missing: self.order_missing,
            order_line_missing: self.order_line_missing,
            customer_pseudonymised: self.customer_pseudonymised,
            customer_segment: owned(self.customer_segment),
            customer_region: owned(self.customer_region),
            order_channel: self.order_channel,
            order_placed_at: self.order_placed_at,
            order_delivered_at: self.order_delivered_at,
            line_category: owned(self.line_category),
            line_unit_price: self
                .line_unit_price
                .map(|price| Money::new(price.amount_minor, price.currency)),
            days_since_delivery: self.days_since_delivery,
            within_return_window: self.within_return_window,
            enriched_at: self.enriched_at,
        }
    }
}

/// The enrichment's fields, in schema order: the one writer of them, for the spliced datum
/// and for an `EnrichedPostPurchaseEvent` alike.
pub(crate) fn write_enrichment(enrichment: &Enrichment<'_>, out: &mut Writer<'_>) {
    out.boolean(enrichment.customer_missing);
    out.boolean(enrichment.order_missing);
    out.boolean(enrichment.order_line_missing);
    out.boolean(enrichment.customer_pseudonymised);
    out.optional(enrichment.customer_segment, Writer::string);
    out.optional(enrichment.customer_region, Writer::string);
    out.optional(enrichment.order_channel, Writer::symbol);
    out.optional(enrichment.order_placed_at, Writer::timestamp);
    out.optional(enrichment.order_delivered_at, Writer::timestamp);
    out.optional(enrichment.line_category, Writer::string);
    out.optional(enrichment.line_unit_price, |out, price| {
        out.long(price.amount_minor);
        out.string(price.currency);
    });
    out.optional(enrichment.days_since_delivery, Writer::int);
    out.optional(enrichment.within_return_window, Writer::boolean);
    out.timestamp(enrichment.enriched_at);
}
