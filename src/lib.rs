//! pmvisor: one persistent-memory pool given out as elastic block devices,
//! a crash-atomic filesystem and persistent VMs (see SPEC.md).

pub mod pool;
