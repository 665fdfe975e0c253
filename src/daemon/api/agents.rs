//! `/v1/regions/{name}/agent`: attach a guest agent to a block region,
//! show it, detach it.
//!
//! Attaching starts the link (a Unix or vsock listener is bound at once,
//! so a taken address is a 400 now rather than a log line later) and
//! records it in the region's attributes, so a restarted daemon reaches
//! the agent again. See [`crate::agent`] and [`crate::daemon::agents`].

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{enter_gate, parse_json, read_regions, sentence, ApiError, SharedState};
use crate::agent::{region_serial, AgentAddr, DEFAULT_DEADLINE, MAX_SERIAL};
use crate::daemon::agents::{AgentRecord, AttachError};

/// Longest deadline a resize may wait for an agent.
pub const MAX_DEADLINE_MS: u64 = 60_000;

/// `PUT /v1/regions/{name}/agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachAgentRequest {
    /// `serial:PATH` (a QEMU chardev socket the daemon connects to),
    /// `unix:PATH` (the daemon listens) or `vsock:CID:PORT` (the daemon
    /// listens on PORT for guest CID).
    pub address: String,
    /// The disk serial the agent must list [default: `pmv-NAME`, see
    /// `pmvisor region qemu-args`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// How long a resize waits for the agent, in ms [default: 200].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// A region's agent as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// The block region.
    pub region: String,
    /// Where the agent is reached.
    pub address: String,
    /// The disk serial the agent must list.
    pub serial: String,
    /// How long a resize waits for the agent, in ms.
    pub deadline_ms: u64,
    /// Whether the daemon runs the link now (a recorded agent is not
    /// served while no daemon runs).
    pub serving: bool,
    /// Whether an agent is connected now.
    pub connected: bool,
    /// The connected agent's version string.
    pub agent: Option<String>,
}

impl AgentView {
    /// The view of `record` for `region`, not served.
    pub fn recorded(region: &str, record: &AgentRecord) -> AgentView {
        AgentView {
            region: region.to_string(),
            address: record.addr.to_string(),
            serial: record.serial.clone(),
            deadline_ms: u64::try_from(record.deadline.as_millis()).unwrap_or(u64::MAX),
            serving: false,
            connected: false,
            agent: None,
        }
    }
}

/// Parse the body of `PUT /v1/regions/{name}/agent`.
pub fn parse_attach_agent(body: &[u8]) -> Result<AttachAgentRequest, ApiError> {
    parse_json(body, "\"address\" and optionally \"serial\" and \"deadline_ms\"")
}

/// Check a deadline in ms: 1 ms to a minute.
pub fn check_deadline(ms: u64) -> Result<Duration, ApiError> {
    if ms == 0 || ms > MAX_DEADLINE_MS {
        return Err(ApiError::bad_request(format!(
            "an agent deadline of {ms} ms is out of range; give 1 to {MAX_DEADLINE_MS} ms"
        )));
    }
    Ok(Duration::from_millis(ms))
}

/// The record an attach request asks for, checked.
pub fn agent_record(name: &str, request: &AttachAgentRequest) -> Result<AgentRecord, ApiError> {
    let addr: AgentAddr = request
        .address
        .parse()
        .map_err(|err: crate::agent::AddrError| ApiError::bad_request(err.to_string()))?;
    let serial = request.serial.clone().unwrap_or_else(|| region_serial(name));
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if serial.is_empty() || serial.len() > MAX_SERIAL || !serial.chars().all(plain) {
        return Err(ApiError::bad_request(format!(
            "the disk serial {serial:?} must have 1 to {MAX_SERIAL} letters, digits or . _ - \
             (a virtio-blk serial holds {MAX_SERIAL} bytes)"
        )));
    }
    let deadline = request.deadline_ms.map(check_deadline).transpose()?.unwrap_or(DEFAULT_DEADLINE);
    Ok(AgentRecord { addr, serial, deadline })
}

impl From<AttachError> for ApiError {
    fn from(err: AttachError) -> ApiError {
        let status = match &err {
            AttachError::AddressTaken { .. } => StatusCode::CONFLICT,
            AttachError::Link { .. } => StatusCode::BAD_REQUEST,
        };
        ApiError { status, message: sentence(&err) }
    }
}

/// `PUT /v1/regions/{name}/agent` → the attached agent.
pub async fn attach_agent(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<AgentView>, ApiError> {
    let request = parse_attach_agent(&body)?;
    let record = agent_record(&name, &request)?;
    let _one_change = state.changes.lock().await;
    let guard = enter_gate(&state)?;
    let owned = name.clone();
    let size = read_regions(&state, move |regions| Ok(regions.block(&owned)?.stats().size)).await?;
    let agent = state.agents.start(&name, size, &record).await?;
    let owned = name.clone();
    let recorded = record.clone();
    let saved =
        read_regions(&state, move |regions| regions.record_agent(&owned, Some(&recorded))).await;
    if let Err(err) = saved {
        state.agents.stop(&name);
        return Err(err);
    }
    drop(guard);
    tracing::info!(region = %name, "attached agent at {}", record.addr);
    Ok(Json(AgentView {
        serving: true,
        connected: agent.link.is_connected(),
        ..AgentView::recorded(&name, &record)
    }))
}

/// `GET /v1/regions/{name}/agent`.
pub async fn get_agent(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    let owned = name.clone();
    let record = read_regions(&state, move |regions| regions.recorded_agent(&owned)).await?;
    let mut view = AgentView::recorded(&name, &record);
    if let Some(agent) = state.agents.get(&name) {
        let stats = agent.link.stats();
        view.serving = true;
        view.connected = stats.connected;
        view.agent = stats.agent;
    }
    Ok(Json(view))
}

/// `DELETE /v1/regions/{name}/agent` → 204.
pub async fn detach_agent(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _one_change = state.changes.lock().await;
    let guard = enter_gate(&state)?;
    let owned = name.clone();
    read_regions(&state, move |regions| regions.recorded_agent(&owned)).await?;
    state.agents.stop(&name);
    let owned = name.clone();
    read_regions(&state, move |regions| regions.record_agent(&owned, None)).await?;
    drop(guard);
    tracing::info!(region = %name, "detached the agent");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attach_request_defaults_its_serial_and_deadline() {
        let request = parse_attach_agent(br#"{"address": "serial:/run/a.sock"}"#).unwrap();
        let record = agent_record("vm1", &request).unwrap();
        assert_eq!((record.serial.as_str(), record.deadline), ("pmv-vm1", DEFAULT_DEADLINE));
    }

    #[test]
    fn bad_attach_requests_are_refused_with_a_sentence() {
        let bad = |body: &[u8]| agent_record("vm1", &parse_attach_agent(body)?);
        let err = bad(br#"{"address": "serial:/a", "deadline_ms": 0}"#).unwrap_err();
        assert_eq!(err.message, "an agent deadline of 0 ms is out of range; give 1 to 60000 ms");
        let err = bad(br#"{"address": "serial:/a", "serial": "has space"}"#).unwrap_err();
        assert!(
            err.message.starts_with("the disk serial \"has space\" must have"),
            "{}",
            err.message
        );
        let err = bad(br#"{"address": "ftp:/a"}"#).unwrap_err();
        assert!(err.message.contains("is not an agent address"), "{}", err.message);
        let err = bad(br#"{"address": "serial:/a", "colour": 1}"#).unwrap_err();
        assert!(err.message.contains("unknown field `colour`"), "{}", err.message);
    }
}
