//! Knowing when a batch's produced records are all acknowledged, without a future per record.
//!
//! rdkafka's `FutureProducer` gives every record its own oneshot channel (two allocations, a
//! wake-up on delivery, a future to poll), yet the stage loop only ever asks one question of a
//! batch: has every output been answered, and did any fail? So each batch gets one
//! [`BatchDeliveries`], every record it produces carries a reference to it as its delivery
//! opaque, and the producer's thread counts the answers down. The batch's [`Delivered`] future
//! resolves, with the first failure if any, once the batch is sealed and its count is zero.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::stage_loop::OutputRecord;

/// The stage loop's producer: deliveries are counted per batch.
pub type BatchProducer = ThreadedProducer<CountingContext>;

/// One batch's outputs on their way to the brokers.
#[derive(Debug)]
pub struct BatchDeliveries {
    /// Records handed to the producer and not answered yet, plus one until [`Self::seal`].
    pending: AtomicUsize,
    /// The first failure the brokers answered with.
    failure: Mutex<Option<String>>,
    waker: AtomicWaker,
}

impl BatchDeliveries {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            pending: AtomicUsize::new(1),
            failure: Mutex::new(None),
            waker: AtomicWaker::new(),
        })
    }

    /// The opaque for one more record to produce: the count goes up before the record is
    /// handed over, so an answer can never arrive for a record not yet counted. A record the
    /// producer refuses outright gets no delivery report: [`hand_over`] answers for it.
    pub fn expect_one(self: &Arc<Self>) -> Arc<Self> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.clone()
    }

    /// One record answered: delivered (`None`) or refused.
    pub fn answered(&self, failure: Option<String>) {
        if let Some(failure) = failure {
            self.failure
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get_or_insert(failure);
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    /// Every record of the batch has been handed over: what resolves once all are answered.
    pub fn seal(self: Arc<Self>) -> Delivered {
        self.answered(None);
        Delivered(self)
    }

    fn take_failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// Resolves once every record of a sealed batch is answered, with the first failure if any.
#[derive(Debug)]
pub struct Delivered(Arc<BatchDeliveries>);

impl Future for Delivered {
    type Output = Option<String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let deliveries = &self.0;
        if deliveries.pending.load(Ordering::Acquire) == 0 {
            return Poll::Ready(deliveries.take_failure());
        }
        deliveries.waker.register(cx.waker());
        // An answer may have come between the check and the registration.
        if deliveries.pending.load(Ordering::Acquire) == 0 {
            return Poll::Ready(deliveries.take_failure());
        }
        Poll::Pending
    }
}

/// Counts each delivery report against the batch its record came from.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingContext;

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = Arc<BatchDeliveries>;

    fn delivery(&self, result: &DeliveryResult<'_>, deliveries: Self::DeliveryOpaque) {
        deliveries.answered(result.as_ref().err().map(|(error, _)| error.to_string()));
    }
}

/// A record for the [`BatchProducer`], counted against its batch.
pub type CountedRecord<'a> = BaseRecord<'a, [u8], [u8], Arc<BatchDeliveries>>;

/// What became of a record handed to the producer.
pub enum Handed<'a> {
    /// Queued: its delivery report will count it down.
    Queued,
    /// The producer's queue is full: the record comes back, to be handed over again.
    QueueFull(CountedRecord<'a>),
    /// Refused outright. No delivery report will come, so it is already counted as answered,
    /// with this error as its batch's failure.
    Refused(KafkaError),
}

/// Hands `record` to the producer; a refusal is answered here, so no batch waits for it.
pub fn hand_over<'a>(producer: &BatchProducer, record: CountedRecord<'a>) -> Handed<'a> {
    match producer.send(record) {
        Ok(()) => Handed::Queued,
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
            Handed::QueueFull(back)
        }
        Err((error, back)) => {
            back.delivery_opaque.answered(Some(error.to_string()));
            Handed::Refused(error)
        }
    }
}

