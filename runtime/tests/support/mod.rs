//! What the runtime's integration tests share.

use boomerang_runtime::stage_loop::{InputRecord, Outcome, Partition, Processor, RetryableError};

/// Passes every record on, producing nothing.
pub struct PassesEverything;

impl Processor for PassesEverything {
    async fn assign(&mut self, _partitions: &[Partition]) -> anyhow::Result<()> {
        Ok(())
    }

    fn revoke(&mut self, _partitions: &[Partition]) {}

    async fn process(&mut self, _record: &InputRecord) -> Result<Outcome, RetryableError> {
        Ok(Outcome::Emit(Default::default()))
    }
}
