//! `GET /v1/pod`, `POST /v1/pod/trigger`, `POST /v1/pod/cancel`: the
//! power-outage sequence (SPEC §8). A trigger answers once the pool is
//! fenced, with the per-phase report; cancel lifts the fence.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{sentence, ApiError, SharedState};
use crate::pod::{CancelError, CancelReport, PodReport, PodStatus, Trigger};

/// `GET /v1/pod`. The status waits for a sequence in progress (it holds
/// the state), so it waits on the blocking pool: on the runtime's workers,
/// a few polls would starve the VM saves the sequence waits for.
pub async fn get_pod(State(state): State<SharedState>) -> Result<Json<PodStatus>, ApiError> {
    let pod = Arc::clone(&state.pod);
    tokio::task::spawn_blocking(move || pod.status())
        .await
        .map(Json)
        .map_err(|e| ApiError::internal(format!("reading the POD status failed: {e}")))
}

/// `POST /v1/pod/trigger`: run the sequence now (the trigger time is taken
/// on arrival).
pub async fn trigger_pod(State(state): State<SharedState>) -> Result<Json<PodReport>, ApiError> {
    let trigger = Trigger::now("api");
    let pod = Arc::clone(&state.pod);
    tokio::task::spawn_blocking(move || pod.fence(trigger))
        .await
        .map(Json)
        .map_err(|e| ApiError::internal(format!("the POD sequence failed: {e}")))
}

/// `POST /v1/pod/cancel`: power came back; lift the fence.
pub async fn cancel_pod(State(state): State<SharedState>) -> Result<Json<CancelReport>, ApiError> {
    let pod = Arc::clone(&state.pod);
    let cancelled = tokio::task::spawn_blocking(move || pod.cancel())
        .await
        .map_err(|e| ApiError::internal(format!("cancelling the POD failed: {e}")))?;
    cancelled.map(Json).map_err(|err| match err {
        CancelError::NotFenced => {
            ApiError { status: StatusCode::CONFLICT, message: err.to_string() }
        }
        CancelError::Lift(_) => ApiError::internal(sentence(&err)),
    })
}
