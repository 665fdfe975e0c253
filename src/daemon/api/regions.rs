//! `/v1/regions`: list, create, show, rename, resize and delete regions, and
//! the counters of block regions (`/v1/regions/{name}/stats`).
//!
//! Request bodies are parsed by the `parse_*` functions with unknown fields
//! refused, so that a misspelt field is a 400 naming it rather than a
//! silently ignored setting. The work itself is done by
//! [`Regions`](crate::daemon::regions::Regions), which the CLI also uses
//! when it opens the pool itself.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::agents::check_deadline;
use super::{enter_gate, parse_json, read_regions, write_regions, ApiError, SharedState};
use crate::agent::{resize_with_agent, AgentExchange, AgentStats, DEFAULT_DEADLINE};
use crate::block::{BlockStats, Rejected, ResizeReport, ATTR_RESIDENT, ATTR_SIZE, ATTR_SWAP};
use crate::daemon::regions::ResizePlan;
use crate::pool::{Extent, RegionInfo, RegionKind, PAGE_SIZE};

/// A region as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionView {
    /// Stable id.
    pub id: u64,
    /// Unique name.
    pub name: String,
    /// What the region is for.
    pub kind: RegionKind,
    /// Allocated bytes (whole pages).
    pub size: u64,
    /// Byte offset in the pool of a `memory` region's single extent.
    pub offset: Option<u64>,
    /// The pool pages the region owns.
    pub extents: Vec<ExtentView>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Small persistent attributes.
    pub attrs: BTreeMap<String, String>,
    /// What a block region looks like to its clients; `null` for other kinds.
    pub block: Option<BlockView>,
}

/// The client-visible shape of a block region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockView {
    /// Virtual size in bytes: what clients see.
    pub size: u64,
    /// Resident quota in bytes: the pool frames the region may hold.
    pub resident_quota: u64,
    /// Whether blocks beyond the quota go to the swap tier.
    pub swap: bool,
}

impl BlockView {
    /// The block shape recorded in a block region's attributes. The region
    /// holds its block map (8 bytes per block, whole pages) and then its
    /// frames; regions from before the quota attribute hold their quota.
    pub fn from_info(info: &RegionInfo) -> Option<BlockView> {
        if info.kind != RegionKind::Block {
            return None;
        }
        let size: u64 = info.attrs.get(ATTR_SIZE)?.parse().ok()?;
        let map_bytes = (size / PAGE_SIZE * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let held = info.size.saturating_sub(map_bytes);
        let quota = info.attrs.get(ATTR_RESIDENT).and_then(|q| q.parse::<u64>().ok());
        Some(BlockView {
            size,
            resident_quota: quota.unwrap_or(held).max(held),
            swap: info.attrs.get(ATTR_SWAP).is_some_and(|v| v == "true"),
        })
    }
}

/// Occupancy and counters of a block region
/// (`GET /v1/regions/{name}/stats`). Counters start at zero when the
/// region is opened (daemon start, or a CLI that opened the pool itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockStatsView {
    /// Virtual size in bytes.
    pub size: u64,
    /// Resident quota in bytes.
    pub resident_quota: u64,
    /// Bytes of frames taken from the pool so far (at most the quota).
    #[serde(default)]
    pub allocated: u64,
    /// Blocks held in pool frames.
    pub resident_blocks: u64,
    /// Blocks held in the swap tier.
    pub swapped_blocks: u64,
    /// Memory residence ratio: resident / (resident + swapped), 1 when empty.
    pub mrr: f64,
    /// Read requests served.
    pub reads: u64,
    /// Write requests served.
    pub writes: u64,
    /// Blocks faulted back in from the swap tier.
    pub faults: u64,
    /// Faults per second over the last 10 s (the current second so far included).
    #[serde(default)]
    pub faults_per_second: f64,
    /// Blocks evicted to the swap tier.
    pub evictions: u64,
    /// Whether the region may use the swap tier.
    pub swap: bool,
    /// Daemon only: blocks evicted since the daemon started, by who chose
    /// them.
    #[serde(default)]
    pub evictions_by_chooser: Option<EvictionsByChooser>,
    /// Daemon only: blocks of agent answers not used, by reason, since the
    /// daemon started.
    #[serde(default)]
    pub rejected: Option<RejectedView>,
    /// Daemon only: the region's agent link, when one is attached.
    #[serde(default)]
    pub agent: Option<AgentStatsView>,
}

/// Blocks that left the pool, by who chose them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictionsByChooser {
    /// The guest agent chose them; they went to swap.
    pub guest_keep: u64,
    /// The guest agent chose them; they were unmapped.
    pub guest_drop: u64,
    /// The host's CLOCK chose them (resizes and writes beyond the quota).
    pub host: u64,
}

