//! A running VM as a participant of the power-outage sequence
//! ([`crate::pod::PodParticipant`]): the sequence calls `save` on a thread
//! of its own for every VM in parallel, and `cancel` when power comes back.
//!
//! [`Vms`] is async (its QMP sessions live on the daemon's runtime), the
//! trait is not: each call is spawned onto the runtime and waited for on a
//! channel, which works from any thread, inside the runtime or not.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::{VmError, Vms};
use crate::pod::{ParticipantError, PodParticipant, SavedState};

/// How long `cancel` may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(30);

/// VM `name` of `vms`, for the power-outage sequence.
#[derive(Debug, Clone)]
pub struct VmParticipant {
    vms: Arc<Vms>,
    name: String,
    runtime: tokio::runtime::Handle,
}

impl VmParticipant {
    /// The participant of VM `name`, whose calls run on `runtime`.
    pub fn new(vms: Arc<Vms>, name: &str, runtime: tokio::runtime::Handle) -> VmParticipant {
        VmParticipant { vms, name: name.to_string(), runtime }
    }

    /// Run `work` on the runtime and wait for it until `deadline`; past
    /// it, the VM "was not `what` before the deadline".
    fn run<T: Send + 'static>(
        &self,
        deadline: Instant,
        what: &'static str,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, ParticipantError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).map_err(|_| {
            let err = VmError::Deadline { name: self.name.clone(), what };
            Box::new(err) as ParticipantError
        })
    }
}

impl PodParticipant for VmParticipant {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn save(&self, deadline: Instant) -> Result<SavedState, ParticipantError> {
        let (vms, name) = (Arc::clone(&self.vms), self.name.clone());
        let report =
            self.run(deadline, "saved", async move { vms.save(&name, deadline).await })??;
        if !report.saved {
            return Err(report.error.unwrap_or_else(|| "the save failed".into()).into());
        }
        let record = super::spec::load(self.vms.pool(), &self.name)?;
        Ok(SavedState {
            location: report.state_file.display().to_string(),
            // The guest wrote its RAM through QEMU's mapping of the pool.
            pool_ranges: vec![(record.ram_offset, record.spec.memory)],
        })
    }

    fn disks(&self) -> Vec<String> {
        let Ok(record) = super::spec::load(self.vms.pool(), &self.name) else { return Vec::new() };
        record
            .spec
            .disks
            .iter()
            .filter_map(|d| match d {
                super::DiskSpec::Region(name) => Some(name.clone()),
                super::DiskSpec::Image { .. } => None,
            })
            .collect()
    }

    fn cancel(&self) -> Result<(), ParticipantError> {
        let (vms, name) = (Arc::clone(&self.vms), self.name.clone());
        let deadline = Instant::now() + CANCEL_TIMEOUT;
        self.run(deadline, "resumed", async move { vms.resume(&name).await })??;
        Ok(())
    }
}
