//! `NbdServer`: the exports of one server and the listeners that serve
//! them, on Unix sockets (the default) or TCP.
//!
//! Exports can be added and removed while clients are connected; removing
//! one drains and closes its connections. Each listener is an accept loop
//! with a bounded number of connections. Stopping a listener (or the whole
//! server) stops accepting, lets every connection answer what it has in
//! flight, closes them, and removes the listener's socket file.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::connection::serve_connection;
use super::export::{ExportTable, NameProblem};
use super::idle::DEFAULT_SPIN;
use super::transmission::raised;
use crate::device::BlockDevice;

/// Most connections one listener serves at once; more are refused.
pub const MAX_CONNECTIONS: usize = 256;

/// Errors of the server's API.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("an export name must not be empty (the empty name means the default export)")]
    EmptyExportName,
    #[error("export name is longer than 4096 bytes")]
    ExportNameTooLong,
    #[error("export name {0:?} contains a NUL byte")]
    ExportNameHasNul(String),
    #[error("an export named {0:?} already exists")]
    ExportExists(String),
    #[error("no export named {0:?}")]
    NoSuchExport(String),
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("another server is already listening on {}", .0.display())]
    SocketInUse(PathBuf),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: ListenAddr,
        #[source]
        source: io::Error,
    },
    #[error("{0:?} is not a listen address; use unix:PATH or tcp:IP:PORT")]
    BadListenAddr(String),
}

/// Where a listener accepts clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address; port 0 picks a free port.
    Tcp(SocketAddr),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = NbdError;

    /// Parse `unix:PATH` or `tcp:IP:PORT`.
    fn from_str(text: &str) -> Result<Self, NbdError> {
        let bad = || NbdError::BadListenAddr(text.to_owned());
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp:") {
            return addr.parse().map(ListenAddr::Tcp).map_err(|_| bad());
        }
        Err(bad())
    }
}

impl ListenAddr {
    /// The NBD URI a client (qemu, libnbd tools) uses to reach `export`
    /// through this address.
    pub fn client_uri(&self, export: &str) -> String {
        match self {
            ListenAddr::Unix(path) => format!(
                "nbd+unix:///{}?socket={}",
                percent_encode(export, false),
                percent_encode(&path.to_string_lossy(), true)
            ),
            ListenAddr::Tcp(addr) => format!("nbd://{addr}/{}", percent_encode(export, false)),
        }
    }
}

fn percent_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let plain = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
        if plain || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Stop switch and completion flag of one listener.
#[derive(Debug)]
struct ListenerControl {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

impl ListenerControl {
    async fn stop_and_wait(&self) {
        self.stop.send_replace(true);
        // A dropped sender means the accept loop is gone: also "done".
        raised(&mut self.done.clone()).await;
    }
}

/// A running listener. Dropping it stops it without waiting; call
/// [`NbdListener::stop`] to wait until its connections are closed.
#[must_use = "dropping an NbdListener stops it"]
#[derive(Debug)]
pub struct NbdListener {
    addr: ListenAddr,
    control: Arc<ListenerControl>,
}

impl NbdListener {
    /// The address clients connect to (with the real port for TCP port 0).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The NBD URI of `export` through this listener.
    pub fn client_uri(&self, export: &str) -> String {
        self.addr.client_uri(export)
    }

    /// Stop accepting, let connections answer what is in flight, close
    /// them, and remove the socket file; returns when all that is done.
    pub async fn stop(self) {
        self.control.stop_and_wait().await;
    }
}

impl Drop for NbdListener {
    fn drop(&mut self) {
        self.control.stop.send_replace(true);
    }
}

#[derive(Debug)]
struct Shared {
    exports: Arc<ExportTable>,
    listeners: Mutex<Vec<Weak<ListenerControl>>>,
    /// Longest spin of an idle connection, in microseconds.
    spin_us: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            exports: Arc::default(),
            listeners: Mutex::default(),
            spin_us: AtomicU64::new(DEFAULT_SPIN.as_micros() as u64),
        }
    }
}

/// An NBD server: a table of exports and the listeners serving it. Cheap to
/// clone; clones share exports and listeners.
#[derive(Debug, Clone, Default)]
pub struct NbdServer {
    shared: Arc<Shared>,
}

impl NbdServer {
    /// A server with no exports and no listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a connection with nothing in flight spins for its next
    /// request before it sleeps, at most (the window adapts below it; see
    /// [`DEFAULT_SPIN`]). Zero never spins. Applies to connections accepted
    /// from now on.
    pub fn set_idle_spin(&self, max: Duration) {
        self.shared.spin_us.store(max.as_micros() as u64, Ordering::Relaxed);
    }

