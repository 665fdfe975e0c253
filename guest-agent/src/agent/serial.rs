//! A virtio-serial port (a character device) as an async byte stream.
//!
//! A port whose host side is closed reads end-of-file at once and polls as
//! hung up for as long as it stays open, and the tokio reactor keeps a
//! hang-up it saw for good. So a write that would block on a hung-up port
//! fails instead of being retried (it would be retried at once, forever),
//! a read of end-of-file ends the stream, and the caller opens the port
//! anew, after a backoff, for its next attempt.
//!
//! This is the agent's only `unsafe`: registering the port's descriptor
//! with the reactor.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A character device (a virtio-serial port) opened non-blocking and
/// driven by the tokio reactor.
#[derive(Debug)]
pub struct SerialPort {
    fd: AsyncFd<File>,
}

impl SerialPort {
    /// Opens `path` for reading and writing.
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        // SAFETY: `file` owns its descriptor and moves into the `AsyncFd`,
        // which owns it until it is dropped and only lends it out by shared
        // reference (`get_ref`), so the descriptor stays open and names the
        // same file for the registration's whole life.
        let fd = unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().1)?;
        Ok(SerialPort { fd })
    }
}

fn host_side_closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the host side of the port is closed")
}

impl AsyncRead for SerialPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pty (the tests' stand-in for the port) reads EIO once
                // its other end is closed: that is end-of-file too.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            // The reactor keeps a hang-up set for good, so a write that
            // would block now would be polled again at once: give up.
            let hung_up = guard.ready().is_write_closed();
            match guard.try_io(|fd| fd.get_ref().write(data)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Err(host_side_closed()))
                }
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) if hung_up => return Poll::Ready(Err(host_side_closed())),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
