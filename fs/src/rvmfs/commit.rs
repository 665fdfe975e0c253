//! Commit points (SPEC §7): when the running transaction is closed, and who waits.
//!
//! - create, and release of a file that was written: close the running
//!   transaction; release also waits until it is durable;
//! - fsync and fsyncdir: close and wait until durable; concurrent callers
//!   share one persist and switch (RVM's group commit);
//! - every `commit=N` seconds: the committer thread closes and persists;
//! - unmount and [`RvmFs::commit_now`] (the daemon calls it on a power outage).
//!
//! A commit point that does not wait (create) kicks the committer thread,
//! which makes the closed transaction durable in the background, so that
//! nothing closed stays in memory for long. The thread holds only a weak
//! reference: dropping the last [`RvmFs`] stops it. With `commit=0` there is
//! no committer: closed transactions become durable at the next commit point
//! that waits (fsync, release of a written file, unmount, `commit_now`),
//! which makes the persist points deterministic for crash tests.
//!
//! The kernel splits a buffered write(2) that starts inside a page it has not
//! cached into two WRITE requests: that first partial page, then the rest.
//! A commit point that comes from outside the writer (the periodic one, a
//! close seen by the close watcher) could fall between the two and commit
//! half a write. Such commit points first wait, at most
//! [`SPLIT_WRITE_WAIT`], for the rest of a write whose first piece ended on
//! a page boundary; so one write(2) of up to `max_write` bytes is never cut
//! by a commit the writer did not ask for.

use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::PAGE_SIZE;

use crate::PageStore;

/// How long an outside commit point waits for the rest of a split write.
/// The kernel sends it as soon as the first piece is answered, but on a
/// loaded machine the writer may not run again for milliseconds (2 ms was
/// seen to be too short under a parallel test suite); only background
/// commits wait, and only right after such a piece, so a long bound costs
/// nothing else.
pub(crate) const SPLIT_WRITE_WAIT: Duration = Duration::from_millis(100);

use super::error::FsResult;
use super::{FsShared, RvmFs};

/// How a commit point waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Close now; the committer persists soon.
    Background,
    /// Close and wait until durable.
    Wait,
}

impl<S: PageStore + 'static> RvmFs<S> {
    /// Closes the running transaction. With [`Durability::Wait`], returns once
    /// it (and everything closed before) is durable.
    pub(crate) fn commit_point(&self, durability: Durability) -> FsResult<()> {
        let sequence = {
            let mut running = self.lock();
            match running.tx.take() {
                Some(tx) => Some(tx.close()?),
                None => None,
            }
        };
        match durability {
            Durability::Wait => match sequence {
                Some(sequence) => self.shared.rvm.wait_durable(sequence)?,
                None => self.shared.rvm.sync()?,
            },
            Durability::Background => {
                if sequence.is_some() && !self.shared.options.commit_interval.is_zero() {
                    self.kick_committer();
                }
            }
        }
        Ok(())
    }

    /// Before a write piece is applied: remember it if it may be the first
    /// half of a split write (it starts inside a page and ends on a page
    /// boundary), so that an outside commit point waits from now on.
    pub(crate) fn write_piece_starts(&self, ino: u64, offset: u64, end: u64) {
        let page = PAGE_SIZE as u64;
        if !offset.is_multiple_of(page) && end.is_multiple_of(page) {
            self.lock().split_write = Some((ino, end, Instant::now()));
        }
    }

    /// After a write piece is applied: forget the split write it completes.
    pub(crate) fn write_piece_done(&self, ino: u64, offset: u64) {
        let mut running = self.lock();
        if running.split_write.is_some_and(|(i, at, _)| i == ino && at == offset) {
            running.split_write = None;
        }
    }

    /// Waits until no split write is half applied, or [`SPLIT_WRITE_WAIT`]
    /// after its first piece came.
    pub(crate) fn settle_split_write(&self) {
        loop {
            let Some((_, _, since)) = self.lock().split_write else { return };
            let waited = since.elapsed();
            if waited >= SPLIT_WRITE_WAIT {
                return;
            }
            std::thread::sleep((SPLIT_WRITE_WAIT - waited).min(Duration::from_micros(200)));
        }
    }

    /// Makes everything done so far durable and returns when it is: the entry
    /// point for unmount and for the daemon on a power outage.
    pub fn commit_now(&self) -> FsResult<()> {
        self.commit_point(Durability::Wait)
    }

    fn kick_committer(&self) {
        let mut signal = self.shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
        signal.kicked = true;
        drop(signal);
        self.shared.signal_changed.notify_one();
    }

    /// Stops the committer thread (after a last commit by the caller).
    pub(crate) fn stop_committer(&self) {
        let mut signal = self.shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
        signal.shutdown = true;
        drop(signal);
        self.shared.signal_changed.notify_all();
    }
}

/// Starts the thread that commits every `commit_interval` and persists what
/// background commit points closed.
pub(crate) fn start_committer<S: PageStore + 'static>(fs: &RvmFs<S>) {
    if fs.shared.options.commit_interval.is_zero() {
        return;
    }
    let weak: Weak<FsShared<S>> = Arc::downgrade(&fs.shared);
    let interval = fs.shared.options.commit_interval;
    let spawned = std::thread::Builder::new()
        .name("rvmfs-commit".into())
        .spawn(move || run_committer(weak, interval));
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the periodic committer; commits happen at commit points only");
    }
}

fn run_committer<S: PageStore + 'static>(weak: Weak<FsShared<S>>, interval: Duration) {
    let tick = interval;
    let mut next_periodic = Instant::now() + tick;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let (kicked, periodic) = {
            let mut signal = shared.signal.lock().unwrap_or_else(PoisonError::into_inner);
            // Wake at least once a second so a dropped filesystem is noticed.
            let wait =
                next_periodic.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            if !signal.kicked && !signal.shutdown {
                signal = shared
                    .signal_changed
                    .wait_timeout(signal, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if signal.shutdown {
                return;
            }
            let kicked = std::mem::take(&mut signal.kicked);
            (kicked, Instant::now() >= next_periodic)
        };
        let fs = RvmFs { shared };
        let result = if periodic {
            next_periodic = Instant::now() + tick;
            fs.settle_split_write();
            fs.commit_point(Durability::Wait)
        } else if kicked {
            fs.shared.rvm.sync().map_err(Into::into)
        } else {
            Ok(())
        };
        if let Err(error) = result {
            tracing::error!(%error, "background commit failed");
        }
    }
}
