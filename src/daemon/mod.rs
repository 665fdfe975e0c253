//! `pmvisor serve`: the daemon that owns the pool, serves the control API
//! on a Unix socket and serves block regions to their clients.
//!
//! Start-up: the caller has already opened the pool (so a second daemon on
//! the same pool fails with the pool's lock error naming the holder's PID);
//! this module opens every block region with the swap tier, installs the
//! signal handlers, binds the socket (creating its directory, replacing a
//! stale socket file, refusing a live one), sets the socket's mode to 0660,
//! serves again every export recorded in the pool, mounts again every RvmFS
//! filesystem that was mounted when the last daemon stopped, adopts the
//! VMs whose QEMU outlived it, and serves. With `--resume-vms`, a pool
//! fenced by a power outage also gets the VMs that outage saved resumed,
//! in the background once exports and mounts are back (see [`resume`]).
//! Shutdown on SIGTERM or SIGINT: stop accepting API requests and let
//! in-flight ones finish, stop every export (NBD clients get their answers
//! and a clean disconnect), flush every block region, unmount every
//! filesystem (each commits; the mounts stay remembered for the next start),
//! close the gate, drop the pool, remove the socket file (only if it is
//! still the one we bound).

pub mod agents;
pub mod api;
pub mod balancer;
pub mod exports;
pub mod gated;
pub mod regions;
pub mod resume;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};

use pmvisor_blk::BlockDevice;

use self::agents::Agents;
use self::api::health::HealthView;
use self::api::metrics::Metrics;
use self::api::ApiState;
use self::balancer::Balancer;
use self::exports::Exports;
use self::regions::Regions;
use crate::block::BlockRegions;
use crate::fs::FsMounts;
use crate::gate::Gate;
use crate::pool::Pool;

/// Mode of the control socket: owner and group may use the API.
pub const SOCKET_MODE: u32 = 0o660;

/// How long shutdown waits for gated work to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What `pmvisor serve` serves.
#[derive(Debug)]
pub struct ServeOptions {
    /// The pool's canonical path, as given to clients.
    pub pool_path: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// The swap tier file of block regions.
    pub swap: PathBuf,
    /// Watched power-outage sources besides SIGPWR and the API.
    pub pod_sources: Vec<crate::pod::PodSource>,
    /// Time allowed from a power-outage trigger to the fence.
    pub pod_budget: Duration,
    /// Longest spin of an idle NBD connection (see `NbdServer::set_idle_spin`).
    pub nbd_spin: Duration,
    /// After a power outage, resume the VMs it saved.
    pub resume_vms: bool,
    /// Bytes kept allocated for resizes (`BlockRegions::keep_warm`).
    pub warm_reserve: u64,
}

/// Serve the control API and the exports of `pool` until SIGTERM or SIGINT.
pub fn serve(pool: Pool, options: ServeOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pmvisor-api")
        .build()
        .context("cannot start the daemon's runtime")?;
    runtime.block_on(run(pool, options))
}

