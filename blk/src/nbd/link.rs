//! `Link`: what the parties of one connection's transmission phase share —
//! the socket, the in-flight budget, the reply lock, spare buffers — and
//! how it is stopped from outside.
//!
//! Replies are written whole, one `writev` per batch, under the reply lock,
//! by whoever finished the request (the connection's thread or a worker),
//! so they go out in completion order. A large read's reply may be written
//! from the device's own memory, still under the reply lock
//! ([`Link::send_with`]). The first failed write breaks the
//! link: the socket is shut and every wait ends, so the connection's thread
//! stops reading requests nobody can answer.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::budget::Budget;
use super::buffers::Buffers;
use super::reply::ReplyFrame;
use super::socket::Socket;

/// The shared state of one connection in transmission.
#[derive(Debug)]
pub(crate) struct Link {
    pub socket: Socket,
    pub budget: Arc<Budget>,
    pub buffers: Buffers,
    stopping: AtomicBool,
    /// Held while writing a batch of replies; holds the first write error.
    replies: Mutex<Option<io::ErrorKind>>,
    broken: AtomicBool,
}

impl Link {
    pub fn new(socket: Socket, budget: Arc<Budget>) -> Link {
        Link {
            socket,
            budget,
            buffers: Buffers::default(),
            stopping: AtomicBool::new(false),
            replies: Mutex::new(None),
            broken: AtomicBool::new(false),
        }
    }

    /// Ask the connection to finish: no more requests are read (a blocked
    /// read returns at once); what is in flight is still answered.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.budget.interrupt();
        self.socket.stop_reading();
    }

    /// Whether [`stop`](Link::stop) was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Why writing replies failed, if it did.
    pub fn broken(&self) -> Option<io::Error> {
        if !self.broken.load(Ordering::Acquire) {
            return None;
        }
        let failure = *self.replies.lock().unwrap_or_else(PoisonError::into_inner);
        failure.map(io::Error::from)
    }

    /// Write `frames` (emptied) as one batch, then give their permits and
    /// buffers back.
    pub fn send(&self, frames: &mut Vec<ReplyFrame>) -> io::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let result = self.send_with(|socket| {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 2);
            frames.iter().for_each(|frame| frame.slices(&mut slices));
            socket.write_all_vectored(&mut slices)
        });
        for frame in frames.drain(..) {
            self.buffers.give_back(frame.into_data());
        }
        result
    }

    /// Write one whole reply with `write`, which gets the socket under the
    /// reply lock (so no other reply's bytes come between). Its failure
    /// breaks the link.
    pub fn send_with(&self, write: impl FnOnce(&Socket) -> io::Result<()>) -> io::Result<()> {
        let result = {
            let mut failure = self.replies.lock().unwrap_or_else(PoisonError::into_inner);
            let result = match *failure {
                Some(kind) => Err(io::Error::from(kind)),
                None => write(&self.socket),
            };
            if let (Err(e), None) = (&result, *failure) {
                *failure = Some(e.kind());
                self.broken.store(true, Ordering::Release);
            }
            result
        };
        if result.is_err() {
            self.socket.close();
            self.budget.interrupt();
        }
        result
    }

    /// Write one frame.
    pub fn send_one(&self, frame: ReplyFrame) -> io::Result<()> {
        self.send(&mut vec![frame])
    }
}
