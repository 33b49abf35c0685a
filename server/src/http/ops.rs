//! Probes and metrics for the platform: `/healthz`, `/readyz`, `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::error::WireError;
use crate::health::Readiness;
use crate::state::AppState;

pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// 200 when every dependency answers and the pod is not draining, else 503; the
/// body says which check failed either way.
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let readiness = state.health.readiness().await;
    for check in &readiness.checks {
        state
            .metrics
            .dependency_up
            .with_label_values(&[check.name])
            .set(i64::from(check.ok));
    }
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, WireError> {
    let body = state.metrics.render().map_err(WireError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    ))
}
