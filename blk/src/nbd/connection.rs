//! One client connection from accept to close: the handshake (async, bounded
//! in time), then the transmission phase on a thread of its own, then
//! exactly one log line saying how it ended. A client that breaks the
//! protocol is logged at `warn` as rejected, with the reason; ordinary
//! endings are logged at `debug`.
//!
//! While the connection's thread serves requests, the connection's task
//! waits for it and for the stop signals; a stop shuts the socket's read
//! side (ending a blocked read), lets in-flight replies drain, and shuts the
//! socket completely if they do not drain in time.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{oneshot, watch};

use super::budget::Budget;
use super::export::ExportTable;
use super::handshake::{negotiate, Outcome, Session};
use super::link::Link;
use super::socket::Socket;
use super::transmission::{
    raised, transmit, Ending, StopSignal, TransmissionError, BUDGET_UNIT, DRAIN_TIMEOUT,
    MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES,
};

/// How long a client may take to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer of the handshake.
const READ_BUFFER: usize = 4096;
/// How long a stopped connection may take beyond the drain timeout before
/// its socket is shut under it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A client stream as accepted: split for the async handshake, then turned
/// into a blocking [`Socket`] for the transmission phase.
pub(crate) trait ClientStream: Send + 'static {
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);
    fn into_socket(self) -> io::Result<Socket>;
}

impl ClientStream for UnixStream {
    type Reader<'a> = tokio::net::unix::ReadHalf<'a>;
    type Writer<'a> = tokio::net::unix::WriteHalf<'a>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }

    fn into_socket(self) -> io::Result<Socket> {
        Socket::unix(self.into_std()?)
    }
}

impl ClientStream for TcpStream {
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }

    fn into_socket(self) -> io::Result<Socket> {
        Socket::tcp(self.into_std()?)
    }
}

/// Serve one connection until it ends. `stop` is the listener's stop signal.
pub(crate) async fn serve_connection<S: ClientStream>(
    mut stream: S,
    peer: String,
    exports: Arc<ExportTable>,
    spin: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let (session, leftover) = {
        let (read_half, mut write_half) = stream.halves();
        let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);
        let handshake = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            negotiate(&mut reader, &mut write_half, &exports),
        );
        let outcome = tokio::select! {
            outcome = handshake => outcome,
            () = raised(&mut stop) => {
                tracing::debug!(%peer, "NBD handshake abandoned: the listener is stopping");
                return;
            }
        };
        match outcome {
            Err(_) => {
                tracing::warn!(%peer, "NBD client rejected: handshake not finished within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
            Ok(Err(e)) if e.is_violation() => {
                tracing::warn!(%peer, "NBD client rejected: {e}");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "NBD client left during the handshake");
                return;
            }
            Ok(Ok(Outcome::Aborted)) => {
                tracing::debug!(%peer, "NBD client aborted the handshake");
                return;
            }
            // Whatever the client sent past the handshake is its first
            // requests: they go to the transmission phase.
            Ok(Ok(Outcome::Transmit(session))) => (session, reader.buffer().to_vec()),
        }
    };
    let export = session.export.name.clone();
    tracing::debug!(%peer, %export, structured = session.structured, "NBD client attached");
    let signal = StopSignal::new(stop, session.export.removed());
    match run_transmission(stream, leftover, session, spin, signal).await {
        Ok(ending) => tracing::debug!(%peer, %export, ?ending, "NBD client detached"),
        Err(e) if e.is_violation() => tracing::warn!(%peer, %export, "NBD client rejected: {e}"),
        Err(e) => tracing::debug!(%peer, %export, error = %e, "NBD connection failed"),
    }
}

/// Run the transmission phase on a new thread, stopping it on `signal`.
async fn run_transmission<S: ClientStream>(
    stream: S,
    leftover: Vec<u8>,
    session: Session,
    spin: Duration,
    mut signal: StopSignal,
) -> Result<Ending, TransmissionError> {
    let socket = stream.into_socket()?;
    let budget = Budget::new(MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES / BUDGET_UNIT);
    let link = Arc::new(Link::new(socket, budget));
    let (done, mut finished) = oneshot::channel();
    let thread_link = Arc::clone(&link);
    std::thread::Builder::new().name("nbd-connection".into()).spawn(move || {
        let _ = done.send(transmit(&thread_link, leftover, &session, spin));
    })?;
    let ended = tokio::select! {
        ended = &mut finished => ended,
        () = signal.wait() => {
            link.stop();
            match tokio::time::timeout(DRAIN_TIMEOUT + STOP_GRACE, &mut finished).await {
                Ok(ended) => ended,
                Err(_) => {
                    // A reply write is stuck on a client that does not read.
                    link.socket.close();
                    finished.await
                }
            }
        }
    };
    ended.unwrap_or_else(|_| Err(io::Error::other("the connection's thread panicked").into()))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::nbd::idle::DEFAULT_SPIN;
    use crate::nbd::proto::{
        CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, IHAVEOPT, OPT_GO, REP_ACK, REQUEST_MAGIC,
        SIMPLE_REPLY_MAGIC,
    };
    use crate::{BlockDevice, MemDevice};

    #[test]
    fn requests_sent_with_the_last_option_are_served() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let exports = Arc::new(ExportTable::default());
        let device = Arc::new(MemDevice::new(1 << 20));
        device.write_at(4096, &[0xabu8; 512], false).unwrap();
        exports.add("disk", device, false).unwrap();
        let (ours, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let served = runtime.spawn(async move {
            let stream = UnixStream::from_std(ours).unwrap();
            serve_connection(stream, "test".into(), exports, DEFAULT_SPIN, stop_rx).await;
        });

        // The flags, NBD_OPT_GO and a READ in one write: the handshake's
        // buffer holds the READ when it ends.
        let mut out = (CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).to_be_bytes().to_vec();
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&OPT_GO.to_be_bytes());
        out.extend_from_slice(&10u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"disk");
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&77u64.to_be_bytes());
        out.extend_from_slice(&4096u64.to_be_bytes());
        out.extend_from_slice(&512u32.to_be_bytes());
        client.write_all(&out).unwrap();

        let read_exact = |client: &mut std::os::unix::net::UnixStream, n: usize| {
            let mut bytes = vec![0u8; n];
            client.read_exact(&mut bytes).unwrap();
            bytes
        };
        let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
        read_exact(&mut client, 18);
        loop {
            let head = read_exact(&mut client, 20);
            read_exact(&mut client, be32(&head[16..20]) as usize);
            if be32(&head[12..16]) == REP_ACK {
                break;
            }
        }
        let reply = read_exact(&mut client, 16 + 512);
        assert_eq!(be32(&reply[0..4]), SIMPLE_REPLY_MAGIC);
        assert_eq!(be32(&reply[4..8]), 0, "no error");
        assert_eq!(&reply[8..16], &77u64.to_be_bytes());
        assert!(reply[16..].iter().all(|&b| b == 0xab));

        stop.send_replace(true);
        runtime.block_on(served).unwrap();
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0, "closed after the stop");
    }
}
