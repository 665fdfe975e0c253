//! pmvisor: one persistent-memory pool given out as elastic block devices,
//! a crash-atomic filesystem and persistent VMs (see SPEC.md).

pub mod agent;
pub mod block;
pub mod pool;

pub mod cli;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod gate;
pub mod paths;
pub mod pod;
pub mod vm;
