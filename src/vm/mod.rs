//! Persistent VMs (SPEC §8): QEMU guests whose RAM is a `memory` region of
//! the pool, which a power outage pauses and saves and which resume after
//! it instead of rebooting.
//!
//! - [`spec`]: the VM as recorded in the pool (an attribute of its memory
//!   region `NAME.ram`), its disks (block regions over NBD, image files).
//! - [`launch`]: the QEMU command line (RAM = `memory-backend-file` on the
//!   pool file at the region's offset, `share=on`) and the VM's files.
//! - [`qmp`]: the QMP client.
//! - [`save`]: stop + `x-ignore-shared` + migrate to a file, and back.
//! - [`running`]: [`Vms`], the running QEMUs and the calls the power-outage
//!   path makes: [`Vms::save_all`], [`Vms::cancel_all`], [`Vms::resume`].
//! - [`participant`]: a running VM as a participant of the power-outage
//!   sequence (`crate::pod`); [`priority`]: its QEMU's niceness while it
//!   is saved.
//! - [`version`]: the QEMU it takes (8.2 or newer).
//!
//! It assumes QEMU's view of the pool file and the daemon's are the same
//! memory: true of a file or a DAX device mapped shared. A save writes
//! only device state; the RAM's durability is the pool's flush, which the
//! power-outage path does after the save.

mod error;
pub mod launch;
pub mod participant;
pub mod priority;
pub mod qmp;
pub mod running;
pub mod save;
pub mod spec;
pub mod version;

pub use error::VmError;
pub use launch::{LaunchPlan, VmPaths};
pub use participant::VmParticipant;
pub use running::{VmStatus, Vms};
pub use save::{ResumeKind, VmResumeReport, VmSaveReport};
pub use spec::{DiskSpec, ImageFormat, VmRecord, VmSpec};
pub use version::{QemuVersion, MIN_QEMU};