/// `output` as a record for the producer, counted against `deliveries`.
///
/// An output without a timestamp of its own gets `produced_at_ms`: the batch's hand-over time,
/// read once for the batch. Left to librdkafka, the clock was read for every record
/// (`rd_uclock` in `rd_kafka_producev`, 1.3% of ingest's and enrich's main threads in `perf`).
pub fn base_record<'a>(
    output: &'a OutputRecord,
    deliveries: &Arc<BatchDeliveries>,
    produced_at_ms: i64,
) -> CountedRecord<'a> {
    let mut record = BaseRecord::with_opaque_to(&output.topic, deliveries.expect_one());
    if !output.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(output.headers.len());
        for (key, value) in output.headers.iter() {
            headers = headers.insert(Header { key, value });
        }
        record = record.headers(headers);
    }
    if let Some(key) = &output.key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &output.value {
        record = record.payload(value.as_slice());
    }
    if let Some(partition) = output.partition {
        record = record.partition(partition);
    }
    record.timestamp(output.timestamp_ms.unwrap_or(produced_at_ms))
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn a_batch_is_delivered_once_sealed_and_every_record_is_answered() {
        let deliveries = BatchDeliveries::new();
        let first = deliveries.expect_one();
        let second = deliveries.expect_one();
        first.answered(None);
        let mut delivered = deliveries.seal();
        assert_eq!((&mut delivered).now_or_never(), None, "one is unanswered");
        second.answered(None);
        assert_eq!(delivered.now_or_never(), Some(None));
    }

    #[test]
    fn an_unsealed_batch_is_not_delivered_even_with_every_record_answered() {
        let deliveries = BatchDeliveries::new();
        deliveries.expect_one().answered(None);
        assert_eq!(deliveries.pending.load(Ordering::Acquire), 1);
        assert_eq!(deliveries.seal().now_or_never(), Some(None));
    }

    #[test]
    fn a_record_without_a_timestamp_gets_the_batchs_and_one_with_keeps_its_own() {
        let deliveries = BatchDeliveries::new();
        let mut output = OutputRecord {
            topic: Arc::from("t"),
            partition: None,
            key: None,
            value: Some(b"v".to_vec()),
            timestamp_ms: None,
            event_time_ms: None,
            headers: Default::default(),
        };
        assert_eq!(base_record(&output, &deliveries, 42).timestamp, Some(42));
        output.timestamp_ms = Some(7);
        assert_eq!(base_record(&output, &deliveries, 42).timestamp, Some(7));
    }

    #[test]
    fn a_batch_fails_with_its_first_refusal() {
        let deliveries = BatchDeliveries::new();
        let records: Vec<_> = (0..3).map(|_| deliveries.expect_one()).collect();
        records[1].answered(Some("Message timed out".into()));
        records[0].answered(None);
        records[2].answered(Some("Unknown topic".into()));
        assert_eq!(
            deliveries.seal().now_or_never(),
            Some(Some("Message timed out".to_string()))
        );
    }

    #[test]
    fn a_record_refused_outright_and_answered_by_its_sender_fails_the_batch() {
        let deliveries = BatchDeliveries::new();
        let refused = deliveries.expect_one();
        drop(refused); // the producer handed it back with an error: no report will come
        deliveries.answered(Some("Invalid message size".into()));
        assert_eq!(
            deliveries.seal().now_or_never(),
            Some(Some("Invalid message size".to_string()))
        );
    }

    #[test]
    fn an_empty_batch_is_delivered_at_once() {
        assert_eq!(BatchDeliveries::new().seal().now_or_never(), Some(None));
    }

    #[tokio::test]
    async fn answers_from_another_thread_wake_the_waiting_batch() {
        let deliveries = BatchDeliveries::new();
        let opaques: Vec<_> = (0..1_000).map(|_| deliveries.expect_one()).collect();
        let delivered = deliveries.seal();
        let answering = std::thread::spawn(move || {
            for opaque in opaques {
                opaque.answered(None);
            }
        });
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_secs(10), delivered).await,
            Ok(None)
        );
        answering.join().expect("answering thread");
    }
}
