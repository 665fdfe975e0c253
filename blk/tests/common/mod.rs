//! Shared fixtures of the NBD integration tests: an in-process server on a
//! `MemDevice`, external tools found on PATH (or a loud skip / CI failure),
//! commands run with a deadline, and a tiny raw NBD client written from the
//! protocol document, independent of the server's own encoders.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pmvisor_blk::nbd::{ListenAddr, NbdListener, NbdServer};
use pmvisor_blk::MemDevice;

/// A running server with one export backed by a `MemDevice`.
pub struct TestServer {
    pub runtime: tokio::runtime::Runtime,
    pub server: NbdServer,
    pub listener: Option<NbdListener>,
    pub device: Arc<MemDevice>,
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Serve `name` (a `size`-byte `MemDevice`) on a Unix socket in a
    /// fresh temporary directory.
    pub fn unix(name: &str, size: u64) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let addr = ListenAddr::Unix(dir.path().join("nbd.sock"));
        Self::start(name, size, addr, dir)
    }

    /// Serve `name` on TCP 127.0.0.1 with a port the kernel picks.
    pub fn tcp(name: &str, size: u64) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let addr = ListenAddr::Tcp("127.0.0.1:0".parse().expect("address"));
        Self::start(name, size, addr, dir)
    }

    fn start(name: &str, size: u64, addr: ListenAddr, dir: tempfile::TempDir) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = NbdServer::new();
        let device = Arc::new(MemDevice::new(size));
        server.add_export(name, device.clone(), false).expect("add export");
        let listener = runtime.block_on(server.listen(&addr)).expect("listen");
        TestServer { runtime, server, listener: Some(listener), device, name: name.to_owned(), dir }
    }

    /// The URI of the test export.
    pub fn uri(&self) -> String {
        self.uri_of(&self.name)
    }

    /// The URI of any export name through this listener.
    pub fn uri_of(&self, name: &str) -> String {
        self.listener.as_ref().expect("listening").client_uri(name)
    }

    /// The Unix socket path (panics for TCP servers).
    pub fn socket(&self) -> PathBuf {
        match self.listener.as_ref().expect("listening").local_addr() {
            ListenAddr::Unix(path) => path.clone(),
            ListenAddr::Tcp(_) => panic!("not a Unix listener"),
        }
    }

    /// Read `len` bytes at `offset` straight from the device.
    pub fn device_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        use pmvisor_blk::BlockDevice;
        let mut buf = vec![0u8; len];
        self.device.read_at(offset, &mut buf).expect("device read");
        buf
    }

    /// Stop the listener and wait for its connections to close.
    pub fn stop(&mut self) {
        if let Some(listener) = self.listener.take() {
            let stopped = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), listener.stop()).await
            });
            assert!(stopped.is_ok(), "listener did not stop within 20 s");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), listener.stop()).await
            });
        }
    }
}

/// Find `name` on PATH. A missing tool fails the test under `CI=true`
/// (naming the Debian package to install) and is skipped loudly otherwise.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is not installed; install the Debian package `{package}`");
    }
    eprintln!("\n*** SKIPPING: {name} is not installed (Debian package `{package}`) ***\n");
    None
}

/// Run a command with a deadline; kill it and fail if it overruns.
pub fn run(command: &mut Command, deadline: Duration) -> Output {
    let description = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(output) => output.unwrap_or_else(|e| panic!("{description} failed to run: {e}")),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{description} did not finish within {deadline:?}");
        }
    }
}

/// Run and require success, returning stdout as text.
pub fn run_ok(command: &mut Command, deadline: Duration) -> String {
    let description = format!("{command:?}");
    let output = run(command, deadline);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{description} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A structured reply chunk as read off the wire.
#[derive(Debug)]
pub struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub payload: Vec<u8>,
}

/// A minimal blocking NBD client for protocol-level tests.
pub struct RawClient {
    pub stream: UnixStream,
    pub size: u64,
    pub flags: u16,
}

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;

