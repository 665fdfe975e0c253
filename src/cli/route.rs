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

use anyhow::Context;

use super::client::{region_path, DaemonClient};
use super::size::format_size;
use super::{PoolChoice, Settings};
use crate::daemon::api::health::HealthView;
use crate::daemon::api::pool::{CheckView, PoolView};
use crate::daemon::api::regions::{
    CreateRegionRequest, RegionView, RenameRegionRequest, ResizeRegionRequest,
};
use crate::pool::{CreateOptions, ErrorKind, OpenMode, Pool, PoolError, RegionKind};

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
    Direct(Pool),
}

impl Route {
    /// Pick the route for `settings`; a direct route opens the pool in `mode`.
    pub fn choose(settings: &Settings, mode: OpenMode) -> anyhow::Result<Route> {
        if let Some((client, health)) = daemon_for(settings)? {
            return Ok(Route::Daemon { client, health });
        }
        Ok(Route::Direct(open_pool(settings, mode)?))
    }

    /// The pool's facts.
    pub fn pool_info(&self) -> anyhow::Result<PoolView> {
        match self {
            Route::Daemon { client, .. } => client.get("/v1/pool"),
            Route::Direct(pool) => Ok(pool.info().into()),
        }
    }

    /// Check the open pool.
    pub fn check(&self) -> anyhow::Result<CheckView> {
        match self {
            Route::Daemon { client, .. } => client.get("/v1/pool/check"),
            Route::Direct(pool) => Ok(pool.check().into()),
        }
    }

    /// Every region.
    pub fn regions(&self) -> anyhow::Result<Vec<RegionView>> {
        match self {
            Route::Daemon { client, .. } => client.get("/v1/regions"),
            Route::Direct(pool) => Ok(pool.regions().into_iter().map(RegionView::from).collect()),
        }
    }

    /// One region by name.
    pub fn region(&self, name: &str) -> anyhow::Result<RegionView> {
        match self {
            Route::Daemon { client, .. } => client.get(&region_path(name, None)),
            Route::Direct(pool) => Ok(pool.region(name)?.into()),
        }
    }

    /// Create a region.
    pub fn create_region(
        &self,
        name: &str,
        kind: RegionKind,
        size: u64,
    ) -> anyhow::Result<RegionView> {
        match self {
            Route::Daemon { client, .. } => {
                let request = CreateRegionRequest { name: name.to_string(), kind, size };
                client.post("/v1/regions", &request)
            }
            Route::Direct(pool) => Ok(pool.create_region(name, kind, size)?.into()),
        }
    }

    /// Rename a region; returns it under its new name.
    pub fn rename_region(&self, name: &str, new_name: &str) -> anyhow::Result<RegionView> {
        match self {
            Route::Daemon { client, .. } => {
                let request = RenameRegionRequest { new_name: new_name.to_string() };
                client.post(&region_path(name, Some("rename")), &request)
            }
            Route::Direct(pool) => {
                pool.rename_region(name, new_name)?;
                Ok(pool.region(new_name)?.into())
            }
        }
    }

    /// Resize a region.
    pub fn resize_region(&self, name: &str, size: u64) -> anyhow::Result<RegionView> {
        match self {
            Route::Daemon { client, .. } => {
                client.post(&region_path(name, Some("resize")), &ResizeRegionRequest { size })
            }
            Route::Direct(pool) => Ok(pool.resize_region(name, size)?.into()),
        }
    }

    /// Delete a region.
    pub fn delete_region(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Route::Daemon { client, .. } => client.delete(&region_path(name, None)),
            Route::Direct(pool) => Ok(pool.delete_region(name)?),
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
