//! The gate every I/O path passes through (SPEC §3).
//!
//! Work that touches the pool (ublk queues, NBD connections, FUSE requests,
//! resizes, RVM commits, mutating control-API requests) first calls
//! [`Gate::enter`] (or [`Gate::enter_or_wait`]) and holds the returned
//! [`GateGuard`] while it runs. The daemon's shutdown calls [`Gate::close`]:
//! from then on entering fails at once, and `close` waits until every guard
//! has been dropped or its timeout passes. The power-outage sequence calls
//! [`Gate::hold`], which drains the same way but makes block I/O
//! (`enter_or_wait`) wait instead of fail: a guest whose disk is held sees
//! a slow disk, not I/O errors, and goes on if the power comes back in
//! time. [`Gate::open`] lets work in again (a cancelled POD) and wakes the
//! waiters; closing the gate while work waits fails it.
//!
//! The sequence first holds everything but the disks of the VMs it is
//! about to save ([`Gate::hold_except`]): QEMU flushes its disks as it
//! stops, so their I/O must go on, while the rest of the host's I/O stops
//! and leaves the CPUs to the saves. That hold does not wait: what is in
//! flight finishes while the VMs save, and the [`Gate::hold`] after the
//! saves waits for it and for the disks' I/O. Block I/O names its region
//! ([`Gate::enter_or_wait_as`]); only while the gate is held is that name
//! looked at.
//!
//! The gate is synchronous (a mutex and condition variables) so that plain
//! threads and tokio tasks can share it; `enter` never blocks beyond the
//! mutex, so it is safe to call from async code (`enter_or_wait` is for the
//! transports' own threads). A guard is `'static` and `Send`, so it can
//! move into `spawn_blocking` with the work it protects.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Flags of [`Shared::word`], above the count of work in flight.
const HELD: u64 = 1 << 62;
const CLOSED: u64 = 1 << 63;
const FLAGS: u64 = HELD | CLOSED;

/// A gate that can be shared by cloning (all clones are the same gate).
#[derive(Debug, Clone, Default)]
pub struct Gate {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The work in flight (but exempt work) and the `HELD` and `CLOSED`
    /// flags in one word: entering and leaving an open gate is one atomic
    /// add, holding it one atomic or. With a mutex there, threads streaming
    /// I/O kept taking it and the power-outage sequence could wait tens of
    /// milliseconds just to hold the gate. Flags change only under `state`'s
    /// mutex, so the slow paths see them stand still.
    word: AtomicU64,
    state: Mutex<State>,
    /// Signalled when a held or closed gate's work in flight (or its exempt
    /// work) drops to zero.
    idle: Condvar,
    /// Signalled when a held gate opens or closes.
    released: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// While held, block I/O of these regions still enters (and counts in
    /// `exempt_in_flight`).
    exempt: std::collections::BTreeSet<String>,
    exempt_in_flight: usize,
}

/// Proof that a piece of work is inside the gate; leaving happens on drop.
#[derive(Debug)]
#[must_use = "the work is only inside the gate while the guard lives"]
pub struct GateGuard {
    shared: Arc<Shared>,
    /// Entered as exempt work of a held gate.
    exempt: bool,
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

    /// Let one piece of work in, or fail at once if the gate is closed or
    /// held.
    pub fn enter(&self) -> Result<GateGuard, GateClosed> {
        self.shared.try_enter().ok_or(GateClosed)
    }

    /// Let one piece of work in; while the gate is held, wait until it
    /// opens (or fail if it closes meanwhile). Blocks the calling thread:
    /// for transports' own threads, not for async tasks.
    pub fn enter_or_wait(&self) -> Result<GateGuard, GateClosed> {
        self.enter_or_wait_as("")
    }