impl RawClient {
    /// Connect and read the greeting, checking its magic numbers.
    pub fn connect(path: &Path) -> UnixStream {
        let mut stream = UnixStream::connect(path).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).expect("greeting");
        assert_eq!(&greeting[..8], &NBDMAGIC.to_be_bytes());
        assert_eq!(&greeting[8..16], &IHAVEOPT.to_be_bytes());
        stream
    }

    /// Send one option.
    pub fn send_option(stream: &mut UnixStream, option: u32, payload: &[u8]) {
        let mut bytes = IHAVEOPT.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        stream.write_all(&bytes).expect("send option");
    }

    /// Read one option reply: (option, reply type, payload).
    pub fn read_option_reply(stream: &mut UnixStream) -> (u32, u32, Vec<u8>) {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).expect("option reply");
        assert_eq!(&header[..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
        let option = u32::from_be_bytes(header[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).expect("option reply payload");
        (option, kind, payload)
    }

    /// Full handshake with NBD_OPT_GO; optionally structured replies and
    /// `base:allocation`.
    pub fn open(path: &Path, name: &str, structured: bool, block_status: bool) -> RawClient {
        let mut stream = Self::connect(path);
        stream.write_all(&3u32.to_be_bytes()).expect("client flags");
        if structured {
            Self::send_option(&mut stream, 8, &[]);
            assert_eq!(Self::read_option_reply(&mut stream).1, 1, "structured replies refused");
        }
        if block_status {
            let mut payload = (name.len() as u32).to_be_bytes().to_vec();
            payload.extend_from_slice(name.as_bytes());
            payload.extend_from_slice(&1u32.to_be_bytes());
            payload.extend_from_slice(&15u32.to_be_bytes());
            payload.extend_from_slice(b"base:allocation");
            Self::send_option(&mut stream, 10, &payload);
            let (_, kind, context) = Self::read_option_reply(&mut stream);
            assert_eq!(kind, 4, "base:allocation not selected");
            assert_eq!(&context[4..], b"base:allocation");
            assert_eq!(Self::read_option_reply(&mut stream).1, 1);
        }
        let mut payload = (name.len() as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(name.as_bytes());
        payload.extend_from_slice(&0u16.to_be_bytes());
        Self::send_option(&mut stream, 7, &payload);
        let (mut size, mut flags) = (None, 0);
        loop {
            let (_, kind, info) = Self::read_option_reply(&mut stream);
            match kind {
                3 if info[..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(info[2..10].try_into().unwrap()));
                    flags = u16::from_be_bytes(info[10..12].try_into().unwrap());
                }
                3 => {}
                1 => break,
                other => panic!(
                    "NBD_OPT_GO failed with reply type {other:#x}: {}",
                    String::from_utf8_lossy(&info)
                ),
            }
        }
        RawClient { stream, size: size.expect("NBD_INFO_EXPORT"), flags }
    }

    /// Send one request (with a WRITE payload, if any).
    pub fn request(
        &mut self,
        flags: u16,
        kind: u16,
        handle: u64,
        offset: u64,
        len: u32,
        data: &[u8],
    ) {
        let mut bytes = REQUEST_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&handle.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(data);
        self.stream.write_all(&bytes).expect("send request");
    }

    /// Read a simple reply header: (error, handle).
    pub fn simple_reply(&mut self) -> (u32, u64) {
        let mut header = [0u8; 16];
        self.stream.read_exact(&mut header).expect("simple reply");
        assert_eq!(&header[..4], &0x6744_6698u32.to_be_bytes(), "not a simple reply");
        let error = u32::from_be_bytes(header[4..8].try_into().unwrap());
        (error, u64::from_be_bytes(header[8..16].try_into().unwrap()))
    }

    /// Read any reply message: a simple reply becomes a pseudo-chunk of
    /// kind `u16::MAX` whose payload is the 4-byte error.
    pub fn any_reply(&mut self) -> Chunk {
        let mut magic = [0u8; 4];
        self.stream.read_exact(&mut magic).expect("reply magic");
        match u32::from_be_bytes(magic) {
            0x6744_6698 => {
                let mut rest = [0u8; 12];
                self.stream.read_exact(&mut rest).expect("simple reply");
                Chunk {
                    flags: 1,
                    kind: u16::MAX,
                    handle: u64::from_be_bytes(rest[4..12].try_into().unwrap()),
                    payload: rest[..4].to_vec(),
                }
            }
            0x668e_33ef => {
                let mut rest = [0u8; 16];
                self.stream.read_exact(&mut rest).expect("chunk header");
                let len = u32::from_be_bytes(rest[12..16].try_into().unwrap()) as usize;
                let mut payload = vec![0u8; len];
                self.stream.read_exact(&mut payload).expect("chunk payload");
                Chunk {
                    flags: u16::from_be_bytes(rest[0..2].try_into().unwrap()),
                    kind: u16::from_be_bytes(rest[2..4].try_into().unwrap()),
                    handle: u64::from_be_bytes(rest[4..12].try_into().unwrap()),
                    payload,
                }
            }
            other => panic!("reply with unknown magic {other:#x}"),
        }
    }

    /// Read exactly `len` bytes of simple-reply READ data.
    pub fn read_data(&mut self, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data).expect("read data");
        data
    }

    /// True when the server has closed the connection (EOF within the
    /// read timeout).
    pub fn closed_by_server(stream: &mut UnixStream) -> bool {
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
