//! The transmission phase: the command loop of one connection, on a
//! thread of its own (see `socket` and `idle` for how it waits).
//!
//! The loop reads one 28-byte request at a time, checks it completely
//! ([`plan`]: magic, type, flags, length limits, range, read-only,
//! negotiated features) before reading any payload, and then serves it:
//! small plain reads and writes (a copy in or out of memory) right there,
//! everything else (large transfers, flush, FUA, trim, block status) on the
//! connection's workers. A large read goes from the device's memory to the
//! socket without a copy where the device allows it
//! ([`BlockDevice::read_in_place`]). Between requests the thread waits as
//! `idle` says (a short adaptive spin when nothing is in flight). Requests
//! complete out of order. The replies of requests served on the thread are
//! written together, one `writev`, once the requests the client already
//! sent are served. At most [`MAX_IN_FLIGHT`] requests and
//! [`MAX_IN_FLIGHT_BYTES`] of payload are in flight (including replies
//! waiting to be written), so a client that pipelines hard, or stops
//! reading, only stalls itself.
//!
//! Flush and FUA go straight to the shared device, whose flush covers every
//! write completed on any connection: that is what multi-conn needs.

use std::io::IoSlice;
use std::io::{self, BufRead, BufReader, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::handshake::Session;
use super::idle::RequestReader;
use super::in_place::InPlaceReply;
use super::link::Link;
use super::proto::{
    Command, RequestHeader, BASE_ALLOCATION_ID, CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE,
    CMD_FLAG_REQ_ONE, EINVAL, ENOSPC, EPERM, MAX_PAYLOAD, REQUEST_MAGIC, STATE_HOLE, STATE_ZERO,
};
use super::reply::ReplyFrame;
use super::workers::Workers;
use crate::device::{BlockDevice, DeviceError, Extent, MAX_EXTENTS};

/// Most requests one connection may have in flight.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most payload bytes (write data read, read data not yet sent) one
/// connection may hold.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Payload budget granularity.
pub(crate) const BUDGET_UNIT: usize = 4096;
/// How long a closing connection waits for its replies to drain.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of one request header.
const REQUEST_LEN: usize = 28;
/// Read buffer of one connection: request headers and small writes are
/// taken from it without a system call each.
const READ_BUFFER: usize = 64 * 1024;
/// Reply bytes served on the connection's thread that are sent at once
/// rather than batched further.
const PENDING_MAX: usize = 512 * 1024;

/// Signals that end a connection gracefully: its listener stopping, or its
/// export being removed.
#[derive(Debug, Clone)]
pub(crate) struct StopSignal {
    listener: watch::Receiver<bool>,
    export: watch::Receiver<bool>,
}

impl StopSignal {
    pub fn new(listener: watch::Receiver<bool>, export: watch::Receiver<bool>) -> Self {
        StopSignal { listener, export }
    }

    /// Resolve once either signal is raised (or its sender is gone).
    pub async fn wait(&mut self) {
        tokio::select! {
            () = raised(&mut self.listener) => {}
            () = raised(&mut self.export) => {}
        }
    }
}

/// Resolve once `signal` is true or its sender is gone. (The guard that
/// `wait_for` returns is dropped here, so callers stay `Send`.)
pub(crate) async fn raised(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|raised| *raised).await;
}

/// How a transmission phase ended without a protocol violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The client sent `NBD_CMD_DISC`.
    Disconnected,
    /// The client closed its side between requests.
    ClientClosed,
    /// The listener stopped or the export was removed.
    Stopped,
}

/// Why a transmission phase failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransmissionError {
    #[error("connection failed")]
    Io(#[from] io::Error),
    #[error("request has magic {0:#010x}, not NBD_REQUEST_MAGIC")]
    BadMagic(u32),
    #[error("NBD_CMD_WRITE of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    WriteTooLarge(u32),
}

impl TransmissionError {
    /// True when the client broke the protocol (rather than just going away).
    pub fn is_violation(&self) -> bool {
        !matches!(self, TransmissionError::Io(_))
    }
}

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read { offset: u64, len: u32, df: bool },
    Write { offset: u64, len: u32, fua: bool },
    Flush,
    Trim { offset: u64, len: u32, fua: bool },
    WriteZeroes { offset: u64, len: u32, may_trim: bool, fua: bool },
    BlockStatus { offset: u64, len: u32, req_one: bool },
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    Execute(Op),
    Reject { error: u32, message: String },
    Disconnect,
}

