//! One client connection from accept to close: the handshake (bounded in
//! time), then the transmission phase, then exactly one log line saying how
//! it ended. A client that breaks the protocol is logged at `warn` as
//! rejected, with the reason; ordinary endings are logged at `debug`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::watch;

use super::export::ExportTable;
use super::handshake::{negotiate, Outcome};
use super::transmission::{raised, transmit, StopSignal};

/// How long a client may take to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer of one connection: request headers and small writes are
/// taken from it without a system call each.
const READ_BUFFER: usize = 64 * 1024;

/// Serve one connection until it ends. `stop` is the listener's stop signal.
pub(crate) async fn serve_connection<R, W>(
    read_half: R,
    mut write_half: W,
    peer: String,
    exports: Arc<ExportTable>,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);
    let handshake =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(&mut reader, &mut write_half, &exports));
    let outcome = tokio::select! {
        outcome = handshake => outcome,
        () = raised(&mut stop) => {
            tracing::debug!(%peer, "NBD handshake abandoned: the listener is stopping");
            return;
        }
    };
    let session = match outcome {
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
        Ok(Ok(Outcome::Transmit(session))) => session,
    };
    let export = session.export.name.clone();
    tracing::debug!(%peer, %export, structured = session.structured, "NBD client attached");
    let signal = StopSignal::new(stop, session.export.removed());
    match transmit(reader, write_half, session, signal).await {
        Ok(ending) => tracing::debug!(%peer, %export, ?ending, "NBD client detached"),
        Err(e) if e.is_violation() => tracing::warn!(%peer, %export, "NBD client rejected: {e}"),
        Err(e) => tracing::debug!(%peer, %export, error = %e, "NBD connection failed"),
    }
}
