//! Making libublk's control commands wait for their completions.
//!
//! libublk sends a control command (GET_DEV_INFO, START_USER_RECOVERY, ...)
//! through a per-thread io_uring: it submits, waits for one completion with
//! `io_uring_enter`, ignores that call's error, and takes whatever
//! completion is at the head of the ring. When the wait returns before the
//! completion is there (`io_uring_enter` may, a signal being one cause),
//! libublk reports EAGAIN while the command still runs, and every later
//! command of that thread reads the completion of the one before it, so it
//! fails too. We saw it: a daemon restarted after SIGKILL on a busy machine
//! could not query the device it was to recover (the wait for its very
//! first command, GET_FEATURES, returned with no completion), gave up, and
//! left the device's I/O waiting for ever; about one kill in fifteen.
//!
//! [`ControlThread`] removes what ends such a wait early while the thread
//! sends commands:
//!
//! - the thread's control ring is set up with `IORING_SETUP_DEFER_TASKRUN`
//!   (and the `SINGLE_ISSUER` it requires; the ring is thread-local), so
//!   completions are posted by this thread inside its own wait rather than
//!   by task work run on the side, as the io_uring maintainers advise ublk
//!   servers to do for this problem; kernels before 6.1 lack the flag and
//!   get libublk's default ring;
//! - every signal that can be blocked is blocked in the thread, so none
//!   interrupts the wait. A process-wide signal (SIGTERM) goes to another
//!   thread, which the daemon's signal handling does not mind; in a CLI
//!   whose only thread holds the guard, a Ctrl-C waits for the command to
//!   finish (milliseconds).
//!
//! With both, 118 kill-and-recover cycles under load passed in a row.
//! Written here rather than fixed in libublk because libublk offers the
//! hook for the first (`ublk_init_ctrl_task_ring`) and the second is two
//! calls; patching its wait would mean carrying a fork of the crate.

use std::marker::PhantomData;

use io_uring::{squeue, IoUring};

/// Entries of a control ring: libublk's own default.
const RING_DEPTH: u32 = 16;

/// While alive, this thread sends libublk control commands safely (see the
/// module doc). Dropping it restores the thread's signal mask; the ring
/// stays, set up once per thread.
pub(crate) struct ControlThread {
    saved: libc::sigset_t,
    /// Not `Send`: the mask belongs to the thread that made the guard.
    _thread: PhantomData<*const ()>,
}

impl ControlThread {
    /// Prepare the calling thread; hold the result while it sends commands.
    pub(crate) fn enter() -> ControlThread {
        init_ring();
        // SAFETY: plain sigset_t manipulation on owned values, and
        // pthread_sigmask on the calling thread; SIGKILL and SIGSTOP stay
        // deliverable whatever the mask says.
        unsafe {
            let mut all = std::mem::zeroed::<libc::sigset_t>();
            let mut saved = std::mem::zeroed::<libc::sigset_t>();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut saved);
            ControlThread { saved, _thread: PhantomData }
        }
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        // SAFETY: restores the mask `enter` saved, on the thread it was
        // saved on (the guard is not `Send`).
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.saved, std::ptr::null_mut());
        }
    }
}

/// Give this thread a DEFER_TASKRUN control ring, unless it has one.
fn init_ring() {
    let _ = libublk::ublk_init_ctrl_task_ring(|ring| {
        if ring.is_none() {
            let deferred = IoUring::<squeue::Entry128>::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(RING_DEPTH);
            // On an older kernel libublk makes its default ring when the
            // first UblkCtrl is built.
            *ring = deferred.ok();
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(signal: libc::c_int) -> bool {
        // SAFETY: reads the calling thread's mask into an owned set.
        unsafe {
            let mut now = std::mem::zeroed::<libc::sigset_t>();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now);
            libc::sigismember(&now, signal) == 1
        }
    }

    #[test]
    fn signals_are_blocked_while_commands_are_sent_and_restored_after() {
        std::thread::spawn(|| {
            assert!(!blocked(libc::SIGTERM));
            {
                let _control = ControlThread::enter();
                assert!(blocked(libc::SIGTERM) && blocked(libc::SIGINT) && blocked(libc::SIGPWR));
                let _nested = ControlThread::enter();
            }
            assert!(!blocked(libc::SIGTERM), "the mask before the first guard is back");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_thread_gets_a_deferred_task_run_ring_once() {
        std::thread::spawn(|| {
            let _control = ControlThread::enter();
            let fd = libublk::with_ctrl_ring(|ring| {
                // libublk's own ring is not single-issuer; ours is, with
                // DEFER_TASKRUN, which requires it.
                assert!(ring.params().is_setup_single_issuer(), "our ring, not libublk's");
                std::os::fd::AsRawFd::as_raw_fd(ring)
            });
            let _again = ControlThread::enter();
            assert_eq!(libublk::with_ctrl_ring(std::os::fd::AsRawFd::as_raw_fd), fd, "same ring");
        })
        .join()
        .unwrap();
    }
}
