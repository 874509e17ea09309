//! Hand-written Avro binary encoding of the records on every event's path: `PostPurchaseEvent`
//! (ingest in and out, enrich in) and `EnrichedPostPurchaseEvent` (enrich out, sink in), in
//! their current schema version — what Avro's Java tooling calls specific records.
//!
//! apache-avro's serde path finds every field by name, on the way in and on the way out; a
//! `perf record` of the end-to-end benchmark put that (its serializer, deserializer and the
//! `memcmp` of field names) at a tenth to a sixth of each stage's CPU. Here each field is read
//! and written in schema order, straight from and into the model.
//!
//! The field order is the schema's (`avro/*.avsc`). Tests hold both directions equal to
//! apache-avro's, byte for byte and value for value, on arbitrary records and arbitrary bytes,
//! so a schema change that is not mirrored here fails them. Data written with any other
//! schema version still goes through apache-avro's resolution (`codec::ResolvingReader`).

use std::collections::BTreeMap;

use crate::enriched::EnrichedPostPurchaseEvent;
use crate::event::{
    Channel, Disposition, EventType, Outcome, PostPurchaseEvent, ReasonCode, ReturnMethod,
    WarrantyResolution,
};
use crate::primitives::{Money, TimestampMicros};
use crate::splice::MoneyRef;

/// Why bytes are not a datum of the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the datum ends inside a value")]
    Truncated,
    #[error("a variable-length integer runs past 10 bytes")]
    VarintTooLong,
    #[error("int value {0} is out of the 32-bit range")]
    IntOutOfRange(i64),
    #[error("negative length {0}")]
    NegativeLength(i64),
    #[error("a string is not valid UTF-8")]
    InvalidUtf8,
    #[error("boolean byte {0} is neither 0 nor 1")]
    InvalidBoolean(u8),
    #[error("union branch {0} does not exist (the union is [null, value])")]
    InvalidUnionBranch(i64),
    #[error("{index} is not a symbol of enum {name}")]
    InvalidEnumIndex { name: &'static str, index: i64 },
}

/// Appends Avro binary values to a buffer.
pub(crate) struct Writer<'out>(pub(crate) &'out mut Vec<u8>);

impl Writer<'_> {
    pub(crate) fn long(&mut self, value: i64) {
        let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
        while zigzag >= 0x80 {
            self.0.push((zigzag as u8) | 0x80);
            zigzag >>= 7;
        }
        self.0.push(zigzag as u8);
    }

    pub(crate) fn int(&mut self, value: i32) {
        self.long(i64::from(value));
    }

    pub(crate) fn boolean(&mut self, value: bool) {
        self.0.push(u8::from(value));
    }

    pub(crate) fn string(&mut self, value: &str) {
        self.long(value.len() as i64);
        self.0.extend_from_slice(value.as_bytes());
    }

    pub(crate) fn timestamp(&mut self, value: TimestampMicros) {
        self.long(value.as_unix_micros());
    }

    pub(crate) fn symbol<E: Symbols>(&mut self, value: E) {
        self.long(value.index() as i64);
    }

    /// A `["null", T]` union: branch 0 for null, branch 1 and the value otherwise.
    pub(crate) fn optional<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.long(0),
            Some(value) => {
                self.long(1);
                write(self, value);
            }
        }
    }

    fn money(&mut self, value: &Money) {
        self.long(value.amount_minor);
        self.string(&value.currency);
    }

    /// A map of strings: one block holding every entry, then the empty block that ends it.
    fn string_map(&mut self, map: &BTreeMap<String, String>) {
        if !map.is_empty() {
            self.long(map.len() as i64);
            for (key, value) in map {
                self.string(key);
                self.string(value);
            }
        }
        self.long(0);
    }
}

/// Reads Avro binary values from the front of a slice.
pub(crate) struct Reader<'datum> {
    pub(crate) rest: &'datum [u8],
}

impl<'datum> Reader<'datum> {
    fn byte(&mut self) -> Result<u8, Malformed> {
        let (&first, rest) = self.rest.split_first().ok_or(Malformed::Truncated)?;
        self.rest = rest;
        Ok(first)
    }

