//! POD: the power-outage sequence that quiesces, saves, commits, flushes and
//! fences everything inside the residual-energy window (SPEC §8).
//!
//! A trigger (SIGPWR, `pmvisor pod trigger`, a watched power-good attribute,
//! see `source`) runs [`Pod::fence`], which times six phases against a
//! budget (50 ms unless told):
//!
//! 1. **quiesce**: hold the gate (block I/O, resizes, the balancer and
//!    control changes stop), except for the block regions that are disks
//!    of the VMs about to save: QEMU flushes its disks when it stops and
//!    when its migration completes. The rest of the host's I/O stops first
//!    and leaves the CPUs to the saves; what is in flight finishes while
//!    they run;
//! 2. **save-vms**: every registered [`PodParticipant`] (the VMs) pauses
//!    and saves, in parallel, by a deadline (its QEMU's threads at raised
//!    priority, `vm::priority`); then the gate holds the VMs' disks too,
//!    RvmFS requests are held (VM images may live there), and everything
//!    in flight drains (the host's I/O of phase 1 included);
//! 3. **commit**: every RvmFS mount commits everything written so far, and
//!    every block region flushes (frames and map);
//! 4. **flush**: the pool writes back its dirty ranges (only those) and the
//!    ranges participants wrote through their own mappings;
//! 5. **fence-record**: a checksummed record in the pool (`pool::fence`)
//!    carrying the report of phases 1 to 4;
//! 6. **protect**: the pool mapping becomes read-only.
//!
//! The order is the priority order: metadata is committed before the bulk
//! flush, and the record only after what it vouches for is durable. A
//! phase that overruns the budget does not stop the rest; the report says
//! which overran. Only the drain of phase 2 and the participants' deadline
//! are bounded by the budget. Protection waits for the drain to finish (a
//! store into a read-only mapping would kill the daemon) and is skipped,
//! with a problem reported, if it never does.
//!
//! [`Pod::cancel`] undoes it in reverse: the mapping becomes writable and
//! the record *cancelled*, RvmFS requests go on, participants resume, the
//! gate opens. A trigger while fenced changes nothing.

mod metrics;
mod participant;
mod report;
pub mod source;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use metrics::PodMetrics;
pub use participant::{ParticipantError, Participants, PodParticipant, SavedState};
pub use report::{
    CancelReport, ParticipantReport, Phase, PhaseReport, PodReport, PodStatus, StartReport,
};
pub use source::{PodSource, Trigger};

use crate::block::BlockRegions;
use crate::fs::FsMounts;
use crate::gate::Gate;
use crate::pool::fence::{FenceState, MAX_FENCE_REPORT};
use crate::pool::{Pool, PoolError};

/// The budget when none is configured.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(50);

/// Share of the budget participants may use (the rest is for commit, flush
/// and fence).
const SAVE_SHARE: f64 = 0.6;

/// How long protection waits, beyond the budget, for work still in flight.
const PROTECT_DRAIN: Duration = Duration::from_secs(2);

/// The niceness of the thread running the sequence (and the threads it
/// starts). On a host busy with I/O a thread at 0 waits behind every
/// runnable one each time it wakes (a QMP answer, a drained gate); the
/// whole sequence is a few milliseconds of CPU that must not wait.
const SEQUENCE_NICE: i32 = -20;

/// The calling thread at [`SEQUENCE_NICE`] until dropped. Linux niceness
/// is per thread. Needs `CAP_SYS_NICE` (pmvisor serve runs as root);
/// without it the sequence runs at the thread's own priority.
struct RaisedPriority {
    before: Option<i32>,
}

impl RaisedPriority {
    fn new() -> RaisedPriority {
        let before = rustix::process::getpriority_process(None).ok();
        let raised =
            before.is_some() && rustix::process::setpriority_process(None, SEQUENCE_NICE).is_ok();
        if !raised {
            tracing::debug!("the POD sequence runs at normal priority (no CAP_SYS_NICE)");
        }
        RaisedPriority { before: before.filter(|_| raised) }
    }
}

