//! Business rules of a decoded event. Each violation has a stable, low-cardinality
//! `error_kind` (a metric label and a dead-letter header) and a message that names the field
//! without quoting its contents.

use std::time::Duration;

use boomerang_runtime::dead_letter::Rejection;
use boomerang_runtime::error_kind::DeadLetterKind;
use boomerang_schemas::{EventRef, EventType, TimestampMicros};

#[derive(Debug, Clone)]
pub struct Rules {
    /// How far in the future `occurred_at` may be (producers' clocks drift).
    pub max_future_skew: Duration,
    /// How old `occurred_at` may be before the event is implausible.
    pub max_event_age: Duration,
    /// The most entries the free-form `attributes` map may hold: each becomes a map entry in
    /// every later topic and in ClickHouse.
    pub max_attributes: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::from_secs(5 * 60),
            max_event_age: Duration::from_secs(7 * 24 * 3600),
            max_attributes: DEFAULT_MAX_ATTRIBUTES,
        }
    }
}

/// The default of [`Rules::max_attributes`].
pub const DEFAULT_MAX_ATTRIBUTES: usize = 100;

/// The first rule `event` breaks, if any: read in place or borrowed from a decoded event
/// ([`EventRef::of`]), with how many entries its attributes map has. `now` is the validation
/// time.
pub fn validate(
    event: &EventRef<'_>,
    attributes: usize,
    now: TimestampMicros,
    rules: &Rules,
) -> Result<(), Rejection> {
    let identifiers = [
        ("event_id", event.event_id),
        ("idempotency_key", event.idempotency_key),
        ("case_id", event.case_id),
        ("order_id", event.order_id),
        ("order_line_id", event.order_line_id),
        ("customer_id", event.customer_id),
        ("sku", event.sku),
        ("source_system", event.source_system),
    ];
    for (field, value) in identifiers {
        if value.trim().is_empty() {
            return Err(Rejection::new(
                DeadLetterKind::EmptyIdentifier,
                format!("{field} is empty"),
            ));
        }
    }
    if event.quantity <= 0 {
        return Err(Rejection::new(
            DeadLetterKind::NonPositiveQuantity,
            format!("quantity must be positive, got {}", event.quantity),
        ));
    }
    if let Some(amount) = &event.amount {
        if amount.amount_minor < 0 {
            return Err(Rejection::new(
                DeadLetterKind::NegativeAmount,
                "amount is negative",
            ));
        }
        if !is_iso_4217(amount.currency) {
            return Err(Rejection::new(
                DeadLetterKind::InvalidCurrency,
                "amount currency is not an ISO 4217 code",
            ));
        }
    }
    let needs_amount = matches!(
        event.event_type,
        EventType::RefundIssued | EventType::StoreCreditIssued
    );
    if needs_amount && event.amount.is_none() {
        return Err(Rejection::new(
            DeadLetterKind::MissingAmount,
            format!("{} needs an amount", event.event_type.symbol()),
        ));
    }
    if event.occurred_at > now.saturating_add(rules.max_future_skew) {
        return Err(Rejection::new(
            DeadLetterKind::OccurredInFuture,
            format!(
                "occurred_at is more than {} s in the future",
                rules.max_future_skew.as_secs()
            ),
        ));
    }
    if event.occurred_at < now.saturating_sub(rules.max_event_age) {
        return Err(Rejection::new(
            DeadLetterKind::OccurredTooLongAgo,
            format!(
                "occurred_at is more than {} s in the past",
                rules.max_event_age.as_secs()
            ),
        ));
    }
    let exchange_with_replacement = matches!(
        event.event_type,
        EventType::ExchangeRequested
            | EventType::ExchangeApproved
            | EventType::ExchangeShipped
            | EventType::ExchangeCompleted
    );
    let has_replacement = event
        .replacement_sku
        .is_some_and(|sku| !sku.trim().is_empty());
    if exchange_with_replacement && !has_replacement {
        return Err(Rejection::new(
            DeadLetterKind::MissingReplacementSku,
            format!("{} needs a replacement_sku", event.event_type.symbol()),
        ));
    }
    if attributes > rules.max_attributes {
        return Err(Rejection::new(
            DeadLetterKind::TooManyAttributes,
            format!(
                "attributes has {attributes} entries, more than the {} allowed (--max-attributes)",
                rules.max_attributes
            ),
        ));
    }
    if event.event_type == EventType::WarrantyResolved && event.warranty_resolution.is_none() {
        return Err(Rejection::new(
            DeadLetterKind::MissingWarrantyResolution,
            "WARRANTY_RESOLVED needs a warranty_resolution",
        ));
    }
    Ok(())
}

