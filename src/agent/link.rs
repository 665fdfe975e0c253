//! [`AgentLink`]: the daemon's end of one region's agent connection.
//!
//! One tokio task per link owns the endpoint (a listener, or the QEMU
//! chardev it connects to) and at most one connection at a time. A
//! separate reader task turns the byte stream into frames and hands them
//! over a channel of capacity one, so that a request's deadline can cancel
//! the wait without cutting a frame in half, and so that at most one
//! decoded frame ([`MAX_FRAME`](pmvisor_agent::MAX_FRAME) bytes) waits
//! while the next is read: host memory stays bounded whatever the agent
//! sends.
//!
//! A connection starts with the agent's `Hello`. It is welcomed only if it
//! speaks our protocol version and lists the region's disk serial; else it
//! gets `Refused` with the reason, the daemon logs one line, and the
//! connection is closed. After that the task serves [`AgentLink::evict`] and
//! [`AgentLink::grow`] one at a time: it sends the request, waits until the
//! deadline for the matching answer, and hands back either usable ranges or
//! an [`AgentFailure`]. Answers that arrive after their deadline are
//! recognised by their id and skipped. A broken frame (oversize, garbage,
//! truncated) closes the connection: the stream cannot be trusted to be in
//! step any more. A `Hello` in the middle of a connection means the agent
//! restarted behind a virtio-serial port that stayed open; it is handled
//! like a new connection.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pmvisor_agent::{
    check_version, normalize_ranges, protocol::BlockRange, read_frame_async, total_blocks,
    validate_answer, write_frame_async, EvictRequest, GrowNotice, Hello, HotRanges, Message,
    Overlaps, ProtocolError, RangeError, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};

use super::failure::FAILURE_REASONS;
use super::latency::{LatencyHistogram, LatencySnapshot};
use super::{AgentAddr, AgentFailure};
use crate::block::{Disposition, GuestVictims};

/// Block size of every exchange: the region's 4 KiB blocks.
pub const BLOCK_SIZE: u32 = 4096;

/// How long a serial link waits between attempts to reach QEMU's socket.
const RECONNECT: Duration = Duration::from_secs(1);

/// How long past its deadline a caller waits for the link's task, in case
/// the task is busy writing to a stalled agent.
const GRACE: Duration = Duration::from_secs(2);

/// What a link is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOptions {
    /// The region's name, for logs.
    pub region: String,
    /// The disk serial the agent must list in its `Hello`.
    pub serial: String,
    /// The region's size in 4 KiB blocks: answers must stay inside.
    pub device_blocks: u64,
    /// Where the agent is reached.
    pub addr: AgentAddr,
}

/// Why a link could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The listening socket could not be created.
    #[error("cannot listen for the agent at {addr}")]
    Listen {
        addr: AgentAddr,
        #[source]
        source: std::io::Error,
    },
    /// Something already listens at the Unix path.
    #[error("another process already listens at {}; choose another path", .0.display())]
    InUse(PathBuf),
    /// The Unix path exists and is not a socket.
    #[error("{} exists and is not a socket; remove it or choose another path", .0.display())]
    NotASocket(PathBuf),
}

