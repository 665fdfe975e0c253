//! The client socket of one connection in the transmission phase: a
//! blocking Unix or TCP stream, shared by the connection's thread (which
//! reads requests) and whoever writes replies.
//!
//! Reads wait on a dedicated thread with `poll(2)` for input only: the
//! wakeup is the kernel's synchronous one, and, unlike a blocking `recv`,
//! it is not also woken each time the client takes reply bytes off the
//! socket (a Unix socket wakes one wait queue for both). A blocked read or
//! write is ended from outside with `shutdown(2)`: [`Socket::stop_reading`]
//! makes the next read return end-of-stream, [`Socket::close`] also fails
//! writes.
//!
//! A Unix socket gets a send buffer of [`UNIX_SEND_BUFFER`] (the kernel
//! doubles what is asked): the default (208 KiB) makes the writer of a
//! 1 MiB reply sleep and be woken four times while the client drains it.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use super::idle;

/// Most slices one `writev` takes (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;
/// The send buffer asked for on Unix sockets (`net.core.wmem_max` caps it).
pub(crate) const UNIX_SEND_BUFFER: usize = 1 << 20;

/// A blocking client socket.
#[derive(Debug)]
pub(crate) enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Socket {
    /// Wrap an accepted Unix stream, in blocking mode, with its send buffer
    /// raised (failing that only costs throughput).
    pub fn unix(stream: UnixStream) -> io::Result<Socket> {
        stream.set_nonblocking(false)?;
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&stream, UNIX_SEND_BUFFER);
        Ok(Socket::Unix(stream))
    }

    /// Wrap an accepted TCP stream, in blocking mode.
    pub fn tcp(stream: TcpStream) -> io::Result<Socket> {
        stream.set_nonblocking(false)?;
        Ok(Socket::Tcp(stream))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Unix(s) => s.as_fd(),
            Socket::Tcp(s) => s.as_fd(),
        }
    }

    /// Whether a read would not block now: bytes wait, or the stream ended
    /// (a `poll(2)` that does not wait, so it takes no lock a sending
    /// client needs).
    pub fn readable_now(&self) -> io::Result<bool> {
        let fd = self.fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(n) => Ok(n > 0),
            Err(Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Read what is there without waiting: `None` when nothing is.
    pub fn recv_now(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match rustix::net::recv(self.fd(), &mut *buf, RecvFlags::DONTWAIT) {
                Ok((n, _)) => return Ok(Some(n)),
                Err(Errno::AGAIN) => return Ok(None),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Read, waiting for the rest of a request the client is sending: a
    /// short spin before sleeping.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(n) = self.recv_now(buf)? {
                return Ok(n);
            }
            if !idle::spin_until_readable(self, idle::REST_OF_REQUEST_SPIN)? {
                self.wait_readable()?;
            }
        }
    }

    /// Sleep until a read would not block (input, end of stream or an
    /// error); woken by input only, not by the client taking our replies.
    pub fn wait_readable(&self) -> io::Result<()> {
        let fd = self.fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Send as much of `slices` as the socket takes without blocking;
    /// returns how many bytes went out (0 when its buffer is full).
    pub fn send_now(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut owned: Vec<IoSlice<'_>> = slices.to_vec();
        let mut rest: &mut [IoSlice<'_>] = &mut owned;
        let mut sent = 0;
        while sent < total {
            let batch = &rest[..rest.len().min(MAX_SLICES)];
            let mut ancillary = rustix::net::SendAncillaryBuffer::default();
            match rustix::net::sendmsg(self.fd(), batch, &mut ancillary, flags) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    sent += n;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    }

    /// Wake a blocked read with end-of-stream; writes still work, so
    /// replies in flight can go out.
    pub fn stop_reading(&self) {
        self.shutdown(Shutdown::Read);
    }

    /// Shut both directions: blocked reads and writes return at once.
    pub fn close(&self) {
        self.shutdown(Shutdown::Both);
    }

    fn shutdown(&self, how: Shutdown) {
        // ENOTCONN (the peer is gone) is the only failure, and then the
        // socket is as shut as it gets.
        let _ = match self {
            Socket::Unix(s) => s.shutdown(how),
            Socket::Tcp(s) => s.shutdown(how),
        };
    }

    /// Write every byte of `slices`, with as few system calls as the
    /// kernel allows.
    pub fn write_all_vectored(&self, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let batch = &slices[..slices.len().min(MAX_SLICES)];
            let written = match self {
                Socket::Unix(s) => (&*s).write_vectored(batch),
                Socket::Tcp(s) => (&*s).write_vectored(batch),
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for &Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Socket::read(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reading_wakes_a_blocked_read_with_end_of_stream() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let socket = std::sync::Arc::new(Socket::Unix(ours));
        let reader = std::sync::Arc::clone(&socket);
        let blocked = std::thread::spawn(move || reader.read(&mut [0u8; 16]).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        socket.stop_reading();
        assert_eq!(blocked.join().unwrap(), 0);
    }

    #[test]
    fn stop_reading_wakes_a_blocked_tcp_read_too() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _theirs = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        let socket = std::sync::Arc::new(Socket::Tcp(ours));
        let reader = std::sync::Arc::clone(&socket);
        let blocked = std::thread::spawn(move || reader.read(&mut [0u8; 16]).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        socket.stop_reading();
        assert_eq!(blocked.join().unwrap(), 0);
    }

    #[test]
    fn vectored_writes_send_every_slice_in_order() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let socket = Socket::Unix(ours);
        let big = vec![7u8; 1 << 20];
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).unwrap();
            all
        });
        let mut slices = vec![IoSlice::new(b"head"), IoSlice::new(&big)];
        // More slices than one writev takes.
        slices.extend(std::iter::repeat_n(IoSlice::new(b"ab"), 3000));
        socket.write_all_vectored(&mut slices).unwrap();
        socket.close();
        let all = reader.join().unwrap();
        assert_eq!(all.len(), 4 + big.len() + 6000);
        assert_eq!(&all[..4], b"head");
        assert!(all[4..4 + big.len()].iter().all(|&b| b == 7));
        assert!(all[4 + big.len()..].chunks(2).all(|c| c == b"ab"));
    }
}
