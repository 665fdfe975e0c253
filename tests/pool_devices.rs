//! Pools on block devices: a loop device over a file stands in for
//! `/dev/pmem0`. Needs root and loop devices (`losetup`, util-linux); under
//! `CI=true` their absence fails the test, elsewhere it is skipped loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use pmvisor::pool::{CreateOptions, ErrorKind, MediaKind, OpenMode, Pool, RegionKind};

/// A loop device attached to a file, detached on drop.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn attach(file: &Path) -> Result<LoopDevice, String> {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .map_err(|e| format!("cannot run losetup ({e}); install util-linux"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {} (loop devices need root and the loop driver)",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(LoopDevice { path: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()) })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

fn loop_device(dir: &Path, size: u64) -> Option<LoopDevice> {
    let file = dir.join("backing.img");
    std::fs::File::create(&file).unwrap().set_len(size).unwrap();
    match LoopDevice::attach(&file) {
        Ok(dev) => Some(dev),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{why}"),
        Err(why) => {
            eprintln!("SKIPPED: pool on a block device: {why}");
            None
        }
    }
}

#[test]
fn a_pool_on_a_block_device_is_formatted_once_and_keeps_its_regions() {
    let dir = tempfile::tempdir().unwrap();
    let Some(dev) = loop_device(dir.path(), 32 << 20) else { return };
    let pool = Pool::create(&dev.path, &CreateOptions::default()).unwrap();
    assert_eq!(pool.info().media, MediaKind::BlockDevice.name());
    assert_eq!(pool.info().size, 32 << 20, "a device is used whole");
    pool.create_region("disk", RegionKind::Block, 1 << 20).unwrap();
    pool.write_region("disk", 0, b"on the device").unwrap();
    pool.persist_region("disk", 0, 13).unwrap();
    drop(pool);

    let err = Pool::create(&dev.path, &CreateOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("already holds a pmvisor pool"), "{err}");

    let pool = Pool::open(&dev.path, OpenMode::ReadOnly).unwrap();
    let mut buf = [0u8; 13];
    pool.read_region("disk", 0, &mut buf).unwrap();
    assert_eq!(&buf, b"on the device");
    assert!(pool.check().is_clean());
    drop(pool);

    let pool =
        Pool::create(&dev.path, &CreateOptions { force: true, ..Default::default() }).unwrap();
    assert!(pool.regions().is_empty(), "--force formats the device afresh");
}