/// The daemon's end of one region's agent connection (cheap to clone; the
/// task stops, and a Unix socket file is removed, when the last clone is
/// dropped).
#[derive(Debug, Clone)]
pub struct AgentLink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    /// The Unix socket we bound, as (path, device, inode).
    bound: Option<(PathBuf, u64, u64)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
        if let Some((path, dev, ino)) = &self.bound {
            let ours = std::fs::symlink_metadata(path)
                .is_ok_and(|meta| (meta.dev(), meta.ino()) == (*dev, *ino));
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// What the link knows, for `region stats`, the API and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Where the agent is reached.
    pub address: String,
    /// The disk serial the agent must list.
    pub serial: String,
    /// Whether an agent is connected and welcomed now.
    pub connected: bool,
    /// The connected (or last) agent's own version string.
    pub agent: Option<String>,
    /// Agents welcomed since the link started.
    pub connections: u64,
    /// Agents refused (wrong version or device).
    pub refused: u64,
    /// Evict requests and grow notices the host wanted to send.
    pub requests: u64,
    /// Answers used (possibly short).
    pub answers: u64,
    /// Answers with fewer blocks than asked for.
    pub short_answers: u64,
    /// Answers that came after their deadline and were skipped.
    pub late_answers: u64,
    /// Requests that got no usable answer, by reason.
    pub failures: BTreeMap<String, u64>,
    /// How long the last usable answer took, in microseconds.
    pub last_answer_micros: Option<u64>,
    /// The last failure, as logged.
    pub last_failure: Option<String>,
}

#[derive(Debug)]
struct Shared {
    options: LinkOptions,
    connected: watch::Sender<bool>,
    agent: Mutex<Option<String>>,
    next_id: AtomicU64,
    connections: AtomicU64,
    refused: AtomicU64,
    requests: AtomicU64,
    answers: AtomicU64,
    short_answers: AtomicU64,
    late_answers: AtomicU64,
    failures: [AtomicU64; FAILURE_REASONS.len()],
    last_answer_micros: AtomicU64,
    last_failure: Mutex<Option<String>>,
    latency: LatencyHistogram,
}

impl Shared {
    fn region(&self) -> &str {
        &self.options.region
    }

    fn set_connected(&self, connected: bool) {
        self.connected.send_replace(connected);
    }
}

/// A request for the link's task.
#[derive(Debug)]
enum Command {
    Evict {
        count: u64,
        deadline: Duration,
        resident: Option<Vec<BlockRange>>,
        reply: oneshot::Sender<Answer<Vec<GuestVictims>>>,
    },
    Grow {
        count: u64,
        deadline: Duration,
        reply: oneshot::Sender<Answer<Vec<(u64, u64)>>>,
    },
}

type Answer<T> = Result<T, AgentFailure>;

impl Command {
    fn fail(self, failure: AgentFailure) {
        match self {
            Command::Evict { reply, .. } => drop(reply.send(Err(failure))),
            Command::Grow { reply, .. } => drop(reply.send(Err(failure))),
        }
    }
}

impl AgentLink {
    /// Start serving `options.addr`: a Unix or vsock listener is bound now
    /// (so a taken address is an error here); a serial link connects in
    /// the background and keeps reconnecting. Must run inside a tokio
    /// runtime.
    pub async fn start(options: LinkOptions) -> Result<AgentLink, LinkError> {
        let (endpoint, bound) = Endpoint::bind(&options.addr).await?;
        let shared = Arc::new(Shared {
            options,
            connected: watch::channel(false).0,
            agent: Mutex::new(None),
            next_id: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            short_answers: AtomicU64::new(0),
            late_answers: AtomicU64::new(0),
            failures: Default::default(),
            last_answer_micros: AtomicU64::new(u64::MAX),
            last_failure: Mutex::new(None),
            latency: LatencyHistogram::default(),
        });
        let (commands, receiver) = mpsc::channel(1);
        let task = tokio::spawn(run(Arc::clone(&shared), endpoint, receiver));
        Ok(AgentLink { inner: Arc::new(Inner { shared, commands, task, bound }) })
    }

    /// Where the agent is reached.
    pub fn addr(&self) -> &AgentAddr {
        &self.inner.shared.options.addr
    }

    /// The disk serial the agent must list.
    pub fn serial(&self) -> &str {
        &self.inner.shared.options.serial
    }

    /// Whether an agent is connected and welcomed now.
    pub fn is_connected(&self) -> bool {
        *self.inner.shared.connected.borrow()
    }

