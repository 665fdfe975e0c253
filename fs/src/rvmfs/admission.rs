//! Admission of filesystem requests: the power-outage pause.
//!
//! On a power outage the daemon pauses the filesystem before it commits:
//! every request that has not started yet waits here (it is not refused, so
//! that a cancelled outage loses nothing), while requests already inside
//! the running transaction finish, because the commit that follows takes
//! the same lock they hold. Resuming lets the waiting requests in.

use std::sync::{Condvar, Mutex, PoisonError};

use super::RvmFs;
use crate::PageStore;

/// Whether requests may start, and where paused ones wait.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    paused: Mutex<bool>,
    resumed: Condvar,
}

impl Admission {
    /// Returns once requests may start.
    pub(crate) fn wait(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        while *paused {
            paused = self.resumed.wait(paused).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn set(&self, pause: bool) {
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner) = pause;
        if !pause {
            self.resumed.notify_all();
        }
    }

    fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: PageStore + 'static> RvmFs<S> {
    /// Hold every request that has not started yet until
    /// [`RvmFs::resume_requests`]; requests already running finish (a
    /// following [`RvmFs::commit_now`] waits for them).
    pub fn pause_requests(&self) {
        self.shared.admission.set(true);
    }

    /// Let held and new requests in again.
    pub fn resume_requests(&self) {
        self.shared.admission.set(false);
    }

    /// Whether requests are held.
    pub fn requests_paused(&self) -> bool {
        self.shared.admission.is_paused()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::mem_store::MemStore;
    use crate::rvmfs::{Caller, FsOptions, RvmFs, ROOT_INO};

    #[test]
    fn paused_requests_wait_and_run_after_resume() {
        let store = MemStore::new(256);
        let options = FsOptions { commit_interval: Duration::ZERO, ..FsOptions::default() };
        let fs = RvmFs::format(store, options).unwrap();
        fs.pause_requests();
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let made = fs.mkdir(&Caller::root(), ROOT_INO, b"d", 0o755, 0);
                tx.send(made.is_ok()).unwrap();
            })
        };
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "held while paused");
        fs.commit_now().unwrap();
        fs.resume_requests();
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap());
        writer.join().unwrap();
        assert!(!fs.requests_paused());
    }
}