async fn run(pool: Pool, options: ServeOptions) -> anyhow::Result<()> {
    let ServeOptions {
        pool_path,
        socket,
        swap,
        pod_sources,
        pod_budget,
        nbd_spin,
        resume_vms,
        warm_reserve,
    } = options;
    // Handlers first, so a signal right after the socket appears is handled.
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut power = signal(SignalKind::from_raw(libc::SIGPWR)).context("cannot watch SIGPWR")?;

    // A fenced pool is lifted before anything writes to it.
    let start = crate::pod::open_after_fence(&pool).map_err(|err| {
        anyhow::anyhow!("cannot lift the power-outage fence of {}: {err}", pool_path.display())
    })?;
    let pool = Arc::new(pool);
    let blocks = BlockRegions::open_file_swap(Arc::clone(&pool), &swap).map_err(|err| {
        anyhow::anyhow!(
            "cannot open the block regions of {} ({}); check the swap tier (--swap-path) and run \
             `pmvisor pool check`",
            pool_path.display(),
            api::sentence(&err)
        )
    })?;
    let bound = BoundSocket::bind(&socket)?;
    let listener = tokio::net::UnixListener::from_std(bound.listener.try_clone()?)
        .context("cannot hand the socket to the runtime")?;

    blocks.keep_warm(warm_reserve);
    let blocks = Arc::new(blocks);
    let mounts = Arc::new(FsMounts::new(Arc::clone(&pool)));
    let metrics = Metrics::new();
    let pod = Arc::new(crate::pod::Pod::new(
        crate::pod::PodTargets {
            pool: Arc::clone(&pool),
            gate: Gate::new(),
            mounts: Some(Arc::clone(&mounts)),
            blocks: Some(Arc::clone(&blocks)),
        },
        pod_budget,
        metrics.pod.clone(),
    ));
    let nbd_dir = socket.parent().map_or_else(|| PathBuf::from("nbd"), |dir| dir.join("nbd"));
    let vm_paths = crate::vm::VmPaths::for_daemon(&socket, &crate::paths::state_dir());
    let vms = Arc::new(crate::vm::Vms::new(Arc::clone(&pool), vm_paths));
    let state = Arc::new(ApiState {
        pool: Arc::clone(&pool),
        regions: Arc::new(Regions::serving(pool, blocks).with_mounts(Arc::clone(&mounts))),
        exports: Exports::new(nbd_spin),
        agents: Agents::new(),
        balancer: Balancer::load(balancer::settings_file(), &pool_path),
        mounts,
        nbd_dir,
        changes: tokio::sync::Mutex::new(()),
        gate: pod.gate().clone(),
        metrics,
        pool_path: pool_path.clone(),
        socket: socket.clone(),
        pod: Arc::clone(&pod),
        vms,
    });
    crate::pod::report_start(&pod, start.clone(), &pool_path);
    restore_exports(&state).await;
    restore_agents(&state).await;
    restore_mounts(&state).await;
    api::vms::adopt_running(&state).await;
    if resume_vms {
        // QEMUs take a while to start: the API serves meanwhile.
        let state = Arc::clone(&state);
        tokio::spawn(async move { resume::resume_after_outage(&state, &start).await });
    }
    let balancing = tokio::spawn(Balancer::run(Arc::clone(&state)));
    for source in &pod_sources {
        let watched = Arc::clone(&pod);
        source
            .watch(move |trigger| drop(watched.fence(trigger)))
            .with_context(|| format!("cannot watch the POD source {source}"))?;
        pod.add_source(source);
        tracing::info!("watching {source} for power outages");
    }
    let sigpwr = {
        let pod = Arc::clone(&pod);
        tokio::spawn(async move {
            while power.recv().await.is_some() {
                let trigger = crate::pod::Trigger::now("SIGPWR");
                let pod = Arc::clone(&pod);
                tokio::task::spawn_blocking(move || drop(pod.fence(trigger)));
            }
        })
    };
    let app = api::router(Arc::clone(&state));
    tracing::info!(
        pool = %pool_path.display(),
        socket = %socket.display(),
        pid = std::process::id(),
        warm_reserve = %crate::cli::size::format_size(warm_reserve),
        "pmvisor daemon serving"
    );

    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!("received {name}; finishing in-flight requests");
        })
        .await
        .context("the control API stopped")?;

    balancing.abort();
    sigpwr.abort();
    if pod.is_fenced() {
        // Nothing more may reach the pool, and filesystem requests are held:
        // stop serving and leave the fence for the next start.
        state.exports.stop_all().await;
        bound.remove();
        tracing::warn!(pool = %pool_path.display(), "stopped while fenced; the next start opens the pool from its fence");
        std::process::exit(0);
    }
    state.exports.stop_all().await;
    state.agents.stop_all();
    let regions = Arc::clone(&state.regions);
    let flushed = tokio::task::spawn_blocking(move || flush_block_regions(&regions)).await;
    if let Err(err) = flushed {
        tracing::error!("flushing the block regions failed: {err}");
    }
    let mounts = Arc::clone(&state.mounts);
    if let Err(err) = tokio::task::spawn_blocking(move || mounts.shutdown()).await {
        tracing::error!("unmounting the filesystems failed: {err}");
    }
    match state.gate.close(DRAIN_TIMEOUT) {
        Ok(drained) => tracing::info!("gate closed after {:?}", drained.waited),
        Err(err) => tracing::warn!("{err}; closing the pool anyway"),
    }
    drop(state);
    bound.remove();
    tracing::info!(pool = %pool_path.display(), "pmvisor daemon stopped");
    Ok(())
}

/// Serve again every export recorded in the pool. One that cannot be served
/// (its address is taken, its transport is missing) is logged and stays
/// recorded, so `pmvisor export list` shows it as not serving.
async fn restore_exports(state: &api::SharedState) {
    for (name, record) in state.regions.recorded_exports() {
        let kind = match record {
            Ok(kind) => kind,
            Err(problem) => {
                tracing::warn!(region = %name, "not serving a damaged export record: {problem}");
                continue;
            }
        };
        let region = match state.regions.block(&name) {
            Ok(region) => region,
            Err(err) => {
                tracing::warn!(region = %name, "not serving the export: {}", err.message);
                continue;
            }
        };
        match state.exports.start(&name, region, state.gate.clone(), kind).await {
            Ok(served) => tracing::info!(region = %name, "serving export again ({})", served.kind),
            Err(err) => {
                tracing::warn!(region = %name, "cannot serve the export again: {}", api::sentence(&err))
            }
        }
    }
}

