//! `pmvisor serve` as a real process on a real Unix socket: the CLI routed
//! through it, the control API's answers (raw HTTP written by hand), the
//! metrics, the pool lock, signals and the socket file's life cycle.
//!
//! Every daemon is killed by a drop guard if a test fails; waits poll with a
//! deadline instead of sleeping blindly.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use assert_cmd::Command;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(10);

/// A private directory with a state dir, a socket path and an empty config.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pmvisor.toml"), "").unwrap();
        Sandbox { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pool(&self) -> PathBuf {
        self.path("test.pool")
    }

    fn socket(&self) -> PathBuf {
        self.path("pmvisor.sock")
    }

    fn env(&self, cmd: &mut StdCommand) {
        cmd.env("PMVISOR_STATE_DIR", self.path("state"))
            .env("PMVISOR_SOCKET", self.socket())
            .env("PMVISOR_CONFIG", self.path("pmvisor.toml"))
            .env_remove("PMVISOR_POOL")
            .env_remove("PMVISOR_LOG")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path());
    }

    /// `pmvisor` with the sandbox's environment and no pool named.
    fn pmvisor(&self) -> Command {
        let mut cmd = StdCommand::cargo_bin("pmvisor").unwrap();
        self.env(&mut cmd);
        Command::from_std(cmd)
    }

    /// `pmvisor --pool <sandbox>/test.pool ARGS`.
    fn on_pool(&self, args: &[&str]) -> Command {
        let mut cmd = self.pmvisor();
        cmd.arg("--pool").arg(self.pool()).args(args);
        cmd
    }

    fn create_pool(&self) {
        self.pmvisor()
            .args(["pool", "create", "--size", "64M"])
            .arg(self.pool())
            .assert()
            .success();
    }

    /// Start `pmvisor serve` with `args` and wait until it answers.
    fn serve(&self, args: &[&str]) -> Daemon {
        let log = self.path(&format!("serve-{}.log", rand::random::<u32>()));
        let mut cmd = StdCommand::cargo_bin("pmvisor").unwrap();
        self.env(&mut cmd);
        cmd.args(args)
            .arg("serve")
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
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal).unwrap();
    }

    fn wait(&mut self) -> ExitStatus {
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

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request over the socket; `(status, body)`.
fn try_http(
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

fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, body) = try_http(socket, method, path, body).unwrap();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    };
    (status, value)
}

fn stdout_json(cmd: &mut Command) -> Value {
    let out = cmd.arg("--json").assert().success();
    serde_json::from_slice(&out.get_output().stdout).unwrap()
}

#[test]
fn commands_go_through_the_daemon_while_it_holds_the_pool() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    let via_daemon = format!("using the daemon (PID {})", daemon.pid());

    // The pool is locked by the daemon, so these can only work through it.
    sandbox
        .on_pool(&["-v", "pool", "info"])
        .assert()
        .success()
        .stdout(contains("64.0 MiB"))
        .stderr(contains(via_daemon.as_str()));
    sandbox
        .on_pool(&["-v", "region", "create", "vm1", "--size", "8M"])
        .assert()
        .success()
        .stdout("Created block region vm1: 8.0 MiB.\n")
        .stderr(contains(via_daemon.as_str()));
    sandbox
        .on_pool(&["region", "create", "ram", "--size", "4M", "--kind", "memory"])
        .assert()
        .success();
    // No pool named: whatever pool the daemon serves.
    let list = stdout_json(sandbox.pmvisor().args(["region", "list"]));
    let names: Vec<_> = list.as_array().unwrap().iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, ["ram", "vm1"]);
    assert!(!sandbox.path("state").exists(), "the default pool was created");

    assert_eq!(stdout_json(&mut sandbox.on_pool(&["region", "show", "ram"]))["kind"], "memory");
    assert_eq!(
        stdout_json(&mut sandbox.on_pool(&["region", "rename", "vm1", "vm2"]))["name"],
        "vm2"
    );
    assert_eq!(
        stdout_json(&mut sandbox.on_pool(&["region", "resize", "vm2", "--size", "16M"]))["size"],
        16 << 20
    );
    sandbox
        .on_pool(&["region", "delete", "ram"])
        .assert()
        .success()
        .stdout("Deleted region ram.\n");
    sandbox
        .on_pool(&["region", "show", "ram"])
        .assert()
        .code(1)
        .stderr("error: no region named \"ram\"; `pmvisor region list` shows the regions\n");
    sandbox
        .on_pool(&["pool", "check"])
        .assert()
        .success()
        .stdout(contains("Checked 1 region:").and(contains("No problems found.")));
    sandbox.on_pool(&["pool", "check", "--repair"]).assert().code(1).stderr(contains(format!(
        "repair needs the pool closed, but the daemon (PID {})",
        daemon.pid()
    )));
    let info = stdout_json(&mut sandbox.on_pool(&["pool", "info"]));
    assert_eq!(info["regions"], 1);
    assert_eq!(info["path"], sandbox.pool().canonicalize().unwrap().to_str().unwrap());
}

