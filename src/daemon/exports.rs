//! Exports: block regions served to clients by a transport, and the record
//! of them in the pool that lets the daemon serve them again after a
//! restart.
//!
//! An export is one block region on one transport ([`ExportKind`]): NBD on
//! a listen address, or ublk. The daemon runs one [`NbdServer`] with one
//! listener per NBD export, so removing an export closes exactly its own
//! socket and clients, and one ublk device (`/dev/ublkbN`) per ublk export.
//! Every request goes through the daemon's gate ([`GatedRegion`]).
//!
//! Persistence: an export is a region attribute, `export.nbd` holding the
//! listen address (`unix:/run/pmvisor/nbd/disk.sock`, `tcp:127.0.0.1:10809`)
//! or `export.ublk` holding the ublk options. The attribute is written once
//! the export serves and removed with it; at start the daemon serves every
//! region that carries one.
//!
//! ublk devices outlive a daemon that dies (they are created with user
//! recovery) and carry the region name as their label. Serving a ublk
//! export first looks for a device with that label: one whose server died
//! (QUIESCED, or still LIVE until the driver notices) is recovered, so its
//! users see a pause rather than an I/O error; one that cannot be recovered
//! (stopped, or of another size) is deleted and a new device is added. A
//! device still served by a live process is refused. Stopping a ublk export
//! (remove, shutdown) stops and deletes its device.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pmvisor_blk::nbd::{ListenAddr, NbdError, NbdListener, NbdServer};
use pmvisor_blk::ublk::{self, DeviceState, UblkError, UblkHandle, UblkOptions, UblkTarget};
use pmvisor_blk::BlockDevice;

use super::gated::GatedRegion;
use crate::block::BlockRegion;
use crate::gate::Gate;

/// Region attribute of an NBD export: its listen address.
pub const ATTR_NBD: &str = "export.nbd";
/// Region attribute of a ublk export: its options (`queues=N,depth=N`).
pub const ATTR_UBLK: &str = "export.ublk";

/// How a block region is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportKind {
    /// NBD (fixed newstyle) on a Unix socket or a TCP address.
    Nbd(ListenAddr),
    /// A Linux ublk device (`/dev/ublkbN`).
    Ublk {
        /// Hardware queues; `None` lets the transport choose.
        queues: Option<u16>,
        /// Requests in flight per queue; `None` lets the transport choose.
        depth: Option<u16>,
    },
}

/// Why an export could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The region already has an export.
    #[error(
        "region {name:?} is already exported ({kind}); remove that export first with \
         `pmvisor export remove {name}`"
    )]
    AlreadyExported { name: String, kind: ExportKind },
    /// The region has no export.
    #[error("region {0:?} is not exported; `pmvisor export list` shows the exports")]
    NotExported(String),
    /// The ublk target could not serve, recover or stop the region's
    /// device (the source says why: no driver, a refused device, a timeout).
    #[error("cannot serve region {name:?} as a ublk device")]
    Ublk {
        name: String,
        #[source]
        source: UblkError,
    },
    /// A ublk device labelled with the region is served by another process.
    #[error(
        "ublk device {} already serves region {name:?} for process {pid}; stop that process \
         or delete the device before exporting the region again",
        path.display()
    )]
    UblkInUse { name: String, path: PathBuf, pid: i32 },
    /// The blocking task that drives the ublk target failed.
    #[error("the ublk task for region {name:?} did not finish: {reason}")]
    UblkTask { name: String, reason: String },
    /// The directory of the export's Unix socket could not be created.
    #[error("cannot create the NBD socket directory {}", path.display())]
    SocketDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The NBD server refused the export or its address.
    #[error("cannot serve region {name:?} over NBD at {addr}")]
    Nbd {
        name: String,
        addr: ListenAddr,
        #[source]
        source: NbdError,
    },
}

impl fmt::Display for ExportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportKind::Nbd(addr) => write!(f, "nbd at {addr}"),
            ExportKind::Ublk { .. } => f.write_str("ublk"),
        }
    }
}