/// Blocks of agent answers that were not used, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedView {
    /// Past the end of the device.
    pub out_of_range: u64,
    /// Named more than once.
    pub duplicate: u64,
    /// Not resident (unmapped or already swapped).
    pub not_resident: u64,
    /// Beyond the number of blocks asked for.
    pub surplus: u64,
    /// `keep` blocks of a region without swap.
    pub no_swap: u64,
}

impl From<&Rejected> for RejectedView {
    fn from(r: &Rejected) -> RejectedView {
        RejectedView {
            out_of_range: r.out_of_range,
            duplicate: r.duplicate,
            not_resident: r.not_resident,
            surplus: r.surplus,
            no_swap: r.no_swap,
        }
    }
}

/// A region's agent link: its counters and answer times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatsView {
    #[serde(flatten)]
    pub link: AgentStats,
    /// How long a resize waits for the agent, in ms.
    pub deadline_ms: u64,
    /// Mean time of the agent's answers, in microseconds.
    pub mean_answer_micros: Option<u64>,
}

/// What one resize did (`POST /v1/regions/{name}/resize`, block regions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResizeReportView {
    /// Resident quota before and after, in 4 KiB frames.
    pub frames_before: u64,
    pub frames_after: u64,
    /// Blocks freed that the guest chose: sent to swap, unmapped.
    pub guest_kept: u64,
    pub guest_dropped: u64,
    /// Blocks freed that the host chose (CLOCK).
    pub host_chosen: u64,
    /// Hinted-hot blocks brought back from swap by a grow.
    pub brought_back: u64,
    /// Blocks moved to frames below the new quota.
    pub compacted: u64,
    /// Blocks of the agent's answer that were not used, by reason.
    pub rejected: RejectedView,
    /// Time the host spent resizing, in microseconds (the agent's answer
    /// time excluded).
    pub elapsed_micros: u64,
    /// What the agent did; `null` without an agent or when nothing was
    /// asked.
    pub agent: Option<AgentExchangeView>,
}

/// The agent's part in one resize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentExchangeView {
    /// `evict` (shrink) or `grow`.
    pub request: String,
    /// Blocks asked for, or by which the quota grew.
    pub asked: u64,
    /// Blocks the agent named in a usable answer.
    pub offered: u64,
    /// Why no usable answer came (`timeout`, `garbage`, ...); `null` when
    /// the answer was used.
    pub failure: Option<String>,
    /// The failure as a sentence.
    pub detail: Option<String>,
    /// How long the host waited for the agent, in microseconds.
    pub answer_micros: u64,
}

impl ResizeReportView {
    /// The view of `report`, with the agent's part.
    pub fn new(report: &ResizeReport, agent: Option<&AgentExchange>) -> ResizeReportView {
        ResizeReportView {
            frames_before: report.frames_before,
            frames_after: report.frames_after,
            guest_kept: report.guest_kept,
            guest_dropped: report.guest_dropped,
            host_chosen: report.host_chosen,
            brought_back: report.brought_back,
            compacted: report.compacted,
            rejected: (&report.rejected).into(),
            elapsed_micros: u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX),
            agent: agent.map(|a| AgentExchangeView {
                request: a.request.to_string(),
                asked: a.asked,
                offered: a.offered,
                failure: a.failure.map(str::to_string),
                detail: a.detail.clone(),
                answer_micros: a.answer_micros,
            }),
        }
    }
}

/// The answer to a resize: the region, and for a block region what the
/// resize did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResizedView {
    #[serde(flatten)]
    pub region: RegionView,
    /// Block regions: what the resize did.
    #[serde(default)]
    pub resize: Option<ResizeReportView>,
}

impl From<BlockStats> for BlockStatsView {
    fn from(stats: BlockStats) -> BlockStatsView {
        BlockStatsView {
            size: stats.size,
            resident_quota: stats.resident_quota,
            allocated: stats.allocated,
            resident_blocks: stats.resident_blocks,
            swapped_blocks: stats.swapped_blocks,
            mrr: stats.mrr,
            reads: stats.reads,
            writes: stats.writes,
            faults: stats.faults,
            faults_per_second: stats.faults_per_second,
            evictions: stats.evictions,
            swap: stats.swap,
            evictions_by_chooser: None,
            rejected: None,
            agent: None,
        }
    }
}

/// `count` pages starting at pool page `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentView {
    /// First page.
    pub start: u64,
    /// Number of pages.
    pub count: u64,
}

impl From<RegionInfo> for RegionView {
    fn from(info: RegionInfo) -> RegionView {
        let block = BlockView::from_info(&info);
        RegionView {
            id: info.id,
            name: info.name,
            kind: info.kind,
            size: info.size,
            offset: info.offset,
            extents: info.extents.into_iter().map(ExtentView::from).collect(),
            created_unix: info.created_unix,
            attrs: info.attrs,
            block,
        }
    }
}

