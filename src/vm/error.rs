//! The one error of persistent VMs: one variant per failing step.

use std::path::PathBuf;

use super::qmp::QmpError;
use super::version::VersionError;
use crate::pool::PoolError;

/// What went wrong with a persistent VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No such VM in the pool.
    #[error("there is no VM {name}; create it with `pmvisor vm create {name} --memory SIZE`")]
    NotFound { name: String },
    /// The name is taken.
    #[error("a VM named {name} exists already; pick another name or delete it with `pmvisor vm delete {name}`")]
    Exists { name: String },
    /// The name cannot be a VM's.
    #[error("{name:?} cannot name a VM: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The configuration is not one QEMU can run.
    #[error("{0}")]
    InvalidSpec(String),
    /// The VM's record in the pool cannot be read.
    #[error("the record of VM {name} is damaged ({detail}); delete it with `pmvisor vm delete {name}` and create it again")]
    Damaged { name: String, detail: String },
    /// A disk cannot be given to QEMU.
    #[error("disk {disk} of VM {vm} cannot be attached: {why}")]
    Disk { vm: String, disk: String, why: String },
    /// An image file (or the pool file) cannot be read.
    #[error("cannot read the disk image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pool refused.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The installed QEMU cannot run persistent VMs.
    #[error(transparent)]
    Qemu(#[from] VersionError),
    /// A QEMU already runs for the VM.
    #[error("VM {name} is running already (QMP {qmp})")]
    Running { name: String, qmp: PathBuf },
    /// No QEMU runs for the VM.
    #[error("VM {name} is not running; start it with `pmvisor vm start {name}`")]
    NotRunning { name: String },
    /// A file of the VM cannot be made.
    #[error("cannot prepare {path} for VM {name}")]
    Files {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU did not start.
    #[error("cannot start QEMU for VM {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited before answering on QMP.
    #[error("QEMU for VM {name} exited ({status}): {stderr}")]
    Exited { name: String, status: String, stderr: String },
    /// A QMP exchange failed.
    #[error("QMP of VM {name}")]
    Qmp {
        name: String,
        #[source]
        source: QmpError,
    },
    /// QEMU reported a failed migration (save or restore).
    #[error("QEMU could not {what} the state of VM {name}: {detail}")]
    Migration { name: String, what: &'static str, detail: String },
    /// The deadline passed.
    #[error("VM {name} was not {what} before the deadline")]
    Deadline { name: String, what: &'static str },
    /// There is nothing to resume from.
    #[error("VM {name} has no saved state at {path}; start it with `pmvisor vm start {name}`")]
    NoSavedState { name: String, path: PathBuf },
    /// The saved state cannot be made durable.
    #[error("cannot make the saved state {path} of VM {name} durable")]
    StateFile {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
