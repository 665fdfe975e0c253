//! Participants of the POD sequence: whatever must save itself after the
//! quiesce and before the commit phase. Persistent VMs are the participants
//! (`src/vm` registers one per running VM: QMP `stop`, `x-ignore-shared`,
//! `migrate` to a file); the phase has none until something registers.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// What a participant saved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedState {
    /// Where the state went (a file path, a region name), for the report and
    /// the fence record.
    pub location: String,
    /// Pool byte ranges the participant wrote through its own mapping (a
    /// VM's RAM): the flush phase makes them durable with the rest.
    pub pool_ranges: Vec<(u64, u64)>,
}

/// The boxed error a participant gives back.
pub type ParticipantError = Box<dyn std::error::Error + Send + Sync>;

/// Something the POD sequence pauses and saves, and resumes on cancel.
///
/// `save` runs on its own thread, all participants in parallel; it must
/// return by `deadline` (what is not saved by then is reported as overrun,
/// and the sequence goes on). `cancel` undoes `save` when power comes back
/// (QMP `cont`): nothing may be lost.
pub trait PodParticipant: Send + Sync + fmt::Debug {
    /// A name for reports (the VM's name).
    fn name(&self) -> String;

    /// Pause and save before `deadline`.
    fn save(&self, deadline: Instant) -> Result<SavedState, ParticipantError>;

    /// Resume after a cancelled POD.
    fn cancel(&self) -> Result<(), ParticipantError>;

    /// Block regions whose I/O the save needs (a VM's disks: QEMU flushes
    /// them as it stops); they stay open until the saves are done.
    fn disks(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The registered participants.
#[derive(Debug, Default)]
pub struct Participants {
    list: Mutex<Vec<Arc<dyn PodParticipant>>>,
}

impl Participants {
    /// Add `participant`; one of the same name is replaced.
    pub fn register(&self, participant: Arc<dyn PodParticipant>) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let name = participant.name();
        list.retain(|p| p.name() != name);
        list.push(participant);
    }

    /// Remove the participant called `name`; whether there was one.
    pub fn unregister(&self, name: &str) -> bool {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let before = list.len();
        list.retain(|p| p.name() != name);
        list.len() != before
    }

    /// The participants now.
    pub fn snapshot(&self) -> Vec<Arc<dyn PodParticipant>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