impl Drop for RaisedPriority {
    fn drop(&mut self) {
        if let Some(nice) = self.before {
            let _ = rustix::process::setpriority_process(None, nice);
        }
    }
}

/// What the sequence acts on.
#[derive(Debug, Clone)]
pub struct PodTargets {
    pub pool: Arc<Pool>,
    pub gate: Gate,
    pub mounts: Option<Arc<FsMounts>>,
    pub blocks: Option<Arc<BlockRegions>>,
}

/// Why `pod cancel` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("the pool is not fenced; there is nothing to cancel")]
    NotFenced,
    #[error("cannot lift the fence")]
    Lift(#[source] PoolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Serving,
    /// The sequence ran but no fence record was written: the gate stays
    /// closed until cancel.
    Quiesced,
    Fenced,
}

#[derive(Debug)]
struct State {
    stage: Stage,
    sequences: u64,
    last: Option<PodReport>,
    last_cancel: Option<CancelReport>,
    /// Participants that saved in the last sequence (cancel resumes them).
    saved: Vec<String>,
}

/// The POD coordinator of one pool.
#[derive(Debug)]
pub struct Pod {
    targets: PodTargets,
    budget: Duration,
    participants: Participants,
    metrics: PodMetrics,
    sources: Mutex<Vec<String>>,
    start: Mutex<Option<StartReport>>,
    /// Held for a whole sequence or cancel, so they never interleave.
    state: Mutex<State>,
}

