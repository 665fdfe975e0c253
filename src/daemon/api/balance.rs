//! `GET|PUT /v1/pool/balance` and `POST /v1/pool/balance/run`: the pool
//! balancer's watermarks, the block regions' weights, and a pass on demand.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{parse_json, read_regions, ApiError, SharedState};
use crate::block::balance::{pages_to_free, parse_weight, Candidate, Watermarks};
use crate::daemon::balancer::{self, BalanceRun};

/// A block region as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceRegionView {
    pub name: String,
    pub weight: u64,
    /// Frames (4 KiB) taken from the pool, and those holding blocks.
    pub frames: u64,
    pub resident: u64,
    /// The fewest frames the balancer leaves it.
    pub floor: u64,
    pub swap: bool,
}

/// The balancer's state (`GET /v1/pool/balance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceView {
    /// Watermarks, as fractions of the pool's data pages free.
    pub low: f64,
    pub high: f64,
    pub data_pages: u64,
    pub free_pages: u64,
    /// Pages a pass would free now (0 above the low watermark).
    pub wanted_pages: u64,
    pub regions: Vec<BalanceRegionView>,
    /// The last pass that shrank something since the daemon started.
    pub last_run: Option<BalanceRun>,
}

/// `PUT /v1/pool/balance`: what to change; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBalanceRequest {
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// Block region name → weight (1 to 10,000).
    #[serde(default)]
    pub weights: BTreeMap<String, u64>,
}

async fn view(state: &SharedState) -> Result<BalanceView, ApiError> {
    let candidates: Vec<Candidate> = read_regions(state, balancer::candidates).await?;
    let info = state.pool.info();
    let marks = state.balancer.watermarks();
    Ok(BalanceView {
        low: marks.low,
        high: marks.high,
        data_pages: info.data_pages,
        free_pages: info.free_pages,
        wanted_pages: pages_to_free(info.data_pages, info.free_pages, marks),
        regions: candidates
            .iter()
            .map(|c| BalanceRegionView {
                name: c.name.clone(),
                weight: c.weight,
                frames: c.frames,
                resident: c.resident,
                floor: c.floor(),
                swap: c.swap,
            })
            .collect(),
        last_run: state.balancer.last_run(),
    })
}

/// `GET /v1/pool/balance`.
pub async fn get_balance(State(state): State<SharedState>) -> Result<Json<BalanceView>, ApiError> {
    Ok(Json(view(&state).await?))
}

/// `PUT /v1/pool/balance` → the balancer's state after the change.
pub async fn set_balance(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<Json<BalanceView>, ApiError> {
    let request: SetBalanceRequest =
        parse_json(&body, r#"{"low": 0.05, "high": 0.1, "weights": {"vm1": 200}}"#)?;
    let now = state.balancer.watermarks();
    let marks = Watermarks::new(request.low.unwrap_or(now.low), request.high.unwrap_or(now.high))
        .map_err(ApiError::bad_request)?;
    for weight in request.weights.values() {
        parse_weight(&weight.to_string()).map_err(ApiError::bad_request)?;
    }
    {
        let _one_change = state.changes.lock().await;
        let weights = request.weights.clone();
        read_regions(&state, move |regions| {
            weights
                .iter()
                .try_for_each(|(name, &weight)| balancer::set_weight(regions, name, weight))
        })
        .await?;
        if marks != now {
            state.balancer.set_watermarks(marks)?;
        }
    }
    Ok(Json(view(&state).await?))
}

/// `POST /v1/pool/balance/run` → what the pass did (`null` when the pool
/// was above its low watermark).
pub async fn run_balance(
    State(state): State<SharedState>,
) -> Result<Json<Option<BalanceRun>>, ApiError> {
    Ok(Json(state.balancer.pass(&state).await?))
}
