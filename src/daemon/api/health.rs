//! `GET /v1/health`: whether the daemon is serving, which pool it owns and
//! its PID. Clients use it to decide whether to route a command through the
//! daemon; it never touches the pool.

use std::path::PathBuf;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::SharedState;

/// The daemon's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// `ok` while serving, `fenced` while the gate is closed.
    pub status: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The canonical path of the pool the daemon owns.
    pub pool: PathBuf,
    /// The socket the daemon listens on.
    pub socket: PathBuf,
    /// The pmvisor version serving.
    pub version: String,
}

/// `GET /v1/health`.
pub async fn get_health(State(state): State<SharedState>) -> Json<HealthView> {
    Json(HealthView {
        status: if state.gate.is_open() { "ok" } else { "fenced" }.to_string(),
        pid: std::process::id(),
        pool: state.pool_path.clone(),
        socket: state.socket.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}
