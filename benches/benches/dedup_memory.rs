//! The de-duplication state's memory cost per idempotency key: resident memory before and
//! after remembering N keys (Linux, from /proc/self/statm).
//!
//! cargo bench -p boomerang-benches --bench dedup_memory

use boomerang_benches::harness::resident_bytes;
use std::time::Duration;

use boomerang_ingest::dedup::DedupState;
use boomerang_schemas::TimestampMicros;

fn main() {
    // criterion-style flags (--bench) are passed by cargo; there is nothing to configure.
    let now = TimestampMicros::now();
    println!("keys       resident_bytes   bytes_per_key");
    for keys in [1_000_000usize, 4_000_000] {
        let before = resident_bytes();
        let mut state = DedupState::new(Duration::from_secs(7 * 24 * 3600), keys);
        for n in 0..keys {
            state.check(&format!("returns-portal:rma-{n:012}:refund-issued"), now);
        }
        let after = resident_bytes();
        assert_eq!(state.len(), keys);
        let grown = after.saturating_sub(before);
        println!("{keys:<10} {grown:<16} {:.1}", grown as f64 / keys as f64);
        drop(state);
    }
}
