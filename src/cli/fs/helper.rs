//! `mount.fuse.rvmfs`: the helper mount(8) runs for `mount -t fuse.rvmfs`
//! and for `/etc/fstab` lines of type `fuse.rvmfs`.
//!
//! mount(8) calls `mount.fuse.rvmfs SOURCE MOUNTPOINT [-o OPTIONS] [-n]
//! [-s] [-v]`. The helper turns that into `pmvisor [--pool P] [--socket S]
//! fs mount SOURCE MOUNTPOINT -o OPTIONS`, taking `pool=P` and `socket=S`
//! out of the options, so it does exactly what `pmvisor fs mount` does.
//! `pmvisor install` links `/sbin/mount.fuse.rvmfs` to the binary.
//!
//! `mount -o remount,ro DIR` (and `rw`) calls the helper too, with the
//! mount's current options and `remount` among them: the helper remounts
//! in place with mount(2) and `MS_REMOUNT`, as for any other filesystem.
//! The kernel then refuses every change with `EROFS` (or `EBUSY` while a
//! file is open for writing); the server and its own options (`commit=`,
//! `sync_close`, ...) stay as they are.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use rustix::mount::MountFlags;

/// The name mount(8) looks for.
pub const HELPER_NAME: &str = "mount.fuse.rvmfs";

/// Whether the binary was started as the mount helper (by `argv[0]`).
pub fn is_helper(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name().is_some_and(|name| name == HELPER_NAME)
}

/// What mount(8) asks of the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperCall {
    /// A new mount: the `pmvisor` command line that makes it.
    Mount(Vec<OsString>),
    /// `-o remount`: change the flags of the mount at a directory in place.
    Remount(Remount),
}

/// A remount: the mount flags the mount at `dir` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remount {
    /// The mount point.
    pub dir: PathBuf,
    /// Read-only, atime, suid, dev and exec flags (without `MS_REMOUNT`).
    pub flags: MountFlags,
}

impl Remount {
    /// Remounts the RvmFS at `dir` with mount(2) (needs `CAP_SYS_ADMIN`).
    pub fn run(&self) -> anyhow::Result<()> {
        let dir = &self.dir;
        if crate::fs::mountinfo::rvmfs_at(dir)?.is_none() {
            return Err(anyhow!(
                "{} has no RvmFS mounted on it; mount one with `mount -t fuse.rvmfs REGION DIR`",
                dir.display()
            ));
        }
        rustix::mount::mount_remount(dir, self.flags, "").with_context(|| {
            format!(
                "cannot remount {}; only root may, and a file open for writing keeps it \
                 read-write",
                dir.display()
            )
        })
    }
}

/// The mount flags `options` ask for, applied in order (the last of `ro`
/// and `rw` wins, as in mount(8)); options that are not mount flags (the
/// filesystem's own, `user_id=`...) are left out.
fn mount_flags<'a>(options: impl IntoIterator<Item = &'a str>) -> MountFlags {
    let mut flags = MountFlags::empty();
    for option in options {
        let (flag, on) = match option {
            "ro" => (MountFlags::RDONLY, true),
            "rw" => (MountFlags::RDONLY, false),
            "nosuid" => (MountFlags::NOSUID, true),
            "suid" => (MountFlags::NOSUID, false),
            "nodev" => (MountFlags::NODEV, true),
            "dev" => (MountFlags::NODEV, false),
            "noexec" => (MountFlags::NOEXEC, true),
            "exec" => (MountFlags::NOEXEC, false),
            "noatime" => (MountFlags::NOATIME, true),
            "atime" => (MountFlags::NOATIME, false),
            "nodiratime" => (MountFlags::NODIRATIME, true),
            "diratime" => (MountFlags::NODIRATIME, false),
            "relatime" => (MountFlags::RELATIME, true),
            "norelatime" => (MountFlags::RELATIME, false),
            "strictatime" => (MountFlags::STRICTATIME, true),
            "nostrictatime" => (MountFlags::STRICTATIME, false),
            _ => continue,
        };
        flags.set(flag, on);
    }
    flags
}