    pub(crate) fn long(&mut self) -> Result<i64, Malformed> {
        let mut zigzag = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            zigzag |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64));
            }
        }
        Err(Malformed::VarintTooLong)
    }

    pub(crate) fn int(&mut self) -> Result<i32, Malformed> {
        let value = self.long()?;
        i32::try_from(value).map_err(|_| Malformed::IntOutOfRange(value))
    }

    pub(crate) fn boolean(&mut self) -> Result<bool, Malformed> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Malformed::InvalidBoolean(other)),
        }
    }

    fn length(&mut self) -> Result<usize, Malformed> {
        let length = self.long()?;
        let length = usize::try_from(length).map_err(|_| Malformed::NegativeLength(length))?;
        if length > self.rest.len() {
            return Err(Malformed::Truncated);
        }
        Ok(length)
    }

    /// A string's bytes, not checked for UTF-8.
    pub(crate) fn bytes(&mut self) -> Result<&'datum [u8], Malformed> {
        let length = self.length()?;
        let (bytes, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(bytes)
    }

    pub(crate) fn str(&mut self) -> Result<&'datum str, Malformed> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Malformed::InvalidUtf8)
    }

    fn string(&mut self) -> Result<String, Malformed> {
        self.str().map(str::to_owned)
    }

    pub(crate) fn timestamp(&mut self) -> Result<TimestampMicros, Malformed> {
        self.long().map(TimestampMicros::from_unix_micros)
    }

    pub(crate) fn symbol<E: Symbols>(&mut self) -> Result<E, Malformed> {
        let index = self.long()?;
        usize::try_from(index)
            .ok()
            .and_then(|position| E::ALL.get(position).copied())
            .ok_or(Malformed::InvalidEnumIndex {
                name: E::NAME,
                index,
            })
    }

    pub(crate) fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, Malformed>,
    ) -> Result<Option<T>, Malformed> {
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(Malformed::InvalidUnionBranch(other)),
        }
    }

    /// An amount of money, its currency borrowed.
    pub(crate) fn money_ref(&mut self) -> Result<MoneyRef<'datum>, Malformed> {
        Ok(MoneyRef {
            amount_minor: self.long()?,
            currency: self.str()?,
        })
    }

    fn money(&mut self) -> Result<Money, Malformed> {
        Ok(Money {
            amount_minor: self.long()?,
            currency: self.string()?,
        })
    }

    /// [`Self::string_map`], its entries checked and passed over; returns how many entries it
    /// was written with (a key written twice counts twice, where the decoded map keeps one).
    pub(crate) fn skip_string_map(&mut self) -> Result<usize, Malformed> {
        let mut entries = 0usize;
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(entries);
            }
            if count < 0 {
                self.long()?; // the block's size in bytes: every entry is checked instead
            }
            for _ in 0..count.unsigned_abs() {
                self.str()?;
                self.str()?;
                entries += 1;
            }
        }
    }

    /// A map of strings in any number of blocks; a negative block count is followed by the
    /// block's size in bytes, as the specification allows.
    fn string_map(&mut self) -> Result<BTreeMap<String, String>, Malformed> {
        let mut map = BTreeMap::new();
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(map);
            }
            if count < 0 {
                self.long()?; // the block's size in bytes: not needed to read it
            }
            for _ in 0..count.unsigned_abs() {
                let key = self.string()?;
                let value = self.string()?;
                map.insert(key, value);
            }
        }
    }
}

/// An Avro enum of the model: its symbols in schema order.
pub(crate) trait Symbols: Copy + 'static {
    const NAME: &'static str;
    const ALL: &'static [Self];
    fn index(self) -> usize;
}

macro_rules! symbols_in_schema_order {
    ($($enum:ident),* $(,)?) => {
        $(impl Symbols for $enum {
            const NAME: &'static str = stringify!($enum);
            const ALL: &'static [Self] = &$enum::ALL;
            /// The declaration order is the schema's order (tested against the `.avsc`).
            fn index(self) -> usize {
                self as usize
            }
        })*
    };
}

symbols_in_schema_order!(
    EventType,
    ReasonCode,
    ReturnMethod,
    Channel,
    Outcome,
    WarrantyResolution,
    Disposition,
);

pub(crate) fn write_event(event: &PostPurchaseEvent, out: &mut Writer<'_>) {
    out.string(&event.event_id);
    out.string(&event.idempotency_key);
    out.symbol(event.event_type);
    out.string(&event.case_id);
    out.string(&event.order_id);
    out.string(&event.order_line_id);
    out.string(&event.customer_id);
    out.string(&event.sku);
    out.int(event.quantity);
    out.optional(event.reason, Writer::symbol);
    out.optional(event.reason_text.as_deref(), Writer::string);
    out.optional(event.amount.as_ref(), Writer::money);
    out.optional(event.method, Writer::symbol);
    out.symbol(event.channel);
    out.symbol(event.outcome);
    out.timestamp(event.occurred_at);
    out.string(&event.source_system);
    out.optional(event.replacement_sku.as_deref(), Writer::string);
    out.optional(event.warranty_resolution, Writer::symbol);
    out.optional(event.disposition, Writer::symbol);
    out.string_map(&event.attributes);
}

