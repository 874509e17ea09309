//! The refund SLA, from the stream: return cases whose goods were received and that are not
//! refunded (nor credited, nor rejected) yet, per enriched partition, and how many of them are
//! past the target (`--refund-sla-hours` after receipt). A case's events share its order id,
//! the enriched topic's key, so one partition holds the whole case. A newly assigned
//! partition starts from what ClickHouse holds of it (`StoredOffsets::open_refund_cases`), so
//! a restart or a rebalance loses no open case; the records after that replay through here.
//!
//! ClickHouse's `refund_sla` view applies the same rule by receipt day.
//!
//! Cases are remembered by the 128-bit hash of their id (`idempotency::key_hash`), in maps
//! that do not hash again: most cases of a busy shop are received and open at any moment, and
//! owning and SipHashing each id was a seventh of the sink's CPU per event (`perf`,
//! `pipeline_e2e`).

use std::collections::{BTreeMap, HashMap};

use boomerang_runtime::idempotency::{PrehashedKeys, key_hash};
use boomerang_schemas::{EventRef, EventType};

/// A case id's hash.
type CaseKey = u128;

/// How a refund stood against the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refunded {
    WithinTarget,
    Late,
}

impl Refunded {
    pub fn as_str(self) -> &'static str {
        match self {
            Refunded::WithinTarget => "met",
            Refunded::Late => "missed",
        }
    }
}

/// One partition's open cases.
#[derive(Debug, Default)]
struct Open {
    /// Received, not closed: case → when the goods were received (microseconds).
    received: HashMap<CaseKey, i64, PrehashedKeys>,
    /// Closed before their receipt came (producers' events can cross): a receipt that comes
    /// later does not open them. Case → when closed.
    closed_first: HashMap<CaseKey, i64, PrehashedKeys>,
}

#[derive(Debug)]
pub struct RefundSla {
    target_micros: i64,
    /// Cases received longer ago than this are no longer followed.
    horizon_micros: i64,
    /// A few partitions, looked up for every event the SLA follows: a B-tree finds one faster
    /// than SipHash hashes its number.
    partitions: BTreeMap<i32, Open>,
}

/// What the gauges show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlaCounts {
    pub open: u64,
    pub past_target: u64,
}

impl RefundSla {
    pub fn new(target_micros: i64, horizon_micros: i64) -> Self {
        Self {
            target_micros,
            horizon_micros,
            partitions: BTreeMap::new(),
        }
    }