/// The parts of a session that decide whether a request is valid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub block_status: bool,
}

fn reject(error: u32, message: impl Into<String>) -> Plan {
    Plan::Reject { error, message: message.into() }
}

/// Decide what to do with a request, from its header alone.
pub(crate) fn plan(shape: &Shape, command: Command, flags: u16, offset: u64, len: u32) -> Plan {
    if command == Command::Disconnect {
        return Plan::Disconnect;
    }
    if let Command::Unknown(kind) = command {
        return reject(EINVAL, format!("command type {kind} is not supported"));
    }
    let unknown_flags = flags & !command.allowed_flags(shape.structured);
    if unknown_flags != 0 {
        return reject(EINVAL, format!("flags {unknown_flags:#x} are not valid for {command:?}"));
    }
    let writes = matches!(command, Command::Write | Command::Trim | Command::WriteZeroes);
    if writes && shape.read_only {
        return reject(EPERM, "the export is read-only");
    }
    // TRIM and WRITE_ZEROES carry no payload: clients (nbdcopy, qemu) send
    // them up to 4 GiB long, and they are applied in pieces.
    let payload_bound = matches!(command, Command::Read | Command::Write);
    if payload_bound && len > MAX_PAYLOAD {
        return reject(EINVAL, format!("length {len} is over the {MAX_PAYLOAD}-byte maximum"));
    }
    let in_range = offset.checked_add(u64::from(len)).is_some_and(|end| end <= shape.size);
    if command != Command::Flush && !in_range {
        let error =
            if matches!(command, Command::Write | Command::WriteZeroes) { ENOSPC } else { EINVAL };
        return reject(error, format!("range {offset}+{len} is past the end of the export"));
    }
    let fua = flags & CMD_FLAG_FUA != 0;
    let op = match command {
        Command::Read => Op::Read { offset, len, df: flags & CMD_FLAG_DF != 0 },
        Command::Write => Op::Write { offset, len, fua },
        Command::Flush => Op::Flush,
        Command::Trim => Op::Trim { offset, len, fua },
        Command::WriteZeroes => {
            Op::WriteZeroes { offset, len, may_trim: flags & CMD_FLAG_NO_HOLE == 0, fua }
        }
        Command::BlockStatus if !shape.block_status => {
            return reject(EINVAL, "no metadata context was negotiated");
        }
        Command::BlockStatus if len == 0 => return reject(EINVAL, "block status of zero bytes"),
        Command::BlockStatus => {
            Op::BlockStatus { offset, len, req_one: flags & CMD_FLAG_REQ_ONE != 0 }
        }
        Command::Disconnect | Command::Unknown(_) => {
            return reject(EINVAL, "command is not supported");
        }
    };
    Plan::Execute(op)
}