    /// Wait until an agent is connected, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut watch = self.inner.shared.connected.subscribe();
        tokio::time::timeout(timeout, watch.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok())
    }

    /// Ask the agent for `count` blocks to evict, waiting at most
    /// `deadline`, telling it which blocks are `resident` (if known). `Ok` holds the validated ranges (possibly fewer blocks
    /// than asked for, possibly none); every `Err` is counted and logged in
    /// one line, and the caller completes the choice itself.
    pub async fn evict(
        &self,
        count: u64,
        deadline: Duration,
        resident: Option<Vec<BlockRange>>,
    ) -> Result<Vec<GuestVictims>, AgentFailure> {
        let result = self
            .ask(deadline, |reply| Command::Evict { count, deadline, resident, reply })
            .await
            .and_then(|r| r);
        let shared = &self.inner.shared;
        match &result {
            Ok(victims) => {
                let offered: u64 = victims.iter().map(|v| v.count).sum();
                if offered < count {
                    shared.short_answers.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(region = %shared.region(), "the agent offered {offered} of {count} blocks");
            }
            Err(failure) => {
                self.record_failure(failure, &format!("evict request for {count} blocks"))
            }
        }
        result
    }

    /// Tell the agent the quota grew by `count` blocks and learn which
    /// ranges it wants resident, waiting at most `deadline`. `Ok` holds
    /// `(start, count)` runs inside the device, at most `count` blocks.
    pub async fn grow(
        &self,
        count: u64,
        deadline: Duration,
    ) -> Result<Vec<(u64, u64)>, AgentFailure> {
        let result = self
            .ask(deadline, |reply| Command::Grow { count, deadline, reply })
            .await
            .and_then(|r| r);
        if let Err(failure) = &result {
            self.record_failure(failure, &format!("grow notice for {count} blocks"));
        }
        result
    }

    async fn ask<T>(
        &self,
        deadline: Duration,
        command: impl FnOnce(oneshot::Sender<Answer<T>>) -> Command,
    ) -> Result<Answer<T>, AgentFailure> {
        self.inner.shared.requests.fetch_add(1, Ordering::Relaxed);
        if !self.is_connected() {
            return Err(AgentFailure::Absent);
        }
        let (reply, answer) = oneshot::channel();
        if self.inner.commands.send(command(reply)).await.is_err() {
            return Err(AgentFailure::Absent);
        }
        match tokio::time::timeout(deadline + GRACE, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(AgentFailure::Absent),
            Err(_) => Err(AgentFailure::Timeout(deadline)),
        }
    }

    fn record_failure(&self, failure: &AgentFailure, what: &str) {
        let shared = &self.inner.shared;
        if let Some(i) = FAILURE_REASONS.iter().position(|r| *r == failure.reason()) {
            shared.failures[i].fetch_add(1, Ordering::Relaxed);
        }
        let closes = matches!(
            failure,
            AgentFailure::Oversize { .. }
                | AgentFailure::Garbage(_)
                | AgentFailure::Disconnected(_)
        );
        let line = format!(
            "agent of region {} gave no usable answer to a {what}: {failure}{}; the host chooses \
             instead",
            shared.region(),
            if closes { " (connection closed)" } else { "" }
        );
        if matches!(failure, AgentFailure::Absent) {
            tracing::info!(region = %shared.region(), "{line}");
        } else {
            tracing::warn!(region = %shared.region(), "{line}");
        }
        *shared.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
    }

    /// What the link knows now.
    pub fn stats(&self) -> AgentStats {
        let s = &self.inner.shared;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let last = load(&s.last_answer_micros);
        AgentStats {
            address: s.options.addr.to_string(),
            serial: s.options.serial.clone(),
            connected: self.is_connected(),
            agent: s.agent.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            connections: load(&s.connections),
            refused: load(&s.refused),
            requests: load(&s.requests),
            answers: load(&s.answers),
            short_answers: load(&s.short_answers),
            late_answers: load(&s.late_answers),
            failures: FAILURE_REASONS
                .iter()
                .zip(&s.failures)
                .map(|(r, n)| (r.to_string(), load(n)))
                .collect(),
            last_answer_micros: (last != u64::MAX).then_some(last),
            last_failure: s.last_failure.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// The agent's answer times so far.
    pub fn latency(&self) -> LatencySnapshot {
        self.inner.shared.latency.snapshot()
    }
}

/// A byte stream to an agent.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

type Writer = WriteHalf<Box<dyn Conn>>;
type Frames = mpsc::Receiver<Result<Message, ProtocolError>>;

/// Where connections come from.
enum Endpoint {
    Unix(tokio::net::UnixListener),
    Vsock { listener: tokio_vsock::VsockListener, cid: u32, port: u32 },
    Serial { path: PathBuf, failures: u32 },
}

impl Endpoint {
    async fn bind(addr: &AgentAddr) -> Result<(Endpoint, Option<(PathBuf, u64, u64)>), LinkError> {
        let listen = |source| LinkError::Listen { addr: addr.clone(), source };
        match addr {
            AgentAddr::Unix(path) => {
                clear_stale_socket(path).await?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(listen)?;
                }
                let listener = tokio::net::UnixListener::bind(path).map_err(listen)?;
                let meta = std::fs::metadata(path).map_err(listen)?;
                Ok((Endpoint::Unix(listener), Some((path.clone(), meta.dev(), meta.ino()))))
            }
            AgentAddr::Vsock { cid, port } => {
                let any = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
                let listener = tokio_vsock::VsockListener::bind(any).map_err(listen)?;
                Ok((Endpoint::Vsock { listener, cid: *cid, port: *port }, None))
            }
            AgentAddr::Serial(path) => {
                Ok((Endpoint::Serial { path: path.clone(), failures: 0 }, None))
            }
        }
    }

    /// The next connection; errors are logged and retried.
    async fn next(&mut self, region: &str) -> Box<dyn Conn> {
        match self {
            Endpoint::Unix(listener) => loop {
                match listener.accept().await {
                    Ok((stream, _)) => return Box::new(stream),
                    Err(err) => {
                        tracing::warn!(region, "cannot accept an agent connection: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            Endpoint::Vsock { listener, cid, port } => loop {
                match listener.accept().await {
                    Ok((stream, peer)) if peer.cid() == *cid => return Box::new(stream),
                    Ok((_, peer)) => tracing::warn!(
                        region,
                        "refused a vsock connection from CID {} on port {port}: the agent of \
                         region {region} must come from CID {cid}",
                        peer.cid()
                    ),
                    Err(err) => {
                        tracing::warn!(region, "cannot accept an agent connection: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            Endpoint::Serial { path, failures } => loop {
                match tokio::net::UnixStream::connect(&*path).await {
                    Ok(stream) => {
                        if *failures > 0 {
                            tracing::info!(
                                region,
                                "reached QEMU's agent socket {}",
                                path.display()
                            );
                        }
                        *failures = 0;
                        return Box::new(stream);
                    }
                    Err(err) => {
                        if *failures == 0 {
                            tracing::info!(
                                region,
                                "cannot reach QEMU's agent socket {} yet ({err}); retrying every \
                                 second",
                                path.display()
                            );
                        }
                        *failures = failures.saturating_add(1);
                        tokio::time::sleep(RECONNECT).await;
                    }
                }
            },
        }
    }
}

/// Remove a socket file nobody listens on; refuse a live one or a file
/// that is not a socket.
async fn clear_stale_socket(path: &Path) -> Result<(), LinkError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Err(LinkError::NotASocket(path.to_path_buf()));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(LinkError::InUse(path.to_path_buf()));
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// The link's task: take connections one at a time and serve them.
async fn run(shared: Arc<Shared>, mut endpoint: Endpoint, mut commands: mpsc::Receiver<Command>) {
    loop {
        let conn = tokio::select! {
            conn = endpoint.next(shared.region()) => conn,
            command = commands.recv() => match command {
                Some(command) => {
                    command.fail(AgentFailure::Absent);
                    continue;
                }
                None => return,
            },
        };
        let stop = session(&shared, conn, &mut commands).await;
        shared.set_connected(false);
        if stop {
            return;
        }
        if matches!(endpoint, Endpoint::Serial { .. }) {
            // QEMU may accept and close at once (no guest yet): don't spin.
            let pause = tokio::time::sleep(RECONNECT);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    command = commands.recv() => match command {
                        Some(command) => command.fail(AgentFailure::Absent),
                        None => return,
                    },
                }
            }
        }
    }
}

/// Aborts the reader task when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    frames: mpsc::Sender<Result<Message, ProtocolError>>,
) {
    loop {
        let frame = read_frame_async(&mut reader).await;
        let end = frame.is_err();
        if frames.send(frame).await.is_err() || end {
            return;
        }
    }
}

/// Serve one connection; `true` when the link is stopping.
async fn session(
    shared: &Shared,
    conn: Box<dyn Conn>,
    commands: &mut mpsc::Receiver<Command>,
) -> bool {
    let region = shared.region();
    let (reader, mut writer) = tokio::io::split(conn);
    let (sender, mut frames) = mpsc::channel(1);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(reader, sender)));
    // Until the agent says hello, nobody is there to ask.
    let hello = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(Message::Hello(hello))) => break hello,
                Some(Ok(other)) => {
                    tracing::warn!(region, "closed an agent connection that began with {} instead of Hello", other.kind());
                    return false;
                }
                Some(Err(err)) => {
                    log_broken(region, &err, "before its Hello");
                    return false;
                }
                None => return false,
            },
            command = commands.recv() => match command {
                Some(command) => command.fail(AgentFailure::Absent),
                None => return true,
            },
        }
    };
    if !welcome(shared, &mut writer, &hello).await {
        return false;
    }
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                None => {
                    tracing::info!(region, "the agent of region {region} disconnected");
                    return false;
                }
                Some(Err(ProtocolError::Closed)) => {
                    tracing::info!(region, "the agent of region {region} disconnected");
                    return false;
                }
                Some(Err(err)) => {
                    log_broken(region, &err, "while idle");
                    return false;
                }
                Some(Ok(message)) => {
                    if !idle_message(shared, &mut writer, message).await {
                        return false;
                    }
                }
            },
            command = commands.recv() => match command {
                None => return true,
                Some(command) => {
                    if !exchange(shared, &mut writer, &mut frames, command).await {
                        return false;
                    }
                }
            },
        }
    }
}

