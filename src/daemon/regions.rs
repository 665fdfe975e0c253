//! `Regions`: every region operation of the control API, over an open pool
//! and its block regions, in one place so that the daemon and a CLI that
//! opened the pool itself behave (and word their errors) the same way.
//!
//! The daemon keeps its block regions open for as long as it serves
//! ([`Regions::serving`]); a CLI opens them only when a command needs them
//! ([`Regions::on_demand`]), so that listing regions never depends on the
//! swap tier. Block regions are created, resized and deleted through
//! [`BlockRegions`] so that their map, frames and swap slots stay in step.
//! A region that is exported (it carries an `export.*` attribute, see
//! [`super::exports`]) cannot be deleted or renamed until the export is
//! removed; an `fs` region mounted by the daemon cannot be deleted, renamed
//! or resized until it is unmounted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;

use super::agents::{AgentRecord, ATTR_AGENT, ATTR_AGENT_DEADLINE, ATTR_AGENT_SERIAL};
use super::api::regions::{
    BlockStatsView, BlockView, CreateRegionRequest, RegionView, ResizeRegionRequest,
    ResizeReportView, ResizedView,
};
use super::api::ApiError;
use super::exports::{ExportKind, ATTR_NBD, ATTR_UBLK};
use crate::block::{BlockRegion, BlockRegions, BlockSpec};
use crate::cli::size::format_size;
use crate::fs::FsMounts;
use crate::pool::{Pool, RegionInfo, RegionKind, PAGE_SIZE};

/// How block regions are reached.
#[derive(Debug)]
enum BlockAccess {
    /// Opened at daemon start, kept open.
    Open(Arc<BlockRegions>),
    /// Opened with the swap tier at `swap` when first needed.
    OnDemand { swap: PathBuf, opened: Mutex<Option<Arc<BlockRegions>>> },
}

/// What a resize will change.
#[derive(Debug)]
pub enum ResizePlan {
    /// A block region's resident quota, in bytes (whole pages).
    Block { region: Arc<BlockRegion>, resident: u64 },
    /// Another region's size, in bytes.
    Size(u64),
}

/// The regions of one open pool.
#[derive(Debug)]
pub struct Regions {
    pool: Arc<Pool>,
    blocks: BlockAccess,
    mounts: Option<Arc<FsMounts>>,
}

fn conflict(message: String) -> ApiError {
    ApiError { status: StatusCode::CONFLICT, message }
}

impl Regions {
    /// The daemon's regions: `blocks` stays open.
    pub fn serving(pool: Arc<Pool>, blocks: Arc<BlockRegions>) -> Regions {
        Regions { pool, blocks: BlockAccess::Open(blocks), mounts: None }
    }

    /// A CLI's regions: block regions are opened (with the swap tier at
    /// `swap`) only when a command needs them.
    pub fn on_demand(pool: Arc<Pool>, swap: PathBuf) -> Regions {
        Regions {
            pool,
            blocks: BlockAccess::OnDemand { swap, opened: Mutex::new(None) },
            mounts: None,
        }
    }

    /// The same regions, refusing to delete, rename or resize an `fs`
    /// region while `mounts` has it mounted.
    pub fn with_mounts(mut self, mounts: Arc<FsMounts>) -> Regions {
        self.mounts = Some(mounts);
        self
    }

