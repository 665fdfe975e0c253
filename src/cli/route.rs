//! Routing a command: through the daemon, or by opening the pool directly.
//!
//! A command goes through the daemon when one answers on the socket and
//! either no pool was named or the daemon's pool is the named one (compared
//! after canonicalizing both paths). Otherwise the CLI opens the pool itself;
//! it never does both, so there is always exactly one writer.
//!
//! Opening directly follows the pool rules of SPEC §9: the embedded default
//! pool is created on demand with a notice on stderr, a named pool that does
//! not exist is an error saying how to create it.

use std::sync::Arc;

use anyhow::{anyhow, Context};

use super::client::{export_path, region_path, DaemonClient};
use super::size::format_size;
use super::{PoolChoice, Settings};
use crate::daemon::api::agents::{agent_record, AgentView, AttachAgentRequest};
use crate::daemon::api::exports::{AddExportRequest, ExportView};
use crate::daemon::api::health::HealthView;
use crate::daemon::api::pool::{CheckView, PoolView};
use crate::daemon::api::regions::{
    BlockStatsView, CreateRegionRequest, RegionView, RenameRegionRequest, ResizeRegionRequest,
    ResizedView,
};
use crate::daemon::api::ApiError;
use crate::daemon::exports::ExportError;
use crate::daemon::regions::Regions;
use crate::pool::{CreateOptions, ErrorKind, OpenMode, Pool, PoolError};

/// Where a command's pool calls go.
#[derive(Debug)]
pub enum Route {
    /// Through the daemon's control API.
    Daemon {
        /// The connected client.
        client: DaemonClient,
        /// What the daemon said about itself.
        health: HealthView,
    },
    /// To a pool this process opened.
    Direct(Regions),
}

/// An API error as the CLI reports it: its sentence.
fn said(err: ApiError) -> anyhow::Error {
    anyhow!(err.message)
}

impl Route {
    /// Pick the route for `settings`; a direct route opens the pool in `mode`.
    pub fn choose(settings: &Settings, mode: OpenMode) -> anyhow::Result<Route> {
        if let Some((client, health)) = daemon_for(settings)? {
            return Ok(Route::Daemon { client, health });
        }
        let pool = Arc::new(open_pool(settings, mode)?);
        let swap = settings.swap_path(settings.pool.path());
        Ok(Route::Direct(Regions::on_demand(pool, swap)))
    }

    /// The pool's facts.
    pub fn pool_info(&self) -> anyhow::Result<PoolView> {
        match self {
            Route::Daemon { client, .. } => client.get("/v1/pool"),
            Route::Direct(regions) => Ok(regions.pool().info().into()),
        }
    }

    /// Check the open pool.
    pub fn check(&self) -> anyhow::Result<CheckView> {
        match self {
            Route::Daemon { client, .. } => client.get("/v1/pool/check"),
            Route::Direct(regions) => Ok(regions.pool().check().into()),
        }
    }

    /// Every region.
    pub fn regions(&self) -> anyhow::Result<Vec<RegionView>> {
        match self {
            Route::Daemon { client, .. } => client.get("/v1/regions"),
            Route::Direct(regions) => Ok(regions.list()),
        }
    }

    /// One region by name.
    pub fn region(&self, name: &str) -> anyhow::Result<RegionView> {
        match self {
            Route::Daemon { client, .. } => client.get(&region_path(name, None)),
            Route::Direct(regions) => regions.show(name).map_err(said),
        }
    }

    /// Create a region.
    pub fn create_region(&self, request: &CreateRegionRequest) -> anyhow::Result<RegionView> {
        match self {
            Route::Daemon { client, .. } => client.post("/v1/regions", request),
            Route::Direct(regions) => regions.create(request).map_err(said),
        }
    }

    /// Rename a region; returns it under its new name.
    pub fn rename_region(&self, name: &str, new_name: &str) -> anyhow::Result<RegionView> {
        match self {
            Route::Daemon { client, .. } => {
                let request = RenameRegionRequest { new_name: new_name.to_string() };
                client.post(&region_path(name, Some("rename")), &request)
            }
            Route::Direct(regions) => regions.rename(name, new_name).map_err(said),
        }
    }