fn log_broken(region: &str, err: &ProtocolError, when: &str) {
    let failure = AgentFailure::from_protocol(err);
    tracing::warn!(
        region,
        "closed the connection of the agent of region {region}: {failure} {when}"
    );
}

/// Welcome an agent that speaks our version and lists our disk, or refuse
/// it (one log line); `false` when the connection should close.
async fn welcome(shared: &Shared, writer: &mut Writer, hello: &Hello) -> bool {
    let region = shared.region();
    let serial = &shared.options.serial;
    let refusal = match check_version(hello.version) {
        Err(err) => Some(err.to_string()),
        Ok(()) if !hello.devices.iter().any(|d| &d.serial == serial) => {
            let mut seen: Vec<String> =
                hello.devices.iter().take(4).map(|d| format!("{:?}", d.serial)).collect();
            if hello.devices.len() > 4 {
                seen.push(format!("and {} more", hello.devices.len() - 4));
            }
            Some(format!(
                "this connection serves the disk with serial {serial:?} (region {region}), and \
                 the agent sees {}",
                if seen.is_empty() { "no disks".to_string() } else { seen.join(", ") }
            ))
        }
        Ok(()) => None,
    };
    if let Some(reason) = refusal {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(region, "refused agent {:?} for region {region}: {reason}", hello.agent);
        let _ = write_frame_async(writer, &Message::Refused { reason }).await;
        return false;
    }
    if let Some(device) = hello.devices.iter().find(|d| &d.serial == serial) {
        let size = shared.options.device_blocks * u64::from(BLOCK_SIZE);
        if device.size_bytes != 0 && device.size_bytes != size {
            tracing::warn!(
                region,
                "the agent sees disk {serial:?} as {} bytes, but region {region} has {size}",
                device.size_bytes
            );
        }
    }
    if let Err(err) =
        write_frame_async(writer, &Message::Welcome { version: PROTOCOL_VERSION }).await
    {
        tracing::warn!(region, "cannot welcome the agent of region {region}: {err}");
        return false;
    }
    *shared.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(hello.agent.clone());
    shared.connections.fetch_add(1, Ordering::Relaxed);
    shared.set_connected(true);
    tracing::info!(
        region,
        "agent {:?} connected for region {region} (disk {serial:?})",
        hello.agent
    );
    true
}

