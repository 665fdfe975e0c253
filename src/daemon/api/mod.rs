//! The control API: JSON over HTTP/1.1 on the daemon's Unix socket.
//!
//! One file per resource (`pool`, `regions`, `exports`, `fs`, `health`, `metrics`), each with
//! its wire types and thin `parse_*` functions; this file holds the router,
//! the shared state and the error body. The wire types are the API's own
//! contract (documented in `api/openapi.yaml`), converted from the pool's
//! types, so the pool can change its internals without breaking clients. The
//! CLI uses the same types for its `--json` output, whether it went through
//! the daemon or opened the pool itself.
//!
//! Pool calls block, so handlers run them in `spawn_blocking`; every
//! mutating request holds a [`GateGuard`] for as long as its pool call runs,
//! and the daemon's change lock, so that one change (a region created,
//! resized or deleted, an export added or removed) finishes before the next
//! starts.

pub mod agents;
pub mod balance;
pub mod exports;
pub mod fs;
pub mod health;
pub mod metrics;
pub mod pod;
pub mod pool;
pub mod regions;
pub mod vms;

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::agents::Agents;
use super::balancer::Balancer;
use super::exports::{ExportError, Exports};
use super::regions::Regions;
use crate::block::BlockError;
use crate::fs::FsMounts;
use crate::gate::{Gate, GateGuard};
use crate::pool::{ErrorKind, Pool, PoolError};

use self::metrics::Metrics;

/// What every handler can reach.
#[derive(Debug)]
pub struct ApiState {
    /// The open pool, shared with blocking tasks.
    pub pool: Arc<Pool>,
    /// The pool's regions, block regions open.
    pub regions: Arc<Regions>,
    /// The exports being served.
    pub exports: Exports,
    /// The guest agents of block regions, and what resizes did.
    pub agents: Agents,
    /// The pool balancer: watermarks and its last pass.
    pub balancer: Balancer,
    /// The RvmFS filesystems being served.
    pub mounts: Arc<FsMounts>,
    /// Where default NBD sockets go: `<control socket dir>/nbd`.
    pub nbd_dir: PathBuf,
    /// Held by every change, so changes happen one at a time.
    pub changes: tokio::sync::Mutex<()>,
    /// The gate mutating requests and block I/O pass through.
    pub gate: Gate,
    /// The Prometheus registry and its metrics.
    pub metrics: Metrics,
    /// The pool's path, canonical, as given to clients.
    pub pool_path: PathBuf,
    /// The socket the daemon listens on.
    pub socket: PathBuf,
    /// The power-outage coordinator.
    pub pod: Arc<crate::pod::Pod>,
    /// The persistent VMs that run.
    pub vms: Arc<crate::vm::Vms>,
}

/// The shared state handed to handlers.
pub type SharedState = Arc<ApiState>;

/// Build the router for every endpoint of `api/openapi.yaml`.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/v1/health", get(health::get_health))
        .route("/v1/pool", get(pool::get_pool))
        .route("/v1/pool/check", get(pool::get_check))
        .route("/v1/pool/balance", get(balance::get_balance).put(balance::set_balance))
        .route("/v1/pool/balance/run", post(balance::run_balance))
        .route("/v1/regions", get(regions::list_regions).post(regions::create_region))
        .route("/v1/regions/{name}", get(regions::get_region).delete(regions::delete_region))
        .route("/v1/regions/{name}/rename", post(regions::rename_region))
        .route("/v1/regions/{name}/resize", post(regions::resize_region))
        .route("/v1/regions/{name}/stats", get(regions::get_region_stats))
        .route(
            "/v1/regions/{name}/agent",
            get(agents::get_agent).put(agents::attach_agent).delete(agents::detach_agent),
        )
        .route("/v1/exports", get(exports::list_exports).post(exports::add_export))
        .route("/v1/exports/{name}", axum::routing::delete(exports::remove_export))
        .route("/v1/fs", post(fs::create_fs))
        .route("/v1/fs/{name}/check", get(fs::check_fs))
        .route("/v1/mounts", get(fs::list_mounts).post(fs::mount))
        .route("/v1/mounts/{region}", axum::routing::delete(fs::unmount))
        .route("/v1/pod", get(pod::get_pod))
        .route("/v1/pod/trigger", post(pod::trigger_pod))
        .route("/v1/pod/cancel", post(pod::cancel_pod))
        .route("/v1/vms", get(vms::list_vms).post(vms::create_vm))
        .route("/v1/vms/{name}", get(vms::get_vm).delete(vms::delete_vm))
        .route("/v1/vms/{name}/start", post(vms::start_vm))
        .route("/v1/vms/{name}/stop", post(vms::stop_vm))
        .route("/v1/vms/{name}/save", post(vms::save_vm))
        .route("/v1/vms/{name}/resume", post(vms::resume_vm))
        .route("/v1/vms/{name}/register", post(vms::register_vm))
        .route("/v1/vms/{name}/qemu-args", get(vms::get_qemu_args))
        .route("/metrics", get(metrics::get_metrics))
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), metrics::count_requests))
        .with_state(state)
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// One sentence saying what went wrong and what to do next.
    pub error: String,
}

