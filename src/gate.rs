//! The gate every I/O path passes through (SPEC §3).
//!
//! Work that touches the pool (ublk queues, NBD connections, FUSE requests,
//! resizes, RVM commits, mutating control-API requests) first calls
//! [`Gate::enter`] and holds the returned [`GateGuard`] while it runs. The
//! power-outage handler and the daemon's shutdown call [`Gate::close`]: from
//! then on `enter` fails at once, and `close` waits until every guard has
//! been dropped or its timeout passes. [`Gate::open`] lets work in again
//! (a cancelled POD).
//!
//! The gate is synchronous (a mutex and a condition variable) so that plain
//! threads and tokio tasks can share it; `enter` never blocks beyond the
//! mutex, so it is safe to call from async code. A guard is `'static` and
//! `Send`, so it can move into `spawn_blocking` with the work it protects.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A gate that can be shared by cloning (all clones are the same gate).
#[derive(Debug, Clone, Default)]
pub struct Gate {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled whenever `in_flight` drops to zero.
    idle: Condvar,
}

#[derive(Debug, Default)]
struct State {
    closed: bool,
    in_flight: usize,
}

/// Proof that a piece of work is inside the gate; leaving happens on drop.
#[derive(Debug)]
#[must_use = "the work is only inside the gate while the guard lives"]
pub struct GateGuard {
    shared: Arc<Shared>,
}

/// [`Gate::enter`] failed because the gate is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pool gate is closed (power-outage fence or shutdown in progress)")]
pub struct GateClosed;

/// [`Gate::close`] drained the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// How long closing waited for in-flight work.
    pub waited: Duration,
}

/// [`Gate::close`] ran out of time; the gate stays closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{in_flight} operations were still in flight after waiting {waited:?} for the gate to drain"
)]
pub struct DrainTimeout {
    /// Work still inside the gate.
    pub in_flight: usize,
    /// How long closing waited.
    pub waited: Duration,
}

impl Gate {
    /// A new, open gate with nothing in flight.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Let one piece of work in, or fail at once if the gate is closed.
    pub fn enter(&self) -> Result<GateGuard, GateClosed> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(GateClosed);
        }
        state.in_flight += 1;
        Ok(GateGuard { shared: Arc::clone(&self.shared) })
    }

    /// Stop new work and wait up to `timeout` for in-flight work to leave.
    ///
    /// On timeout the gate stays closed and the error says how much work is
    /// still inside; calling `close` again keeps waiting.
    pub fn close(&self, timeout: Duration) -> Result<Drained, DrainTimeout> {
        let start = Instant::now();
        let mut state = self.shared.lock();
        state.closed = true;
        while state.in_flight > 0 {
            let waited = start.elapsed();
            let Some(left) = timeout.checked_sub(waited).filter(|d| !d.is_zero()) else {
                return Err(DrainTimeout { in_flight: state.in_flight, waited });
            };
            state = self
                .shared
                .idle
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(Drained { waited: start.elapsed() })
    }

    /// Let work in again.
    pub fn open(&self) {
        self.shared.lock().closed = false;
    }

    /// Whether `enter` currently succeeds.
    pub fn is_open(&self) -> bool {
        !self.shared.lock().closed
    }

    /// How many guards are alive.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }
}

impl Shared {
    /// The state is two plain counters that are never left half-updated, so
    /// a panic elsewhere while holding the lock cannot corrupt it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.in_flight -= 1;
        // Only `close` waits, and only once it has closed the gate: no
        // wake-up (a futex call) for every request while the gate is open.
        if state.in_flight == 0 && state.closed {
            self.shared.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    #[test]
    fn enter_counts_work_in_flight_until_the_guard_drops() {
        let gate = Gate::new();
        let a = gate.enter().unwrap();
        let b = gate.enter().unwrap();
        assert_eq!(gate.in_flight(), 2);
        drop(a);
        assert_eq!(gate.in_flight(), 1);
        drop(b);
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn close_on_an_idle_gate_returns_at_once() {
        let gate = Gate::new();
        let drained = gate.close(Duration::from_secs(5)).unwrap();
        assert!(drained.waited < Duration::from_secs(1));
        assert!(!gate.is_open());
    }

    #[test]
    fn enter_fails_while_closed() {
        let gate = Gate::new();
        gate.close(Duration::ZERO).unwrap();
        assert_eq!(gate.enter().unwrap_err(), GateClosed);
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn open_lets_work_in_again() {
        let gate = Gate::new();
        gate.close(Duration::ZERO).unwrap();
        gate.open();
        assert!(gate.is_open());
        let _guard = gate.enter().unwrap();
        assert_eq!(gate.in_flight(), 1);
    }

    #[test]
    fn close_waits_for_in_flight_work() {
        let gate = Gate::new();
        let guard = gate.enter().unwrap();
        let (entered_close, closing) = mpsc::channel();
        let closer = {
            let gate = gate.clone();
            thread::spawn(move || {
                entered_close.send(()).unwrap();
                gate.close(Duration::from_secs(10))
            })
        };
        closing.recv().unwrap();
        // The closer is waiting (or about to); new work is refused once the
        // gate is closed, and the closer only returns after the guard drops.
        let deadline = Instant::now() + Duration::from_secs(5);
        while gate.is_open() {
            assert!(Instant::now() < deadline, "close never closed the gate");
            thread::yield_now();
        }
        assert!(gate.enter().is_err());
        assert!(!closer.is_finished());
        drop(guard);
        let drained = closer.join().unwrap().unwrap();
        assert!(drained.waited <= Duration::from_secs(10));
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn close_times_out_naming_the_work_still_in_flight() {
        let gate = Gate::new();
        let _a = gate.enter().unwrap();
        let _b = gate.enter().unwrap();
        let err = gate.close(Duration::from_millis(20)).unwrap_err();
        assert_eq!(err.in_flight, 2);
        assert!(err.waited >= Duration::from_millis(20));
        assert!(err.to_string().starts_with("2 operations were still in flight"));
        assert!(!gate.is_open());
    }

    #[test]
    fn guards_can_move_to_other_threads() {
        let gate = Gate::new();
        let guard = gate.enter().unwrap();
        thread::spawn(move || drop(guard)).join().unwrap();
        assert_eq!(gate.in_flight(), 0);
    }
}