    fn refuse_if_mounted(&self, info: &RegionInfo, verb: &str) -> Result<(), ApiError> {
        let Some(mounts) = &self.mounts else { return Ok(()) };
        match mounts.list().into_iter().find(|m| m.region == info.name) {
            Some(mount) => Err(conflict(format!(
                "region {:?} is mounted at {} and cannot be {verb}; unmount it first with \
                 `pmvisor fs umount {}`",
                info.name,
                mount.mountpoint.display(),
                info.name
            ))),
            None => Ok(()),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The pool's open block regions.
    pub fn blocks(&self) -> Result<Arc<BlockRegions>, ApiError> {
        match &self.blocks {
            BlockAccess::Open(blocks) => Ok(Arc::clone(blocks)),
            BlockAccess::OnDemand { swap, opened } => {
                let mut opened = opened.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(blocks) = opened.as_ref() {
                    return Ok(Arc::clone(blocks));
                }
                let blocks = Arc::new(BlockRegions::open_file_swap(Arc::clone(&self.pool), swap)?);
                *opened = Some(Arc::clone(&blocks));
                Ok(blocks)
            }
        }
    }

    /// Every region.
    pub fn list(&self) -> Vec<RegionView> {
        self.pool.regions().into_iter().map(RegionView::from).collect()
    }

    /// One region.
    pub fn show(&self, name: &str) -> Result<RegionView, ApiError> {
        Ok(self.pool.region(name)?.into())
    }

    /// Create a region; block regions get their map and frames.
    pub fn create(&self, request: &CreateRegionRequest) -> Result<RegionView, ApiError> {
        let name = &request.name;
        if request.kind != RegionKind::Block {
            if request.resident.is_some() || request.swap {
                return Err(ApiError::bad_request(format!(
                    "a resident quota and swap are for block regions only; leave them out for \
                     the {} region {name:?}",
                    request.kind.name()
                )));
            }
            return Ok(self.pool.create_region(name, request.kind, request.size)?.into());
        }
        // Whole 4 KiB blocks, as every other region size is whole pages.
        let size = request.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if size == 0 {
            return Err(ApiError::bad_request(format!(
                "block region {name:?} needs a virtual size of at least 4 KiB"
            )));
        }
        let resident = check_quota(name, request.resident.unwrap_or(size), size)?;
        self.blocks()?.create(name, BlockSpec { size, resident, swap: request.swap })?;
        self.show(name)
    }

    /// Rename a region that is not exported. While the daemon serves block
    /// regions, their names are fixed (their transports know them by name).
    pub fn rename(&self, name: &str, new_name: &str) -> Result<RegionView, ApiError> {
        let info = self.pool.region(name)?;
        refuse_if_exported(&info, "renamed")?;
        self.refuse_if_mounted(&info, "renamed")?;
        if info.kind == RegionKind::Block && matches!(self.blocks, BlockAccess::Open(_)) {
            return Err(conflict(format!(
                "block region {name:?} cannot be renamed while `pmvisor serve` has it open; stop \
                 the daemon, run `pmvisor region rename {name} {new_name}`, then start it again"
            )));
        }
        self.pool.rename_region(name, new_name)?;
        self.show(new_name)
    }

    /// Check a resize and say what it will do: change a block region's
    /// resident quota (whose virtual size is fixed) or another region's size.
    pub fn plan_resize(
        &self,
        name: &str,
        request: &ResizeRegionRequest,
    ) -> Result<ResizePlan, ApiError> {
        let info = self.pool.region(name)?;
        self.refuse_if_mounted(&info, "resized")?;
        let view = RegionView::from(info.clone());
        if request.deadline_ms.is_some() && view.block.is_none() {
            return Err(ApiError::bad_request(format!(
                "an agent deadline is for block regions only; leave it out for the {} region \
                 {name:?}",
                info.kind.name()
            )));
        }
        match (request.size, request.resident, view.block) {
            (Some(_), _, Some(block)) => Err(ApiError::bad_request(format!(
                "block region {name:?} has a fixed virtual size of {}; change its resident quota \
                 with `pmvisor region resize {name} --resident SIZE`",
                format_size(block.size)
            ))),
            (Some(size), _, None) => Ok(ResizePlan::Size(size)),
            (None, Some(resident), Some(block)) => {
                let resident = check_quota(name, resident, block.size)?;
                Ok(ResizePlan::Block { region: self.block_region(&info)?, resident })
            }
            (None, Some(_), None) => Err(ApiError::bad_request(format!(
                "region {name:?} is a {} region, which has no resident quota; resize it with \
                 `pmvisor region resize {name} --size SIZE`",
                info.kind.name()
            ))),
            (None, None, _) => Err(ApiError::bad_request(
                "say what to resize: a size (fs and memory regions) or a resident quota (block \
                 regions)",
            )),
        }
    }

    /// Resize: `size` for fs and memory regions, `resident` (the quota) for
    /// block regions, whose virtual size is fixed. Without a daemon there
    /// is no agent: the host chooses every victim.
    pub fn resize(
        &self,
        name: &str,
        request: &ResizeRegionRequest,
    ) -> Result<ResizedView, ApiError> {
        match self.plan_resize(name, request)? {
            ResizePlan::Size(size) => Ok(ResizedView {
                region: self.pool.resize_region(name, size)?.into(),
                resize: None,
            }),
            ResizePlan::Block { region, resident } => {
                let report = region.resize_resident(resident, &[], &[])?;
                Ok(ResizedView {
                    region: self.show(name)?,
                    resize: Some(ResizeReportView::new(&report, None)),
                })
            }
        }
    }

    /// Record region `name`'s agent in its attributes (replacing any), or
    /// remove the record with `None`.
    pub fn record_agent(&self, name: &str, agent: Option<&AgentRecord>) -> Result<(), ApiError> {
        let info = self.pool.region(name)?;
        if info.kind != RegionKind::Block {
            return Err(ApiError::bad_request(format!(
                "region {name:?} is a {} region; only block regions have agents",
                info.kind.name()
            )));
        }
        match agent {
            Some(record) => {
                for (key, value) in record.attrs() {
                    self.pool.set_region_attr(name, key, Some(&value))?;
                }
            }
            None => {
                for key in [ATTR_AGENT, ATTR_AGENT_SERIAL, ATTR_AGENT_DEADLINE] {
                    if info.attrs.contains_key(key) {
                        self.pool.set_region_attr(name, key, None)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Region `name`'s recorded agent; a 404 when it has none.
    pub fn recorded_agent(&self, name: &str) -> Result<AgentRecord, ApiError> {
        let info = self.pool.region(name)?;
        match AgentRecord::from_attrs(name, &info.attrs) {
            Some(Ok(record)) => Ok(record),
            Some(Err(problem)) => Err(ApiError::internal(format!(
                "the agent record of region {name:?} is damaged ({problem}); attach the agent \
                 again with `pmvisor region attach-agent {name} ADDRESS`"
            ))),
            None => Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "region {name:?} has no agent; attach one with `pmvisor region attach-agent \
                     {name} serial:PATH`"
                ),
            }),
        }
    }

    /// Every agent recorded in the pool, by region name (`Err` for a
    /// damaged record), with the region's virtual size.
    pub fn recorded_agents(&self) -> Vec<(String, u64, Result<AgentRecord, String>)> {
        self.pool
            .regions()
            .into_iter()
            .filter_map(|info| {
                let record = AgentRecord::from_attrs(&info.name, &info.attrs)?;
                let size = BlockView::from_info(&info).map_or(0, |b| b.size);
                Some((info.name.clone(), size, record))
            })
            .collect()
    }

    /// Delete a region that is not exported; a block region's swap slots
    /// are freed with it.
    pub fn delete(&self, name: &str) -> Result<(), ApiError> {
        let info = self.pool.region(name)?;
        refuse_if_exported(&info, "deleted")?;
        self.refuse_if_mounted(&info, "deleted")?;
        if info.kind == RegionKind::Block {
            self.blocks()?.delete(name)?;
        } else {
            self.pool.delete_region(name)?;
        }
        Ok(())
    }

    /// A block region's occupancy and counters.
    pub fn stats(&self, name: &str) -> Result<BlockStatsView, ApiError> {
        let info = self.pool.region(name)?;
        if info.kind != RegionKind::Block {
            return Err(ApiError::bad_request(format!(
                "region {name:?} is a {} region; stats are kept for block regions only",
                info.kind.name()
            )));
        }
        Ok(self.block_region(&info)?.stats().into())
    }

    /// The open block region `name`, for a transport to serve.
    pub fn block(&self, name: &str) -> Result<Arc<BlockRegion>, ApiError> {
        let info = self.pool.region(name)?;
        if info.kind != RegionKind::Block {
            return Err(ApiError::bad_request(format!(
                "region {name:?} is a {} region; only block regions can be exported",
                info.kind.name()
            )));
        }
        self.block_region(&info)
    }

    fn block_region(&self, info: &RegionInfo) -> Result<Arc<BlockRegion>, ApiError> {
        self.blocks()?.get(&info.name).ok_or_else(|| {
            ApiError::internal(format!(
                "block region {:?} is in the pool but was not opened; restart the daemon",
                info.name
            ))
        })
    }

    /// Every export recorded in the pool, by region name (`Err` for a
    /// damaged record).
    pub fn recorded_exports(&self) -> Vec<(String, Result<ExportKind, String>)> {
        self.pool
            .regions()
            .into_iter()
            .filter_map(|info| Some((info.name.clone(), ExportKind::from_attrs(&info.attrs)?)))
            .collect()
    }

    /// Record `export` for region `name` (replacing any record), or remove
    /// the record with `None`.
    pub fn record_export(&self, name: &str, export: Option<&ExportKind>) -> Result<(), ApiError> {
        let info = self.pool.region(name)?;
        let keep = export.map(ExportKind::attr);
        for key in [ATTR_NBD, ATTR_UBLK] {
            if info.attrs.contains_key(key) && keep.as_ref().is_none_or(|(k, _)| *k != key) {
                self.pool.set_region_attr(name, key, None)?;
            }
        }
        if let Some((key, value)) = keep {
            self.pool.set_region_attr(name, key, Some(&value))?;
        }
        Ok(())
    }
}

/// Check a resident quota against a block region's virtual size.
fn check_quota(name: &str, resident: u64, size: u64) -> Result<u64, ApiError> {
    let resident = resident.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    if resident == 0 {
        return Err(ApiError::bad_request(format!(
            "the resident quota of block region {name:?} must be at least 4 KiB"
        )));
    }
    if resident > size {
        return Err(ApiError::bad_request(format!(
            "a resident quota of {} is larger than the virtual size {} of block region {name:?}; \
             give a quota of at most {}",
            format_size(resident),
            format_size(size),
            format_size(size)
        )));
    }
    Ok(resident)
}

fn refuse_if_exported(info: &RegionInfo, verb: &str) -> Result<(), ApiError> {
    let Some(export) = ExportKind::from_attrs(&info.attrs) else {
        return Ok(());
    };
    let how = export.map_or_else(|_| "exported".to_string(), |kind| format!("exported ({kind})"));
    Err(conflict(format!(
        "region {:?} is {how} and cannot be {verb}; remove the export first with `pmvisor export \
         remove {}`",
        info.name, info.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::CreateOptions;

    fn regions(dir: &std::path::Path) -> Regions {
        let options = CreateOptions { size: 32 << 20, ..CreateOptions::default() };
        let pool = Arc::new(Pool::create(&dir.join("p"), &options).unwrap());
        Regions::on_demand(pool, dir.join("p.swap"))
    }

    fn block(name: &str, size: u64, resident: Option<u64>) -> CreateRegionRequest {
        CreateRegionRequest {
            name: name.into(),
            kind: RegionKind::Block,
            size,
            resident,
            swap: true,
        }
    }

    #[test]
    fn a_block_region_shows_its_virtual_size_and_quota() {
        let dir = tempfile::tempdir().unwrap();
        let regions = regions(dir.path());
        let view = regions.create(&block("d", 8 << 20, Some(1 << 20))).unwrap();
        let shape = view.block.unwrap();
        assert_eq!((shape.size, shape.resident_quota, shape.swap), (8 << 20, 1 << 20, true));
        let stats = regions.stats("d").unwrap();
        assert_eq!(stats.resident_quota, shape.resident_quota, "attrs and the open region agree");
        let resized = regions
            .resize(
                "d",
                &ResizeRegionRequest { size: None, resident: Some(2 << 20), deadline_ms: None },
            )
            .unwrap();
        assert_eq!(resized.region.block.unwrap().resident_quota, 2 << 20);
        let report = resized.resize.unwrap();
        assert_eq!((report.frames_before, report.frames_after), (256, 512));
        assert!(report.agent.is_none());
    }

    #[test]
    fn bad_quotas_and_sizes_are_refused_with_a_sentence() {
        let dir = tempfile::tempdir().unwrap();
        let regions = regions(dir.path());
        let err = regions.create(&block("d", 1 << 20, Some(2 << 20))).unwrap_err();
        assert_eq!(
            err.message,
            "a resident quota of 2.0 MiB is larger than the virtual size 1.0 MiB of block region \
             \"d\"; give a quota of at most 1.0 MiB"
        );
        let err = regions.create(&block("d", 1 << 20, Some(0))).unwrap_err();
        assert!(err.message.contains("must be at least 4 KiB"), "{}", err.message);
        regions.create(&block("d", 1 << 20, None)).unwrap();
        let err = regions.resize(
            "d",
            &ResizeRegionRequest { size: Some(2 << 20), resident: None, deadline_ms: None },
        );
        assert!(err
            .unwrap_err()
            .message
            .starts_with("block region \"d\" has a fixed virtual size"));
        let fs = CreateRegionRequest {
            name: "f".into(),
            kind: RegionKind::Fs,
            size: 1 << 20,
            resident: Some(4096),
            swap: false,
        };
        assert!(regions.create(&fs).unwrap_err().message.contains("for block regions only"));
    }

    #[test]
    fn an_exported_region_is_neither_deleted_nor_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let regions = regions(dir.path());
        regions.create(&block("d", 1 << 20, None)).unwrap();
        let kind = ExportKind::Nbd("tcp:127.0.0.1:10809".parse().unwrap());
        regions.record_export("d", Some(&kind)).unwrap();
        let err = regions.delete("d").unwrap_err();
        assert_eq!(err.status, StatusCode::CONFLICT);
        assert_eq!(
            err.message,
            "region \"d\" is exported (nbd at tcp:127.0.0.1:10809) and cannot be deleted; remove \
             the export first with `pmvisor export remove d`"
        );
        assert!(regions.rename("d", "e").is_err());
        regions.record_export("d", None).unwrap();
        regions.delete("d").unwrap();
        assert!(regions.recorded_exports().is_empty());
    }
}