/// An error response: a status and one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do next.
    pub message: String,
}

impl ApiError {
    /// A 400 for a request the API cannot accept.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// A 500 for a failure inside the daemon.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }
}

impl From<PoolError> for ApiError {
    fn from(err: PoolError) -> ApiError {
        ApiError { status: status_for(&err), message: err.to_string() }
    }
}

impl From<BlockError> for ApiError {
    fn from(err: BlockError) -> ApiError {
        let status = match &err {
            BlockError::Pool(pool) => status_for(pool),
            BlockError::NotBlock { .. } | BlockError::Invalid(_) => StatusCode::BAD_REQUEST,
            BlockError::QuotaTooSmall { .. } => StatusCode::CONFLICT,
            BlockError::QuotaBeyondPool { .. } => StatusCode::INSUFFICIENT_STORAGE,
            BlockError::Device { source: pmvisor_blk::DeviceError::NoSpace, .. } => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            BlockError::Corrupt { .. } | BlockError::Swap { .. } | BlockError::Device { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError { status, message: sentence(&err) }
    }
}

impl From<ExportError> for ApiError {
    fn from(err: ExportError) -> ApiError {
        let status = match &err {
            ExportError::AlreadyExported { .. } => StatusCode::CONFLICT,
            ExportError::NotExported(_) => StatusCode::NOT_FOUND,
            ExportError::Ublk { source: pmvisor_blk::ublk::UblkError::DriverMissing, .. } => {
                StatusCode::NOT_IMPLEMENTED
            }
            ExportError::UblkInUse { .. } => StatusCode::CONFLICT,
            ExportError::Ublk { .. } | ExportError::UblkTask { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ExportError::SocketDir { .. } | ExportError::Nbd { .. } => StatusCode::BAD_REQUEST,
        };
        let mut message = sentence(&err);
        if matches!(err, ExportError::SocketDir { .. } | ExportError::Nbd { .. }) {
            message.push_str("; choose another address with --nbd unix:PATH or --nbd tcp:IP:PORT");
        }
        ApiError { status, message }
    }
}

/// An error and its causes as one line: `what failed: why: why`.
pub fn sentence(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.message };
        (self.status, Json(body)).into_response()
    }
}

/// The HTTP status for a pool error, by its kind.
pub fn status_for(err: &PoolError) -> StatusCode {
    match err.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::Busy => StatusCode::CONFLICT,
        ErrorKind::InvalidInput | ErrorKind::Unsupported => StatusCode::BAD_REQUEST,
        ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Corrupt | ErrorKind::Io => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Run a read-only pool call on the blocking pool.
async fn read_pool<T, F>(state: &SharedState, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Pool) -> Result<T, ApiError> + Send + 'static,
{
    let pool = Arc::clone(&state.pool);
    join(tokio::task::spawn_blocking(move || work(&pool)).await)
}

/// Run a read-only region call on the blocking pool.
async fn read_regions<T, F>(state: &SharedState, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Regions) -> Result<T, ApiError> + Send + 'static,
{
    let regions = Arc::clone(&state.regions);
    join(tokio::task::spawn_blocking(move || work(&regions)).await)
}

/// Enter the gate for a change, or answer 503.
pub(crate) fn enter_gate(state: &SharedState) -> Result<GateGuard, ApiError> {
    state.gate.enter().map_err(|closed| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!("{closed}; retry once the daemon is serving again"),
    })
}

/// Run a mutating region call on the blocking pool, inside the gate and
/// holding the change lock.
async fn write_regions<T, F>(state: &SharedState, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Regions) -> Result<T, ApiError> + Send + 'static,
{
    let _one_change = state.changes.lock().await;
    let guard = enter_gate(state)?;
    let regions = Arc::clone(&state.regions);
    join(
        tokio::task::spawn_blocking(move || {
            let result = work(&regions);
            drop(guard);
            result
        })
        .await,
    )
}

fn join<T>(joined: Result<Result<T, ApiError>, tokio::task::JoinError>) -> Result<T, ApiError> {
    joined.unwrap_or_else(|err| {
        tracing::error!("a pool call failed: {err}");
        Err(ApiError::internal(
            "the pool call failed inside the daemon; see the daemon's log for details",
        ))
    })
}

async fn unknown_endpoint(uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "there is no endpoint {}; see api/openapi.yaml for the endpoints",
            uri.path()
        ),
    }
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!(
            "{method} is not allowed on {}; see api/openapi.yaml for the methods",
            uri.path()
        ),
    }
}