impl ExportKind {
    /// `nbd` or `ublk`.
    pub fn transport(&self) -> &'static str {
        match self {
            ExportKind::Nbd(_) => "nbd",
            ExportKind::Ublk { .. } => "ublk",
        }
    }

    /// The region attribute that records this export: (key, value).
    pub fn attr(&self) -> (&'static str, String) {
        match self {
            ExportKind::Nbd(addr) => (ATTR_NBD, addr.to_string()),
            ExportKind::Ublk { queues, depth } => {
                let mut parts = Vec::new();
                if let Some(q) = queues {
                    parts.push(format!("queues={q}"));
                }
                if let Some(d) = depth {
                    parts.push(format!("depth={d}"));
                }
                (ATTR_UBLK, if parts.is_empty() { "default".into() } else { parts.join(",") })
            }
        }
    }

    /// The export a region's attributes record, if any; `Err` names a
    /// damaged attribute.
    pub fn from_attrs(attrs: &BTreeMap<String, String>) -> Option<Result<ExportKind, String>> {
        if let Some(addr) = attrs.get(ATTR_NBD) {
            return Some(addr.parse().map(ExportKind::Nbd).map_err(|e: NbdError| e.to_string()));
        }
        let options = attrs.get(ATTR_UBLK)?;
        let (mut queues, mut depth) = (None, None);
        for part in options.split(',').filter(|p| !p.is_empty() && *p != "default") {
            let parsed = part.split_once('=').and_then(|(k, v)| Some((k, v.parse().ok()?)));
            match parsed {
                Some(("queues", n)) => queues = Some(n),
                Some(("depth", n)) => depth = Some(n),
                _ => return Some(Err(format!("{ATTR_UBLK} has an unknown option {part:?}"))),
            }
        }
        Some(Ok(ExportKind::Ublk { queues, depth }))
    }

    /// The NBD URI a client uses, for NBD exports.
    pub fn client_uri(&self, name: &str) -> Option<String> {
        match self {
            ExportKind::Nbd(addr) => Some(addr.client_uri(name)),
            ExportKind::Ublk { .. } => None,
        }
    }

    /// Whether clients on other hosts can reach this export.
    pub fn reachable_from_other_hosts(&self) -> bool {
        matches!(self, ExportKind::Nbd(ListenAddr::Tcp(addr)) if !addr.ip().is_loopback())
    }
}

/// Parse an NBD address as `export add --nbd` takes it: nothing (the
/// default Unix socket `<nbd_dir>/<name>.sock`), `unix:PATH`,
/// `tcp:PORT` (loopback), or `tcp:IP:PORT`.
pub fn parse_nbd_address(
    text: Option<&str>,
    name: &str,
    nbd_dir: &Path,
) -> Result<ListenAddr, NbdError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(ListenAddr::Unix(nbd_dir.join(format!("{name}.sock")))),
        Some(text) => match text.strip_prefix("tcp:").map(str::parse::<u16>) {
            Some(Ok(port)) => {
                Ok(ListenAddr::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)))
            }
            _ => text.parse(),
        },
    }
}

/// What serves one export.
#[derive(Debug)]
enum Serving {
    /// Its own NBD server and listener.
    Nbd { server: NbdServer, listener: NbdListener },
    /// Its ublk device.
    Ublk(UblkHandle),
}

/// One export being served.
#[derive(Debug)]
struct RunningExport {
    kind: ExportKind,
    serving: Serving,
}

impl RunningExport {
    fn served(&self) -> Served {
        let device = match &self.serving {
            Serving::Ublk(handle) => Some(handle.path()),
            Serving::Nbd { .. } => None,
        };
        Served { kind: self.kind.clone(), device }
    }
}

/// An export as it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The export (a TCP port 0 replaced by the port bound).
    pub kind: ExportKind,
    /// ublk: the block device, `/dev/ublkbN`.
    pub device: Option<PathBuf>,
}

/// The exports the daemon serves now, by region name.
#[derive(Debug)]
pub struct Exports {
    running: tokio::sync::Mutex<BTreeMap<String, RunningExport>>,
    /// Longest idle spin of NBD connections.
    nbd_spin: Duration,
}

