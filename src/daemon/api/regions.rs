//! `/v1/regions`: list, create, show, rename, resize and delete regions.
//!
//! Request bodies are parsed by the `parse_*` functions with unknown fields
//! refused, so that a misspelt field is a 400 naming it rather than a
//! silently ignored setting.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{parse_json, read_pool, write_pool, ApiError, SharedState};
use crate::pool::{Extent, RegionInfo, RegionKind};

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
        RegionView {
            id: info.id,
            name: info.name,
            kind: info.kind,
            size: info.size,
            offset: info.offset,
            extents: info.extents.into_iter().map(ExtentView::from).collect(),
            created_unix: info.created_unix,
            attrs: info.attrs,
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
    /// Size in bytes (rounded up to whole pages).
    pub size: u64,
}

/// `POST /v1/regions/{name}/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRegionRequest {
    /// The region's new name.
    pub new_name: String,
}

/// `POST /v1/regions/{name}/resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeRegionRequest {
    /// The new size in bytes (rounded up to whole pages).
    pub size: u64,
}

fn default_kind() -> RegionKind {
    RegionKind::Block
}

/// Parse the body of `POST /v1/regions`.
pub fn parse_create_region(body: &[u8]) -> Result<CreateRegionRequest, ApiError> {
    parse_json(body, "\"name\", \"size\" and optionally \"kind\"")
}

/// Parse the body of `POST /v1/regions/{name}/rename`.
pub fn parse_rename_region(body: &[u8]) -> Result<RenameRegionRequest, ApiError> {
    parse_json(body, "\"new_name\"")
}

/// Parse the body of `POST /v1/regions/{name}/resize`.
pub fn parse_resize_region(body: &[u8]) -> Result<ResizeRegionRequest, ApiError> {
    parse_json(body, "\"size\"")
}

/// `GET /v1/regions`.
pub async fn list_regions(
    State(state): State<SharedState>,
) -> Result<Json<Vec<RegionView>>, ApiError> {
    read_pool(&state, |pool| Ok(pool.regions().into_iter().map(RegionView::from).collect()))
        .await
        .map(Json)
}

/// `POST /v1/regions` → 201 with the new region.
pub async fn create_region(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<(StatusCode, Json<RegionView>), ApiError> {
    let request = parse_create_region(&body)?;
    let region = write_pool(&state, move |pool| {
        Ok(pool.create_region(&request.name, request.kind, request.size)?)
    })
    .await?;
    tracing::info!(region = %region.name, size = region.size, "created region");
    Ok((StatusCode::CREATED, Json(region.into())))
}

/// `GET /v1/regions/{name}`.
pub async fn get_region(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<RegionView>, ApiError> {
    read_pool(&state, move |pool| Ok(pool.region(&name)?.into())).await.map(Json)
}

/// `DELETE /v1/regions/{name}` → 204.
pub async fn delete_region(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted = name.clone();
    write_pool(&state, move |pool| Ok(pool.delete_region(&name)?)).await?;
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
    let region = write_pool(&state, move |pool| {
        pool.rename_region(&name, &request.new_name)?;
        Ok(pool.region(&request.new_name)?)
    })
    .await?;
    tracing::info!(region = %region.name, "renamed region");
    Ok(Json(region.into()))
}

/// `POST /v1/regions/{name}/resize` → the resized region.
pub async fn resize_region(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<RegionView>, ApiError> {
    let request = parse_resize_region(&body)?;
    let region =
        write_pool(&state, move |pool| Ok(pool.resize_region(&name, request.size)?)).await?;
    tracing::info!(region = %region.name, size = region.size, "resized region");
    Ok(Json(region.into()))
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
        let err = parse_resize_region(b"{}").unwrap_err();
        assert!(err.message.contains("missing field `size`"), "{}", err.message);
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