/// Reach again every agent recorded in the pool. One whose link cannot
/// start (its address is taken) is logged and stays recorded.
async fn restore_agents(state: &api::SharedState) {
    for (name, size, record) in state.regions.recorded_agents() {
        let record = match record {
            Ok(record) => record,
            Err(problem) => {
                tracing::warn!(region = %name, "not reaching the agent of a damaged record: {problem}");
                continue;
            }
        };
        match state.agents.start(&name, size, &record).await {
            Ok(_) => tracing::info!(region = %name, "waiting for the agent at {}", record.addr),
            Err(err) => {
                tracing::warn!(region = %name, "cannot reach the agent again: {}", api::sentence(&err))
            }
        }
    }
}

/// Mount again every filesystem that was mounted when the last daemon
/// stopped; one that cannot be mounted is logged and stays remembered.
async fn restore_mounts(state: &api::SharedState) {
    let mounts = Arc::clone(&state.mounts);
    let restored = tokio::task::spawn_blocking(move || {
        let failed = mounts.restore();
        (mounts.list(), failed)
    })
    .await;
    match restored {
        Ok((mounted, failed)) => {
            for info in mounted {
                tracing::info!(region = %info.region, mountpoint = %info.mountpoint.display(), "serving filesystem");
            }
            for (name, err) in failed {
                tracing::warn!(region = %name, "cannot mount the filesystem again: {}", api::fs::mount_sentence(&err));
            }
        }
        Err(err) => tracing::error!("restoring the mounts failed: {err}"),
    }
}

/// Make every acknowledged write of every block region durable.
fn flush_block_regions(regions: &Regions) {
    let Ok(blocks) = regions.blocks() else { return };
    for name in blocks.names() {
        if let Some(region) = blocks.get(&name) {
            match region.flush() {
                Ok(()) => tracing::info!(region = %name, "flushed block region"),
                Err(err) => tracing::error!(region = %name, "cannot flush block region: {err}"),
            }
        }
    }
}

/// The listening socket and the identity of the file we bound, so that
/// shutdown removes our socket and never a successor's.
#[derive(Debug)]
struct BoundSocket {
    path: PathBuf,
    listener: UnixListener,
    dev_ino: (u64, u64),
}

impl BoundSocket {
    fn bind(path: &Path) -> anyhow::Result<BoundSocket> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create the socket directory {} (choose another --socket)",
                    dir.display()
                )
            })?;
        }
        clear_stale_socket(path)?;
        let listener = UnixListener::bind(path).with_context(|| {
            format!("cannot listen on {} (choose another --socket)", path.display())
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let meta = std::fs::metadata(path)?;
        Ok(BoundSocket { path: path.to_path_buf(), listener, dev_ino: (meta.dev(), meta.ino()) })
    }

    fn remove(self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.dev_ino);
        if ours {
            if let Err(err) = std::fs::remove_file(&self.path) {
                tracing::warn!("cannot remove {}: {err}", self.path.display());
            }
        }
    }
}

/// Remove a socket file nobody listens on; refuse a live one or a file that
/// is not a socket.
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; remove it or choose another --socket",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(stream) => {
            let holder = match live_daemon(stream) {
                Some(health) => {
                    format!("pmvisor daemon (PID {}, pool {})", health.pid, health.pool.display())
                }
                None => "process".to_string(),
            };
            bail!(
                "another {holder} is already listening on {}; stop it or choose another --socket",
                path.display()
            )
        }
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!("replacing the stale socket {}", path.display());
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))
        }
        Err(err) => Err(err).with_context(|| {
            format!("cannot tell whether {} is in use; remove it if no daemon runs", path.display())
        }),
    }
}

/// Ask whoever listens on `stream` for its health, briefly.
fn live_daemon(mut stream: UnixStream) -> Option<HealthView> {
    let timeout = Some(Duration::from_secs(1));
    stream.set_read_timeout(timeout).ok()?;
    stream.set_write_timeout(timeout).ok()?;
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).ok()?;
    let start = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    serde_json::from_slice(&answer[start..]).ok()
}
