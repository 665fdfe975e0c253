//! `mount.fuse.rvmfs`: the helper mount(8) runs for `mount -t fuse.rvmfs`
//! and for `/etc/fstab` lines of type `fuse.rvmfs`.
//!
//! mount(8) calls `mount.fuse.rvmfs SOURCE MOUNTPOINT [-o OPTIONS] [-n]
//! [-s] [-v]`. The helper turns that into `pmvisor [--pool P] [--socket S]
//! fs mount SOURCE MOUNTPOINT -o OPTIONS`, taking `pool=P` and `socket=S`
//! out of the options, so it does exactly what `pmvisor fs mount` does.
//! `pmvisor install` links `/sbin/mount.fuse.rvmfs` to the binary.

use std::ffi::{OsStr, OsString};
use std::path::Path;

/// The name mount(8) looks for.
pub const HELPER_NAME: &str = "mount.fuse.rvmfs";

/// Whether the binary was started as the mount helper (by `argv[0]`).
pub fn is_helper(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name().is_some_and(|name| name == HELPER_NAME)
}

/// The `pmvisor` command line for a helper command line (`args[0]` is the
/// helper's own name), or why it cannot be understood.
pub fn translate(args: &[OsString]) -> Result<Vec<OsString>, String> {
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
    // The old fstab form `rvmfs#REGION` names the region after the `#`.
    let region = source.rsplit('#').next().unwrap_or(&source).to_string();
    let mut out: Vec<OsString> = vec!["pmvisor".into()];
    let mut kept = Vec::new();
    for option in options.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<OsString> {
        text.split(' ').map(OsString::from).collect()
    }

    fn line(args: Vec<OsString>) -> String {
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
}