    /// Export `device` as `name`. Connected clients see it at once.
    pub fn add_export(
        &self,
        name: &str,
        device: Arc<dyn BlockDevice>,
        read_only: bool,
    ) -> Result<(), NbdError> {
        self.shared.exports.add(name, device, read_only).map_err(|problem| match problem {
            NameProblem::Empty => NbdError::EmptyExportName,
            NameProblem::TooLong => NbdError::ExportNameTooLong,
            NameProblem::ContainsNul => NbdError::ExportNameHasNul(name.to_owned()),
            NameProblem::Taken => NbdError::ExportExists(name.to_owned()),
        })
    }

    /// Stop exporting `name`; its connections finish what is in flight and
    /// close.
    pub fn remove_export(&self, name: &str) -> Result<(), NbdError> {
        if self.shared.exports.remove(name) {
            Ok(())
        } else {
            Err(NbdError::NoSuchExport(name.to_owned()))
        }
    }

    /// Names of the current exports, sorted.
    pub fn export_names(&self) -> Vec<String> {
        self.shared.exports.names()
    }

    /// Listen on `addr`.
    pub async fn listen(&self, addr: &ListenAddr) -> Result<NbdListener, NbdError> {
        match addr {
            ListenAddr::Unix(path) => self.listen_unix(path).await,
            ListenAddr::Tcp(addr) => self.listen_tcp(*addr).await,
        }
    }

    /// Listen on a Unix socket at `path`. A stale socket file left by a
    /// dead server is replaced; a live one, or any other file, is an error.
    pub async fn listen_unix(&self, path: impl AsRef<Path>) -> Result<NbdListener, NbdError> {
        let path = path.as_ref().to_path_buf();
        let addr = ListenAddr::Unix(path.clone());
        let listen_error = |source| NbdError::Listen { addr: addr.clone(), source };
        clear_stale_socket(&path).map_err(|e| match e {
            StaleSocket::NotASocket => NbdError::NotASocket(path.clone()),
            StaleSocket::InUse => NbdError::SocketInUse(path.clone()),
            StaleSocket::Io(source) => listen_error(source),
        })?;
        let listener = UnixListener::bind(&path).map_err(listen_error)?;
        let meta = std::fs::metadata(&path).map_err(listen_error)?;
        let socket_file = SocketFile { path, dev: meta.dev(), ino: meta.ino() };
        Ok(self.start(Acceptor::Unix(listener, socket_file), addr))
    }

    /// Listen on TCP `addr`. The caller chooses the interface; pmvisor
    /// passes loopback unless told otherwise.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> Result<NbdListener, NbdError> {
        let listen_error = |source| NbdError::Listen { addr: ListenAddr::Tcp(addr), source };
        let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
        let local = listener.local_addr().map_err(listen_error)?;
        Ok(self.start(Acceptor::Tcp(listener), ListenAddr::Tcp(local)))
    }

    /// Stop every listener of this server and wait until all their
    /// connections are closed.
    pub async fn shutdown(&self) {
        let controls: Vec<Arc<ListenerControl>> = {
            let listeners = self.shared.listeners.lock().unwrap_or_else(PoisonError::into_inner);
            listeners.iter().filter_map(Weak::upgrade).collect()
        };
        for control in &controls {
            control.stop.send_replace(true);
        }
        for control in &controls {
            control.stop_and_wait().await;
        }
    }

    fn start(&self, acceptor: Acceptor, addr: ListenAddr) -> NbdListener {
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let control = Arc::new(ListenerControl { stop, done });
        {
            let mut listeners =
                self.shared.listeners.lock().unwrap_or_else(PoisonError::into_inner);
            listeners.retain(|weak| weak.strong_count() > 0);
            listeners.push(Arc::downgrade(&control));
        }
        tracing::info!(%addr, "NBD server listening");
        tokio::spawn(accept_loop(acceptor, Arc::clone(&self.shared), stop_rx, done_tx));
        NbdListener { addr, control }
    }
}

enum StaleSocket {
    NotASocket,
    InUse,
    Io(io::Error),
}

fn clear_stale_socket(path: &Path) -> Result<(), StaleSocket> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StaleSocket::Io(e)),
        Ok(meta) if !meta.file_type().is_socket() => Err(StaleSocket::NotASocket),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(StaleSocket::InUse);
            }
            std::fs::remove_file(path).map_err(StaleSocket::Io)
        }
    }
}

