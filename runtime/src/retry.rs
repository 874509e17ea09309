//! Retrying what fails for reasons outside the stage (a broker or registry that does not
//! answer yet) instead of exiting: with backoff, saying why in `/readyz` and the log, until it
//! works or the stage is asked to stop.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error_kind::ErrorKind;
use crate::metrics::Errors;
use crate::service::StageContext;

/// Exponential backoff: `first`, doubling, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// [`Self::next_delay`], up to ±50% either side, so that instances failing together do
    /// not retry in step.
    pub fn next_delay_jittered(&mut self) -> Duration {
        use std::hash::BuildHasher;
        let delay = self.next_delay();
        let random = std::collections::hash_map::RandomState::new().hash_one(delay);
        let fraction = (random % 1_000) as f64 / 1_000.0; // 0.0 .. 1.0
        delay.mul_f64(0.5 + fraction)
    }
}

impl Default for Backoff {
    /// 100 ms, doubling up to 10 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// One operation tried until it works: after each failure, [`Retry::failed`] counts it in
/// `boomerang_errors_total{error_kind}`, logs it and waits out the next backoff, or gives way to
/// shutdown. Every retry in the stages goes through it; it borrows what it needs, so making one
/// per attempted operation costs nothing.
pub struct Retry<'a> {
    what: &'a str,
    errors: &'a Errors,
    shutdown: &'a CancellationToken,
    backoff: Backoff,
    jitter: bool,
    failures: u32,
}

impl<'a> Retry<'a> {
    /// Retrying `what` (words for the log, e.g. "inserting into returns"), with
    /// [`Backoff::default`].
    pub fn new(what: &'a str, errors: &'a Errors, shutdown: &'a CancellationToken) -> Self {
        Self {
            what,
            errors,
            shutdown,
            backoff: Backoff::default(),
            jitter: false,
            failures: 0,
        }
    }

    pub fn in_stage(what: &'a str, context: &'a StageContext) -> Self {
        Self::new(what, context.metrics.errors(), &context.shutdown)
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Waits vary ±50%, so that instances failing together do not retry in step.
    pub fn jittered(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// After a failed attempt: counts it as `kind`, logs it, and waits before the next one.
    /// `false` if the stage was asked to stop first: stop trying.
    pub async fn failed<E: Display + ?Sized>(&mut self, kind: ErrorKind, error: &E) -> bool {
        self.failures += 1;
        self.errors.count(kind);
        let delay = if self.jitter {
            self.backoff.next_delay_jittered()
        } else {
            self.backoff.next_delay()
        };
        tracing::warn!(
            what = self.what,
            error_kind = kind.as_str(),
            error = %error,
            attempt = self.failures,
            retry_in_ms = delay.as_millis() as u64,
            "failed; retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.shutdown.cancelled() => false,
        }
    }
}

/// Runs `attempt` until it succeeds, each failure counted as `kind` and said in `/readyz`
/// ("{what}: {error}"). `None` if the stage was asked to stop first.
pub async fn until_ok<T, E, F, Fut>(
    context: &StageContext,
    kind: ErrorKind,
    what: &str,
    attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    until_ok_with(context, kind, what, Backoff::default(), attempt).await
}

/// [`until_ok`] with another `backoff`.
pub async fn until_ok_with<T, E, F, Fut>(
    context: &StageContext,
    kind: ErrorKind,
    what: &str,
    backoff: Backoff,
    mut attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retry = Retry::in_stage(what, context).with_backoff(backoff);
    loop {
        if context.shutdown.is_cancelled() {
            return None;
        }
        let error = match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => error.to_string(),
        };
        context.readiness.set_not_ready(format!("{what}: {error}"));
        if !retry.failed(kind, &error).await {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> StageContext {
        StageContext {
            stage: "retry-test",
            metrics: crate::metrics::Metrics::for_tests(),
            readiness: crate::http::Readiness::new("starting"),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Fails twice, then answers: the caller gets the answer, and `/readyz` said why it
    /// waited meanwhile.
    #[tokio::test]
    async fn what_fails_is_tried_again_until_it_works() {
        let context = context();
        let mut attempts = 0;
        let answer = until_ok(
            &context,
            ErrorKind::BrokersUnavailable,
            "reading the metadata",
            || {
                attempts += 1;
                let attempt = attempts;
                async move {
                    if attempt < 3 {
                        Err(format!("timed out ({attempt})"))
                    } else {
                        Ok(attempt)
                    }
                }
            },
        )
        .await;
        assert_eq!(answer, Some(3));
        assert_eq!(
            context.metrics.errors().get(ErrorKind::BrokersUnavailable),
            2,
            "each failed attempt is counted"
        );
        assert_eq!(
            context.readiness.not_ready_reason().as_deref(),
            Some("reading the metadata: timed out (2)")
        );
    }

    #[tokio::test]
    async fn a_stop_ends_the_retries() {
        let context = context();
        let shutdown = context.shutdown.clone();
        let answer: Option<()> = until_ok(
            &context,
            ErrorKind::BrokersUnavailable,
            "reading the metadata",
            || {
                shutdown.cancel();
                async { Err("timed out") }
            },
        )
        .await;
        assert_eq!(answer, None);
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        for _ in 0..100 {
            let mut backoff = Backoff::new(Duration::from_millis(1_000), Duration::from_secs(1));
            let wait = backoff.next_delay_jittered();
            assert!(wait >= Duration::from_millis(500) && wait <= Duration::from_millis(1_500));
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }
}
