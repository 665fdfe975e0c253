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

use super::{parse_json, read_regions, write_regions, ApiError, SharedState};
use crate::block::{BlockStats, ATTR_SIZE, ATTR_SWAP};
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
    /// holds its block map (8 bytes per block, whole pages) and then one
    /// frame per page of resident quota.
    fn from_info(info: &RegionInfo) -> Option<BlockView> {
        if info.kind != RegionKind::Block {
            return None;
        }
        let size: u64 = info.attrs.get(ATTR_SIZE)?.parse().ok()?;
        let map_bytes = (size / PAGE_SIZE * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        Some(BlockView {
            size,
            resident_quota: info.size.saturating_sub(map_bytes),
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
    /// Blocks evicted to the swap tier.
    pub evictions: u64,
    /// Whether the region may use the swap tier.
    pub swap: bool,
}

impl From<BlockStats> for BlockStatsView {
    fn from(stats: BlockStats) -> BlockStatsView {
        BlockStatsView {
            size: stats.size,
            resident_quota: stats.resident_quota,
            resident_blocks: stats.resident_blocks,
            swapped_blocks: stats.swapped_blocks,
            mrr: stats.mrr,
            reads: stats.reads,
            writes: stats.writes,
            faults: stats.faults,
            evictions: stats.evictions,
            swap: stats.swap,
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
    read_regions(&state, move |regions| regions.stats(&name)).await.map(Json)
}

/// `DELETE /v1/regions/{name}` → 204.
pub async fn delete_region(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted = name.clone();
    write_regions(&state, move |regions| regions.delete(&name)).await?;
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

/// `POST /v1/regions/{name}/resize` → the resized region.
pub async fn resize_region(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<RegionView>, ApiError> {
    let request = parse_resize_region(&body)?;
    let region = write_regions(&state, move |regions| regions.resize(&name, &request)).await?;
    tracing::info!(region = %region.name, size = region.size, "resized region");
    Ok(Json(region))
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