    /// Whether an event of this type can open or close a followed case.
    pub fn follows(event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::ReturnReceived
                | EventType::RefundIssued
                | EventType::StoreCreditIssued
                | EventType::ReturnRejected
        )
    }

    pub fn target_micros(&self) -> i64 {
        self.target_micros
    }

    pub fn horizon_micros(&self) -> i64 {
        self.horizon_micros
    }

    /// Follows one event of `partition`; says how a refund that closes a followed case stood.
    pub fn observe(
        &mut self,
        partition: i32,
        event: &EventRef<'_>,
        now_micros: i64,
    ) -> Option<Refunded> {
        let at = event.occurred_at.as_unix_micros();
        let case = key_hash(event.case_id);
        match event.event_type {
            EventType::ReturnReceived => {
                if at < now_micros - self.horizon_micros {
                    return None;
                }
                let open = self.partitions.entry(partition).or_default();
                if open.closed_first.remove(&case).is_none() {
                    open.received
                        .entry(case)
                        .and_modify(|received| *received = (*received).min(at))
                        .or_insert(at);
                }
                None
            }
            EventType::RefundIssued | EventType::StoreCreditIssued | EventType::ReturnRejected => {
                let open = self.partitions.entry(partition).or_default();
                match open.received.remove(&case) {
                    Some(received) if event.event_type != EventType::ReturnRejected => {
                        Some(if at - received <= self.target_micros {
                            Refunded::WithinTarget
                        } else {
                            Refunded::Late
                        })
                    }
                    Some(_) => None,
                    None => {
                        if at >= now_micros - self.horizon_micros {
                            open.closed_first.insert(case, at);
                        }
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// A newly assigned partition's open cases, as ClickHouse holds them.
    pub fn restore(&mut self, partition: i32, open: impl IntoIterator<Item = (String, i64)>) {
        let cases = self.partitions.entry(partition).or_default();
        for (case, received) in open {
            cases
                .received
                .entry(key_hash(&case))
                .and_modify(|at| *at = (*at).min(received))
                .or_insert(received);
        }
    }

    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Open cases and those past the target at `now_micros`; forgets what fell out of the
    /// horizon.
    pub fn counts(&mut self, now_micros: i64) -> SlaCounts {
        let oldest = now_micros - self.horizon_micros;
        let mut counts = SlaCounts::default();
        for open in self.partitions.values_mut() {
            open.received.retain(|_, received| *received >= oldest);
            open.closed_first.retain(|_, closed| *closed >= oldest);
            for received in open.received.values() {
                counts.open += 1;
                if now_micros - received > self.target_micros {
                    counts.past_target += 1;
                }
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use boomerang_schemas::{PostPurchaseEvent, TimestampMicros};
    use boomerang_testkit::samples::event;

    use super::*;

    const HOUR: i64 = 3_600_000_000;

    fn at(event_type: EventType, case: &str, micros: i64) -> PostPurchaseEvent {
        let mut event = event();
        event.event_type = event_type;
        event.case_id = case.into();
        event.occurred_at = TimestampMicros::from_unix_micros(micros);
        event
    }

    #[test]
    fn a_received_case_is_open_until_refunded_and_past_target_after_it() {
        let now = 1_000 * HOUR;
        let mut sla = RefundSla::new(72 * HOUR, 90 * 24 * HOUR);
        sla.observe(
            0,
            &EventRef::of(&at(EventType::ReturnRequested, "a", now - 100 * HOUR)),
            now,
        );
        assert_eq!(sla.counts(now), SlaCounts::default(), "not received yet");
        sla.observe(
            0,
            &EventRef::of(&at(EventType::ReturnReceived, "a", now - 80 * HOUR)),
            now,
        );
        sla.observe(
            1,
            &EventRef::of(&at(EventType::ReturnReceived, "b", now - 10 * HOUR)),
            now,
        );
        assert_eq!(
            sla.counts(now),
            SlaCounts {
                open: 2,
                past_target: 1
            }
        );
        assert_eq!(
            sla.observe(
                0,
                &EventRef::of(&at(EventType::RefundIssued, "a", now)),
                now
            ),
            Some(Refunded::Late)
        );
        assert_eq!(
            sla.observe(
                1,
                &EventRef::of(&at(EventType::StoreCreditIssued, "b", now)),
                now
            ),
            Some(Refunded::WithinTarget)
        );
        assert_eq!(sla.counts(now), SlaCounts::default());
    }

    #[test]
    fn a_rejection_closes_and_a_receipt_after_the_close_does_not_open() {
        let now = 1_000 * HOUR;
        let mut sla = RefundSla::new(72 * HOUR, 90 * 24 * HOUR);
        sla.observe(
            0,
            &EventRef::of(&at(EventType::ReturnReceived, "a", now - 80 * HOUR)),
            now,
        );
        assert_eq!(
            sla.observe(
                0,
                &EventRef::of(&at(EventType::ReturnRejected, "a", now)),
                now
            ),
            None
        );
        assert_eq!(
            sla.observe(
                0,
                &EventRef::of(&at(EventType::RefundIssued, "b", now - 90 * HOUR)),
                now
            ),
            None
        );
        sla.observe(
            0,
            &EventRef::of(&at(EventType::ReturnReceived, "b", now - 95 * HOUR)),
            now,
        );
        assert_eq!(sla.counts(now), SlaCounts::default());
    }

    #[test]
    fn restored_partitions_count_and_forgotten_ones_do_not() {
        let now = 1_000 * HOUR;
        let mut sla = RefundSla::new(72 * HOUR, 90 * 24 * HOUR);
        sla.restore(3, [("a".to_string(), now - 100 * HOUR)]);
        sla.restore(4, [("b".to_string(), now - HOUR)]);
        assert_eq!(
            sla.counts(now),
            SlaCounts {
                open: 2,
                past_target: 1
            }
        );
        sla.forget(3);
        assert_eq!(
            sla.counts(now),
            SlaCounts {
                open: 1,
                past_target: 0
            }
        );
        // Out of the horizon: no longer followed.
        assert_eq!(sla.counts(now + 91 * 24 * HOUR), SlaCounts::default());
    }
}
