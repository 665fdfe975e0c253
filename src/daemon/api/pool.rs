//! `GET /v1/pool` and `GET /v1/pool/check`: facts about the open pool and a
//! check of its invariants.

use std::path::PathBuf;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{read_pool, ApiError, SharedState};
use crate::pool::{CheckReport, PoolInfo, Problem};

/// The pool as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    /// The pool's path on the daemon's host.
    pub path: PathBuf,
    /// The pool's UUID.
    pub uuid: String,
    /// On-media format version.
    pub format_version: u32,
    /// What the pool lives on (file, block device, devdax).
    pub media: String,
    /// Pool size in bytes.
    pub size: u64,
    /// Allocation unit in bytes.
    pub page_size: u64,
    /// Pages available for regions.
    pub data_pages: u64,
    /// Pages not owned by any region.
    pub free_pages: u64,
    /// Number of regions.
    pub regions: usize,
    /// Metadata generation (grows with every committed change).
    pub generation: u64,
    /// Bytes reserved for metadata.
    pub metadata_size: u64,
    /// Bytes of the metadata journal in use since the last checkpoint.
    pub journal_used: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The newest power-outage fence, if the pool was ever fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceView>,
}

/// A power-outage fence record as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceView {
    /// `fenced` (now), `lifted` (by the next start) or `cancelled` (power
    /// came back in time).
    pub state: String,
    /// The power-outage sequence number.
    pub sequence: u64,
    /// When the pool was fenced, nanoseconds since the Unix epoch.
    pub fenced_unix_ns: u64,
}

impl From<PoolInfo> for PoolView {
    fn from(info: PoolInfo) -> PoolView {
        PoolView {
            path: info.path,
            uuid: info.uuid,
            format_version: info.format_version,
            media: info.media,
            size: info.size,
            page_size: info.page_size,
            data_pages: info.data_pages,
            free_pages: info.free_pages,
            regions: info.regions,
            generation: info.generation,
            metadata_size: info.metadata_size,
            journal_used: info.journal_used,
            created_unix: info.created_unix,
            fence: info.fence.map(|f| FenceView {
                state: f.state.name().to_string(),
                sequence: f.sequence,
                fenced_unix_ns: f.fenced_unix_ns,
            }),
        }
    }
}

/// One problem a check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemView {
    /// The problem in plain words.
    pub message: String,
    /// Whether `pmvisor pool check --repair` can fix it.
    pub repairable: bool,
}

/// The result of a pool check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckView {
    /// Problems found.
    pub problems: Vec<ProblemView>,
    /// What repair did (empty for a plain check).
    pub repaired: Vec<String>,
    /// Regions checked.
    pub regions: usize,
    /// Pages owned by regions.
    pub pages_owned: u64,
    /// Free pages.
    pub pages_free: u64,
}

impl From<CheckReport> for CheckView {
    fn from(report: CheckReport) -> CheckView {
        CheckView {
            problems: report.problems.into_iter().map(ProblemView::from).collect(),
            repaired: report.repaired,
            regions: report.regions,
            pages_owned: report.pages_owned,
            pages_free: report.pages_free,
        }
    }
}

impl From<Problem> for ProblemView {
    fn from(problem: Problem) -> ProblemView {
        ProblemView { message: problem.message, repairable: problem.repairable }
    }
}

/// `GET /v1/pool`. The path is canonical: a path relative to the daemon's
/// working directory would mean nothing to a client.
pub async fn get_pool(State(state): State<SharedState>) -> Result<Json<PoolView>, ApiError> {
    let mut view = read_pool(&state, |pool| Ok(PoolView::from(pool.info()))).await?;
    view.path.clone_from(&state.pool_path);
    Ok(Json(view))
}

/// `GET /v1/pool/check`.
pub async fn get_check(State(state): State<SharedState>) -> Result<Json<CheckView>, ApiError> {
    read_pool(&state, |pool| Ok(CheckView::from(pool.check()))).await.map(Json)
}