pub(crate) fn read_event(datum: &mut Reader<'_>) -> Result<PostPurchaseEvent, Malformed> {
    Ok(PostPurchaseEvent {
        event_id: datum.string()?,
        idempotency_key: datum.string()?,
        event_type: datum.symbol()?,
        case_id: datum.string()?,
        order_id: datum.string()?,
        order_line_id: datum.string()?,
        customer_id: datum.string()?,
        sku: datum.string()?,
        quantity: datum.int()?,
        reason: datum.optional(Reader::symbol)?,
        reason_text: datum.optional(Reader::string)?,
        amount: datum.optional(Reader::money)?,
        method: datum.optional(Reader::symbol)?,
        channel: datum.symbol()?,
        outcome: datum.symbol()?,
        occurred_at: datum.timestamp()?,
        source_system: datum.string()?,
        replacement_sku: datum.optional(Reader::string)?,
        warranty_resolution: datum.optional(Reader::symbol)?,
        disposition: datum.optional(Reader::symbol)?,
        attributes: datum.string_map()?,
    })
}

pub(crate) fn write_enriched(enriched: &EnrichedPostPurchaseEvent, out: &mut Writer<'_>) {
    write_event(&enriched.event, out);
    crate::splice::write_enrichment(&crate::splice::Enrichment::of(enriched), out);
}

pub(crate) fn read_enriched(
    datum: &mut Reader<'_>,
) -> Result<EnrichedPostPurchaseEvent, Malformed> {
    let event = read_event(datum)?;
    Ok(crate::borrowed::read_enrichment(datum)?.apply(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SchemaKind;

    fn symbols_of(kind: SchemaKind, name: &str) -> Vec<String> {
        fn find(value: &serde_json::Value, name: &str) -> Option<Vec<String>> {
            match value {
                serde_json::Value::Object(object) => {
                    if object.get("type").and_then(|kind| kind.as_str()) == Some("enum")
                        && object.get("name").and_then(|found| found.as_str()) == Some(name)
                    {
                        return object["symbols"].as_array().map(|symbols| {
                            symbols
                                .iter()
                                .filter_map(|symbol| symbol.as_str().map(str::to_string))
                                .collect()
                        });
                    }
                    object.values().find_map(|inner| find(inner, name))
                }
                serde_json::Value::Array(items) => items.iter().find_map(|item| find(item, name)),
                _ => None,
            }
        }
        let json: serde_json::Value = serde_json::from_str(kind.avsc()).expect("schema JSON");
        find(&json, name).unwrap_or_else(|| panic!("no enum {name}"))
    }

    fn assert_schema_order<E: Symbols>(symbol: fn(E) -> &'static str) {
        let expected = symbols_of(SchemaKind::PostPurchaseEvent, E::NAME);
        let ours: Vec<&str> = E::ALL.iter().map(|value| symbol(*value)).collect();
        assert_eq!(ours, expected, "{}", E::NAME);
        for (position, value) in E::ALL.iter().enumerate() {
            assert_eq!(value.index(), position, "{}", E::NAME);
        }
    }

    #[test]
    fn enum_indexes_are_the_schema_symbol_order() {
        assert_schema_order(EventType::symbol);
        assert_schema_order(ReasonCode::symbol);
        assert_schema_order(ReturnMethod::symbol);
        assert_schema_order(Channel::symbol);
        assert_schema_order(Outcome::symbol);
        assert_schema_order(WarrantyResolution::symbol);
        assert_schema_order(Disposition::symbol);
    }

    #[test]
    fn longs_take_the_zigzag_varint_form() {
        for (value, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
            (
                i64::MAX,
                vec![0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
            (
                i64::MIN,
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut out = Vec::new();
            Writer(&mut out).long(value);
            assert_eq!(out, bytes, "{value}");
            let mut reader = Reader { rest: &bytes };
            assert_eq!(reader.long(), Ok(value));
            assert!(reader.rest.is_empty());
        }
        let eleven = [0x80u8; 11];
        assert_eq!(
            Reader { rest: &eleven }.long(),
            Err(Malformed::VarintTooLong)
        );
    }

    #[test]
    fn lengths_beyond_the_datum_are_truncation_not_allocation() {
        let mut out = Vec::new();
        Writer(&mut out).long(i64::MAX);
        assert_eq!(Reader { rest: &out }.str(), Err(Malformed::Truncated));
        let mut out = Vec::new();
        Writer(&mut out).long(-3);
        assert_eq!(
            Reader { rest: &out }.str(),
            Err(Malformed::NegativeLength(-3))
        );
    }
}