/// Active ISO 4217 alphabetic codes.
const ISO_4217: [&str; 156] = [
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// Whether `code` is an active ISO 4217 code: one bit per three-letter code. A binary search of
/// the list compared strings eight times an event, 5% of ingest's main thread (`perf`).
pub fn is_iso_4217(code: &str) -> bool {
    letters_index(code.as_bytes())
        .is_some_and(|index| ISO_4217_BITS[index / 64] & (1 << (index % 64)) != 0)
}

/// Three uppercase ASCII letters as a number below 26³; anything else has none.
const fn letters_index(code: &[u8]) -> Option<usize> {
    let [first, second, third] = code else {
        return None;
    };
    let (Some(first), Some(second), Some(third)) =
        (letter(*first), letter(*second), letter(*third))
    else {
        return None;
    };
    Some((first * 26 + second) * 26 + third)
}

const fn letter(byte: u8) -> Option<usize> {
    if byte.is_ascii_uppercase() {
        Some((byte - b'A') as usize)
    } else {
        None
    }
}

/// Three-letter codes there are.
const THREE_LETTERS: usize = 26 * 26 * 26;

/// [`ISO_4217`] as bits, built at compile time.
const ISO_4217_BITS: [u64; THREE_LETTERS.div_ceil(64)] = {
    let mut bits = [0u64; THREE_LETTERS.div_ceil(64)];
    let mut next = 0;
    while next < ISO_4217.len() {
        let Some(index) = letters_index(ISO_4217[next].as_bytes()) else {
            panic!("an ISO 4217 code is three uppercase letters");
        };
        bits[index / 64] |= 1 << (index % 64);
        next += 1;
    }
    bits
};

#[cfg(test)]
mod tests {

    use boomerang_schemas::{Money, PostPurchaseEvent, WarrantyResolution};

    use super::*;

    const NOW: TimestampMicros = TimestampMicros::from_unix_micros(1_763_000_000_000_000);

    fn event() -> PostPurchaseEvent {
        PostPurchaseEvent {
            occurred_at: NOW,
            ..boomerang_testkit::samples::event()
        }
    }

    /// Validates a decoded event, as ingest does one of an earlier schema version.
    fn validate_decoded(
        event: &PostPurchaseEvent,
        now: TimestampMicros,
        rules: &Rules,
    ) -> Result<(), Rejection> {
        validate(&EventRef::of(event), event.attributes.len(), now, rules)
    }

    fn kind_of(event: &PostPurchaseEvent) -> Option<DeadLetterKind> {
        validate_decoded(event, NOW, &Rules::default())
            .err()
            .map(|rejection| rejection.error_kind)
    }

    #[test]
    fn currency_codes_are_exactly_the_list() {
        assert!(
            ISO_4217.windows(2).all(|pair| pair[0] < pair[1]),
            "sorted, no repeats"
        );
        assert!(is_iso_4217("EUR") && is_iso_4217("JPY"));
        for not_a_code in ["eur", "EURO", "EU", "", "XXX", "EU\u{0}", "ÉUR", "E€"] {
            assert!(!is_iso_4217(not_a_code), "{not_a_code:?}");
        }
        // Every three uppercase letters: accepted exactly when the list has them.
        let mut accepted = 0;
        for first in b'A'..=b'Z' {
            for second in b'A'..=b'Z' {
                for third in b'A'..=b'Z' {
                    let bytes = [first, second, third];
                    let code = std::str::from_utf8(&bytes).expect("ASCII");
                    let listed = ISO_4217.binary_search(&code).is_ok();
                    assert_eq!(is_iso_4217(code), listed, "{code}");
                    accepted += usize::from(listed);
                }
            }
        }
        assert_eq!(accepted, ISO_4217.len());
    }

    #[test]
    fn a_valid_event_passes() {
        assert_eq!(kind_of(&event()), None);
    }

    #[test]
    fn attributes_at_the_limit_pass_and_one_more_does_not() {
        let with = |entries: usize| PostPurchaseEvent {
            attributes: (0..entries)
                .map(|n| (format!("a{n}"), "v".to_string()))
                .collect(),
            ..event()
        };
        assert_eq!(kind_of(&with(DEFAULT_MAX_ATTRIBUTES)), None);
        assert_eq!(
            kind_of(&with(DEFAULT_MAX_ATTRIBUTES + 1)),
            Some(DeadLetterKind::TooManyAttributes)
        );
    }

    #[test]
    fn each_rule_has_its_kind() {
        let cases: Vec<(PostPurchaseEvent, DeadLetterKind)> = vec![
            (
                PostPurchaseEvent {
                    order_id: " ".into(),
                    ..event()
                },
                DeadLetterKind::EmptyIdentifier,
            ),
            (
                PostPurchaseEvent {
                    quantity: 0,
                    ..event()
                },
                DeadLetterKind::NonPositiveQuantity,
            ),
            (
                PostPurchaseEvent {
                    amount: Some(Money::new(-1, "EUR")),
                    ..event()
                },
                DeadLetterKind::NegativeAmount,
            ),
            (
                PostPurchaseEvent {
                    amount: Some(Money::new(1, "EURO")),
                    ..event()
                },
                DeadLetterKind::InvalidCurrency,
            ),
            (
                PostPurchaseEvent {
                    event_type: EventType::RefundIssued,
                    ..event()
                },
                DeadLetterKind::MissingAmount,
            ),
            (
                PostPurchaseEvent {
                    event_type: EventType::StoreCreditIssued,
                    ..event()
                },
                DeadLetterKind::MissingAmount,
            ),
            (
                PostPurchaseEvent {
                    occurred_at: NOW.saturating_add(Duration::from_secs(301)),
                    ..event()
                },
                DeadLetterKind::OccurredInFuture,
            ),
            (
                PostPurchaseEvent {
                    occurred_at: NOW.saturating_sub(Duration::from_secs(8 * 24 * 3600)),
                    ..event()
                },
                DeadLetterKind::OccurredTooLongAgo,
            ),
            (
                PostPurchaseEvent {
                    event_type: EventType::ExchangeShipped,
                    ..event()
                },
                DeadLetterKind::MissingReplacementSku,
            ),
            (
                PostPurchaseEvent {
                    event_type: EventType::WarrantyResolved,
                    ..event()
                },
                DeadLetterKind::MissingWarrantyResolution,
            ),
        ];
        for (case, expected) in cases {
            assert_eq!(kind_of(&case), Some(expected), "{case:?}");
        }
    }

    #[test]
    fn type_specific_fields_satisfy_their_rules() {
        let refund = PostPurchaseEvent {
            event_type: EventType::RefundIssued,
            amount: Some(Money::new(0, "JPY")),
            ..event()
        };
        assert_eq!(kind_of(&refund), None);
        let exchange = PostPurchaseEvent {
            event_type: EventType::ExchangeCancelled,
            ..event()
        };
        assert_eq!(
            kind_of(&exchange),
            None,
            "a cancelled exchange names no replacement"
        );
        let warranty = PostPurchaseEvent {
            event_type: EventType::WarrantyResolved,
            warranty_resolution: Some(WarrantyResolution::Repair),
            ..event()
        };
        assert_eq!(kind_of(&warranty), None);
        let skewed = PostPurchaseEvent {
            occurred_at: NOW.saturating_add(Duration::from_secs(299)),
            ..event()
        };
        assert_eq!(kind_of(&skewed), None, "within the allowed clock skew");
    }

    #[test]
    fn messages_never_quote_identifiers() {
        let rejection = validate_decoded(
            &PostPurchaseEvent {
                customer_id: "".into(),
                ..event()
            },
            NOW,
            &Rules::default(),
        )
        .expect_err("empty customer id");
        assert_eq!(rejection.message, "customer_id is empty");
    }
}