impl Exports {
    /// No exports yet; NBD connections will spin for at most `nbd_spin`
    /// between requests.
    pub fn new(nbd_spin: Duration) -> Exports {
        Exports { running: Default::default(), nbd_spin }
    }

    /// Serve `region` as `name` through `gate`; returns the export as it
    /// runs.
    pub async fn start(
        &self,
        name: &str,
        region: Arc<BlockRegion>,
        gate: Gate,
        kind: ExportKind,
    ) -> Result<Served, ExportError> {
        let mut running = self.running.lock().await;
        if let Some(existing) = running.get(name) {
            return Err(ExportError::AlreadyExported {
                name: name.to_string(),
                kind: existing.kind.clone(),
            });
        }
        let device = Arc::new(GatedRegion::new(region, gate));
        let export = match kind {
            ExportKind::Nbd(addr) => start_nbd(name, device, addr, self.nbd_spin).await?,
            ExportKind::Ublk { queues, depth } => {
                let owned = name.to_string();
                let handle =
                    blocking(name, move || serve_ublk(&owned, device, queues, depth)).await??;
                RunningExport { kind, serving: Serving::Ublk(handle) }
            }
        };
        let served = export.served();
        running.insert(name.to_string(), export);
        Ok(served)
    }

    /// Stop serving `name`. NBD: stop accepting, let its clients' requests
    /// in flight finish, disconnect them, remove its socket file. ublk:
    /// stop the device (its queues end once their requests are answered)
    /// and delete it.
    pub async fn stop(&self, name: &str) -> Result<ExportKind, ExportError> {
        let export = self.running.lock().await.remove(name);
        let export = export.ok_or_else(|| ExportError::NotExported(name.to_string()))?;
        stop_export(name, export).await
    }

    /// Stop every export (shutdown), each as [`Exports::stop`] does; a
    /// failure is logged and the others still stop.
    pub async fn stop_all(&self) {
        let all = std::mem::take(&mut *self.running.lock().await);
        for (name, export) in all {
            match stop_export(&name, export).await {
                Ok(kind) => tracing::info!(region = %name, "stopped export ({kind})"),
                Err(err) => tracing::error!(region = %name, "cannot stop the export: {err}"),
            }
        }
    }

    /// The exports being served, by region name.
    pub async fn list(&self) -> BTreeMap<String, Served> {
        let running = self.running.lock().await;
        running.iter().map(|(name, export)| (name.clone(), export.served())).collect()
    }
}

async fn start_nbd(
    name: &str,
    device: Arc<GatedRegion>,
    addr: ListenAddr,
    spin: Duration,
) -> Result<RunningExport, ExportError> {
    let nbd = |source| ExportError::Nbd { name: name.to_string(), addr: addr.clone(), source };
    if let ListenAddr::Unix(path) = &addr {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| ExportError::SocketDir { path: dir.to_path_buf(), source })?;
        }
    }
    let server = NbdServer::new();
    server.set_idle_spin(spin);
    server.add_export(name, device, false).map_err(nbd)?;
    let listener = server.listen(&addr).await.map_err(nbd)?;
    let kind = ExportKind::Nbd(listener.local_addr().clone());
    Ok(RunningExport { kind, serving: Serving::Nbd { server, listener } })
}

async fn stop_export(name: &str, export: RunningExport) -> Result<ExportKind, ExportError> {
    match export.serving {
        Serving::Nbd { server, listener } => {
            listener.stop().await;
            let _ = server.remove_export(name);
        }
        Serving::Ublk(handle) => {
            let owned = name.to_string();
            blocking(name, move || {
                handle.stop().map_err(|source| ExportError::Ublk { name: owned, source })
            })
            .await??;
        }
    }
    Ok(export.kind)
}

/// Run `work` on the blocking pool: the ublk target waits on the driver.
async fn blocking<T, F>(name: &str, work: F) -> Result<T, ExportError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ExportError::UblkTask { name: name.to_string(), reason: err.to_string() })
}

