//! `/v1/exports`: serve block regions over NBD or ublk, list and remove
//! exports.
//!
//! An export is named by its region (one export per region). Adding one
//! starts serving it and records it in the pool, so the daemon serves it
//! again after a restart; removing it disconnects its clients and drops the
//! record. See [`crate::daemon::exports`].

use std::path::Path as FsPath;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{enter_gate, join, parse_json, read_regions, ApiError, SharedState};
use crate::daemon::exports::{parse_nbd_address, ExportError, ExportKind, Served};

/// The transports a region can be exported on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// NBD on a Unix socket or TCP.
    Nbd,
    /// A Linux ublk device.
    Ublk,
}

/// `POST /v1/exports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddExportRequest {
    /// The block region to export; clients name it as the export.
    pub region: String,
    /// How to export it.
    pub transport: Transport,
    /// NBD only: `unix:PATH`, `tcp:PORT` (loopback) or `tcp:IP:PORT`
    /// [default: the Unix socket `<control socket dir>/nbd/<region>.sock`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// ublk only: hardware queues [default: chosen by the transport].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    /// ublk only: requests in flight per queue [default: chosen by the
    /// transport].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u16>,
}

/// An export as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportView {
    /// The exported block region (and the export's name).
    pub region: String,
    /// The transport.
    pub transport: Transport,
    /// NBD: the listen address, `unix:PATH` or `tcp:IP:PORT`.
    pub address: Option<String>,
    /// NBD: the URI clients use (`nbd+unix:///NAME?socket=PATH`).
    pub uri: Option<String>,
    /// ublk: the block device (`/dev/ublkbN`), while served.
    #[serde(default)]
    pub device: Option<String>,
    /// Whether the export is being served now (a recorded export is not
    /// served while no daemon runs, or when serving it again failed).
    pub serving: bool,
}

impl ExportView {
    /// The view of `kind` exporting `region`.
    pub fn new(region: &str, kind: &ExportKind, serving: bool) -> ExportView {
        let (transport, address) = match kind {
            ExportKind::Nbd(addr) => (Transport::Nbd, Some(addr.to_string())),
            ExportKind::Ublk { .. } => (Transport::Ublk, None),
        };
        ExportView {
            region: region.to_string(),
            transport,
            address,
            uri: kind.client_uri(region),
            device: None,
            serving,
        }
    }

    /// The view of an export as it serves.
    pub fn served(region: &str, served: &Served) -> ExportView {
        ExportView {
            device: served.device.as_ref().map(|d| d.display().to_string()),
            ..ExportView::new(region, &served.kind, true)
        }
    }
}

/// Parse the body of `POST /v1/exports`.
pub fn parse_add_export(body: &[u8]) -> Result<AddExportRequest, ApiError> {
    parse_json(body, "\"region\", \"transport\" and optionally \"address\"")
}

/// The export a request asks for; NBD addresses default to a Unix socket
/// in `nbd_dir`.
pub fn export_kind(request: &AddExportRequest, nbd_dir: &FsPath) -> Result<ExportKind, ApiError> {
    match request.transport {
        Transport::Nbd => {
            if request.queues.is_some() || request.depth.is_some() {
                return Err(ApiError::bad_request(
                    "queues and depth are ublk options; leave them out for an NBD export",
                ));
            }
            parse_nbd_address(request.address.as_deref(), &request.region, nbd_dir)
                .map(ExportKind::Nbd)
                .map_err(|err| ApiError::bad_request(err.to_string()))
        }
        Transport::Ublk => {
            if request.address.is_some() {
                return Err(ApiError::bad_request(
                    "an address is for NBD exports; a ublk export is a local device",
                ));
            }
            Ok(ExportKind::Ublk { queues: request.queues, depth: request.depth })
        }
    }
}

/// `GET /v1/exports`: the exports served, and those recorded but not served.
pub async fn list_exports(
    State(state): State<SharedState>,
) -> Result<Json<Vec<ExportView>>, ApiError> {
    let mut running = state.exports.list().await;
    let recorded = read_regions(&state, |regions| Ok(regions.recorded_exports())).await?;
    let mut views = Vec::new();
    for (name, record) in recorded {
        match (running.remove(&name), record) {
            (Some(served), _) => views.push(ExportView::served(&name, &served)),
            (None, Ok(kind)) => views.push(ExportView::new(&name, &kind, false)),
            (None, Err(problem)) => {
                tracing::warn!(region = %name, "damaged export record: {problem}");
            }
        }
    }
    views.extend(running.iter().map(|(name, served)| ExportView::served(name, served)));
    views.sort_by(|a, b| a.region.cmp(&b.region));
    Ok(Json(views))
}