    /// [`enter_or_wait`](Gate::enter_or_wait) for block I/O of region
    /// `region`, which enters a held gate that exempts it.
    pub fn enter_or_wait_as(&self, region: &str) -> Result<GateGuard, GateClosed> {
        if let Some(guard) = self.shared.try_enter() {
            return Ok(guard);
        }
        let mut state = self.shared.lock();
        loop {
            // The flags cannot change while the mutex is held.
            let word = self.shared.word.load(SeqCst);
            if word & CLOSED != 0 {
                return Err(GateClosed);
            }
            if word & HELD == 0 {
                self.shared.word.fetch_add(1, SeqCst);
                return Ok(GateGuard { shared: Arc::clone(&self.shared), exempt: false });
            }
            if !region.is_empty() && state.exempt.contains(region) {
                state.exempt_in_flight += 1;
                return Ok(GateGuard { shared: Arc::clone(&self.shared), exempt: true });
            }
            state = self.shared.released.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stop new work for good (shutdown) and wait up to `timeout` for
    /// in-flight work to leave. Work waiting at a held gate fails.
    ///
    /// On timeout the gate stays closed and the error says how much is
    /// still inside; calling `close` again keeps waiting.
    pub fn close(&self, timeout: Duration) -> Result<Drained, DrainTimeout> {
        let mut state = self.shared.lock();
        self.shared.word.fetch_or(CLOSED, SeqCst);
        state.exempt.clear();
        self.shared.released.notify_all();
        self.drain(state, timeout)
    }

    /// Hold new work (power-outage fence) and wait up to `timeout` for
    /// in-flight work to leave: [`enter`](Gate::enter) fails and
    /// [`enter_or_wait`](Gate::enter_or_wait) waits until [`open`](Gate::open)
    /// (or [`close`](Gate::close)). On timeout the gate stays held.
    pub fn hold(&self, timeout: Duration) -> Result<Drained, DrainTimeout> {
        let mut state = self.shared.lock();
        self.shared.word.fetch_or(HELD, SeqCst);
        state.exempt.clear();
        self.drain(state, timeout)
    }

    /// Hold new work like [`hold`](Gate::hold), except that block I/O of
    /// the `regions` still enters, and return at once with the number of
    /// other operations in flight: a later `hold` waits for them, ends the
    /// exemption and waits for that I/O too.
    pub fn hold_except(&self, regions: impl IntoIterator<Item = String>) -> usize {
        let mut state = self.shared.lock();
        state.exempt = regions.into_iter().collect();
        count(self.shared.word.fetch_or(HELD, SeqCst))
    }

    /// Wait for the work the gate's state says must leave: all of it, or
    /// all but exempt I/O while some is exempt.
    fn drain(
        &self,
        mut state: MutexGuard<'_, State>,
        timeout: Duration,
    ) -> Result<Drained, DrainTimeout> {
        let start = Instant::now();
        let inside = |s: &State| {
            count(self.shared.word.load(SeqCst))
                + if s.exempt.is_empty() { s.exempt_in_flight } else { 0 }
        };
        while inside(&state) > 0 {
            let waited = start.elapsed();
            let Some(left) = timeout.checked_sub(waited).filter(|d| !d.is_zero()) else {
                return Err(DrainTimeout { in_flight: inside(&state), waited });
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

    /// Let work in again, waiting work first.
    pub fn open(&self) {
        let mut state = self.shared.lock();
        self.shared.word.fetch_and(!FLAGS, SeqCst);
        state.exempt.clear();
        self.shared.released.notify_all();
    }

    /// Whether `enter` currently succeeds.
    pub fn is_open(&self) -> bool {
        self.shared.word.load(SeqCst) & FLAGS == 0
    }

    /// How many guards are alive (an `enter` on its way to failing may
    /// count for an instant).
    pub fn in_flight(&self) -> usize {
        let state = self.shared.lock();
        count(self.shared.word.load(SeqCst)) + state.exempt_in_flight
    }
}

/// The work in flight a [`Shared::word`] counts.
fn count(word: u64) -> usize {
    (word & !FLAGS) as usize
}

impl Shared {
    /// The exemptions are a set and a counter never left half-updated, so a
    /// panic elsewhere while holding the lock cannot corrupt them.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enter an open gate (one atomic add), or `None`.
    fn try_enter(self: &Arc<Self>) -> Option<GateGuard> {
        if self.word.fetch_add(1, SeqCst) & FLAGS != 0 {
            self.leave();
            return None;
        }
        Some(GateGuard { shared: Arc::clone(self), exempt: false })
    }

    /// One piece of (not exempt) work leaves. Only `close` and `hold` wait,
    /// and only once the flags are set: no wake-up (a futex call) for every
    /// request while the gate is open. The last to leave a held or closed
    /// gate wakes them under the mutex, which they hold from their check of
    /// the count to their wait, so the wake-up cannot fall between.
    fn leave(&self) {
        let before = self.word.fetch_sub(1, SeqCst);
        if before & FLAGS != 0 && count(before) == 1 {
            let _state = self.lock();
            self.idle.notify_all();
        }
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        if !self.exempt {
            self.shared.leave();
            return;
        }
        let mut state = self.shared.lock();
        state.exempt_in_flight -= 1;
        if state.exempt_in_flight == 0 {
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
    fn a_held_gate_makes_block_io_wait_until_it_opens_and_refuses_the_rest() {
        let gate = Gate::new();
        gate.hold(Duration::ZERO).unwrap();
        assert_eq!(gate.enter().unwrap_err(), GateClosed, "control work fails at once");
        let (entered, waiting) = mpsc::channel();
        let waiter = {
            let gate = gate.clone();
            thread::spawn(move || {
                let guard = gate.enter_or_wait();
                entered.send(()).unwrap();
                guard.map(drop)
            })
        };
        assert!(waiting.recv_timeout(Duration::from_millis(200)).is_err(), "it waits");
        assert_eq!(gate.in_flight(), 0, "a waiter is not in flight");
        gate.open();
        waiting.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_gate_held_except_for_some_regions_lets_their_io_in_until_it_is_held_for_all() {
        let gate = Gate::new();
        let before = gate.enter().unwrap();
        assert_eq!(gate.hold_except(["vm-disk".to_string()]), 1, "it counts the work inside");
        // The exempt region's I/O goes on; others' waits.
        let disk = gate.enter_or_wait_as("vm-disk").unwrap();
        let other = {
            let gate = gate.clone();
            thread::spawn(move || gate.enter_or_wait_as("scratch").map(drop))
        };
        thread::sleep(Duration::from_millis(50));
        assert!(!other.is_finished());
        // Holding everything waits for the exempt I/O too, and ends the
        // exemption.
        let holder = {
            let gate = gate.clone();
            thread::spawn(move || gate.hold(Duration::from_secs(10)))
        };
        thread::sleep(Duration::from_millis(50));
        assert!(!holder.is_finished(), "it waits for the guest's I/O and the work inside");
        drop(before);
        thread::sleep(Duration::from_millis(50));
        assert!(!holder.is_finished(), "it waits for the guest's I/O");
        drop(disk);
        holder.join().unwrap().unwrap();
        let late = {
            let gate = gate.clone();
            thread::spawn(move || gate.enter_or_wait_as("vm-disk").map(drop))
        };
        thread::sleep(Duration::from_millis(50));
        assert!(!late.is_finished(), "no exemption once all is held");
        gate.open();
        assert_eq!(other.join().unwrap(), Ok(()));
        assert_eq!(late.join().unwrap(), Ok(()));
    }

    #[test]
    fn closing_a_held_gate_fails_the_work_waiting_at_it() {
        let gate = Gate::new();
        gate.hold(Duration::ZERO).unwrap();
        let waiter = {
            let gate = gate.clone();
            thread::spawn(move || gate.enter_or_wait().map(drop))
        };
        thread::sleep(Duration::from_millis(50));
        gate.close(Duration::ZERO).unwrap();
        assert_eq!(waiter.join().unwrap(), Err(GateClosed));
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
    fn a_hold_amid_streaming_io_returns_only_when_nothing_is_inside_and_nothing_enters() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        let gate = Gate::new();
        let inside = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let (gate, inside, stop) = (gate.clone(), inside.clone(), stop.clone());
                thread::spawn(move || {
                    let mut done = 0u64;
                    while !stop.load(SeqCst) {
                        let guard =
                            if i % 2 == 0 { gate.enter().ok() } else { gate.enter_or_wait().ok() };
                        if let Some(guard) = guard {
                            inside.fetch_add(1, SeqCst);
                            std::hint::black_box(&mut done);
                            inside.fetch_sub(1, SeqCst);
                            drop(guard);
                            done += 1;
                        }
                    }
                    done
                })
            })
            .collect();
        for round in 0..200 {
            if round % 2 == 0 {
                gate.hold(Duration::from_secs(10)).unwrap();
            } else {
                gate.hold_except(["disk".to_string()]);
                gate.hold(Duration::from_secs(10)).unwrap();
            }
            for _ in 0..50 {
                // (`in_flight` may count an `enter` on its way to failing.)
                assert_eq!(inside.load(SeqCst), 0, "round {round}: work inside a held gate");
            }
            gate.open();
            thread::sleep(Duration::from_micros(100));
        }
        stop.store(true, SeqCst);
        let done: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(done > 0);
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn guards_can_move_to_other_threads() {
        let gate = Gate::new();
        let guard = gate.enter().unwrap();
        thread::spawn(move || drop(guard)).join().unwrap();
        assert_eq!(gate.in_flight(), 0);
    }
}