/// What a helper command line (`args[0]` is the helper's own name) asks
/// for, or why it cannot be understood.
pub fn translate(args: &[OsString]) -> Result<HelperCall, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut sloppy, mut verbose) = (false, false);
    let mut rest = args.iter().skip(1).map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-o" => options.push(rest.next().ok_or("-o needs a list of options")?),
            "-t" => {
                rest.next().ok_or("-t needs a filesystem type")?;
            }
            "-n" | "-f" => {}
            "-s" => sloppy = true,
            "-v" => verbose = true,
            _ if arg.starts_with("-o") => options.push(arg[2..].to_string()),
            _ if arg.starts_with('-') && arg.len() > 1 => {
                return Err(format!(
                    "unknown flag {arg}; usage: {HELPER_NAME} REGION DIR [-o OPTIONS]"
                ))
            }
            _ => positional.push(arg),
        }
    }
    let [source, dir] = <[String; 2]>::try_from(positional)
        .map_err(|_| format!("usage: {HELPER_NAME} REGION DIR [-o OPTIONS] [-n] [-s] [-v]"))?;
    let options: Vec<&str> =
        options.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()).collect();
    if options.contains(&"remount") {
        let flags = mount_flags(options.iter().copied());
        return Ok(HelperCall::Remount(Remount { dir: dir.into(), flags }));
    }
    // The old fstab form `rvmfs#REGION` names the region after the `#`.
    let region = source.rsplit('#').next().unwrap_or(&source).to_string();
    let mut out: Vec<OsString> = vec!["pmvisor".into()];
    let mut kept = Vec::new();
    for option in options {
        if let Some(pool) = option.strip_prefix("pool=") {
            out.extend(["--pool".into(), pool.into()]);
        } else if let Some(socket) = option.strip_prefix("socket=") {
            out.extend(["--socket".into(), socket.into()]);
        } else if sloppy && rvmfs::MountOptions::parse(option).is_err() {
            // -s: ignore what we do not understand, as mount(8) asks.
        } else {
            kept.push(option);
        }
    }
    if verbose {
        out.push("-v".into());
    }
    out.extend(["fs".into(), "mount".into(), region.into(), dir.into()]);
    out.extend(["-o".into(), kept.join(",").into()]);
    Ok(HelperCall::Mount(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<OsString> {
        text.split(' ').map(OsString::from).collect()
    }

    fn line(call: HelperCall) -> String {
        let HelperCall::Mount(args) = call else { panic!("not a mount: {call:?}") };
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn mount_8_arguments_become_fs_mount() {
        let out =
            translate(&args("/sbin/mount.fuse.rvmfs home /mnt/h -o rw,commit=5,pool=/p")).unwrap();
        assert_eq!(line(out), "pmvisor --pool /p fs mount home /mnt/h -o rw,commit=5");
        let out = translate(&args("mount.fuse.rvmfs rvmfs#home /m -n -v -osocket=/s")).unwrap();
        assert_eq!(line(out), "pmvisor --socket /s -v fs mount home /m -o ");
    }

    #[test]
    fn sloppy_mounts_drop_unknown_options_and_bad_calls_say_usage() {
        let out = translate(&args("mount.fuse.rvmfs h /m -s -o x-systemd.automount,ro")).unwrap();
        assert_eq!(line(out), "pmvisor fs mount h /m -o ro");
        let out = translate(&args("mount.fuse.rvmfs h /m -o bogus")).unwrap();
        assert!(line(out).ends_with("-o bogus"), "fs mount refuses it with its own sentence");
        assert!(translate(&args("mount.fuse.rvmfs h")).unwrap_err().starts_with("usage:"));
        assert!(translate(&args("mount.fuse.rvmfs h /m -x")).unwrap_err().contains("-x"));
        assert!(is_helper(OsStr::new("/sbin/mount.fuse.rvmfs")));
        assert!(!is_helper(OsStr::new("pmvisor")));
    }

    #[test]
    fn remounts_keep_the_mount_flags_and_the_last_of_ro_and_rw_wins() {
        // What mount(8) passes for `mount -o remount,ro /m` on an RvmFS.
        let call = translate(&args(
            "mount.fuse.rvmfs home /m -o ro,noatime,remount,user_id=0,group_id=0,allow_other",
        ))
        .unwrap();
        let flags = MountFlags::RDONLY | MountFlags::NOATIME;
        assert_eq!(call, HelperCall::Remount(Remount { dir: "/m".into(), flags }));
        let call = translate(&args("mount.fuse.rvmfs h /m -o ro,nosuid,remount,rw,commit=3"));
        let flags = MountFlags::NOSUID;
        assert_eq!(call.unwrap(), HelperCall::Remount(Remount { dir: "/m".into(), flags }));
    }
}