/// Serve `device` as the ublk device of region `name`: recover the device
/// a dead daemon left for it, or add a new one.
fn serve_ublk(
    name: &str,
    device: Arc<GatedRegion>,
    queues: Option<u16>,
    depth: Option<u16>,
) -> Result<UblkHandle, ExportError> {
    let ublk = |source| ExportError::Ublk { name: name.to_string(), source };
    let defaults = UblkOptions::default();
    let mut options = UblkOptions {
        queues: queues.unwrap_or(defaults.queues),
        depth: depth.unwrap_or(defaults.depth),
        label: name.to_string(),
        ..defaults
    };
    for info in ublk::list_devices().map_err(ublk)? {
        if info.label.as_deref() != Some(name) {
            continue;
        }
        match left_behind(&info, device.size(), options.id.is_some()) {
            Leftover::Recover => {
                tracing::info!(region = %name, id = info.id, state = %info.state, "recovering the ublk device a previous daemon left");
                options.id = Some(info.id);
                options.recover = true;
            }
            Leftover::Delete => {
                tracing::warn!(region = %name, id = info.id, state = %info.state, "deleting a ublk device that cannot be recovered");
                ublk::delete_device(info.id).map_err(ublk)?;
            }
            Leftover::InUse => {
                return Err(ExportError::UblkInUse {
                    name: name.to_string(),
                    path: info.path(),
                    pid: info.owner_pid,
                })
            }
        }
    }
    UblkTarget::serve(device, options).map_err(ublk)
}

/// What to do with a ublk device that carries a region's label.
#[derive(Debug, PartialEq, Eq)]
enum Leftover {
    /// Its server died and it waits for a new one: serve it again.
    Recover,
    /// Nobody serves it and it cannot be recovered: delete it.
    Delete,
    /// A live process serves it.
    InUse,
}

fn left_behind(info: &ublk::UblkDeviceInfo, size: u64, recovering_another: bool) -> Leftover {
    let waiting = match info.state {
        DeviceState::Quiesced | DeviceState::FailIo => true,
        // The driver notices a dead server a few seconds late.
        DeviceState::Live => {
            if info.owner_alive() {
                return Leftover::InUse;
            }
            true
        }
        DeviceState::Dead | DeviceState::Unknown(_) => false,
    };
    if waiting && info.recoverable && info.size == size && !recovering_another {
        Leftover::Recover
    } else {
        Leftover::Delete
    }
}