/// Run the transmission phase on the calling (dedicated, blocking) thread
/// until the client leaves, breaks the protocol, or the link is stopped;
/// in-flight requests are always answered (within the drain timeout)
/// before returning. `leftover` is what the handshake read past its end;
/// `spin` is the longest idle spin ([`RequestReader`]).
pub(crate) fn transmit(
    link: &Arc<Link>,
    leftover: Vec<u8>,
    session: &Session,
    spin: Duration,
) -> Result<Ending, TransmissionError> {
    let shape = Shape {
        size: session.export.device.size(),
        read_only: session.export.read_only,
        structured: session.structured,
        block_status: session.block_status,
    };
    let device = &session.export.device;
    let requests = RequestReader::new(&link.socket, &link.budget, spin);
    let mut reader =
        BufReader::with_capacity(READ_BUFFER, io::Cursor::new(leftover).chain(requests));
    let workers = Workers::new();
    // Replies of requests served here, written in one batch when the
    // requests the client already sent are served: never held across a
    // read that could block.
    let mut pending = Pending::default();

    let outcome: Result<Option<Ending>, TransmissionError> = loop {
        if link.stopping() {
            break Ok(Some(Ending::Stopped));
        }
        if link.broken().is_some() {
            break Ok(None);
        }
        if reader.buffer().len() < REQUEST_LEN && pending.send(link).is_err() {
            break Ok(None);
        }
        if reader.buffer().is_empty() {
            reader.get_mut().get_mut().1.expect_request();
        }
        let mut raw = [0u8; REQUEST_LEN];
        match read_request(&mut reader, &mut raw) {
            Ok(true) => {}
            // Stopping shuts the read side: the end it causes is ours.
            _ if link.stopping() => break Ok(Some(Ending::Stopped)),
            Ok(false) => break Ok(Some(Ending::ClientClosed)),
            Err(e) => break Err(e.into()),
        }
        let header: RequestHeader = zerocopy::transmute!(raw);
        if header.magic.get() != REQUEST_MAGIC {
            break Err(TransmissionError::BadMagic(header.magic.get()));
        }
        let command = Command::from_wire(header.kind.get());
        let (handle, offset, len) = (header.handle.get(), header.offset.get(), header.length.get());
        let plan = plan(&shape, command, header.flags.get(), offset, len);
        let units = match &plan {
            Plan::Disconnect => break Ok(Some(Ending::Disconnected)),
            Plan::Execute(Op::Read { len, .. } | Op::Write { len, .. }) => {
                (*len as usize).div_ceil(BUDGET_UNIT)
            }
            _ => 1,
        };
        let permit = match link.budget.try_acquire(units) {
            Some(permit) => permit,
            None => {
                // Waiting for replies to go out: send ours first.
                if pending.send(link).is_err() {
                    break Ok(None);
                }
                match link.budget.acquire(units) {
                    Some(permit) => permit,
                    None if link.stopping() => break Ok(Some(Ending::Stopped)),
                    None => break Ok(None),
                }
            }
        };
        let structured = shape.structured;
        let op = match plan {
            Plan::Execute(op) => op,
            Plan::Disconnect => break Ok(Some(Ending::Disconnected)),
            Plan::Reject { error, message } => {
                tracing::debug!(handle, ?command, offset, len, error, %message, "NBD request refused");
                let frame = ReplyFrame::error(handle, error, &message, structured).holding(permit);
                if command == Command::Write {
                    if len > MAX_PAYLOAD {
                        pending.push(frame);
                        break Err(TransmissionError::WriteTooLarge(len));
                    }
                    if reader.buffer().len() < len as usize && pending.send(link).is_err() {
                        break Ok(None);
                    }
                    if let Err(e) = discard(&mut reader, len) {
                        break Err(e.into());
                    }
                }
                pending.push(frame);
                continue;
            }
        };
        // A small write whose data is in the read buffer already is
        // written from there; other writes' data is read into a buffer.
        let mut payload = Vec::new();
        let mut buffered = 0;
        if let Op::Write { len, .. } = op {
            let len = len as usize;
            if runs_inline(op) && reader.buffer().len() >= len {
                buffered = len;
            } else {
                payload = link.buffers.take(len);
                if reader.buffer().len() < len && pending.send(link).is_err() {
                    break Ok(None);
                }
                if let Err(e) = reader.read_exact(&mut payload) {
                    break Err(e.into());
                }
            }
        }
        if runs_inline(op) {
            let data = if buffered > 0 { &reader.buffer()[..buffered] } else { &payload[..] };
            let frame = execute_guarded(&**device, link, op, data, handle, structured);
            reader.consume(buffered);
            link.buffers.give_back(payload);
            pending.push(frame.holding(permit));
            if pending.bytes >= PENDING_MAX && pending.send(link).is_err() {
                break Ok(None);
            }
            continue;
        }
        let (device, worker_link) = (Arc::clone(device), Arc::clone(link));
        workers.submit(move || {
            let link = worker_link;
            if let Op::Read { offset, len, df } = op {
                let read = ReadRequest { handle, offset, len, df, structured };
                if send_read_in_place(&*device, &link, read) {
                    return;
                }
            }
            let frame = execute_guarded(&*device, &link, op, &payload, handle, structured);
            link.buffers.give_back(payload);
            // A failed write breaks the link; the connection's thread sees it.
            let _ = link.send_one(frame.holding(permit));
        });
    };

    // Let in-flight requests finish and their replies go out.
    let _ = pending.send(link);
    drop(workers);
    let drained = link.budget.wait_idle(DRAIN_TIMEOUT);
    link.socket.close();
    let broken = link.broken();
    match outcome {
        Ok(Some(_)) if !drained => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "replies did not drain").into())
        }
        Ok(Some(ending)) => match broken {
            Some(e) => Err(e.into()),
            None => Ok(ending),
        },
        // Writing a reply failed first: report why.
        Ok(None) => Err(broken.unwrap_or_else(|| io::ErrorKind::BrokenPipe.into()).into()),
        Err(e) => Err(e),
    }
}

