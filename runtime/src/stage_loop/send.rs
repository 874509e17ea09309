//! Handing a batch's outputs to the producer, and the future that completes the batch: its
//! records acknowledged, then the processor's write finished and what it rejected
//! dead-lettered.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::StreamConsumer;

use super::collect::BatchPool;
use super::in_flight::{BatchResult, InFlight, complete_oldest};
use super::process::{Counted, WriteSource, now_ms};
use super::rebalance::LoopContext;
use super::{FlushFuture, FlushResult, InputRecord, OutputRecord};
use crate::dead_letter;
use crate::delivery::{BatchDeliveries, BatchProducer, Delivered, Handed, base_record, hand_over};
use crate::metrics::StageMetrics;

/// Hands every output to the producer without waiting for acknowledgements. When the
/// producer's queue is full, waits for the oldest batch in flight (or briefly) and retries.
pub(super) async fn send_all(
    producer: &BatchProducer,
    outputs: &[(Counted, OutputRecord)],
    consumer: &StreamConsumer<LoopContext>,
    in_flight: &Mutex<InFlight>,
    metrics: &StageMetrics,
    crash_after_batches: Option<u64>,
) -> anyhow::Result<Delivered> {
    let deliveries = BatchDeliveries::new();
    let mut produced_at_ms = now_ms();
    for (_, output) in outputs {
        let mut record = base_record(output, &deliveries, produced_at_ms);
        loop {
            match hand_over(producer, record) {
                Handed::Queued => break,
                Handed::QueueFull(back) => {
                    record = back;
                    if !complete_oldest(consumer, in_flight, metrics, crash_after_batches).await {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    // The records after a wait are produced later.
                    produced_at_ms = now_ms();
                }
                Handed::Refused(error) => {
                    anyhow::bail!("cannot hand a record to the producer: {error}")
                }
            }
        }
    }
    Ok(deliveries.seal())
}

/// The future that completes a batch: its produced records acknowledged, then the processor's
/// write finished and whatever that write rejected dead-lettered and acknowledged too.
#[allow(clippy::too_many_arguments)]
pub(super) fn completion(
    delivered: Delivered,
    flush: Option<FlushFuture>,
    batch: Vec<InputRecord>,
    pool: BatchPool,
    writes: Vec<WriteSource>,
    producer: BatchProducer,
    stage: &'static str,
    dead_letter_topic: String,
    max_record_bytes: usize,
) -> Pin<Box<dyn Future<Output = BatchResult> + Send>> {
    let delivered = delivered.map(|failure| match failure {
        Some(error) => Err(format!("producing failed: {error}")),
        None => Ok(()),
    });
    let Some(flush) = flush else {
        pool.give_back(batch);
        return Box::pin(delivered.map(|delivered| match delivered {
            Ok(()) => BatchResult::Completed {
                rejected_writes: Vec::new(),
                already_stored: 0,
            },
            Err(failure) => BatchResult::Failed(failure),
        }));
    };
    Box::pin(async move {
        // The batch goes back to the pool however this ends.
        let returned = Returned { batch, pool: &pool };
        let batch = returned.batch.as_slice();
        let delivered = delivered.await;
        let (rejected, already_stored) = match flush.await {
            FlushResult::Written {
                rejected,
                already_stored,
            } => (rejected, already_stored),
            FlushResult::Abandoned => return BatchResult::Abandoned,
            FlushResult::Failed(failure) => return BatchResult::Failed(failure),
        };
        if let Err(failure) = delivered {
            return BatchResult::Failed(failure);
        }
        let mut rejected_writes = Vec::with_capacity(rejected.len());
        let dead_letter_deliveries = BatchDeliveries::new();
        for (index, rejection) in rejected {
            let Some(record) = writes
                .get(index.get())
                .and_then(|source| source.record(batch))
            else {
                return BatchResult::Failed(format!(
                    "the write rejected record {} of a batch of {} writes",
                    index.get(),
                    writes.len()
                ));
            };
            let now = now_ms();
            let dead_letter = dead_letter::record(
                stage,
                &dead_letter_topic,
                record,
                &rejection,
                now,
                max_record_bytes,
            );
            let mut record = base_record(&dead_letter, &dead_letter_deliveries, now);
            loop {
                match hand_over(&producer, record) {
                    Handed::Queued => break,
                    Handed::QueueFull(back) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Handed::Refused(error) => {
                        return BatchResult::Failed(format!(
                            "cannot hand a dead letter to the producer: {error}"
                        ));
                    }
                }
            }
            rejected_writes.push(rejection.error_kind);
        }
        match dead_letter_deliveries.seal().await {
            Some(error) => BatchResult::Failed(format!("producing a dead letter failed: {error}")),
            None => BatchResult::Completed {
                rejected_writes,
                already_stored,
            },
        }
    })
}

/// A batch that goes back to its pool when dropped.
struct Returned<'a> {
    batch: Vec<InputRecord>,
    pool: &'a BatchPool,
}

impl Drop for Returned<'_> {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.batch));
    }
}