/// The socket file a Unix listener created, removed only if it is still
/// that file (another server may have replaced it).
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

enum Acceptor {
    Unix(UnixListener, SocketFile),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Acceptor {
    async fn accept(&self, serial: u64) -> io::Result<(Stream, String)> {
        match self {
            Acceptor::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                Ok((Stream::Unix(stream), format!("unix#{serial}")))
            }
            Acceptor::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                // Small replies must not wait for Nagle. Failing to set it
                // only costs latency, so it does not refuse the client.
                let _ = stream.set_nodelay(true);
                Ok((Stream::Tcp(stream), peer.to_string()))
            }
        }
    }
}

impl Stream {
    async fn serve(
        self,
        peer: String,
        exports: Arc<ExportTable>,
        spin: Duration,
        stop: watch::Receiver<bool>,
    ) {
        match self {
            Stream::Unix(stream) => serve_connection(stream, peer, exports, spin, stop).await,
            Stream::Tcp(stream) => serve_connection(stream, peer, exports, spin, stop).await,
        }
    }
}

async fn accept_loop(
    acceptor: Acceptor,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut serial = 0u64;
    let connection_stop = stop.clone();
    loop {
        tokio::select! {
            () = raised(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = acceptor.accept(serial) => match accepted {
                Ok((stream, peer)) => {
                    serial += 1;
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        tracing::warn!(%peer, "NBD client rejected: {MAX_CONNECTIONS} connections are already open");
                        continue;
                    };
                    let exports = Arc::clone(&shared.exports);
                    let spin = Duration::from_micros(shared.spin_us.load(Ordering::Relaxed));
                    let stop = connection_stop.clone();
                    connections.spawn(async move {
                        stream.serve(peer, exports, spin, stop).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "NBD accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    if let Acceptor::Unix(_, socket_file) = &acceptor {
        socket_file.remove();
    }
    drop(acceptor);
    while connections.join_next().await.is_some() {}
    done.send_replace(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;

    #[test]
    fn listen_addresses_parse_unix_and_tcp_forms() {
        assert_eq!(
            "unix:/run/pmvisor/a.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/pmvisor/a.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:10809".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:10809".parse().unwrap())
        );
        let err = "10809".parse::<ListenAddr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"10809\" is not a listen address; use unix:PATH or tcp:IP:PORT"
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("tcp:localhost:1".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn client_uris_follow_the_nbd_uri_scheme() {
        let unix = ListenAddr::Unix("/tmp/x y/s.sock".into());
        assert_eq!(unix.client_uri("vm disk"), "nbd+unix:///vm%20disk?socket=/tmp/x%20y/s.sock");
        let tcp = ListenAddr::Tcp("127.0.0.1:10809".parse().unwrap());
        assert_eq!(tcp.client_uri("disk"), "nbd://127.0.0.1:10809/disk");
    }

    #[test]
    fn export_errors_read_as_sentences() {
        let server = NbdServer::new();
        let device = Arc::new(MemDevice::new(4096));
        assert_eq!(
            server.add_export("", device.clone(), false).unwrap_err().to_string(),
            "an export name must not be empty (the empty name means the default export)"
        );
        server.add_export("disk", device.clone(), false).unwrap();
        assert_eq!(
            server.add_export("disk", device, false).unwrap_err().to_string(),
            "an export named \"disk\" already exists"
        );
        assert_eq!(
            server.remove_export("nope").unwrap_err().to_string(),
            "no export named \"nope\""
        );
        assert_eq!(server.export_names(), vec!["disk".to_owned()]);
    }

    #[tokio::test]
    async fn a_regular_file_at_the_socket_path_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"keep me").unwrap();
        let err = NbdServer::new().listen_unix(&path).await.unwrap_err();
        assert!(matches!(err, NbdError::NotASocket(_)));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn a_live_socket_is_in_use_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd.sock");
        let server = NbdServer::new();
        let first = server.listen_unix(&path).await.unwrap();
        let err = server.listen_unix(&path).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("another server is already listening on {}", path.display())
        );
        first.stop().await;
        assert!(!path.exists(), "a stopped listener removes its socket");
        // A socket file nobody listens on is stale.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let second = server.listen_unix(&path).await.unwrap();
        server.shutdown().await;
        assert!(!path.exists());
        drop(second);
    }
}
