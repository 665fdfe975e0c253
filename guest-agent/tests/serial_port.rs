//! The `serial:` transport against a pty standing in for the virtio-serial
//! port: the real agent binary opens the pty's terminal as its port, the
//! test plays the host on the pty's master. When the host end goes away,
//! the agent ends the link and retries with a backoff, without spinning.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pmvisor_agent::protocol::{read_frame, write_frame, Message, PROTOCOL_VERSION};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};

/// A pty in raw mode: the master (the host's end) and the terminal's path.
fn raw_pty() -> (File, PathBuf) {
    // CLOEXEC: the agent must not inherit the host's end.
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    // Settings made on the master apply to the terminal's line discipline.
    let mut termios = tcgetattr(&master).unwrap();
    termios.make_raw();
    tcsetattr(&master, OptionalActions::Now, &termios).unwrap();
    let path = PathBuf::from(ptsname(&master, Vec::new()).unwrap().into_string().unwrap());
    (File::from(master), path)
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesized command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn the_agent_talks_over_a_serial_port_and_retries_without_spinning_when_it_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mut host, port) = raw_pty();
    let log = File::create(dir.path().join("agent.log")).unwrap();
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_pmvisor-agent"))
            .arg("run")
            .arg("--connect")
            .arg(format!("serial:{}", port.display()))
            .arg("--no-hint-socket")
            .arg("--sys-block")
            .arg(dir.path())
            .args(["--device", "region-a=1M", "--max-retry-delay-ms", "500"])
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let read_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap();

    match read_frame(&mut host).unwrap() {
        Message::Hello(hello) => assert_eq!(hello.devices[0].serial, "region-a"),
        other => panic!("the agent began with {other:?}"),
    }
    write_frame(&mut host, &Message::Welcome { version: PROTOCOL_VERSION }).unwrap();
    write_frame(&mut host, &Message::Ping { nonce: 9 }).unwrap();
    assert_eq!(read_frame(&mut host).unwrap(), Message::Pong { nonce: 9 });

    // The host end goes away: the agent's reads end, it retries (the pty
    // is gone, so every retry fails) with a backoff, using next to no CPU.
    drop(host);
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(agent.0.id());
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_ticks(agent.0.id()) - before;
    assert!(used <= 10, "{used} ticks of CPU in 1.5 s while the host was away");
    let log = read_log();
    assert!(log.contains("the host closed the connection; reconnecting in"), "{log}");
    assert!(log.contains(&format!("cannot reach the host at serial:{}", port.display())), "{log}");
}
