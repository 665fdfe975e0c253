//! Helpers shared by the tests that run `pmvisor serve` as a real process:
//! a sandbox (private state dir, socket and config), a daemon handle that
//! kills the daemon when dropped, raw HTTP over the control socket; and
//! the test VM (`vm`) and the persistent-VM counter guest (`counter`).

#![allow(dead_code)]

pub mod counter;
pub mod fuse;
pub mod vm;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use assert_cmd::Command;
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;
use tempfile::TempDir;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// A private directory with a state dir, a socket path and an empty config.
pub struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox::in_dir(tempfile::tempdir().unwrap())
    }

    /// A sandbox in memory (`/dev/shm` when there is one), where the pool
    /// and its swap file behave like battery-backed DRAM and syncs are free.
    pub fn in_memory() -> Sandbox {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
        Sandbox::in_dir(dir.unwrap())
    }

    fn in_dir(dir: TempDir) -> Sandbox {
        std::fs::write(dir.path().join("pmvisor.toml"), "").unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pool(&self) -> PathBuf {
        self.path("test.pool")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("pmvisor.sock")
    }

    pub fn env(&self, cmd: &mut StdCommand) {
        cmd.env("PMVISOR_STATE_DIR", self.path("state"))
            .env("PMVISOR_SOCKET", self.socket())
            .env("PMVISOR_CONFIG", self.path("pmvisor.toml"))
            .env_remove("PMVISOR_POOL")
            .env_remove("PMVISOR_LOG")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path());
    }

    /// `pmvisor` with the sandbox's environment and no pool named.
    pub fn pmvisor(&self) -> Command {
        let mut cmd = StdCommand::cargo_bin("pmvisor").unwrap();
        self.env(&mut cmd);
        Command::from_std(cmd)
    }

    /// `pmvisor --pool <sandbox>/test.pool ARGS`.
    pub fn on_pool(&self, args: &[&str]) -> Command {
        let mut cmd = self.pmvisor();
        cmd.arg("--pool").arg(self.pool()).args(args);
        cmd
    }

    pub fn create_pool(&self) {
        self.create_pool_of("64M");
    }

    /// Create the sandbox's pool with `size` (e.g. `128M`).
    pub fn create_pool_of(&self, size: &str) {
        self.pmvisor().args(["pool", "create", "--size", size]).arg(self.pool()).assert().success();
    }

    /// Start `pmvisor serve` with `args` and wait until it answers.
    pub fn serve(&self, args: &[&str]) -> Daemon {
        self.serve_with(args, &[])
    }

    /// [`Sandbox::serve`] with `serve_args` after `serve` (its own flags).
    pub fn serve_with(&self, args: &[&str], serve_args: &[&str]) -> Daemon {
        let log = self.path(&format!("serve-{}.log", rand::random::<u32>()));
        let mut cmd = StdCommand::cargo_bin("pmvisor").unwrap();
        self.env(&mut cmd);
        cmd.args(args)
            .arg("serve")
            .args(serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        let mut daemon = Daemon { child: cmd.spawn().unwrap(), log };
        let socket = socket_arg(args).unwrap_or_else(|| self.socket());
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok((200, _)) = try_http(&socket, "GET", "/v1/health", None) {
                return daemon;
            }
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("serve exited with {status}: {}", daemon.log_text());
            }
            assert!(Instant::now() < deadline, "serve never answered: {}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn socket_arg(args: &[&str]) -> Option<PathBuf> {
    args.windows(2).find(|w| w[0] == "--socket").map(|w| PathBuf::from(w[1]))
}

/// A running daemon, killed on drop unless it already exited.
pub struct Daemon {
    pub child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal).unwrap();
    }

    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Daemon {
    /// SIGKILL the daemon and reap it: no shutdown work runs.
    pub fn kill(&mut self) {
        self.signal(Signal::KILL);
        self.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request over the socket; `(status, body)`.
pub fn try_http(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad answer: {answer}")))?;
    Ok((status, body.to_string()))
}

pub fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, body) = try_http(socket, method, path, body).unwrap();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    };
    (status, value)
}

pub fn stdout_json(cmd: &mut Command) -> Value {
    let out = cmd.arg("--json").assert().success();
    serde_json::from_slice(&out.get_output().stdout).unwrap()
}
