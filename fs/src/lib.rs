//! RvmFS: recoverable virtual memory (RVM) transactions over persistent pages,
//! and the FUSE filesystem built on them (SPEC §7).
//!
//! This crate does not depend on the pool: it defines the narrow storage trait
//! it needs, and the root crate implements it over an `fs` region.
