//! Giving the group up when the stage stops: a dynamic member leaves, a static one stays, and
//! stopping never waits on the consumer's close for longer than [`CLOSE_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};

use super::rebalance::LoopContext;

/// How long a stopping stage waits for its consumer to close. Everything is committed by
/// then; what is left is the group protocol's goodbye.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the consumer after the stage's final commit.
///
/// - A dynamic member unsubscribes first, which sends LeaveGroup: its partitions move to the
///   other members at once instead of after its session timeout.
/// - A static member (`--instance-id`) does not leave. Unsubscribing would send LeaveGroup even
///   for a static member; closing does not (KIP-345). The same instance back within its session
///   timeout takes its partitions back without a rebalance, so a rolling restart moves none.
///
/// librdkafka can hang for good in a close that a rebalance interrupts (an assignment that
/// arrives while closing: confluentinc/librdkafka#4884). The close runs on its own thread, and
/// the stage stops after [`CLOSE_TIMEOUT`] whether or not it has finished.
pub(super) async fn close(consumer: Arc<StreamConsumer<LoopContext>>, static_member: bool) {
    if !static_member {
        consumer.unsubscribe();
    }
    let (closed, wait) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = closed.send(());
        });
    if let Err(error) = spawned {
        tracing::warn!(error = %error, "cannot start the consumer's close; stopping without it");
        return;
    }
    if tokio::time::timeout(CLOSE_TIMEOUT, wait).await.is_err() {
        tracing::warn!(
            timeout_s = CLOSE_TIMEOUT.as_secs(),
            "the consumer did not close in time (a rebalance arrived while closing); \
             stopping anyway: every offset is committed"
        );
    }
}