/// Delete the ublk devices of region `name` that no live process serves
/// (after its export record was dropped while no daemon ran); returns the
/// paths deleted. Without the ublk driver there is nothing to delete.
pub fn delete_orphaned_ublk(name: &str) -> Result<Vec<PathBuf>, UblkError> {
    if ublk::check_driver().is_err() {
        return Ok(Vec::new());
    }
    let mut deleted = Vec::new();
    for info in ublk::list_devices()? {
        if info.label.as_deref() == Some(name) && !info.owner_alive() {
            ublk::delete_device(info.id)?;
            deleted.push(info.path());
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_addresses_default_to_a_unix_socket_and_tcp_port_alone_means_loopback() {
        let dir = Path::new("/run/pmvisor/nbd");
        assert_eq!(
            parse_nbd_address(None, "disk", dir).unwrap(),
            ListenAddr::Unix("/run/pmvisor/nbd/disk.sock".into())
        );
        assert_eq!(
            parse_nbd_address(Some("tcp:10809"), "disk", dir).unwrap(),
            ListenAddr::Tcp("127.0.0.1:10809".parse().unwrap())
        );
        assert_eq!(
            parse_nbd_address(Some("tcp:0.0.0.0:10809"), "disk", dir).unwrap(),
            ListenAddr::Tcp("0.0.0.0:10809".parse().unwrap())
        );
        assert_eq!(
            parse_nbd_address(Some("unix:/tmp/a.sock"), "disk", dir).unwrap(),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        let err = parse_nbd_address(Some("10809"), "disk", dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"10809\" is not a listen address; use unix:PATH or tcp:IP:PORT"
        );
    }

    #[test]
    fn exports_round_trip_through_their_attribute() {
        for kind in [
            ExportKind::Nbd(ListenAddr::Unix("/run/pmvisor/nbd/a.sock".into())),
            ExportKind::Nbd(ListenAddr::Tcp("127.0.0.1:10809".parse().unwrap())),
            ExportKind::Ublk { queues: None, depth: None },
            ExportKind::Ublk { queues: Some(2), depth: Some(128) },
        ] {
            let (key, value) = kind.attr();
            let attrs = BTreeMap::from([(key.to_string(), value)]);
            assert_eq!(ExportKind::from_attrs(&attrs).unwrap().unwrap(), kind);
        }
        assert!(ExportKind::from_attrs(&BTreeMap::new()).is_none());
        let bad = BTreeMap::from([(ATTR_UBLK.to_string(), "colour=red".to_string())]);
        assert!(ExportKind::from_attrs(&bad).unwrap().is_err());
    }

    #[test]
    fn only_non_loopback_tcp_is_reachable_from_other_hosts() {
        let tcp = |a: &str| ExportKind::Nbd(ListenAddr::Tcp(a.parse().unwrap()));
        assert!(tcp("0.0.0.0:1").reachable_from_other_hosts());
        assert!(tcp("192.0.2.1:1").reachable_from_other_hosts());
        assert!(!tcp("127.0.0.1:1").reachable_from_other_hosts());
        assert!(!tcp("[::1]:1").reachable_from_other_hosts());
        assert!(!ExportKind::Nbd(ListenAddr::Unix("/s".into())).reachable_from_other_hosts());
    }

    fn device(state: DeviceState, owner_pid: i32, recoverable: bool) -> ublk::UblkDeviceInfo {
        ublk::UblkDeviceInfo {
            id: 3,
            state,
            queues: 2,
            depth: 64,
            size: 1 << 20,
            owner_pid,
            recoverable,
            reissue: true,
            label: Some("disk".into()),
        }
    }

    #[test]
    fn a_device_left_by_a_dead_daemon_is_recovered_and_others_deleted_or_refused() {
        let dead = i32::MAX; // above pid_max: no such process
        let me = i32::try_from(std::process::id()).unwrap();
        let size = 1 << 20;
        assert_eq!(
            left_behind(&device(DeviceState::Quiesced, dead, true), size, false),
            Leftover::Recover
        );
        assert_eq!(
            left_behind(&device(DeviceState::FailIo, dead, true), size, false),
            Leftover::Recover
        );
        assert_eq!(
            left_behind(&device(DeviceState::Live, dead, true), size, false),
            Leftover::Recover
        );
        assert_eq!(left_behind(&device(DeviceState::Live, me, true), size, false), Leftover::InUse);
        assert_eq!(
            left_behind(&device(DeviceState::Dead, dead, true), size, false),
            Leftover::Delete
        );
        assert_eq!(
            left_behind(&device(DeviceState::Quiesced, dead, false), size, false),
            Leftover::Delete
        );
        assert_eq!(
            left_behind(&device(DeviceState::Quiesced, dead, true), 2 << 20, false),
            Leftover::Delete
        );
        assert_eq!(
            left_behind(&device(DeviceState::Quiesced, dead, true), size, true),
            Leftover::Delete
        );
    }

    #[test]
    fn ublk_errors_say_what_failed_and_why() {
        let err = ExportError::Ublk { name: "disk".into(), source: UblkError::DriverMissing };
        assert_eq!(err.to_string(), "cannot serve region \"disk\" as a ublk device");
        assert!(std::error::Error::source(&err).unwrap().to_string().contains("modprobe ublk_drv"));
        let err =
            ExportError::UblkInUse { name: "disk".into(), path: "/dev/ublkb3".into(), pid: 42 };
        assert!(err
            .to_string()
            .starts_with("ublk device /dev/ublkb3 already serves region \"disk\" for process 42"));
    }
}
