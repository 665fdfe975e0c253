//! Which QEMU persistent VMs need, and how to tell what is installed.
//!
//! Two features set the floor: `memory-backend-file` with `offset=` (RAM at
//! a region's offset inside the pool file, QEMU 8.1) and migration to a
//! `file:` URI (QEMU 8.2). Debian 12 ships 7.2; bookworm-backports has 10.

use std::fmt;
use std::path::Path;
use std::process::Command;

/// A QEMU release, as `--version` and the QMP greeting give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// The oldest QEMU that can keep a VM's RAM in the pool and save it.
pub const MIN_QEMU: QemuVersion = QemuVersion { major: 8, minor: 2, micro: 0 };

/// Where Debian 12 users get a new enough QEMU.
pub const QEMU_HINT: &str = "Debian 12 gets QEMU 10 from bookworm-backports: `apt-get install -t \
                             bookworm-backports qemu-system-x86 qemu-utils` (scripts/setup does it)";

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Why the installed QEMU cannot run persistent VMs.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The binary did not run.
    #[error("cannot run {binary} (install QEMU {MIN_QEMU} or newer; {QEMU_HINT})")]
    Missing {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    /// `--version` printed no version.
    #[error("cannot tell the version of {binary} from {output:?}")]
    Unknown { binary: String, output: String },
    /// Too old.
    #[error(
        "QEMU {found} is too old for persistent VMs: they need QEMU {MIN_QEMU} or newer \
         (memory-backend-file offset= and migration to file:); {QEMU_HINT}"
    )]
    TooOld { found: QemuVersion },
}

/// Parse `QEMU emulator version 10.0.2 (Debian ...)`.
pub fn parse_version(output: &str) -> Option<QemuVersion> {
    let rest = &output[output.find("version ")? + "version ".len()..];
    let word = rest.split_whitespace().next()?;
    let mut parts = word.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let micro = parts.next().flatten().unwrap_or(0);
    Some(QemuVersion { major, minor, micro })
}

/// `Ok` when `found` can run persistent VMs.
pub fn check_version(found: QemuVersion) -> Result<QemuVersion, VersionError> {
    if found < MIN_QEMU {
        return Err(VersionError::TooOld { found });
    }
    Ok(found)
}

/// Run `binary --version` and check it.
pub fn check_binary(binary: &Path) -> Result<QemuVersion, VersionError> {
    let name = binary.display().to_string();
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|source| VersionError::Missing { binary: name.clone(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found = parse_version(&text)
        .ok_or_else(|| VersionError::Unknown { binary: name, output: text.trim().to_string() })?;
    check_version(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_qemu_version_output() {
        let v = |s| parse_version(s).unwrap();
        assert_eq!(
            v("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"),
            QemuVersion { major: 10, minor: 0, micro: 2 }
        );
        assert_eq!(
            v("QEMU emulator version 7.2.22 (Debian)"),
            QemuVersion { major: 7, minor: 2, micro: 22 }
        );
        assert_eq!(
            v("QEMU emulator version 9.1.50"),
            QemuVersion { major: 9, minor: 1, micro: 50 }
        );
        assert_eq!(parse_version("qemu-img"), None);
    }

    #[test]
    fn an_old_qemu_gets_an_error_saying_what_is_needed_and_where_debian_gets_it() {
        let err =
            check_version(parse_version("QEMU emulator version 7.2.22").unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "QEMU 7.2.22 is too old for persistent VMs: they need QEMU 8.2.0 or newer \
             (memory-backend-file offset= and migration to file:); Debian 12 gets QEMU 10 from \
             bookworm-backports: `apt-get install -t bookworm-backports qemu-system-x86 \
             qemu-utils` (scripts/setup does it)"
        );
        assert!(check_version(QemuVersion { major: 8, minor: 2, micro: 0 }).is_ok());
        assert!(check_version(QemuVersion { major: 8, minor: 1, micro: 9 }).is_err());
    }
}
