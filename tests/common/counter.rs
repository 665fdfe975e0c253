//! The counter guest of the persistent-VM tests (tests/vm/guest_counter.sh)
//! as the host sees it: its console log, which QEMU appends to a file, the
//! check that a resumed guest went on counting with no boot output, and the
//! QEMUs a test started, killed if it ends early.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// The console after a resume: counts only, the first one right after
/// `last`, each one more than the one before; no boot output.
pub fn assert_counts_on(after: &str, last: u64) {
    let lines = after.lines().filter(|l| !l.trim().is_empty());
    for (expected, line) in (last + 1..).zip(lines) {
        let count = line.trim().strip_prefix("COUNT ").and_then(|n| n.parse::<u64>().ok());
        assert_eq!(
            count,
            Some(expected),
            "after COUNT {last} the console printed {line:?}:\n{after}"
        );
    }
}

/// The QEMUs a test started: they run in their own process group and
/// would outlive a test that fails, so they are killed when it ends early.
#[derive(Default)]
pub struct Qemus(pub Vec<u32>);

impl Qemus {
    /// SIGKILL them all (the power is gone) and wait until they are dead.
    pub fn kill(&mut self) {
        for pid in self.0.drain(..) {
            let Some(pid) = Pid::from_raw(pid as i32) else { continue };
            let _ = kill_process(pid, Signal::KILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Whether `pid` runs (a zombie does not: it holds nothing any more).
fn alive(pid: Pid) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()));
    stat.is_ok_and(|s| {
        s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

impl Drop for Qemus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The guest's console log, as QEMU appends it.
pub struct Console(pub PathBuf);

impl Console {
    pub fn text(&self) -> String {
        let bytes = std::fs::read(&self.0).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    pub fn len(&self) -> usize {
        self.text().len()
    }

    pub fn text_from(&self, offset: usize) -> String {
        self.text().get(offset..).unwrap_or_default().to_string()
    }

    /// The last `COUNT n` on the console.
    pub fn last_count(&self) -> Option<u64> {
        let text = self.text();
        text.lines().rev().find_map(|l| l.trim().strip_prefix("COUNT ")?.parse().ok())
    }

    pub fn tail(&self) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn wait_for(&self, done: impl Fn(&Console) -> bool, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        done(self)
    }
}
