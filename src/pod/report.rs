//! What a POD sequence did: the report that goes to the log, the metrics,
//! the API response, `pmvisor pod status` and (phases 1 to 4) the fence
//! record in the pool.

use serde::{Deserialize, Serialize};

/// The phases of the sequence, in the order (and priority) they run:
/// quiesce, let participants save, commit metadata, flush data, fence,
/// protect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Hold the gate (block I/O, resizes, the balancer, control changes)
    /// except the disks of the VMs about to save; what is in flight
    /// finishes while they save.
    Quiesce,
    /// Registered participants (VMs) pause and save their state; then the
    /// gate holds everything, filesystem requests are held, and what is in
    /// flight drains.
    SaveVms,
    /// Commit every RvmFS mount and flush every block region's map.
    Commit,
    /// Write back the pool's dirty ranges.
    Flush,
    /// Write the checksummed fence record.
    FenceRecord,
    /// Make the pool mapping read-only.
    Protect,
}

impl Phase {
    /// Every phase in order.
    pub const ALL: [Phase; 6] = [
        Phase::Quiesce,
        Phase::SaveVms,
        Phase::Commit,
        Phase::Flush,
        Phase::FenceRecord,
        Phase::Protect,
    ];

    /// The name used in tables, JSON and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Quiesce => "quiesce",
            Phase::SaveVms => "save-vms",
            Phase::Commit => "commit",
            Phase::Flush => "flush",
            Phase::FenceRecord => "fence-record",
            Phase::Protect => "protect",
        }
    }
}

/// One phase as it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseReport {
    pub phase: Phase,
    /// How long it took, microseconds.
    pub micros: u64,
    /// It ended after the budget ran out.
    pub overran: bool,
    /// What it did, in a few words.
    pub detail: String,
}

/// One participant as it saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantReport {
    pub name: String,
    /// Where its state went, when it saved.
    pub saved_to: Option<String>,
    /// Why it did not save.
    pub error: Option<String>,
    pub micros: u64,
    /// It answered after its deadline.
    pub overran: bool,
}

/// A whole POD sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodReport {
    /// Counts the sequences of this daemon (1, 2, ...).
    pub sequence: u64,
    /// What fired: `SIGPWR`, `api`, `sysfs:PATH`, `file:PATH`.
    pub source: String,
    /// When it fired, nanoseconds since the Unix epoch.
    pub triggered_unix_ns: u64,
    pub budget_us: u64,
    /// Trigger to the end of the last phase (read-only), microseconds.
    pub total_us: u64,
    /// Trigger to the fence record being durable, microseconds (0: never).
    pub fenced_us: u64,
    pub phases: Vec<PhaseReport>,
    pub participants: Vec<ParticipantReport>,
    /// Participants the fence record had no room for (the log names them
    /// all): `serve --resume-vms` also resumes the VMs whose saved state is
    /// newer than the trigger.
    #[serde(default)]
    pub participants_left_out: u64,
    /// Bytes the flush phase wrote back.
    pub flushed_bytes: u64,
    /// The fence record is durable: the pool holds everything written
    /// before the trigger.
    pub fenced: bool,
    /// The pool mapping is read-only.
    pub protected: bool,
    /// The phases that ended after the budget ran out.
    pub overran: Vec<Phase>,
    /// What went wrong, one sentence each.
    pub problems: Vec<String>,
}

impl PodReport {
    /// Whether every phase ended within the budget.
    pub fn within_budget(&self) -> bool {
        self.overran.is_empty()
    }

    /// One log line: the total and every phase.
    pub fn summary(&self) -> String {
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| {
                format!(
                    "{} {}µs{}",
                    p.phase.name(),
                    p.micros,
                    if p.overran { " (over)" } else { "" }
                )
            })
            .collect();
        format!(
            "POD #{} from {}: {} in {}µs of a {}µs budget; {}",
            self.sequence,
            self.source,
            if self.fenced { "fenced" } else { "NOT fenced" },
            self.total_us,
            self.budget_us,
            phases.join(", ")
        )
    }
}

/// What `pod cancel` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelReport {
    /// The sequence whose fence was lifted.
    pub sequence: u64,
    pub micros: u64,
    /// Participants resumed, by name.
    pub resumed: Vec<String>,
    pub problems: Vec<String>,
}

/// How this daemon found the pool at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartReport {
    /// `fence`: fenced by a POD and untouched since, opened with no recovery
    /// work; `recovery`: opened from its last commits as after any crash or
    /// stop.
    pub opened_from: String,
    /// The report of the POD that fenced it (from the fence record).
    pub fence: Option<PodReport>,
    /// Why a fence record present was not used.
    pub note: Option<String>,
}

/// `GET /v1/pod`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodStatus {
    /// `serving`, `fenced`, or `quiesced` (a sequence that could not fence:
    /// the gate stays closed until cancel).
    pub state: String,
    pub budget_us: u64,
    /// Sources watched, as given to `serve --pod-source`, plus SIGPWR.
    pub sources: Vec<String>,
    /// Participants registered, by name.
    pub participants: Vec<String>,
    pub last: Option<PodReport>,
    pub last_cancel: Option<CancelReport>,
    pub start: Option<StartReport>,
}