fn unix_ns(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl Pod {
    /// A coordinator for `targets` with `budget`.
    pub fn new(targets: PodTargets, budget: Duration, metrics: PodMetrics) -> Pod {
        Pod {
            targets,
            budget,
            participants: Participants::default(),
            metrics,
            sources: Mutex::new(vec!["SIGPWR".into(), "api".into()]),
            start: Mutex::new(None),
            state: Mutex::new(State {
                stage: Stage::Serving,
                sequences: 0,
                last: None,
                last_cancel: None,
                saved: Vec::new(),
            }),
        }
    }

    /// The gate the sequence closes.
    pub fn gate(&self) -> &Gate {
        &self.targets.gate
    }

    /// The participants (VMs register here).
    pub fn participants(&self) -> &Participants {
        &self.participants
    }

    /// The configured budget.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Note a watched source for `status`.
    pub fn add_source(&self, source: &PodSource) {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner).push(source.to_string());
    }

    /// Note how the daemon found the pool.
    pub fn set_start(&self, start: StartReport) {
        *self.start.lock().unwrap_or_else(PoisonError::into_inner) = Some(start);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the pool is fenced (or quiesced by a sequence that could not
    /// fence).
    pub fn is_fenced(&self) -> bool {
        self.lock().stage != Stage::Serving
    }

    /// What `pmvisor pod status` shows.
    pub fn status(&self) -> PodStatus {
        let st = self.lock();
        PodStatus {
            state: match st.stage {
                Stage::Serving => "serving",
                Stage::Quiesced => "quiesced",
                Stage::Fenced => "fenced",
            }
            .into(),
            budget_us: micros(self.budget),
            sources: self.sources.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            participants: self.participants.snapshot().iter().map(|p| p.name()).collect(),
            last: st.last.clone(),
            last_cancel: st.last_cancel.clone(),
            start: self.start.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    /// Run the sequence for `trigger` and return its report. While fenced,
    /// a trigger changes nothing and returns the report of the fence.
    pub fn fence(&self, trigger: Trigger) -> PodReport {
        let mut st = self.lock();
        if st.stage != Stage::Serving {
            let last = st.last.clone().expect("a fenced pod has a report");
            tracing::info!(
                "POD trigger from {} while the pool is fenced by POD #{}: nothing to do",
                trigger.source,
                last.sequence
            );
            return last;
        }
        st.sequences += 1;
        let _raised = RaisedPriority::new();
        let mut run = Run::new(self, &trigger, st.sequences);
        let participants = self.participants.snapshot();
        // The VMs' own disks stay open until they are saved: QEMU flushes
        // them as it stops. The rest of the host's I/O stops first and
        // leaves the CPUs to the saves.
        let guest_disks: Vec<String> = participants.iter().flat_map(|p| p.disks()).collect();
        run.quiesce(guest_disks);
        let saved = run.save_participants(&participants);
        run.commit();
        run.flush(&saved);
        run.write_fence();
        run.protect();
        let report = run.finish();
        st.stage = if report.fenced { Stage::Fenced } else { Stage::Quiesced };
        st.saved = report
            .participants
            .iter()
            .filter(|p| p.saved_to.is_some())
            .map(|p| p.name.clone())
            .collect();
        st.last = Some(report.clone());
        self.metrics.record(&report);
        if report.fenced && report.within_budget() {
            tracing::warn!("{}", report.summary());
        } else {
            tracing::error!("{}; problems: {:?}", report.summary(), report.problems);
        }
        report
    }

    /// Lift the fence: the pool is writable again, RvmFS requests go on,
    /// participants resume and the gate opens.
    pub fn cancel(&self) -> Result<CancelReport, CancelError> {
        let mut st = self.lock();
        if st.stage == Stage::Serving {
            return Err(CancelError::NotFenced);
        }
        let start = Instant::now();
        let mut problems = Vec::new();
        self.targets.pool.lift_fence(FenceState::Cancelled).map_err(CancelError::Lift)?;
        if let Some(mounts) = &self.targets.mounts {
            mounts.pause_requests(false);
        }
        let mut resumed = Vec::new();
        for participant in self.participants.snapshot() {
            let name = participant.name();
            if !st.saved.contains(&name) {
                continue;
            }
            match participant.cancel() {
                Ok(()) => resumed.push(name),
                Err(err) => problems.push(format!("participant {name} did not resume: {err}")),
            }
        }
        self.targets.gate.open();
        st.stage = Stage::Serving;
        let report = CancelReport {
            sequence: st.last.as_ref().map_or(0, |r| r.sequence),
            micros: micros(start.elapsed()),
            resumed,
            problems,
        };
        st.last_cancel = Some(report.clone());
        self.metrics.record_cancel();
        tracing::warn!(
            "POD #{} cancelled in {}µs: the pool is writable and serving again",
            report.sequence,
            report.micros
        );
        Ok(report)
    }
}

/// One sequence in progress.
struct Run<'a> {
    pod: &'a Pod,
    report: PodReport,
    started: Instant,
    deadline: Instant,
    drained: bool,
}

impl<'a> Run<'a> {
    fn new(pod: &'a Pod, trigger: &Trigger, sequence: u64) -> Run<'a> {
        Run {
            pod,
            started: trigger.at,
            deadline: trigger.at + pod.budget,
            drained: false,
            report: PodReport {
                sequence,
                source: trigger.source.clone(),
                triggered_unix_ns: unix_ns(trigger.wall),
                budget_us: micros(pod.budget),
                total_us: 0,
                fenced_us: 0,
                phases: Vec::new(),
                participants: Vec::new(),
                participants_left_out: 0,
                flushed_bytes: 0,
                fenced: false,
                protected: false,
                overran: Vec::new(),
                problems: Vec::new(),
            },
        }
    }

    fn targets(&self) -> &PodTargets {
        &self.pod.targets
    }

    /// Time `work` as `phase`; it returns the phase's detail.
    fn phase(&mut self, phase: Phase, work: impl FnOnce(&mut Self) -> String) {
        let start = Instant::now();
        let detail = work(self);
        let end = Instant::now();
        let overran = end > self.deadline;
        if overran {
            self.report.overran.push(phase);
        }
        self.report.phases.push(PhaseReport {
            phase,
            micros: micros(end - start),
            overran,
            detail,
        });
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Hold the gate for all but the guests' disks. What is in flight
    /// finishes while the VMs save (their stop frees the CPUs it may be
    /// waiting for); the hold after the saves waits for it.
    fn quiesce(&mut self, guest_disks: Vec<String>) {
        self.phase(Phase::Quiesce, |run| {
            let exempt = guest_disks.len();
            let in_flight = run.targets().gate.hold_except(guest_disks);
            let mut detail = format!("gate held with {in_flight} operations in flight");
            if exempt > 0 {
                detail += &format!("; {exempt} guest disks open until their VMs are saved");
            }
            detail
        });
    }

    /// Once the VMs are saved: hold the gate for everything (their disks
    /// too) and RvmFS requests, and drain. Part of the save phase.
    fn hold_all(&mut self) -> String {
        let held = self.targets().gate.hold(self.left());
        if let Some(mounts) = &self.targets().mounts {
            mounts.pause_requests(true);
        }
        match held {
            Ok(drained) => {
                self.drained = true;
                format!("everything held and drained in {}µs", micros(drained.waited))
            }
            Err(timeout) => {
                self.report.problems.push(format!("{timeout}; going on without them"));
                format!("{} operations still in flight", timeout.in_flight)
            }
        }
    }

    fn save_participants(&mut self, participants: &[Arc<dyn PodParticipant>]) -> Vec<SavedState> {
        let share = self.pod.budget.mul_f64(SAVE_SHARE);
        let deadline = (self.started + share).max(Instant::now());
        let mut saved = Vec::new();
        self.phase(Phase::SaveVms, |run| {
            if participants.is_empty() {
                return format!("no participants registered; {}", run.hold_all());
            }
            let results: Vec<(String, Duration, Result<SavedState, String>)> =
                std::thread::scope(|scope| {
                    let handles: Vec<_> = participants
                        .iter()
                        .map(|p| {
                            scope.spawn(move || {
                                let start = Instant::now();
                                let result = p.save(deadline).map_err(|e| e.to_string());
                                (p.name(), start.elapsed(), result)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                ("?".into(), Duration::ZERO, Err("it panicked".into()))
                            })
                        })
                        .collect()
                });
            let count = results.len();
            let mut ok = 0;
            for (name, took, result) in results {
                let overran = run.started + took > deadline;
                let (saved_to, error) = match result {
                    Ok(state) => {
                        ok += 1;
                        let location = state.location.clone();
                        saved.push(state);
                        (Some(location), None)
                    }
                    Err(e) => {
                        run.report.problems.push(format!("participant {name} did not save: {e}"));
                        (None, Some(e))
                    }
                };
                run.report.participants.push(ParticipantReport {
                    name,
                    saved_to,
                    error,
                    micros: micros(took),
                    overran,
                });
            }
            format!("{ok} of {count} participants saved; {}", run.hold_all())
        });
        saved
    }

    fn commit(&mut self) {
        self.phase(Phase::Commit, |run| {
            let mut parts = Vec::new();
            if let Some(mounts) = run.targets().mounts.clone() {
                match mounts.commit_all() {
                    Ok(()) => parts.push(format!("{} filesystems committed", mounts.count())),
                    Err(e) => run.report.problems.push(format!("a filesystem did not commit: {e}")),
                }
            }
            if let Some(blocks) = run.targets().blocks.clone() {
                let names = blocks.names();
                let mut flushed = 0;
                for name in &names {
                    let Some(region) = blocks.get(name) else { continue };
                    match pmvisor_blk::BlockDevice::flush(region.as_ref()) {
                        Ok(()) => flushed += 1,
                        Err(e) => run
                            .report
                            .problems
                            .push(format!("block region {name} did not flush: {e}")),
                    }
                }
                parts.push(format!("{flushed} of {} block regions flushed", names.len()));
            }
            parts.join(", ")
        });
    }

    fn flush(&mut self, saved: &[SavedState]) {
        self.phase(Phase::Flush, |run| {
            let media = run.targets().pool.media().clone();
            let mut bytes = 0;
            let flushed = media.flush_dirty().map(|n| bytes += n).and_then(|()| {
                for &(offset, len) in saved.iter().flat_map(|s| &s.pool_ranges) {
                    media.flush(offset, len)?;
                    bytes += len;
                }
                media.barrier()
            });
            if let Err(e) = flushed {
                run.report.problems.push(format!("flushing the pool failed: {e}"));
            }
            run.report.flushed_bytes = bytes;
            format!("{bytes} bytes written back")
        });
    }

    fn write_fence(&mut self) {
        self.phase(Phase::FenceRecord, |run| {
            if run.report.problems.iter().any(|p| p.starts_with("flushing the pool failed")) {
                return "skipped: the flush failed".into();
            }
            let mut body = run.report.clone();
            body.total_us = micros(run.started.elapsed());
            let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
            // The record has room for the phases and a dozen participants or
            // more; beyond that, details go first, then participants, counted
            // (the full report is in the log).
            while bytes.len() > MAX_FENCE_REPORT {
                if body.phases.iter().any(|p| !p.detail.is_empty()) || !body.problems.is_empty() {
                    body.phases.iter_mut().for_each(|p| p.detail.clear());
                    body.problems.clear();
                } else if body.participants.pop().is_some() {
                    body.participants_left_out += 1;
                } else {
                    break;
                }
                bytes = serde_json::to_vec(&body).unwrap_or_default();
            }
            match run.targets().pool.write_fence(body.triggered_unix_ns, &bytes) {
                Ok(record) => {
                    run.report.fenced = true;
                    run.report.fenced_us = micros(run.started.elapsed());
                    format!("record #{} written", record.sequence)
                }
                Err(e) => {
                    run.report.problems.push(format!("the fence record was not written: {e}"));
                    "failed".into()
                }
            }
        });
    }

    fn protect(&mut self) {
        self.phase(Phase::Protect, |run| {
            if !run.report.fenced {
                return "skipped: not fenced".into();
            }
            if !run.drained {
                match run.targets().gate.hold(PROTECT_DRAIN) {
                    Ok(_) => run.drained = true,
                    Err(e) => {
                        run.report.problems.push(format!(
                            "the mapping stays writable: {e} (a store into a read-only mapping \
                             would kill the daemon)"
                        ));
                        return "skipped: work still in flight".into();
                    }
                }
            }
            match run.targets().pool.protect() {
                Ok(()) => {
                    run.report.protected = true;
                    "mapping read-only".into()
                }
                Err(e) => {
                    run.report.problems.push(e.to_string());
                    "failed".into()
                }
            }
        });
    }

    fn finish(mut self) -> PodReport {
        self.report.total_us = micros(self.started.elapsed());
        self.report
    }
}

/// Log how the daemon found the pool and keep it for `status`.
pub fn report_start(pod: &Pod, start: StartReport, pool: &std::path::Path) {
    match (&start.opened_from[..], &start.fence) {
        ("fence", Some(fence)) => tracing::info!(
            pool = %pool.display(),
            "the pool was fenced by POD #{} ({}, {}µs); it opened with no recovery work",
            fence.sequence,
            fence.source,
            fence.total_us
        ),
        ("fence", None) => tracing::info!(
            pool = %pool.display(),
            "the pool was fenced by a POD; it opened with no recovery work"
        ),
        _ => match &start.note {
            Some(note) => {
                tracing::info!(pool = %pool.display(), "opened from the last commits: {note}")
            }
            None => tracing::debug!(pool = %pool.display(), "opened from the last commits"),
        },
    }
    pod.set_start(start);
}

/// At daemon start: lift a clean fence (the pool opens with no recovery
/// work) and say how the pool was found. Call before anything writes.
pub fn open_after_fence(pool: &Pool) -> Result<StartReport, PoolError> {
    let Some(at_open) = pool.fence_at_open() else {
        return Ok(StartReport { opened_from: "recovery".into(), fence: None, note: None });
    };
    let report: Option<PodReport> = serde_json::from_slice(&at_open.record.report).ok();
    if !at_open.clean {
        let note = match at_open.record.state {
            FenceState::Fenced => "the pool changed after its fence record; recovered from its \
                                   last commits instead"
                .to_string(),
            state => format!(
                "the newest fence record is {}",
                serde_json::to_string(&state).unwrap_or_default().trim_matches('"')
            ),
        };
        return Ok(StartReport { opened_from: "recovery".into(), fence: None, note: Some(note) });
    }
    pool.lift_fence(FenceState::Lifted)?;
    Ok(StartReport { opened_from: "fence".into(), fence: report, note: None })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::pool::crash::{CrashMedia, TearGranularity};
    use crate::pool::{MediaWindow, OpenMode};

    /// A participant that notes the niceness its save ran at.
    #[derive(Debug, Default)]
    struct Witness {
        name: String,
        nice: Mutex<Option<i32>>,
    }

    impl PodParticipant for Witness {
        fn name(&self) -> String {
            self.name.clone()
        }

        fn save(&self, _deadline: Instant) -> Result<SavedState, ParticipantError> {
            *self.nice.lock().unwrap() = Some(rustix::process::getpriority_process(None)?);
            Ok(SavedState { location: "nowhere".into(), pool_ranges: Vec::new() })
        }

        fn cancel(&self) -> Result<(), ParticipantError> {
            Ok(())
        }
    }

    /// A coordinator of a small pool on crash media, with no targets.
    fn pod() -> (Pod, Arc<Pool>) {
        const SIZE: u64 = 2 << 20;
        let media = Arc::new(CrashMedia::new(SIZE, TearGranularity::Nvram));
        let window = Arc::new(MediaWindow::new(media, 0, SIZE).unwrap());
        let path = Path::new("pod.pool");
        Pool::format(Arc::clone(&window) as _, path, SIZE, Some(16 << 10)).unwrap();
        let pool = Arc::new(Pool::open_media(window, path, OpenMode::ReadWrite).unwrap());
        let targets =
            PodTargets { pool: Arc::clone(&pool), gate: Gate::new(), mounts: None, blocks: None };
        (Pod::new(targets, DEFAULT_BUDGET, PodMetrics::default()), pool)
    }

    #[test]
    fn a_fence_record_without_room_for_every_participant_counts_those_left_out() {
        let (pod, pool) = pod();
        for i in 0..60 {
            let name = format!("a-virtual-machine-with-a-long-name-{i:03}");
            pod.participants().register(Arc::new(Witness { name, ..Default::default() }));
        }
        let report = pod.fence(Trigger::now("test"));
        assert!(report.fenced, "{report:?}");
        assert_eq!((report.participants.len(), report.participants_left_out), (60, 0));
        let record = pool.fence_record().expect("a fence record");
        let recorded: PodReport = serde_json::from_slice(&record.report).unwrap();
        assert!(recorded.participants_left_out > 0, "60 participants fit in 2 KiB?");
        assert_eq!(recorded.participants.len() as u64 + recorded.participants_left_out, 60);
        assert!(recorded.participants.iter().all(|p| p.saved_to.is_some()));
    }

    #[test]
    fn the_sequence_runs_at_raised_priority_and_gives_the_thread_its_own_back() {
        let (pod, _pool) = pod();
        let witness = Arc::new(Witness::default());
        pod.participants().register(Arc::clone(&witness) as _);
        let (before, root) = std::thread::spawn(move || {
            let before = rustix::process::getpriority_process(None).unwrap();
            let report = pod.fence(Trigger::now("test"));
            assert!(report.fenced, "{report:?}");
            assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
            (before, rustix::process::geteuid().is_root())
        })
        .join()
        .unwrap();
        let saved_at = witness.nice.lock().unwrap().expect("the witness saved");
        if root {
            assert_eq!(saved_at, SEQUENCE_NICE, "participants save at the sequence's priority");
        } else {
            assert_eq!(saved_at, before, "without CAP_SYS_NICE nothing changes");
        }
    }
}