#[test]
fn a_command_that_cannot_reach_the_daemon_names_the_pid_holding_the_pool() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    let elsewhere = sandbox.path("elsewhere.sock");
    sandbox
        .on_pool(&["region", "list"])
        .arg("--socket")
        .arg(&elsewhere)
        .assert()
        .code(1)
        .stderr(contains(format!("is in use by process {}", daemon.pid())))
        .stderr(contains(format!(
            "run the command through the daemon (--socket {})",
            elsewhere.display()
        )));
}

#[test]
fn a_daemon_serving_another_pool_is_not_used_for_a_named_pool() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let other = sandbox.path("other.pool");
    sandbox.pmvisor().args(["pool", "create", "--size", "16M"]).arg(&other).assert().success();
    let _daemon = sandbox.serve(&["--pool", other.to_str().unwrap()]);
    sandbox.on_pool(&["region", "create", "direct", "--size", "1M"]).assert().success();
    // The daemon's pool did not get it; the named pool did.
    let (_, regions) = http(&sandbox.socket(), "GET", "/v1/regions", None);
    assert_eq!(regions, Value::Array(vec![]));
    let (status, _) = http(&sandbox.socket(), "GET", "/v1/regions/direct", None);
    assert_eq!(status, 404);
}

#[test]
fn api_errors_are_json_sentences_with_the_right_status() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let _daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    let socket = sandbox.socket();

    let (status, region) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "a", "size": 1048576}"#));
    assert_eq!(status, 201, "{region}");
    assert_eq!(region["kind"], "block");
    assert_eq!(region["size"], 1 << 20);

    let (status, body) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "b", "size": 1, "colour": "red"}"#));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("unknown field `colour`"), "{body}");

    let (status, body) = http(&socket, "POST", "/v1/regions", Some(r#"{"name": "b", "#));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("the request body is not valid"), "{body}");

    let (status, body) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "a", "size": 4096}"#));
    assert_eq!(status, 409);
    assert_eq!(body["error"], "region \"a\" already exists; pick another name or delete it first");

    let (status, body) = http(&socket, "GET", "/v1/regions/ghost", None);
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no region named \"ghost\"; `pmvisor region list` shows the regions");

    let (status, body) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "huge", "size": 1099511627776}"#));
    assert_eq!(status, 507);
    assert!(body["error"].as_str().unwrap().contains("but the pool has only"), "{body}");

    let (status, body) =
        http(&socket, "POST", "/v1/regions", Some(r#"{"name": "a/b", "size": 4096}"#));
    assert_eq!(status, 400, "{body}");

    let (status, body) = http(&socket, "POST", "/v1/regions/a/resize", Some(r#"{"size": "big"}"#));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("invalid type"), "{body}");

    let (status, body) =
        http(&socket, "POST", "/v1/regions/a/rename", Some(r#"{"new_name": "c"}"#));
    assert_eq!((status, body["name"].as_str()), (200, Some("c")));

    let (status, body) = http(&socket, "DELETE", "/v1/regions/c", None);
    assert_eq!((status, body), (204, Value::Null));

    let (status, body) = http(&socket, "GET", "/v2/nothing", None);
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().starts_with("there is no endpoint /v2/nothing"));

    let (status, body) = http(&socket, "PUT", "/v1/pool", None);
    assert_eq!(status, 405);
    assert!(body["error"].is_string());

    let (status, health) = http(&socket, "GET", "/v1/health", None);
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["pool"], sandbox.pool().canonicalize().unwrap().to_str().unwrap());
}

#[test]
fn metrics_show_the_pool_regions_and_requests() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let _daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    sandbox.on_pool(&["region", "create", "vm1", "--size", "8M"]).assert().success();
    let (status, text) = try_http(&sandbox.socket(), "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    for line in [
        "pmvisor_pool_size_bytes 67108864",
        "pmvisor_regions 1",
        "pmvisor_region_size_bytes{name=\"vm1\"} 8388608",
        "pmvisor_gate_in_flight 0",
        "pmvisor_api_requests_total{method=\"POST\",route=\"/v1/regions\",status=\"201\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains("pmvisor_pool_free_pages "), "{text}");
    assert!(text.contains("pmvisor_pool_data_pages "), "{text}");
}

#[test]
fn a_second_daemon_on_the_same_pool_names_the_first_ones_pid() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let first = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    sandbox
        .on_pool(&["serve", "--socket"])
        .arg(sandbox.path("second.sock"))
        .timeout(DEADLINE)
        .assert()
        .code(1)
        .stderr(contains(format!("is in use by process {}", first.pid())));
    assert!(!sandbox.path("second.sock").exists());
}

#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let other = sandbox.path("other.pool");
    sandbox.pmvisor().args(["pool", "create", "--size", "16M"]).arg(&other).assert().success();

    // A socket file nobody listens on is replaced.
    drop(UnixListener::bind(sandbox.socket()).unwrap());
    let first = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);

    sandbox
        .pmvisor()
        .arg("--pool")
        .arg(&other)
        .arg("serve")
        .timeout(DEADLINE)
        .assert()
        .code(1)
        .stderr(contains(format!(
            "another pmvisor daemon (PID {}, pool {}) is already listening on {}",
            first.pid(),
            sandbox.pool().canonicalize().unwrap().display(),
            sandbox.socket().display()
        )));
}

#[test]
fn sigterm_drains_exits_zero_and_removes_the_socket() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let socket = sandbox.path("run/pmvisor/api.sock");
    let mut daemon = sandbox.serve(&[
        "--pool",
        sandbox.pool().to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let log = daemon.log_text();
    assert!(log.contains("pmvisor daemon serving"), "{log}");
    assert!(log.contains(&format!("pid={}", daemon.pid())), "{log}");

    daemon.signal(Signal::TERM);
    let status = daemon.wait();
    assert!(status.success(), "{status}: {}", daemon.log_text());
    assert!(!socket.exists());
    assert!(daemon.log_text().contains("received SIGTERM"));
    // The pool is free again for a direct open.
    sandbox.on_pool(&["region", "list"]).arg("--socket").arg(&socket).assert().success();
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let sandbox = Sandbox::new();
    let mut daemon = sandbox.serve(&[]);
    // serve without --pool created the default pool.
    assert!(sandbox.path("state/default.pool").exists());
    assert!(daemon.log_text().contains("note: creating the default pool"));
    daemon.signal(Signal::INT);
    assert!(daemon.wait().success(), "{}", daemon.log_text());
    assert!(!sandbox.socket().exists());
}
