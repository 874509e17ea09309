//! The operational HTTP endpoints every binary serves: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive and serving) and `/readyz` (the stage can do its work;
//! 503 with the reason while it cannot).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Whether the stage can do its work, and if not, why: shared between the stage and `/readyz`.
/// Besides the stage's own state (`set_ready` / `set_not_ready`), named conditions can hold it
/// not ready independently (`block` / `unblock`), e.g. a writer retrying in the background.
#[derive(Clone)]
pub struct Readiness(Arc<RwLock<ReadinessState>>);

#[derive(Default)]
struct ReadinessState {
    reason: Option<String>,
    blocked: std::collections::BTreeMap<&'static str, String>,
}

impl Readiness {
    /// Not ready, for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(Arc::new(RwLock::new(ReadinessState {
            reason: Some(reason.into()),
            blocked: Default::default(),
        })))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ReadinessState> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_ready(&self) {
        self.write().reason = None;
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.write().reason = Some(reason.into());
    }

    /// Holds the stage not ready for `reason` until [`unblock`](Self::unblock)`(condition)`.
    pub fn block(&self, condition: &'static str, reason: impl Into<String>) {
        self.write().blocked.insert(condition, reason.into());
    }

    pub fn unblock(&self, condition: &'static str) {
        self.write().blocked.remove(condition);
    }

    /// `None` when ready, else the reasons it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        let state = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let reasons: Vec<&str> = state
            .reason
            .iter()
            .map(String::as_str)
            .chain(state.blocked.values().map(String::as_str))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

#[derive(Clone)]
struct Endpoints {
    metrics: Metrics,
    readiness: Readiness,
}

fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_readiness))
        .with_state(Endpoints { metrics, readiness })
}

async fn serve_metrics(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(error = %error, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n").into_response()
        }
    }
}

async fn serve_readiness(State(endpoints): State<Endpoints>) -> Response {
    match endpoints.readiness.not_ready_reason() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// Binds `listen` and serves the endpoints until `shutdown` is cancelled; returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = router(metrics, readiness);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok((bound, task))
}