/// Replies written together once the requests at hand are served.
#[derive(Default)]
struct Pending {
    frames: Vec<ReplyFrame>,
    bytes: usize,
}

impl Pending {
    fn push(&mut self, frame: ReplyFrame) {
        self.bytes += frame.wire_len();
        self.frames.push(frame);
    }

    fn send(&mut self, link: &Link) -> io::Result<()> {
        self.bytes = 0;
        link.send(&mut self.frames)
    }
}

/// Largest read or write served on the connection's own thread; larger
/// ones go to its workers so that copying them overlaps with the socket.
const INLINE_MAX: u32 = 128 * 1024;

/// Whether `op` is small enough, and free of durability work, to run on the
/// connection's thread instead of a worker.
fn runs_inline(op: Op) -> bool {
    match op {
        Op::Read { len, .. } | Op::Write { len, fua: false, .. } => len <= INLINE_MAX,
        _ => false,
    }
}

/// A READ request as a reply needs it.
#[derive(Debug, Clone, Copy)]
struct ReadRequest {
    handle: u64,
    offset: u64,
    len: u32,
    df: bool,
    structured: bool,
}

/// Serve a read straight from the device's memory
/// ([`BlockDevice::read_in_place`]): under the reply lock, and while the
/// device holds its lock, what the socket takes at once is sent from where
/// the device keeps it; the rest is copied, and written once the device's
/// lock is let go. False (with nothing sent) when the device cannot serve
/// it in place. A failed write breaks the link; the connection's thread
/// sees it.
fn send_read_in_place(device: &dyn BlockDevice, link: &Link, read: ReadRequest) -> bool {
    let mut handled = false;
    let _ = link.send_with(|socket| {
        let mut rest = Ok(Vec::new());
        let mut serve = |runs: &[crate::device::ReadRun<'_>]| {
            let reply = InPlaceReply::new(read.handle, read.offset, runs, read.df, read.structured);
            rest = socket.send_now(&reply.slices()).map(|sent| reply.copy_tail(sent));
        };
        let served = catch_unwind(AssertUnwindSafe(|| {
            device.read_in_place(read.offset, u64::from(read.len), &mut serve)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(handle = read.handle, "block device panicked serving an NBD read");
            Err(DeviceError::Io(io::Error::other("device panicked")))
        });
        let tail = match served {
            Ok(false) => return Ok(()),
            Ok(true) => rest?,
            Err(e) => ReplyFrame::error(read.handle, e.errno(), &e.to_string(), read.structured)
                .slices_owned(),
        };
        handled = true;
        socket.write_all_vectored(&mut [IoSlice::new(&tail)])
    });
    handled
}

/// Read one request header; false on a clean end of stream before it.
fn read_request<R: Read>(reader: &mut R, raw: &mut [u8; REQUEST_LEN]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < raw.len() {
        let n = match reader.read(&mut raw[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}

/// Skip the payload of a refused write without buffering it.
fn discard<R: Read>(reader: &mut R, len: u32) -> io::Result<()> {
    let copied = io::copy(&mut reader.take(u64::from(len)), &mut io::sink())?;
    if copied < u64::from(len) {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// [`execute`], with a panicking device answered as an I/O error instead of
/// taking the connection down.
fn execute_guarded(
    device: &dyn BlockDevice,
    link: &Link,
    op: Op,
    payload: &[u8],
    handle: u64,
    structured: bool,
) -> ReplyFrame {
    let run = || execute(device, link, op, payload, handle, structured);
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| {
        tracing::error!(handle, ?op, "block device panicked serving an NBD request");
        let failure = DeviceError::Io(io::Error::other("device panicked"));
        ReplyFrame::error(handle, failure.errno(), "device failure", structured)
    })
}

/// Perform one validated request on the device and build its reply.
fn execute(
    device: &dyn BlockDevice,
    link: &Link,
    op: Op,
    payload: &[u8],
    handle: u64,
    structured: bool,
) -> ReplyFrame {
    let done = || ReplyFrame::simple(handle, 0);
    let result = match op {
        Op::Read { offset, len, df } => {
            let mut data = link.buffers.take(len as usize);
            match device.read_at(offset, &mut data) {
                Ok(()) if structured => Ok(ReplyFrame::structured_read(handle, offset, data, df)),
                Ok(()) => Ok(ReplyFrame::simple_read(handle, data)),
                Err(e) => {
                    link.buffers.give_back(data);
                    Err(e)
                }
            }
        }
        Op::Write { offset, fua, .. } => device.write_at(offset, payload, fua).map(|()| done()),
        Op::Flush => device.flush().map(|()| done()),
        Op::Trim { offset, len, fua } => in_pieces(offset, len, |at, n| device.trim(at, n))
            .and_then(|()| if fua { device.flush() } else { Ok(()) })
            .map(|()| done()),
        Op::WriteZeroes { offset, len, may_trim, fua } => {
            in_pieces(offset, len, |at, n| device.write_zeroes(at, n, may_trim))
                .and_then(|()| if fua { device.flush() } else { Ok(()) })
                .map(|()| done())
        }
        Op::BlockStatus { offset, len, req_one } => {
            device.block_status(offset, u64::from(len)).map(|extents| {
                let descriptors = descriptors(&extents, len, req_one);
                ReplyFrame::block_status(handle, BASE_ALLOCATION_ID, &descriptors)
            })
        }
    };
    result.unwrap_or_else(|e| ReplyFrame::error(handle, e.errno(), &e.to_string(), structured))
}

/// Longest piece of a TRIM or WRITE_ZEROES given to the device in one
/// call: a POD hold of the gate, or another request, waits for one piece
/// rather than for the whole range (up to 4 GiB).
const EFFECT_PIECE: u64 = MAX_PAYLOAD as u64;

/// Applies `offset..offset + len` through `apply` in pieces of at most
/// [`EFFECT_PIECE`] bytes, in order, stopping at the first error.
fn in_pieces(
    offset: u64,
    len: u32,
    mut apply: impl FnMut(u64, u64) -> Result<(), DeviceError>,
) -> Result<(), DeviceError> {
    let end = offset + u64::from(len);
    let mut at = offset;
    while at < end {
        let n = (end - at).min(EFFECT_PIECE);
        apply(at, n)?;
        at += n;
    }
    Ok(())
}

/// Turn a device's extents into `base:allocation` descriptors that never
/// exceed the request, never have zero length, and number at least one.
pub(crate) fn descriptors(extents: &[Extent], len: u32, req_one: bool) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut covered = 0u64;
    for extent in extents.iter().take(MAX_EXTENTS) {
        let remaining = u64::from(len) - covered;
        if remaining == 0 {
            break;
        }
        let piece = extent.len.min(remaining);
        if piece == 0 {
            continue;
        }
        let flags =
            (if extent.hole { STATE_HOLE } else { 0 }) | (if extent.zero { STATE_ZERO } else { 0 });
        match out.last_mut() {
            Some((last_len, last_flags)) if *last_flags == flags => *last_len += piece as u32,
            _ => out.push((piece as u32, flags)),
        }
        covered += piece;
    }
    if out.is_empty() {
        // Status 0 ("allocated, contents unknown") is always truthful.
        out.push((len, 0));
    }
    if req_one {
        out.truncate(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape =
        Shape { size: 1 << 20, read_only: false, structured: true, block_status: true };

    fn refused(plan: Plan) -> u32 {
        match plan {
            Plan::Reject { error, .. } => error,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn reads_over_32_mib_are_refused_before_any_allocation() {
        assert_eq!(refused(plan(&SHAPE, Command::Read, 0, 0, 1 << 30)), EINVAL);
        assert_eq!(refused(plan(&SHAPE, Command::Write, 0, 0, MAX_PAYLOAD + 1)), EINVAL);
    }

    #[test]
    fn trims_and_write_zeroes_carry_no_payload_and_may_cover_4_gib() {
        let big = Shape { size: 1 << 33, ..SHAPE };
        for command in [Command::Trim, Command::WriteZeroes] {
            assert!(matches!(plan(&big, command, 0, 0, u32::MAX), Plan::Execute(_)), "{command:?}");
        }
        let mut pieces = Vec::new();
        in_pieces(7, u32::MAX, |at, n| {
            pieces.push((at, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(pieces.len(), 128);
        assert!(pieces.iter().all(|&(_, n)| n <= EFFECT_PIECE));
        assert!(pieces.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0), "in order, no gaps");
        assert_eq!(pieces.last().map(|&(at, n)| at + n), Some(7 + u64::from(u32::MAX)));
        let mut calls = 0;
        let failed = in_pieces(0, 3 * MAX_PAYLOAD, |_, _| {
            calls += 1;
            Err(DeviceError::NoSpace)
        });
        assert!(failed.is_err() && calls == 1, "the first error ends it");
    }

    #[test]
    fn ranges_past_the_end_are_einval_for_reads_and_enospc_for_writes() {
        assert_eq!(refused(plan(&SHAPE, Command::Read, 0, (1 << 20) - 1, 2)), EINVAL);
        assert_eq!(refused(plan(&SHAPE, Command::Write, 0, 1 << 20, 1)), ENOSPC);
        assert_eq!(refused(plan(&SHAPE, Command::Trim, 0, u64::MAX, 1)), EINVAL);
        assert_eq!(refused(plan(&SHAPE, Command::BlockStatus, 0, 1 << 20, 1)), EINVAL);
    }

    #[test]
    fn unknown_commands_and_flags_are_einval() {
        assert_eq!(refused(plan(&SHAPE, Command::Unknown(5), 0, 0, 0)), EINVAL);
        assert_eq!(refused(plan(&SHAPE, Command::Write, CMD_FLAG_REQ_ONE, 0, 1)), EINVAL);
        let simple = Shape { structured: false, ..SHAPE };
        assert_eq!(refused(plan(&simple, Command::Read, CMD_FLAG_DF, 0, 1)), EINVAL);
    }

    #[test]
    fn writes_to_a_read_only_export_are_eperm() {
        let ro = Shape { read_only: true, ..SHAPE };
        for command in [Command::Write, Command::Trim, Command::WriteZeroes] {
            assert_eq!(refused(plan(&ro, command, 0, 0, 1)), EPERM);
        }
        assert!(matches!(plan(&ro, Command::Read, 0, 0, 1), Plan::Execute(_)));
    }

    #[test]
    fn block_status_needs_a_negotiated_context() {
        let none = Shape { block_status: false, ..SHAPE };
        assert_eq!(refused(plan(&none, Command::BlockStatus, 0, 0, 4096)), EINVAL);
        assert_eq!(
            plan(&SHAPE, Command::BlockStatus, CMD_FLAG_REQ_ONE, 0, 4096),
            Plan::Execute(Op::BlockStatus { offset: 0, len: 4096, req_one: true })
        );
    }

    #[test]
    fn write_zeroes_may_trim_unless_no_hole_is_set() {
        assert_eq!(
            plan(&SHAPE, Command::WriteZeroes, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, 0, 4096),
            Plan::Execute(Op::WriteZeroes { offset: 0, len: 4096, may_trim: false, fua: true })
        );
        assert_eq!(
            plan(&SHAPE, Command::WriteZeroes, 0, 0, 4096),
            Plan::Execute(Op::WriteZeroes { offset: 0, len: 4096, may_trim: true, fua: false })
        );
    }

    #[test]
    fn flush_ignores_offset_and_disconnect_needs_nothing() {
        assert_eq!(plan(&SHAPE, Command::Flush, 0, u64::MAX, 7), Plan::Execute(Op::Flush));
        assert_eq!(plan(&SHAPE, Command::Disconnect, 0, 0, 0), Plan::Disconnect);
    }

    fn extent(len: u64, hole: bool) -> Extent {
        Extent { len, hole, zero: hole }
    }

    #[test]
    fn descriptors_are_clipped_to_the_request_and_merged() {
        let extents = [extent(4096, false), extent(4096, false), extent(1 << 20, true)];
        assert_eq!(descriptors(&extents, 12288, false), vec![(8192, 0), (4096, 3)]);
        assert_eq!(descriptors(&extents, 12288, true), vec![(8192, 0)]);
    }

    #[test]
    fn an_empty_device_answer_becomes_one_unknown_descriptor() {
        assert_eq!(descriptors(&[], 512, false), vec![(512, 0)]);
        assert_eq!(descriptors(&[extent(0, true)], 512, false), vec![(512, 0)]);
    }
}
