//! Scheduling priority of a QEMU while the power-outage sequence saves it.
//!
//! A save is a few round trips to QEMU's main loop and its migration
//! thread, a few milliseconds of CPU in all; on a host busy with I/O (the
//! usual case when the power fails) those threads wait for a CPU behind
//! everything else and the save misses its share of the residual-energy
//! budget. So a save raises the QEMU's threads to [`SAVING_NICE`] first and
//! a resume puts them back at 0. Linux niceness is per thread: every thread
//! in `/proc/PID/task` is set, and threads QEMU starts later (its migration
//! thread) inherit the main thread's. Needs `CAP_SYS_NICE` (pmvisor serve
//! runs as root); without it the save goes on at normal priority.

use std::io;

use rustix::process::Pid;

/// The niceness of a QEMU being saved.
pub const SAVING_NICE: i32 = -10;

/// Set every thread of process `pid` to niceness `nice`; how many were set.
pub fn set_nice(pid: u32, nice: i32) -> io::Result<usize> {
    let mut set = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
            continue;
        };
        // A thread that just ended is no error.
        if rustix::process::setpriority_process(Pid::from_raw(tid), nice).is_ok() {
            set += 1;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_of_a_process_gets_the_niceness() {
        let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let pid = child.id();
        let set = set_nice(pid, 5).unwrap();
        assert_eq!(set, 1);
        let nice = rustix::process::getpriority_process(Pid::from_raw(pid as i32)).unwrap();
        assert_eq!(nice, 5);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(set_nice(pid, 0).is_err(), "a process that is gone is an error");
    }
}
