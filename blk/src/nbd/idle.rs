//! Waiting for a connection's next request: spin briefly, then sleep.
//!
//! A client at queue depth 1 sends its next request a few microseconds
//! after it reads a reply. Sleeping in between costs a wakeup on another
//! CPU, which dominates small-request latency on virtual machines without
//! guest halt polling (tens of microseconds per wakeup). So a connection
//! with nothing in flight spins on its socket for a short window before it
//! sleeps, as storage targets and KVM's halt polling do.
//!
//! The window adapts per connection the way KVM's halt-polling window does:
//! it grows (from [`GROW_START`], doubling) when a sleep ended within the
//! longest window, so a longer spin would have caught it, and halves when a
//! wait outlasted the longest window, so spinning was wasted. An idle
//! client therefore costs at most a few windows of spinning. At most one
//! connection per CPU beyond the first spins at a time, so spinners never
//! take every CPU from their clients.

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::budget::Budget;
use super::socket::Socket;

/// The longest spin a server uses unless told otherwise.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(200);
/// The first window after a miss.
const GROW_START: Duration = Duration::from_micros(10);
/// How long a read spins for the rest of a request that has begun to
/// arrive (clients send a write's header and its data separately).
pub(crate) const REST_OF_REQUEST_SPIN: Duration = Duration::from_micros(50);

/// Connections spinning now, across the process.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

fn max_spinners() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1).max(1)
    })
}

/// A place among the spinning connections, given back on drop.
struct SpinSlot;

impl SpinSlot {
    fn take() -> Option<SpinSlot> {
        let limit = max_spinners();
        SPINNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| SpinSlot)
    }
}

impl Drop for SpinSlot {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection thread's reads from its socket. A read that starts a
/// request and finds nothing waits as [`IdleWait`] says; a read inside a
/// request spins briefly for the rest (`Read for &Socket`). Reads that find
/// bytes cost one `recv`.
pub(crate) struct RequestReader<'a> {
    socket: &'a Socket,
    budget: &'a Budget,
    idle: IdleWait,
    /// The next read starts a request.
    at_boundary: bool,
}

impl<'a> RequestReader<'a> {
    /// Reads of `socket` for a connection with `budget`, spinning for at
    /// most `spin` between requests.
    pub fn new(socket: &'a Socket, budget: &'a Budget, spin: Duration) -> Self {
        RequestReader { socket, budget, idle: IdleWait::new(spin), at_boundary: false }
    }

    /// The next read starts a new request.
    pub fn expect_request(&mut self) {
        self.at_boundary = true;
    }
}

impl Read for RequestReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !std::mem::take(&mut self.at_boundary) {
            return self.socket.read(buf);
        }
        loop {
            if let Some(n) = self.socket.recv_now(buf)? {
                return Ok(n);
            }
            self.idle.wait(self.socket, self.budget.is_idle())?;
        }
    }
}

/// Spin until `socket` is readable (true) or `window` has passed, if a
/// spin slot is free.
pub(crate) fn spin_until_readable(socket: &Socket, window: Duration) -> io::Result<bool> {
    if window.is_zero() {
        return Ok(false);
    }
    let Some(_slot) = SpinSlot::take() else {
        return Ok(false);
    };
    let started = Instant::now();
    while started.elapsed() < window {
        if socket.readable_now()? {
            return Ok(true);
        }
        std::hint::spin_loop();
    }
    Ok(false)
}

/// How one connection waits for its next request.
#[derive(Debug, Clone)]
pub(crate) struct IdleWait {
    /// Longest window; zero never spins.
    max: Duration,
    /// Current window.
    window: Duration,
}

impl IdleWait {
    /// A connection that spins for at most `max` before sleeping.
    pub fn new(max: Duration) -> IdleWait {
        IdleWait { max, window: max.min(GROW_START) }
    }

    /// The current spin window.
    #[cfg(test)]
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Return once `socket` has something to read (or has ended). Spins
    /// first only when `idle` (nothing of this connection in flight: no
    /// worker would compete for the CPU) and a spin slot is free.
    pub fn wait(&mut self, socket: &Socket, idle: bool) -> io::Result<()> {
        if !idle || self.max.is_zero() {
            return socket.wait_readable();
        }
        let started = Instant::now();
        if spin_until_readable(socket, self.window)? {
            return Ok(());
        }
        socket.wait_readable()?;
        self.adapt(started.elapsed());
        Ok(())
    }

    /// Grow the window after a wait a longer spin would have caught;
    /// shrink it after one no spin could have.
    fn adapt(&mut self, waited: Duration) {
        self.window = if waited <= self.max {
            (self.window * 2).max(GROW_START).min(self.max)
        } else {
            let half = self.window / 2;
            if half < GROW_START {
                Duration::ZERO
            } else {
                half
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn short_sleeps_grow_the_window_to_its_maximum() {
        let mut wait = IdleWait::new(Duration::from_micros(200));
        for _ in 0..10 {
            wait.adapt(Duration::from_micros(50));
        }
        assert_eq!(wait.window(), Duration::from_micros(200));
    }

    #[test]
    fn long_sleeps_halve_the_window_down_to_nothing() {
        let mut wait = IdleWait::new(Duration::from_micros(200));
        wait.adapt(Duration::from_micros(50));
        wait.adapt(Duration::from_micros(50));
        assert_eq!(wait.window(), Duration::from_micros(40));
        wait.adapt(Duration::from_millis(5));
        assert_eq!(wait.window(), Duration::from_micros(20));
        wait.adapt(Duration::from_millis(5));
        wait.adapt(Duration::from_millis(5));
        assert_eq!(wait.window(), Duration::ZERO);
        // A short sleep starts it again.
        wait.adapt(Duration::from_micros(50));
        assert_eq!(wait.window(), GROW_START);
    }

    #[test]
    fn a_zero_maximum_never_spins() {
        let mut wait = IdleWait::new(Duration::ZERO);
        wait.adapt(Duration::from_micros(1));
        assert_eq!(wait.window(), Duration::ZERO);
    }

    #[test]
    fn waits_end_when_a_request_arrives_while_spinning_or_asleep() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let socket = Socket::unix(ours).unwrap();
        let mut wait = IdleWait::new(Duration::from_millis(50));
        for delay in [Duration::ZERO, Duration::from_millis(1), Duration::from_millis(120)] {
            let mut peer = theirs.try_clone().unwrap();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(delay);
                peer.write_all(b"x").unwrap();
            });
            wait.wait(&socket, true).unwrap();
            assert!(socket.readable_now().unwrap());
            (&socket).read_exact(&mut [0u8; 1]).unwrap();
            sender.join().unwrap();
        }
        // The end of the stream ends a wait too.
        theirs.flush().unwrap();
        drop(theirs);
        wait.wait(&socket, true).unwrap();
    }
}
