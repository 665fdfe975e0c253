//! The client socket of one connection in the transmission phase: a
//! blocking Unix or TCP stream, shared by the connection's thread (which
//! reads requests) and whoever writes replies.
//!
//! Blocking reads on a dedicated thread get the kernel's synchronous,
//! wake-affine wakeups, which an epoll loop does not; that is most of a
//! small request's latency on an idle machine. A blocked read or write is
//! ended from outside with `shutdown(2)`: [`Socket::stop_reading`] makes
//! the next read return end-of-stream, [`Socket::close`] also fails writes.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

/// Most slices one `writev` takes (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// A blocking client socket.
#[derive(Debug)]
pub(crate) enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Socket {
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
        match self {
            Socket::Unix(s) => (&*s).read(buf),
            Socket::Tcp(s) => (&*s).read(buf),
        }
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
        let blocked = std::thread::spawn(move || (&*reader).read(&mut [0u8; 16]).unwrap());
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
        let blocked = std::thread::spawn(move || (&*reader).read(&mut [0u8; 16]).unwrap());
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