/// Parse a JSON request body into `T`, naming the problem in a 400.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "the request body is empty; send a JSON object with {expected}"
        )));
    }
    serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(format!(
            "the request body is not valid: {err}; send a JSON object with {expected}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every endpoint `router` serves, as `(method, path template)`.
    const ENDPOINTS: &[(&str, &str)] = &[
        ("get", "/v1/health"),
        ("get", "/v1/pool"),
        ("get", "/v1/pool/check"),
        ("get", "/v1/pool/balance"),
        ("put", "/v1/pool/balance"),
        ("post", "/v1/pool/balance/run"),
        ("get", "/v1/regions"),
        ("post", "/v1/regions"),
        ("get", "/v1/regions/{name}"),
        ("delete", "/v1/regions/{name}"),
        ("post", "/v1/regions/{name}/rename"),
        ("post", "/v1/regions/{name}/resize"),
        ("get", "/v1/regions/{name}/stats"),
        ("get", "/v1/regions/{name}/agent"),
        ("put", "/v1/regions/{name}/agent"),
        ("delete", "/v1/regions/{name}/agent"),
        ("get", "/v1/exports"),
        ("post", "/v1/exports"),
        ("delete", "/v1/exports/{name}"),
        ("post", "/v1/fs"),
        ("get", "/v1/fs/{name}/check"),
        ("get", "/v1/mounts"),
        ("post", "/v1/mounts"),
        ("delete", "/v1/mounts/{region}"),
        ("get", "/v1/pod"),
        ("post", "/v1/pod/trigger"),
        ("post", "/v1/pod/cancel"),
        ("get", "/v1/vms"),
        ("post", "/v1/vms"),
        ("get", "/v1/vms/{name}"),
        ("delete", "/v1/vms/{name}"),
        ("post", "/v1/vms/{name}/start"),
        ("post", "/v1/vms/{name}/stop"),
        ("post", "/v1/vms/{name}/save"),
        ("post", "/v1/vms/{name}/resume"),
        ("post", "/v1/vms/{name}/register"),
        ("get", "/v1/vms/{name}/qemu-args"),
        ("get", "/metrics"),
    ];

    /// The methods documented under `path` in the OpenAPI file.
    fn documented_methods(spec: &str, path: &str) -> Vec<String> {
        let mut lines = spec.lines().skip_while(|l| *l != format!("  {path}:")).skip(1);
        let mut methods = Vec::new();
        for line in lines.by_ref() {
            if !line.starts_with("    ") {
                break;
            }
            if let Some(key) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
                if !key.starts_with(' ') {
                    methods.push(key.to_string());
                }
            }
        }
        methods
    }

    #[test]
    fn every_route_of_the_router_is_in_the_list_of_endpoints() {
        let source = include_str!("mod.rs");
        let router = &source[..source.find("#[cfg(test)]").unwrap()];
        let routes = router.split(".route(").skip(1).filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix('"')?;
            rest.split('"').next()
        });
        let mut count = 0;
        for path in routes {
            count += 1;
            assert!(
                ENDPOINTS.iter().any(|(_, p)| *p == path),
                "{path} is routed but missing from ENDPOINTS (and maybe from api/openapi.yaml)"
            );
        }
        assert!(count >= 20, "found only {count} routes: the scan is broken");
    }

    #[test]
    fn every_endpoint_is_documented_in_the_openapi_file() {
        let spec = include_str!("../../../api/openapi.yaml");
        for (method, path) in ENDPOINTS {
            assert!(
                documented_methods(spec, path).iter().any(|m| m == method),
                "{method} {path} is missing from api/openapi.yaml"
            );
        }
    }

    #[test]
    fn pool_errors_map_to_statuses_by_kind() {
        let status = |err: PoolError| status_for(&err);
        assert_eq!(status(PoolError::RegionNotFound { name: "a".into() }), StatusCode::NOT_FOUND);
        assert_eq!(status(PoolError::RegionExists { name: "a".into() }), StatusCode::CONFLICT);
        assert_eq!(status(PoolError::ZeroSize), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(PoolError::NoSpace { name: "a".into(), needed: 2, free: 1 }),
            StatusCode::INSUFFICIENT_STORAGE
        );
        assert_eq!(status(PoolError::LockedBy { path: "p".into(), pid: 1 }), StatusCode::CONFLICT);
        assert_eq!(
            status(PoolError::CorruptMetadata { path: "p".into(), detail: "x".into() }),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn error_bodies_are_one_json_field() {
        let body = serde_json::to_string(&ErrorBody { error: "no.".into() }).unwrap();
        assert_eq!(body, r#"{"error":"no."}"#);
    }
}