/// `POST /v1/exports` → 201 with the export as it serves.
pub async fn add_export(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<(StatusCode, Json<ExportView>), ApiError> {
    let request = parse_add_export(&body)?;
    let kind = export_kind(&request, &state.nbd_dir)?;
    let name = request.region;
    let _one_change = state.changes.lock().await;
    let _inside = enter_gate(&state)?;
    let lookup = name.clone();
    let region = read_regions(&state, move |regions| regions.block(&lookup)).await?;
    let started = state.exports.start(&name, region, state.gate.clone(), kind).await?;
    let regions = Arc::clone(&state.regions);
    let (record_name, record) = (name.clone(), started.kind.clone());
    let recorded = join(
        tokio::task::spawn_blocking(move || regions.record_export(&record_name, Some(&record)))
            .await,
    );
    if let Err(err) = recorded {
        let _ = state.exports.stop(&name).await;
        return Err(err);
    }
    let kind = &started.kind;
    if kind.reachable_from_other_hosts() {
        tracing::warn!(region = %name, "export {kind} is reachable from other hosts; NBD has no authentication");
    }
    match &started.device {
        Some(device) => {
            tracing::info!(region = %name, "exported region ({kind}) as {}", device.display())
        }
        None => tracing::info!(region = %name, "exported region ({kind})"),
    }
    Ok((StatusCode::CREATED, Json(ExportView::served(&name, &started))))
}

/// `DELETE /v1/exports/{name}` → 204 once its clients are disconnected and
/// its record is gone.
pub async fn remove_export(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _one_change = state.changes.lock().await;
    let _inside = enter_gate(&state)?;
    let stopped = match state.exports.stop(&name).await {
        Ok(_) => true,
        Err(ExportError::NotExported(_)) => false,
        Err(err) => return Err(err.into()),
    };
    let lookup = name.clone();
    read_regions(&state, move |regions| {
        let recorded = ExportKind::from_attrs(&regions.pool().region(&lookup)?.attrs).is_some();
        if !stopped && !recorded {
            return Err(ExportError::NotExported(lookup).into());
        }
        regions.record_export(&lookup, None)
    })
    .await?;
    tracing::info!(region = %name, "removed export");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(body: &str) -> Result<ExportKind, ApiError> {
        export_kind(&parse_add_export(body.as_bytes())?, FsPath::new("/run/pmvisor/nbd"))
    }

    #[test]
    fn nbd_exports_default_to_a_unix_socket_named_after_the_region() {
        let kind = kind(r#"{"region": "disk", "transport": "nbd"}"#).unwrap();
        assert_eq!(kind, ExportKind::Nbd("unix:/run/pmvisor/nbd/disk.sock".parse().unwrap()));
        let view = ExportView::new("disk", &kind, true);
        assert_eq!(view.uri.unwrap(), "nbd+unix:///disk?socket=/run/pmvisor/nbd/disk.sock");
    }

    #[test]
    fn options_of_the_other_transport_are_refused() {
        let err = kind(r#"{"region": "d", "transport": "ublk", "address": "tcp:1"}"#).unwrap_err();
        assert_eq!(err.message, "an address is for NBD exports; a ublk export is a local device");
        let err = kind(r#"{"region": "d", "transport": "nbd", "queues": 2}"#).unwrap_err();
        assert!(err.message.starts_with("queues and depth are ublk options"), "{}", err.message);
        let err = kind(r#"{"region": "d", "transport": "nbd", "address": "10809"}"#).unwrap_err();
        assert!(err.message.contains("use unix:PATH or tcp:IP:PORT"), "{}", err.message);
    }

    #[test]
    fn ublk_exports_carry_their_options() {
        let body = r#"{"region": "d", "transport": "ublk", "queues": 2, "depth": 64}"#;
        assert_eq!(kind(body).unwrap(), ExportKind::Ublk { queues: Some(2), depth: Some(64) });
    }

    #[test]
    fn unknown_transports_and_fields_are_refused_by_name() {
        let err = kind(r#"{"region": "d", "transport": "iscsi"}"#).unwrap_err();
        assert!(err.message.contains("unknown variant `iscsi`"), "{}", err.message);
        let err = kind(r#"{"region": "d", "transport": "nbd", "port": 1}"#).unwrap_err();
        assert!(err.message.contains("unknown field `port`"), "{}", err.message);
    }
}
