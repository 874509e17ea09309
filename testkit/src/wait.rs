//! Waiting for a condition with a deadline, never a bare sleep.

use std::time::{Duration, Instant};

/// Calls `check` until it returns `Some`, pausing briefly between calls; panics with `what`
/// when `deadline` passes first.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
