//! `/v1/fs` and `/v1/mounts`: create RvmFS filesystems in `fs` regions,
//! mount and unmount them (the daemon serves the mounts), list the mounts
//! and check a filesystem.
//!
//! The work is done by [`FsMounts`](crate::fs::FsMounts), which also
//! remembers each mount in its region's attributes so that a restarted
//! daemon mounts it again. Changes hold the daemon's change lock and the
//! gate, as region changes do.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::regions::RegionView;
use super::{enter_gate, join, parse_json, sentence, status_for, ApiError, SharedState};
use crate::fs::{create_filesystem, FsCheckReport, FsMounts, MountError, MountInfo};
use crate::pool::Pool;

/// `POST /v1/fs`: a new `fs` region formatted as an empty RvmFS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFsRequest {
    /// The region's name (also the filesystem's source name in `mount`).
    pub name: String,
    /// Its size in bytes (whole pages).
    pub size: u64,
}

/// `POST /v1/mounts`: mount a filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRequest {
    /// The `fs` region.
    pub region: String,
    /// An existing directory.
    pub mountpoint: PathBuf,
    /// Mount options: `ro`, `commit=N`, `allow_other`, `default_permissions`, `sync_close`.
    #[serde(default)]
    pub options: String,
}

/// A mount as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountView {
    /// The `fs` region.
    pub region: String,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The options it was mounted with.
    pub options: String,
    /// Bytes the filesystem can hold (`null` when unknown).
    pub size: Option<u64>,
    /// Bytes in use (`null` when unknown).
    pub used: Option<u64>,
    /// The process serving it (the daemon, or a `pmvisor fs serve`).
    pub pid: Option<u32>,
}

impl MountView {
    fn new(info: MountInfo, mounts: &FsMounts) -> MountView {
        let usage = mounts.usage(&info.region);
        MountView {
            region: info.region,
            mountpoint: info.mountpoint,
            options: info.options,
            size: usage.map(|u| u.size),
            used: usage.map(|u| u.used),
            pid: Some(std::process::id()),
        }
    }
}

/// `GET /v1/fs/{name}/check`: the RVM check and the tree walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsCheckView {
    /// The region checked.
    pub region: String,
    /// Whether nothing is wrong.
    pub clean: bool,
    /// Inodes reached from the root.
    pub inodes: u64,
    /// Directory entries seen.
    pub entries: u64,
    /// RVM problems, one sentence each.
    pub rvm_problems: Vec<String>,
    /// Filesystem problems, one sentence each.
    pub fs_problems: Vec<String>,
}

impl From<FsCheckReport> for FsCheckView {
    fn from(report: FsCheckReport) -> FsCheckView {
        FsCheckView {
            clean: report.is_clean(),
            region: report.region,
            inodes: report.inodes,
            entries: report.entries,
            rvm_problems: report.rvm_problems,
            fs_problems: report.fs_problems,
        }
    }
}

impl From<MountError> for ApiError {
    fn from(err: MountError) -> ApiError {
        let status = match &err {
            MountError::Pool(pool) => status_for(pool),
            MountError::NotFs { .. } | MountError::NotADirectory { .. } => StatusCode::BAD_REQUEST,
            MountError::AlreadyMounted { .. } | MountError::MountpointBusy { .. } => {
                StatusCode::CONFLICT
            }
            MountError::NotMounted { .. } => StatusCode::NOT_FOUND,
            MountError::Fs { source: rvmfs::FsError::MountOption { .. }, .. } => {
                StatusCode::BAD_REQUEST
            }
            MountError::Fs { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, message: mount_sentence(&err) }
    }
}

/// A mount error as one sentence saying what to do next.
pub fn mount_sentence(err: &MountError) -> String {
    match err {
        MountError::Fs { name, source: option @ rvmfs::FsError::MountOption { .. } } => format!(
            "cannot mount region {name:?}: {option}; the options are ro, commit=SECONDS, \
             allow_other, default_permissions and sync_close"
        ),
        MountError::Fs { name, source: source @ rvmfs::FsError::Mount { .. } } => format!(
            "{}; check that FUSE is available (/dev/fuse, fusermount3) and that the directory \
             is not in use, then mount region {name:?} again",
            sentence(source)
        ),
        MountError::Fs { .. } => format!(
            "{}; run `pmvisor fs check` on the region and see the log for details",
            sentence(err)
        ),
        _ => sentence(err),
    }
}

/// Run a change on the mounts inside the gate, holding the change lock.
async fn change<T, F>(state: &SharedState, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Pool, &FsMounts) -> Result<T, ApiError> + Send + 'static,
{
    let _one_change = state.changes.lock().await;
    let guard = enter_gate(state)?;
    let pool = Arc::clone(&state.pool);
    let mounts = Arc::clone(&state.mounts);
    join(
        tokio::task::spawn_blocking(move || {
            let result = work(&pool, &mounts);
            drop(guard);
            result
        })
        .await,
    )
}

/// `POST /v1/fs`
pub async fn create_fs(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<(StatusCode, Json<RegionView>), ApiError> {
    let request: CreateFsRequest = parse_json(&body, "\"name\" and \"size\"")?;
    let region = change(&state, move |pool, _| {
        create_filesystem(pool, &request.name, request.size)?;
        Ok(RegionView::from(pool.region(&request.name)?))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(region)))
}

/// `GET /v1/fs/{name}/check`
pub async fn check_fs(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<FsCheckView>, ApiError> {
    let mounts = Arc::clone(&state.mounts);
    let report = join(
        tokio::task::spawn_blocking(move || mounts.check(&name).map_err(ApiError::from)).await,
    )?;
    Ok(Json(report.into()))
}

/// `GET /v1/mounts`
pub async fn list_mounts(
    State(state): State<SharedState>,
) -> Result<Json<Vec<MountView>>, ApiError> {
    let mounts = Arc::clone(&state.mounts);
    let views = join(
        tokio::task::spawn_blocking(move || {
            Ok(mounts.list().into_iter().map(|info| MountView::new(info, &mounts)).collect())
        })
        .await,
    )?;
    Ok(Json(views))
}

/// `POST /v1/mounts`
pub async fn mount(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<(StatusCode, Json<MountView>), ApiError> {
    let request: MountRequest = parse_json(&body, "\"region\" and \"mountpoint\"")?;
    let view = change(&state, move |_, mounts| {
        let info = mounts.mount(&request.region, &request.mountpoint, &request.options)?;
        Ok(MountView::new(info, mounts))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `DELETE /v1/mounts/{region}`: unmount (the filesystem commits first).
pub async fn unmount(
    State(state): State<SharedState>,
    Path(region): Path<String>,
) -> Result<StatusCode, ApiError> {
    change(&state, move |_, mounts| Ok(mounts.unmount(&region)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