    /// Resize a region (its size, or a block region's resident quota).
    pub fn resize_region(
        &self,
        name: &str,
        request: &ResizeRegionRequest,
    ) -> anyhow::Result<ResizedView> {
        match self {
            Route::Daemon { client, .. } => {
                client.post(&region_path(name, Some("resize")), request)
            }
            Route::Direct(regions) => regions.resize(name, request).map_err(said),
        }
    }

    /// Delete a region.
    pub fn delete_region(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Route::Daemon { client, .. } => client.delete(&region_path(name, None)),
            Route::Direct(regions) => regions.delete(name).map_err(said),
        }
    }

    /// Attach a guest agent to a block region. Without a daemon the agent
    /// is only recorded: the daemon reaches it when it starts.
    pub fn attach_agent(
        &self,
        name: &str,
        request: &AttachAgentRequest,
    ) -> anyhow::Result<AgentView> {
        match self {
            Route::Daemon { client, .. } => client.put(&region_path(name, Some("agent")), request),
            Route::Direct(regions) => {
                regions.block(name).map_err(said)?;
                let record = agent_record(name, request).map_err(said)?;
                regions.record_agent(name, Some(&record)).map_err(said)?;
                Ok(AgentView::recorded(name, &record))
            }
        }
    }

    /// Detach a block region's agent (and forget its record).
    pub fn detach_agent(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Route::Daemon { client, .. } => client.delete(&region_path(name, Some("agent"))),
            Route::Direct(regions) => {
                regions.recorded_agent(name).map_err(said)?;
                regions.record_agent(name, None).map_err(said)
            }
        }
    }

    /// A block region's occupancy and counters.
    pub fn region_stats(&self, name: &str) -> anyhow::Result<BlockStatsView> {
        match self {
            Route::Daemon { client, .. } => client.get(&region_path(name, Some("stats"))),
            Route::Direct(regions) => regions.stats(name).map_err(said),
        }
    }

    /// The exports: served ones from the daemon; without one, those
    /// recorded in the pool (not serving).
    pub fn exports(&self) -> anyhow::Result<Vec<ExportView>> {
        match self {
            Route::Daemon { client, .. } => client.get("/v1/exports"),
            Route::Direct(regions) => Ok(regions
                .recorded_exports()
                .into_iter()
                .filter_map(|(name, kind)| Some(ExportView::new(&name, &kind.ok()?, false)))
                .collect()),
        }
    }

    /// Export a block region; only a daemon serves exports.
    pub fn add_export(&self, request: &AddExportRequest) -> anyhow::Result<ExportView> {
        match self {
            Route::Daemon { client, .. } => client.post("/v1/exports", request),
            Route::Direct(regions) => {
                regions.block(&request.region).map_err(said)?;
                Err(anyhow!(
                    "exports are served by the daemon and none is running for pool {}; start it \
                     with `pmvisor serve`, then run this command again",
                    regions.pool().path().display()
                ))
            }
        }
    }

    /// Remove an export; without a daemon, its record in the pool (so the
    /// daemon will not serve it when it starts).
    pub fn remove_export(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Route::Daemon { client, .. } => client.delete(&export_path(name)),
            Route::Direct(regions) => {
                let info = regions.pool().region(name)?;
                let Some(kind) = crate::daemon::exports::ExportKind::from_attrs(&info.attrs) else {
                    return Err(said(ExportError::NotExported(name.to_string()).into()));
                };
                regions.record_export(name, None).map_err(said)?;
                // A daemon that died leaves its ublk device waiting for a
                // successor; with the record gone none will come.
                if matches!(kind, Ok(crate::daemon::exports::ExportKind::Ublk { .. })) {
                    let deleted =
                        crate::daemon::exports::delete_orphaned_ublk(name).map_err(|err| {
                            anyhow!(
                            "the export record of {name} is gone but its ublk device could not \
                             be deleted ({}); delete it with `ublk del`",
                            crate::daemon::api::sentence(&err)
                        )
                        })?;
                    for device in deleted {
                        tracing::info!(region = %name, "deleted the ublk device {}", device.display());
                    }
                }
                Ok(())
            }
        }
    }
}

