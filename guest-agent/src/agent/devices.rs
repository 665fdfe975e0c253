//! Finding the guest's block devices by serial: `/sys/block/*/serial`
//! (virtio-blk), `/sys/block/*/device/serial` (SCSI and NVMe) and the
//! `/dev/disk/by-id/virtio-*` links udev makes. Sizes come from
//! `/sys/block/NAME/size`, which counts 512-byte sectors whatever the
//! device's block size.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::protocol::Device;

/// Where to look for devices; the defaults are the real system paths.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// `/sys/block`.
    pub sys_block: PathBuf,
    /// `/dev/disk/by-id`.
    pub by_id: PathBuf,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery { sys_block: "/sys/block".into(), by_id: "/dev/disk/by-id".into() }
    }
}

impl Discovery {
    /// The block devices that have a serial and a non-zero size, sorted by
    /// serial; one entry per serial. Unreadable entries are skipped.
    pub fn discover(&self) -> Vec<Device> {
        let mut found = BTreeMap::new();
        for (name, serial) in self.serials_from_sysfs().into_iter().chain(self.serials_from_by_id())
        {
            if found.contains_key(&serial) {
                continue;
            }
            if let Some(size_bytes) = self.size_bytes(&name) {
                found.insert(serial, size_bytes);
            }
        }
        found.into_iter().map(|(serial, size_bytes)| Device { serial, size_bytes }).collect()
    }

    /// `(kernel name, serial)` from the sysfs attributes.
    fn serials_from_sysfs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for name in dir_names(&self.sys_block) {
            let dir = self.sys_block.join(&name);
            let serial =
                ["serial", "device/serial"].iter().find_map(|attr| read_serial(&dir.join(attr)));
            if let Some(serial) = serial {
                out.push((name, serial));
            }
        }
        out
    }

    /// `(kernel name, serial)` from `virtio-SERIAL -> ../../NAME` links.
    /// Links to partitions (`virtio-SERIAL-part1 -> ../../vda1`) name no
    /// directory of `/sys/block` and are skipped by the size lookup.
    fn serials_from_by_id(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for link in dir_names(&self.by_id) {
            let Some(serial) = link.strip_prefix("virtio-") else { continue };
            let Ok(target) = fs::read_link(self.by_id.join(&link)) else { continue };
            let Some(name) = target.file_name().and_then(|n| n.to_str()) else { continue };
            if !serial.is_empty() {
                out.push((name.to_owned(), serial.to_owned()));
            }
        }
        out
    }

    fn size_bytes(&self, name: &str) -> Option<u64> {
        let text = fs::read_to_string(self.sys_block.join(name).join("size")).ok()?;
        let sectors: u64 = text.trim().parse().ok()?;
        sectors.checked_mul(512).filter(|&b| b > 0)
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    names
}

fn read_serial(path: &Path) -> Option<String> {
    let raw = fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let serial = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!serial.is_empty()).then(|| serial.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_dev(sys: &Path, name: &str, sectors: u64, serial: Option<&str>) {
        let dir = sys.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
        if let Some(serial) = serial {
            fs::write(dir.join("serial"), serial).unwrap();
        }
    }

    #[test]
    fn devices_are_found_by_sysfs_serial_and_by_id_links() {
        let root = tempfile::tempdir().unwrap();
        let discovery =
            Discovery { sys_block: root.path().join("block"), by_id: root.path().join("by-id") };
        block_dev(&discovery.sys_block, "vda", 2048, Some("boot-disk\n"));
        block_dev(&discovery.sys_block, "vdb", 4096, None);
        block_dev(&discovery.sys_block, "vdc", 0, Some("empty"));
        block_dev(&discovery.sys_block, "loop0", 8, None);
        fs::create_dir_all(&discovery.by_id).unwrap();
        std::os::unix::fs::symlink("../../vdb", discovery.by_id.join("virtio-region-a")).unwrap();
        std::os::unix::fs::symlink("../../vdb1", discovery.by_id.join("virtio-region-a-part1"))
            .unwrap();
        std::os::unix::fs::symlink("../../vda", discovery.by_id.join("virtio-boot-disk")).unwrap();
        assert_eq!(
            discovery.discover(),
            [
                Device { serial: "boot-disk".into(), size_bytes: 2048 * 512 },
                Device { serial: "region-a".into(), size_bytes: 4096 * 512 },
            ]
        );
    }

    #[test]
    fn missing_directories_find_nothing() {
        let discovery =
            Discovery { sys_block: "/nonexistent/a".into(), by_id: "/nonexistent/b".into() };
        assert!(discovery.discover().is_empty());
    }
}