/// A message that arrived while no request was waiting; `false` when the
/// connection should close.
async fn idle_message(shared: &Shared, writer: &mut Writer, message: Message) -> bool {
    match message {
        Message::Hello(hello) => {
            shared.set_connected(false);
            welcome(shared, writer, &hello).await
        }
        Message::Ping { nonce } => {
            write_frame_async(writer, &Message::Pong { nonce }).await.is_ok()
        }
        Message::EvictAnswer(_) | Message::HotRanges(_) | Message::Error { id: Some(_), .. } => {
            shared.late_answers.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(region = %shared.region(), "skipped a late {}", message.kind());
            true
        }
        Message::Error { id: None, message } => {
            tracing::warn!(region = %shared.region(), "the agent of region {} reported: {message}", shared.region());
            true
        }
        other => {
            tracing::debug!(region = %shared.region(), "ignored a {} from the agent", other.kind());
            true
        }
    }
}

/// Send one request and wait for its answer; `false` when the connection
/// should close.
async fn exchange(
    shared: &Shared,
    writer: &mut Writer,
    frames: &mut Frames,
    command: Command,
) -> bool {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let serial = shared.options.serial.clone();
    match command {
        Command::Evict { count, deadline, resident, reply } => {
            let request = EvictRequest {
                id,
                serial,
                count,
                block_size: BLOCK_SIZE,
                deadline_ms: millis(deadline),
                resident,
            };
            let message = Message::EvictRequest(request.clone());
            let device_blocks = shared.options.device_blocks;
            let (answer, open) = ask(shared, writer, frames, id, deadline, message, |m| match m {
                Message::EvictAnswer(a) => Some(
                    validate_answer(&request, device_blocks, &a)
                        .map(|ranges| ranges.into_iter().map(victims).collect())
                        .map_err(AgentFailure::Invalid),
                ),
                _ => None,
            })
            .await;
            let _ = reply.send(answer);
            open
        }
        Command::Grow { count, deadline, reply } => {
            let notice = GrowNotice { id, serial, count, block_size: BLOCK_SIZE };
            let message = Message::GrowNotice(notice.clone());
            let device_blocks = shared.options.device_blocks;
            let (answer, open) = ask(shared, writer, frames, id, deadline, message, |m| match m {
                Message::HotRanges(h) => Some(validate_hot(&notice, device_blocks, &h)),
                _ => None,
            })
            .await;
            let _ = reply.send(answer);
            open
        }
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn victims(range: pmvisor_agent::EvictRange) -> GuestVictims {
    GuestVictims {
        start: range.start,
        count: range.count,
        disposition: match range.disposition {
            pmvisor_agent::Disposition::Keep => Disposition::Keep,
            pmvisor_agent::Disposition::Drop => Disposition::Drop,
        },
    }
}

/// The host's check of a `HotRanges` reply, as strict as for an answer.
fn validate_hot(
    notice: &GrowNotice,
    device_blocks: u64,
    hot: &HotRanges,
) -> Result<Vec<(u64, u64)>, AgentFailure> {
    if hot.id != notice.id || hot.serial != notice.serial {
        return Err(AgentFailure::Invalid(RangeError::WrongRequest {
            got_id: hot.id,
            got_serial: hot.serial.clone(),
            want_id: notice.id,
            want_serial: notice.serial.clone(),
        }));
    }
    // Keep the agent's order (most wanted first) after checking the set.
    let merged = normalize_ranges(hot.ranges.iter().copied(), Overlaps::Reject)
        .map_err(AgentFailure::Invalid)?;
    if let Some(r) = merged.last().filter(|r| r.start + r.count > device_blocks) {
        return Err(AgentFailure::Invalid(RangeError::OutOfDevice { range: *r, device_blocks }));
    }
    let total = total_blocks(merged.iter().copied());
    if total > notice.count {
        return Err(AgentFailure::Invalid(RangeError::TooMany { total, count: notice.count }));
    }
    Ok(hot.ranges.iter().map(|r| (r.start, r.count)).collect())
}

/// Write `message` and wait until `deadline` for the frame `accept` takes
/// as its answer. Returns the answer and whether the connection is still
/// usable.
async fn ask<T>(
    shared: &Shared,
    writer: &mut Writer,
    frames: &mut Frames,
    id: u64,
    deadline: Duration,
    message: Message,
    mut accept: impl FnMut(Message) -> Option<Answer<T>>,
) -> (Answer<T>, bool) {
    let started = Instant::now();
    if let Err(err) = write_frame_async(writer, &message).await {
        return (Err(AgentFailure::Disconnected(err.to_string())), false);
    }
    let until = tokio::time::Instant::from_std(started + deadline);
    loop {
        let message = match tokio::time::timeout_at(until, frames.recv()).await {
            Err(_) => return (Err(AgentFailure::Timeout(deadline)), true),
            Ok(None) | Ok(Some(Err(ProtocolError::Closed))) => {
                let closed = "the connection closed".to_string();
                return (Err(AgentFailure::Disconnected(closed)), false);
            }
            Ok(Some(Err(err))) => return (Err(AgentFailure::from_protocol(&err)), false),
            Ok(Some(Ok(message))) => message,
        };
        let answer_id = match &message {
            Message::EvictAnswer(a) => Some(a.id),
            Message::HotRanges(h) => Some(h.id),
            Message::Error { id, .. } => *id,
            _ => None,
        };
        if answer_id.is_some_and(|a| a < id) {
            shared.late_answers.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(region = %shared.region(), "skipped a late {}", message.kind());
            continue;
        }
        let kind = message.kind();
        match message {
            Message::Ping { nonce } => {
                if write_frame_async(writer, &Message::Pong { nonce }).await.is_err() {
                    let closed = "the connection closed".to_string();
                    return (Err(AgentFailure::Disconnected(closed)), false);
                }
                continue;
            }
            Message::Pong { .. } | Message::Stats(_) => continue,
            Message::Hello(hello) => {
                // The agent restarted behind a port that stayed open.
                shared.set_connected(false);
                let open = welcome(shared, writer, &hello).await;
                let restarted = "the agent restarted".to_string();
                return (Err(AgentFailure::Disconnected(restarted)), open);
            }
            Message::Error { message, .. } => {
                return (Err(AgentFailure::AgentError(message)), true)
            }
            other => {
                let answer = accept(other).unwrap_or(Err(AgentFailure::Unexpected(kind)));
                let elapsed = started.elapsed();
                shared.latency.observe(elapsed);
                if answer.is_ok() {
                    shared.answers.fetch_add(1, Ordering::Relaxed);
                    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX - 1);
                    shared.last_answer_micros.store(micros, Ordering::Relaxed);
                }
                return (answer, true);
            }
        }
    }
}