/// The daemon to use for `settings`, if one answers for that pool.
pub fn daemon_for(settings: &Settings) -> anyhow::Result<Option<(DaemonClient, HealthView)>> {
    let client = DaemonClient::new(&settings.socket)?;
    let Some(health) = client.probe() else {
        return Ok(None);
    };
    let serves_our_pool = match &settings.pool {
        PoolChoice::Default(_) => true,
        PoolChoice::Named(path) => std::fs::canonicalize(path).is_ok_and(|p| p == health.pool),
    };
    if serves_our_pool {
        tracing::info!(
            "using the daemon (PID {}) at {} for pool {}",
            health.pid,
            settings.socket.display(),
            health.pool.display()
        );
        Ok(Some((client, health)))
    } else {
        tracing::info!(
            "the daemon at {} serves {}, not {}; opening the pool directly",
            settings.socket.display(),
            health.pool.display(),
            settings.pool.path().display()
        );
        Ok(None)
    }
}

/// Open the pool of `settings` directly, creating the default pool on demand.
/// If another process holds it, the error suggests going through the daemon.
pub fn open_pool(settings: &Settings, mode: OpenMode) -> anyhow::Result<Pool> {
    open_or_create(settings, mode).map_err(|err| with_daemon_hint(err, settings))
}

/// Open the pool for `pmvisor serve` (read-write, the default pool created
/// on demand); the pool's own lock error names the process holding it.
pub fn open_pool_to_serve(settings: &Settings) -> anyhow::Result<Pool> {
    open_or_create(settings, OpenMode::ReadWrite)
}

fn open_or_create(settings: &Settings, mode: OpenMode) -> anyhow::Result<Pool> {
    if !ensure_pool_exists(settings)? {
        return create_default(settings);
    }
    Ok(Pool::open(settings.pool.path(), mode)?)
}

fn create_default(settings: &Settings) -> anyhow::Result<Pool> {
    let options = CreateOptions { size: settings.default_pool_size, ..CreateOptions::default() };
    Ok(Pool::create(settings.pool.path(), &options)?)
}

/// Whether the pool of `settings` is there to open: `false` only for a
/// default pool that does not exist yet (its directory is then created and
/// the caller creates it). A named pool is always left to `Pool::open`,
/// whose error for a missing pool says how to create one.
fn ensure_pool_exists(settings: &Settings) -> anyhow::Result<bool> {
    match &settings.pool {
        PoolChoice::Named(_) => Ok(true),
        PoolChoice::Default(path) if path.try_exists().unwrap_or(true) => Ok(true),
        PoolChoice::Default(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!(
                        "cannot create the state directory {} for the default pool (set \
                         PMVISOR_STATE_DIR or name a pool with --pool)",
                        dir.display()
                    )
                })?;
            }
            eprintln!(
                "note: creating the default pool {} ({} sparse file); name another with --pool PATH",
                path.display(),
                format_size(settings.default_pool_size)
            );
            Ok(false)
        }
    }
}

/// Check the pool of `settings` without opening it for use (creating the
/// default pool on demand first).
pub fn check_path(settings: &Settings, repair: bool) -> anyhow::Result<CheckView> {
    if !ensure_pool_exists(settings)? {
        drop(create_default(settings)?);
    }
    Pool::check_path(settings.pool.path(), repair)
        .map(CheckView::from)
        .map_err(|err| with_daemon_hint(err.into(), settings))
}

/// A pool error while opening, with the hint to use the daemon when another
/// process holds the pool.
fn with_daemon_hint(err: anyhow::Error, settings: &Settings) -> anyhow::Error {
    match err.downcast_ref::<PoolError>() {
        Some(pool_err) if pool_err.kind() == ErrorKind::Busy => anyhow::anyhow!(
            "{}: run the command through the daemon (--socket {})",
            pool_err.to_string().trim_end_matches('.'),
            settings.socket.display()
        ),
        _ => err,
    }
}
