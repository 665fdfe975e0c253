//! Serve a block device over ublk until SIGTERM: the test VM's ublk server.
//!
//! ```text
//! ublk_memdev [--size SIZE] [--file PATH] [--queues N] [--depth N] [--id N]
//!             [--label NAME] [--timeout SECS] [--recover ID]
//! ```
//!
//! Without `--file` it serves a `MemDevice` (contents die with the process);
//! with `--file` a file-backed device, so that `--recover ID` after a
//! SIGKILL reattaches the same data to the surviving `/dev/ublkbID`. When the
//! device is live it prints `LIVE /dev/ublkbN id=N ...` (what the driver
//! reports about it) on stdout; on SIGTERM or
//! SIGINT it stops and deletes the device, prints `STOPPED` with how many
//! requests of each kind it served, and exits 0.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pmvisor_blk::ublk::{device_info, UblkOptions, UblkTarget};
use pmvisor_blk::{check_range, BlockDevice, DeviceError, Extent, MemDevice};

/// A device stored in a regular file: what survives the server's death.
/// Every byte counts as allocated; trim writes zeroes.
struct FileDevice {
    file: File,
    size: u64,
}

impl FileDevice {
    fn open(path: &PathBuf, size: Option<u64>) -> std::io::Result<Self> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if let Some(size) = size {
            if file.metadata()?.len() != size {
                file.set_len(size)?;
            }
        }
        let size = file.metadata()?.len();
        Ok(FileDevice { file, size })
    }

    fn zero(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        check_range(offset, len, self.size)?;
        let zeroes = vec![0u8; 1 << 20];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeroes.len() as u64);
            self.file.write_all_at(&zeroes[..n as usize], pos).map_err(DeviceError::Io)?;
            pos += n;
        }
        Ok(())
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, offset).map_err(DeviceError::Io)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        check_range(offset, data.len() as u64, self.size)?;
        self.file.write_all_at(data, offset).map_err(DeviceError::Io)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(DeviceError::Io)
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.zero(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool) -> Result<(), DeviceError> {
        self.zero(offset, len)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DeviceError> {
        check_range(offset, len, self.size)?;
        Ok(if len == 0 { Vec::new() } else { vec![Extent { len, hole: false, zero: false }] })
    }
}

/// Counts the requests that reach the device, printed on exit so that the
/// VM test can see which operations the kernel really sent.
struct Counted {
    inner: Arc<dyn BlockDevice>,
    counts: [AtomicU64; 6],
}

const COUNT_NAMES: [&str; 6] = ["reads", "writes", "fua", "flushes", "discards", "write_zeroes"];

impl Counted {
    fn bump(&self, which: usize) {
        self.counts[which].fetch_add(1, Ordering::Relaxed);
    }

    fn summary(&self) -> String {
        let counts = COUNT_NAMES.iter().zip(&self.counts);
        counts.map(|(name, n)| format!("{name}={} ", n.load(Ordering::Relaxed))).collect()
    }
}

impl BlockDevice for Counted {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.bump(0);
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        self.bump(if fua { 2 } else { 1 });
        self.inner.write_at(offset, data, fua)
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.bump(3);
        self.inner.flush()
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.bump(4);
        self.inner.trim(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> Result<(), DeviceError> {
        self.bump(5);
        self.inner.write_zeroes(offset, len, may_trim)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DeviceError> {
        self.inner.block_status(offset, len)
    }
}

struct Args {
    size: Option<u64>,
    file: Option<PathBuf>,
    opts: UblkOptions,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { size: None, file: None, opts: UblkOptions::default() };
    args.opts.label = "ublk_memdev".into();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u32>().map_err(|_| format!("bad number {v:?}"));
        let small = |v: String| v.parse::<u16>().map_err(|_| format!("bad number {v:?}"));
        match flag.as_str() {
            "--size" => args.size = Some(parse_size(&value()?)?),
            "--file" => args.file = Some(value()?.into()),
            "--queues" => args.opts.queues = small(value()?)?,
            "--depth" => args.opts.depth = small(value()?)?,
            "--id" => args.opts.id = Some(number(value()?)?),
            "--label" => args.opts.label = value()?,
            "--timeout" => args.opts.start_timeout = Duration::from_secs(number(value()?)?.into()),
            "--recover" => {
                args.opts.id = Some(number(value()?)?);
                args.opts.recover = true;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ublk_memdev: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let dev: Arc<dyn BlockDevice> = match &args.file {
        Some(path) => Arc::new(
            FileDevice::open(path, args.size)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
        ),
        None => Arc::new(MemDevice::new(args.size.unwrap_or(64 << 20))),
    };

    // Signal handlers first, so that a SIGTERM right after LIVE is ours.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the signal runtime: {e}"))?;
    let mut signals = rt
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let counted = Arc::new(Counted { inner: dev, counts: Default::default() });
    let handle = UblkTarget::serve(counted.clone(), args.opts).map_err(|e| error_chain(&e))?;
    let mut out = std::io::stdout();
    let info = device_info(handle.dev_id()).map_err(|e| error_chain(&e))?;
    let _ = writeln!(
        out,
        "LIVE {} id={} state={} queues={} depth={} recoverable={} reissue={} label={}",
        handle.path().display(),
        info.id,
        info.state,
        info.queues,
        info.depth,
        info.recoverable,
        info.reissue,
        info.label.as_deref().unwrap_or("-"),
    );
    let _ = out.flush();

    rt.block_on(async {
        tokio::select! {
            _ = signals.0.recv() => {}
            _ = signals.1.recv() => {}
        }
    });
    handle.stop().map_err(|e| error_chain(&e))?;
    let _ = writeln!(out, "STOPPED {}", counted.summary().trim_end());
    Ok(())
}

/// The error and its causes on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        source = cause.source();
    }
    msg
}
