//! The in-flight budget of one connection: how many requests, and how many
//! payload units (write data read, read data not yet sent), it may hold at
//! once. The connection's thread takes a [`Permit`] before it reads a
//! request's payload or runs it; the permit travels with the reply and is
//! given back once the reply is written. A client that pipelines hard, or
//! stops reading replies, therefore only stalls itself.
//!
//! Waiting is a blocking wait on the connection's own thread; it ends early
//! when the connection is [interrupted](Budget::interrupt) (stopping, or a
//! reply could not be written).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Counts {
    requests: usize,
    units: usize,
    interrupted: bool,
    /// Someone waits on `freed`: only then does a release pay for a wakeup.
    waiting: bool,
}

/// The budget of one connection.
#[derive(Debug)]
pub(crate) struct Budget {
    max_requests: usize,
    max_units: usize,
    counts: Mutex<Counts>,
    freed: Condvar,
}

/// A share of the budget, given back on drop.
#[derive(Debug)]
#[must_use = "the share is given back when the permit is dropped"]
pub(crate) struct Permit {
    budget: Arc<Budget>,
    units: usize,
}

impl Budget {
    pub fn new(max_requests: usize, max_units: usize) -> Arc<Budget> {
        Arc::new(Budget {
            max_requests,
            max_units,
            counts: Mutex::new(Counts {
                requests: 0,
                units: 0,
                interrupted: false,
                waiting: false,
            }),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One request of `units` (at least 1, at most the whole budget) now,
    /// or `None` if the budget is full.
    pub fn try_acquire(self: &Arc<Self>, units: usize) -> Option<Permit> {
        let units = units.clamp(1, self.max_units);
        let mut counts = self.lock();
        self.take(&mut counts, units)
    }

    /// One request of `units`, waiting for room; `None` once interrupted.
    pub fn acquire(self: &Arc<Self>, units: usize) -> Option<Permit> {
        let units = units.clamp(1, self.max_units);
        let mut counts = self.lock();
        loop {
            if counts.interrupted {
                return None;
            }
            if let Some(permit) = self.take(&mut counts, units) {
                return Some(permit);
            }
            counts.waiting = true;
            counts = self.freed.wait(counts).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn take(self: &Arc<Self>, counts: &mut Counts, units: usize) -> Option<Permit> {
        let fits = counts.requests < self.max_requests && counts.units + units <= self.max_units;
        if !fits || counts.interrupted {
            return None;
        }
        counts.requests += 1;
        counts.units += units;
        Some(Permit { budget: Arc::clone(self), units })
    }

    /// Whether no request holds a permit (nothing in flight).
    pub fn is_idle(&self) -> bool {
        self.lock().requests == 0
    }

    /// End every wait, now and later.
    pub fn interrupt(&self) {
        self.lock().interrupted = true;
        self.freed.notify_all();
    }

    /// Wait until every permit is given back; false if `timeout` passed
    /// first.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut counts = self.lock();
        while counts.requests > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            counts.waiting = true;
            counts =
                self.freed.wait_timeout(counts, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }

    fn release(&self, units: usize) {
        let mut counts = self.lock();
        counts.requests -= 1;
        counts.units -= units;
        if std::mem::take(&mut counts.waiting) {
            drop(counts);
            self.freed.notify_all();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.release(self.units);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_units_are_both_bounded() {
        let budget = Budget::new(2, 10);
        let a = budget.try_acquire(8).unwrap();
        assert!(budget.try_acquire(3).is_none(), "units are bounded");
        let b = budget.try_acquire(2).unwrap();
        assert!(budget.try_acquire(0).is_none(), "requests are bounded");
        drop(a);
        drop(b);
        assert!(budget.try_acquire(10).is_some());
    }

    #[test]
    fn a_request_larger_than_the_budget_takes_all_of_it() {
        let budget = Budget::new(4, 10);
        let whole = budget.try_acquire(1000).unwrap();
        assert!(budget.try_acquire(1).is_none());
        drop(whole);
    }

    #[test]
    fn a_waiter_wakes_when_a_permit_is_given_back() {
        let budget = Budget::new(1, 1);
        let held = budget.acquire(1).unwrap();
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.acquire(1).is_some())
        };
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        assert!(waiter.join().unwrap());
        assert!(budget.wait_idle(Duration::from_secs(1)));
    }

    #[test]
    fn interrupting_ends_waits_and_refuses_new_permits() {
        let budget = Budget::new(1, 1);
        let held = budget.acquire(1).unwrap();
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.acquire(1).is_none())
        };
        std::thread::sleep(Duration::from_millis(30));
        budget.interrupt();
        assert!(waiter.join().unwrap());
        assert!(!budget.wait_idle(Duration::from_millis(10)), "a permit is still out");
        drop(held);
        assert!(budget.try_acquire(1).is_none());
    }
}
