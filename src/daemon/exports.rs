//! Exports: block regions served to clients by a transport, and the record
//! of them in the pool that lets the daemon serve them again after a
//! restart.
//!
//! An export is one block region on one transport ([`ExportKind`]): NBD on
//! a listen address, or ublk. The daemon runs one [`NbdServer`] with one
//! listener per NBD export, so removing an export closes exactly its own
//! socket and clients. Every request goes through the daemon's gate
//! ([`GatedRegion`]).
//!
//! Persistence: an export is a region attribute, `export.nbd` holding the
//! listen address (`unix:/run/pmvisor/nbd/disk.sock`, `tcp:127.0.0.1:10809`)
//! or `export.ublk` holding the ublk options. The attribute is written once
//! the export serves and removed with it; at start the daemon serves every
//! region that carries one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pmvisor_blk::nbd::{ListenAddr, NbdError, NbdListener, NbdServer};

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
    /// ublk is not served by this daemon yet.
    #[error(
        "pmvisor serve cannot attach region {name:?} as a ublk device yet (the ublk target is \
         not wired into the daemon); export it over NBD with `pmvisor export add {name} --nbd`"
    )]
    UblkNotWired { name: String },
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

/// One export being served.
#[derive(Debug)]
struct RunningExport {
    kind: ExportKind,
    server: NbdServer,
    listener: NbdListener,
}

/// The exports the daemon serves now, by region name.
#[derive(Debug, Default)]
pub struct Exports {
    running: tokio::sync::Mutex<BTreeMap<String, RunningExport>>,
}

impl Exports {
    /// No exports.
    pub fn new() -> Exports {
        Exports::default()
    }

    /// Serve `region` as `name` through `gate`; returns the export as it
    /// runs (a TCP port 0 replaced by the port bound).
    pub async fn start(
        &self,
        name: &str,
        region: Arc<BlockRegion>,
        gate: Gate,
        kind: ExportKind,
    ) -> Result<ExportKind, ExportError> {
        let mut running = self.running.lock().await;
        if let Some(existing) = running.get(name) {
            return Err(ExportError::AlreadyExported {
                name: name.to_string(),
                kind: existing.kind.clone(),
            });
        }
        let addr = match kind {
            ExportKind::Nbd(addr) => addr,
            ExportKind::Ublk { .. } => {
                return Err(ExportError::UblkNotWired { name: name.to_string() })
            }
        };
        let nbd = |source| ExportError::Nbd { name: name.to_string(), addr: addr.clone(), source };
        if let ListenAddr::Unix(path) = &addr {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|source| ExportError::SocketDir { path: dir.to_path_buf(), source })?;
            }
        }
        let server = NbdServer::new();
        server.add_export(name, Arc::new(GatedRegion::new(region, gate)), false).map_err(nbd)?;
        let listener = server.listen(&addr).await.map_err(nbd)?;
        let kind = ExportKind::Nbd(listener.local_addr().clone());
        running.insert(name.to_string(), RunningExport { kind: kind.clone(), server, listener });
        Ok(kind)
    }

    /// Stop serving `name`: stop accepting, let its clients' requests in
    /// flight finish, disconnect them, remove its socket file.
    pub async fn stop(&self, name: &str) -> Result<ExportKind, ExportError> {
        let export = self.running.lock().await.remove(name);
        let export = export.ok_or_else(|| ExportError::NotExported(name.to_string()))?;
        export.listener.stop().await;
        let _ = export.server.remove_export(name);
        Ok(export.kind)
    }

    /// Stop every export (shutdown), each as [`Exports::stop`] does.
    pub async fn stop_all(&self) {
        let all = std::mem::take(&mut *self.running.lock().await);
        for (name, export) in all {
            export.listener.stop().await;
            let _ = export.server.remove_export(&name);
            tracing::info!(region = %name, "stopped export");
        }
    }

    /// The exports being served, by region name.
    pub async fn list(&self) -> BTreeMap<String, ExportKind> {
        let running = self.running.lock().await;
        running.iter().map(|(name, export)| (name.clone(), export.kind.clone())).collect()
    }
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

    #[test]
    fn the_ublk_error_says_what_to_use_instead() {
        let err = ExportError::UblkNotWired { name: "disk".into() };
        assert!(err
            .to_string()
            .ends_with("export it over NBD with `pmvisor export add disk --nbd`"));
    }
}
