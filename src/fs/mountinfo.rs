//! Reading `/proc/self/mountinfo`: which RvmFS filesystems are mounted where.
//!
//! Used to wait until a mount is live, to notice that a mount went away
//! (`fusermount3 -u`), and to find a mount by region name. Fields are
//! those of proc(5); paths have their octal escapes (`\040` for a space)
//! undone.
//!
//! RvmFS mounts have the type `fuse.rvmfs` (mount(2) as root, or
//! fusermount3 with `subtype=rvmfs`) and the region name as their source.
//! Callers that need certainty match the source and the serving process.

use std::path::{Path, PathBuf};

/// The filesystem type of RvmFS mounts in `mount -t` and fstab.
pub const RVMFS_TYPE: &str = "fuse.rvmfs";

/// One line of `mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub options: String,
    /// Filesystem type (`fuse.rvmfs`).
    pub fstype: String,
    /// The mount source (for RvmFS: the region name).
    pub source: String,
}

impl MountEntry {
    /// Whether this is an RvmFS mount.
    pub fn is_rvmfs(&self) -> bool {
        self.fstype == RVMFS_TYPE
    }
}

/// Every mount this process sees.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mounts this process sees that can be RvmFS mounts.
pub fn rvmfs_mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(mounts()?.into_iter().filter(MountEntry::is_rvmfs).collect())
}

/// The FUSE mount at `dir` (compared after canonicalizing), if any.
///
/// Canonicalizing looks `dir` up, and once something is mounted there the
/// lookup enters the mount; loops that poll a mount use [`rvmfs_on`].
pub fn rvmfs_at(dir: &Path) -> std::io::Result<Option<MountEntry>> {
    rvmfs_on(&std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

/// The FUSE mount at the canonical path `dir`, if any, from `mountinfo`
/// alone. It never looks the path up: a lookup of a FUSE mount's root
/// holds the mount until the server answers, and an `umount` in that
/// moment fails with "target is busy".
pub fn rvmfs_on(dir: &Path) -> std::io::Result<Option<MountEntry>> {
    Ok(rvmfs_mounts()?.into_iter().rev().find(|m| m.mountpoint == dir))
}

/// Parses the text of a `mountinfo` file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = fields.iter().position(|f| *f == "-")?;
    if separator < 6 || fields.len() < separator + 3 {
        return None;
    }
    Some(MountEntry {
        mountpoint: PathBuf::from(unescape(fields[4])),
        options: fields[5].to_string(),
        fstype: fields[separator + 1].to_string(),
        source: unescape(fields[separator + 2]),
    })
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_at_the_separator_and_unescaped() {
        let text =
            "36 35 98:0 / /mnt/my\\040home rw,noatime master:1 - fuse.rvmfs home rw,user_id=0\n\
                    37 35 0:5 / /proc rw - proc proc rw\n\
                    garbage\n";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].mountpoint, Path::new("/mnt/my home"));
        assert_eq!(mounts[0].source, "home");
        assert_eq!(mounts[0].options, "rw,noatime");
        assert!(mounts[0].is_rvmfs());
        assert!(!mounts[1].is_rvmfs());
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        let mounts = mounts().unwrap();
        assert!(mounts.iter().any(|m| m.mountpoint == Path::new("/")), "{mounts:?}");
    }
}
