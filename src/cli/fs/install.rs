//! `pmvisor install`: put the mount helper in place, so that
//! `mount -t fuse.rvmfs REGION DIR` and `/etc/fstab` lines work.
//!
//! Creates `<prefix>/sbin/mount.fuse.rvmfs` as a symlink to the running
//! binary. Idempotent: a correct link is left alone, a link elsewhere is
//! replaced, a regular file is refused.

use std::path::Path;

use anyhow::{bail, Context};

use super::helper::HELPER_NAME;

/// Install the helper under `prefix` (`/` for the system); returns what was
/// done, as a sentence.
pub fn install(prefix: &Path) -> anyhow::Result<String> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("cannot tell where the pmvisor binary is")?;
    let sbin = prefix.join("sbin");
    let link = sbin.join(HELPER_NAME);
    let hint = "run it as root (sudo pmvisor install) or give --prefix";
    std::fs::create_dir_all(&sbin)
        .with_context(|| format!("cannot create {}; {hint}", sbin.display()))?;
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if std::fs::read_link(&link).is_ok_and(|target| target == exe) {
                return Ok(format!(
                    "{} already points to {}; nothing to do.",
                    link.display(),
                    exe.display()
                ));
            }
            std::fs::remove_file(&link)
                .with_context(|| format!("cannot replace {}; {hint}", link.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a symlink; remove it, then run `pmvisor install` again",
            link.display()
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot inspect {}", link.display())),
    }
    std::os::unix::fs::symlink(&exe, &link)
        .with_context(|| format!("cannot create {}; {hint}", link.display()))?;
    Ok(format!(
        "Linked {} to {}; `mount -t fuse.rvmfs REGION DIR` and fuse.rvmfs lines in /etc/fstab \
         now work.",
        link.display(),
        exe.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_links_the_helper_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = install(dir.path()).unwrap();
        assert!(first.starts_with("Linked"), "{first}");
        let link = dir.path().join("sbin").join(HELPER_NAME);
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            std::env::current_exe().unwrap().canonicalize().unwrap()
        );
        assert!(install(dir.path()).unwrap().contains("nothing to do"));
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, "x").unwrap();
        assert!(install(dir.path()).unwrap_err().to_string().contains("is not a symlink"));
    }
}
