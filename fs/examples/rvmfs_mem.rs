//! Formats an in-memory RvmFS and mounts it until stdin closes or a line is read.
//!
//! Usage: `cargo run -p rvmfs --example rvmfs_mem -- MOUNTPOINT [PAGES] [OPTIONS]`,
//! e.g. `... /mnt/x 262144 commit=5,allow_other`. Everything is lost at exit:
//! this is for trying the filesystem and for tests that want a separate process.

use std::sync::Arc;

use rvmfs::{mount, MemStore, MountOptions, RvmFs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mountpoint = args.next().ok_or("usage: rvmfs_mem MOUNTPOINT [PAGES] [OPTIONS]")?;
    let pages: u64 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(65_536);
    let options = MountOptions::parse(&args.next().unwrap_or_default())?;
    let store = Arc::new(MemStore::new(pages));
    let fs = RvmFs::format(store, options.fs_options())?;
    let handle = mount(fs, mountpoint.as_ref(), &options)?;
    println!("mounted {pages} pages at {mountpoint}; press Enter to unmount");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    handle.unmount()?;
    Ok(())
}