impl From<Extent> for ExtentView {
    fn from(extent: Extent) -> ExtentView {
        ExtentView { start: extent.start, count: extent.count }
    }
}

/// `POST /v1/regions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRegionRequest {
    /// Name of the new region.
    pub name: String,
    /// What it is for; `block` when left out.
    #[serde(default = "default_kind")]
    pub kind: RegionKind,
    /// Size in bytes (rounded up to whole pages); for a block region the
    /// virtual size its clients see.
    pub size: u64,
    /// Block regions: the resident quota in bytes [default: `size`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident: Option<u64>,
    /// Block regions: whether blocks beyond the quota may go to the swap
    /// tier [default: false, writes beyond the quota fail with ENOSPC].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub swap: bool,
}

/// `POST /v1/regions/{name}/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRegionRequest {
    /// The region's new name.
    pub new_name: String,
}

/// `POST /v1/regions/{name}/resize`: exactly one of the two fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeRegionRequest {
    /// fs and memory regions: the new size in bytes (whole pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Block regions: the new resident quota in bytes (whole pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident: Option<u64>,
    /// Block regions with an agent: how long to wait for its answer, in ms
    /// [default: the agent's deadline, 200 ms unless set at attach].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

fn default_kind() -> RegionKind {
    RegionKind::Block
}

/// Parse the body of `POST /v1/regions`.
pub fn parse_create_region(body: &[u8]) -> Result<CreateRegionRequest, ApiError> {
    parse_json(
        body,
        "\"name\", \"size\" and optionally \"kind\" (and \"resident\", \"swap\" for block \
         regions)",
    )
}

/// Parse the body of `POST /v1/regions/{name}/rename`.
pub fn parse_rename_region(body: &[u8]) -> Result<RenameRegionRequest, ApiError> {
    parse_json(body, "\"new_name\"")
}

/// Parse the body of `POST /v1/regions/{name}/resize`.
pub fn parse_resize_region(body: &[u8]) -> Result<ResizeRegionRequest, ApiError> {
    const EXPECTED: &str =
        "either \"size\" (fs and memory regions) or \"resident\" (block regions)";
    let request: ResizeRegionRequest = parse_json(body, EXPECTED)?;
    if request.size.is_some() == request.resident.is_some() {
        return Err(ApiError::bad_request(format!("send a JSON object with {EXPECTED}")));
    }
    Ok(request)
}

/// `GET /v1/regions`.
pub async fn list_regions(
    State(state): State<SharedState>,
) -> Result<Json<Vec<RegionView>>, ApiError> {
    read_regions(&state, |regions| Ok(regions.list())).await.map(Json)
}

