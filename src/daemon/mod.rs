//! `pmvisor serve`: the daemon that owns the pool and serves the control API
//! on a Unix socket.
//!
//! Start-up: the caller has already opened the pool (so a second daemon on
//! the same pool fails with the pool's lock error naming the holder's PID);
//! this module installs the signal handlers, binds the socket (creating its
//! directory, replacing a stale socket file, refusing a live one), sets the
//! socket's mode to 0660 and serves. Shutdown on SIGTERM or SIGINT: stop
//! accepting, let in-flight requests finish, close the gate, drop the pool,
//! remove the socket file (only if it is still the one we bound).

pub mod api;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};

use self::api::health::HealthView;
use self::api::metrics::Metrics;
use self::api::ApiState;
use crate::gate::Gate;
use crate::pool::Pool;

/// Mode of the control socket: owner and group may use the API.
pub const SOCKET_MODE: u32 = 0o660;

/// How long shutdown waits for gated work to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve the control API for `pool` on `socket` until SIGTERM or SIGINT.
pub fn serve(pool: Pool, pool_path: PathBuf, socket: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pmvisor-api")
        .build()
        .context("cannot start the daemon's runtime")?;
    runtime.block_on(run(pool, pool_path, socket))
}

async fn run(pool: Pool, pool_path: PathBuf, socket: PathBuf) -> anyhow::Result<()> {
    // Handlers first, so a signal right after the socket appears is handled.
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let bound = BoundSocket::bind(&socket)?;
    let listener = tokio::net::UnixListener::from_std(bound.listener.try_clone()?)
        .context("cannot hand the socket to the runtime")?;

    let state = Arc::new(ApiState {
        pool: Arc::new(pool),
        gate: Gate::new(),
        metrics: Metrics::new(),
        pool_path: pool_path.clone(),
        socket: socket.clone(),
    });
    let app = api::router(Arc::clone(&state));
    tracing::info!(
        pool = %pool_path.display(),
        socket = %socket.display(),
        pid = std::process::id(),
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

    match state.gate.close(DRAIN_TIMEOUT) {
        Ok(drained) => tracing::info!("gate closed after {:?}", drained.waited),
        Err(err) => tracing::warn!("{err}; closing the pool anyway"),
    }
    drop(state);
    bound.remove();
    tracing::info!(pool = %pool_path.display(), "pmvisor daemon stopped");
    Ok(())
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
