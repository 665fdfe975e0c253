//! FUSE mounts in tests: whether FUSE is there, guards that unmount and
//! restore the system's mount helper whatever happens, and mount(8).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Sandbox;

/// Whether FUSE is usable here; fails under `CI=true` when it is not, and
/// says SKIPPED otherwise.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && Command::new("fusermount3").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "FUSE is missing under CI=true");
        eprintln!("SKIPPED: FUSE (/dev/fuse, fusermount3) is not available");
    }
    ok
}

/// Lazily unmounts its directory when dropped, whatever happened.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `done` until it holds; panics after 20 s naming `what`.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A new directory `name` in the sandbox, unmounted when the guard drops.
pub fn dir_in(sandbox: &Sandbox, name: &str) -> (PathBuf, MountGuard) {
    let dir = sandbox.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    (dir.clone(), MountGuard(dir))
}

/// Puts `/sbin/mount.fuse.rvmfs` in place for mount(8), restoring what was
/// there before when dropped.
pub struct SystemHelper {
    previous: Option<PathBuf>,
}

const SYSTEM_HELPER: &str = "/sbin/mount.fuse.rvmfs";

impl SystemHelper {
    pub fn install(sandbox: &Sandbox) -> SystemHelper {
        let previous = std::fs::read_link(SYSTEM_HELPER).ok();
        let _ = std::fs::remove_file(SYSTEM_HELPER);
        let out = sandbox.pmvisor().args(["install"]).assert().success();
        let said = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(said.contains("Linked /sbin/mount.fuse.rvmfs"), "{said}");
        SystemHelper { previous }
    }
}

impl Drop for SystemHelper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SYSTEM_HELPER);
        if let Some(previous) = &self.previous {
            let _ = std::os::unix::fs::symlink(previous, SYSTEM_HELPER);
        }
    }
}

/// `mount -t fuse.rvmfs REGION DIR -o OPTIONS` in the sandbox's environment.
pub fn mount_8(sandbox: &Sandbox, region: &str, dir: &Path, options: &str) -> std::process::Output {
    let mut cmd = Command::new("mount");
    sandbox.env(&mut cmd);
    cmd.args(["-t", "fuse.rvmfs", region]).arg(dir).args(["-o", options]).output().unwrap()
}

/// umount(8) as a user runs it, tried again for up to a second while the
/// mount is "busy": a file closed a moment ago stays open in its close
/// event until the RvmFS server reads it (a scheduler tick or two on busy
/// CPUs). Anything busy for longer fails.
pub fn umount_8(dir: &Path) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let out = Command::new("umount").arg(dir).output().unwrap();
        let busy = String::from_utf8_lossy(&out.stderr).contains("target is busy");
        if out.status.success() || !busy || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