/// `POST /v1/regions` → 201 with the new region.
pub async fn create_region(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<(StatusCode, Json<RegionView>), ApiError> {
    let request = parse_create_region(&body)?;
    let region = write_regions(&state, move |regions| regions.create(&request)).await?;
    tracing::info!(region = %region.name, size = region.size, "created region");
    Ok((StatusCode::CREATED, Json(region)))
}

/// `GET /v1/regions/{name}`.
pub async fn get_region(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<RegionView>, ApiError> {
    read_regions(&state, move |regions| regions.show(&name)).await.map(Json)
}

/// `GET /v1/regions/{name}/stats`: a block region's occupancy and counters.
pub async fn get_region_stats(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<BlockStatsView>, ApiError> {
    let owned = name.clone();
    let mut stats = read_regions(&state, move |regions| regions.stats(&owned)).await?;
    let totals = state.agents.totals(&name);
    stats.evictions_by_chooser = Some(EvictionsByChooser {
        guest_keep: totals.guest_kept,
        guest_drop: totals.guest_dropped,
        // Every eviction to swap is counted by the region; the guest's
        // `keep` ones are among them.
        host: stats.evictions.saturating_sub(totals.guest_kept),
    });
    stats.rejected = Some((&totals.rejected).into());
    stats.agent = state.agents.get(&name).map(|agent| {
        let latency = agent.link.latency();
        AgentStatsView {
            link: agent.link.stats(),
            deadline_ms: u64::try_from(agent.deadline.as_millis()).unwrap_or(u64::MAX),
            mean_answer_micros: (latency.count > 0)
                .then(|| (latency.sum_seconds * 1e6 / latency.count as f64) as u64),
        }
    });
    Ok(Json(stats))
}

/// `DELETE /v1/regions/{name}` → 204.
pub async fn delete_region(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted = name.clone();
    write_regions(&state, move |regions| regions.delete(&name)).await?;
    state.agents.stop(&deleted);
    state.agents.forget(&deleted);
    tracing::info!(region = %deleted, "deleted region");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/regions/{name}/rename` → the renamed region.
pub async fn rename_region(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<RegionView>, ApiError> {
    let request = parse_rename_region(&body)?;
    let region =
        write_regions(&state, move |regions| regions.rename(&name, &request.new_name)).await?;
    tracing::info!(region = %region.name, "renamed region");
    Ok(Json(region))
}

/// `POST /v1/regions/{name}/resize` → the resized region, and for a block
/// region what the resize did. A block region with an agent asks it first
/// (see [`resize_with_agent`]).
pub async fn resize_region(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<ResizedView>, ApiError> {
    let request = parse_resize_region(&body)?;
    let _one_change = state.changes.lock().await;
    let guard = enter_gate(&state)?;
    let (owned, asked) = (name.clone(), request.clone());
    let plan = read_regions(&state, move |regions| regions.plan_resize(&owned, &asked)).await?;
    let view = match plan {
        ResizePlan::Block { region, resident } => {
            let agent = state.agents.get(&name);
            let deadline = request.deadline_ms.map(check_deadline).transpose()?;
            let deadline =
                deadline.or(agent.as_ref().map(|a| a.deadline)).unwrap_or(DEFAULT_DEADLINE);
            let link = agent.as_ref().map(|a| &a.link);
            let done = resize_with_agent(region, link, resident, deadline).await?;
            state.agents.record_resize(&name, &done.report);
            let owned = name.clone();
            let region = read_regions(&state, move |regions| regions.show(&owned)).await?;
            let report = ResizeReportView::new(&done.report, done.agent.as_ref());
            tracing::info!(
                region = %name,
                "resized the resident quota from {} to {} frames: guest kept {}, guest dropped {}, \
                 host chose {}, brought back {}, in {} us{}",
                report.frames_before,
                report.frames_after,
                report.guest_kept,
                report.guest_dropped,
                report.host_chosen,
                report.brought_back,
                report.elapsed_micros,
                report.agent.as_ref().map_or(String::new(), |a| format!(
                    " (agent answered in {} us)",
                    a.answer_micros
                ))
            );
            ResizedView { region, resize: Some(report) }
        }
        ResizePlan::Size(_) => {
            let view = read_regions(&state, move |regions| regions.resize(&name, &request)).await?;
            tracing::info!(region = %view.region.name, size = view.region.size, "resized region");
            view
        }
    };
    drop(guard);
    Ok(Json(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_defaults_to_a_block_region() {
        let request = parse_create_region(br#"{"name": "vm1", "size": 4096}"#).unwrap();
        assert_eq!(request.kind, RegionKind::Block);
        assert_eq!(request.size, 4096);
    }

    #[test]
    fn create_accepts_every_kind() {
        for (text, kind) in
            [("block", RegionKind::Block), ("fs", RegionKind::Fs), ("memory", RegionKind::Memory)]
        {
            let body = format!(r#"{{"name": "r", "kind": "{text}", "size": 1}}"#);
            assert_eq!(parse_create_region(body.as_bytes()).unwrap().kind, kind);
        }
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = parse_create_region(br#"{"name": "a", "size": 1, "colour": "red"}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("unknown field `colour`"), "{}", err.message);
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = parse_create_region(br#"{"name": "a"}"#).unwrap_err();
        assert!(err.message.contains("missing field `size`"), "{}", err.message);
    }

    #[test]
    fn resize_takes_exactly_one_of_size_and_resident() {
        let expected = "send a JSON object with either \"size\" (fs and memory regions) or \
                        \"resident\" (block regions)";
        assert_eq!(parse_resize_region(b"{}").unwrap_err().message, expected);
        let both = parse_resize_region(br#"{"size": 1, "resident": 1}"#).unwrap_err();
        assert_eq!(both.message, expected);
        assert_eq!(parse_resize_region(br#"{"resident": 4096}"#).unwrap().resident, Some(4096));
        assert_eq!(parse_resize_region(br#"{"size": 4096}"#).unwrap().size, Some(4096));
    }

    #[test]
    fn block_fields_are_optional_and_swap_defaults_to_off() {
        let plain = parse_create_region(br#"{"name": "d", "size": 8192}"#).unwrap();
        assert_eq!((plain.resident, plain.swap), (None, false));
        let body = br#"{"name": "d", "size": 8192, "resident": 4096, "swap": true}"#;
        let elastic = parse_create_region(body).unwrap();
        assert_eq!((elastic.resident, elastic.swap), (Some(4096), true));
    }

    #[test]
    fn an_empty_body_says_what_to_send() {
        let err = parse_rename_region(b"").unwrap_err();
        assert_eq!(err.message, "the request body is empty; send a JSON object with \"new_name\"");
    }

    #[test]
    fn a_bad_kind_is_a_bad_request() {
        let err = parse_create_region(br#"{"name": "a", "kind": "disk", "size": 1}"#).unwrap_err();
        assert!(err.message.contains("unknown variant `disk`"), "{}", err.message);
    }
}
