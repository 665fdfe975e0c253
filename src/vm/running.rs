//! [`Vms`]: the QEMUs of a pool's persistent VMs that this process knows,
//! each with the QMP session it keeps.
//!
//! A VM joins by [`Vms::start`] (pmvisor launches QEMU from the VM's
//! record), by [`Vms::register`] (someone else, e.g. libvirt, started QEMU
//! with `pmvisor vm qemu-args`; pmvisor adopts its QMP socket) or by
//! [`Vms::resume`] of a saved state. The power-outage path calls
//! [`Vms::save_all`] (every VM paused and saved in parallel, within a
//! deadline) and, when power comes back in time, [`Vms::cancel_all`].
//!
//! QEMUs pmvisor launches run in their own process group, so they outlive
//! the daemon (a daemon restart re-adopts them with [`Vms::adopt_running`])
//! and a terminal's Ctrl-C does not reach them.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::launch::{LaunchPlan, VmPaths};
use super::qmp::Qmp;
use super::save::{self, ResumeKind, VmResumeReport, VmSaveReport};
use super::version::{check_binary, check_version};
use super::VmError;
use crate::pool::Pool;

/// How long a launched QEMU may take to answer on QMP.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a QMP command outside the power-outage path may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits for QEMU to exit after `quit`.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running VM as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The VM.
    pub name: String,
    /// QEMU's run state (`running`, `paused`, `postmigrate`, ...), or
    /// `unreachable` when its QMP socket does not answer.
    pub state: String,
    /// QEMU's process id, when pmvisor launched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The QMP socket pmvisor keeps.
    pub qmp: PathBuf,
    /// Whether someone else started this QEMU (`pmvisor vm register`).
    pub registered: bool,
    /// QEMU's version.
    pub qemu: String,
}

#[derive(Debug)]
struct Instance {
    name: String,
    qmp: Qmp,
    child: Mutex<Option<Child>>,
    state_file: PathBuf,
    /// Set by a save, cleared by a resume: what `cancel_all` continues.
    paused_by_save: AtomicBool,
}

impl Instance {
    fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    /// The QEMU's process id: launched here, or the QMP socket's peer.
    fn qemu_pid(&self) -> Option<u32> {
        self.pid().or(self.qmp.peer_pid())
    }

    /// Set the QEMU's threads to niceness `nice` (see `priority`).
    fn set_nice(&self, nice: i32) {
        let Some(pid) = self.qemu_pid() else { return };
        if let Err(err) = super::priority::set_nice(pid, nice) {
            tracing::debug!(vm = %self.name, pid, "cannot set the niceness of QEMU to {nice}: {err}");
        }
    }

    /// Whether the QEMU pmvisor launched has exited (reaped here).
    fn exited(&self) -> bool {
        lock(&self.child).as_mut().is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_some()))
    }
}

/// The persistent VMs of one pool that run now.
#[derive(Debug)]
pub struct Vms {
    pool: Arc<Pool>,
    paths: VmPaths,
    qemu: PathBuf,
    running: Mutex<BTreeMap<String, Arc<Instance>>>,
    /// The version of `qemu`, once checked (a resume should not wait for
    /// `qemu --version`: it is checked on a thread of its own as soon as
    /// the VMs are set up).
    qemu_version: Arc<std::sync::OnceLock<super::version::QemuVersion>>,
    /// Names being started, so two starts of one VM cannot race.
    starting: Mutex<BTreeSet<String>>,
}

impl Vms {
    /// No VM running yet; QEMU is `$PMVISOR_QEMU`, else
    /// `qemu-system-x86_64` on PATH.
    pub fn new(pool: Arc<Pool>, paths: VmPaths) -> Vms {
        let qemu = std::env::var_os("PMVISOR_QEMU")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from);
        let qemu_version: Arc<std::sync::OnceLock<_>> = Arc::default();
        let (binary, version) = (qemu.clone(), Arc::clone(&qemu_version));
        // Failing here is not an error yet: the first launch checks again
        // and says what is wrong.
        let _ = std::thread::Builder::new().name("qemu-version".into()).spawn(move || {
            if let Ok(found) = check_binary(&binary) {
                let _ = version.set(found);
            }
        });
        Vms {
            pool,
            paths,
            qemu,
            running: Mutex::default(),
            qemu_version,
            starting: Mutex::default(),
        }
    }

    /// Where the VMs' files go.
    pub fn paths(&self) -> &VmPaths {
        &self.paths
    }

    /// The QEMU program.
    pub fn qemu(&self) -> &Path {
        &self.qemu
    }

    /// The pool the VMs' RAM lives in.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The launch plan of VM `name`.
    pub fn plan(&self, name: &str) -> Result<LaunchPlan, VmError> {
        LaunchPlan::load(&self.pool, name, &self.paths)
    }

    /// Launch VM `name`'s QEMU, booting it.
    pub async fn start(&self, name: &str) -> Result<VmStatus, VmError> {
        let _starting = self.claim(name)?;
        let plan = self.plan(name)?;
        if plan.state.exists() {
            return Err(VmError::InvalidSpec(format!(
                "VM {name} has a saved state at {}; resume it with `pmvisor vm resume {name}` \
                 (or discard the state with `pmvisor vm stop {name}`)",
                plan.state.display()
            )));
        }
        let instance = self.launch(&plan, plan.args(), Instant::now() + START_TIMEOUT).await?;
        self.insert(instance);
        self.status(name).await
    }

    /// Adopt the QEMU of VM `name` that listens for QMP at `qmp`. It must
    /// keep its RAM in a shared memory backend of the VM's size (as
    /// `pmvisor vm qemu-args` starts it), or a save could not leave the
    /// RAM in the pool.
    pub async fn register(&self, name: &str, qmp_path: &Path) -> Result<VmStatus, VmError> {
        let _starting = self.claim(name)?;
        let record = super::spec::load(&self.pool, name)?;
        let qmp = Qmp::connect(qmp_path, COMMAND_TIMEOUT)
            .await
            .map_err(|source| VmError::Qmp { name: name.into(), source })?;
        check_version(qmp.version())?;
        let memdevs = qmp
            .execute("query-memdev", Value::Null)
            .await
            .map_err(|source| VmError::Qmp { name: name.into(), source })?;
        let shared = memdevs.as_array().into_iter().flatten().any(|m| {
            m["share"].as_bool() == Some(true) && m["size"].as_u64() == Some(record.spec.memory)
        });
        if !shared {
            return Err(VmError::InvalidSpec(format!(
                "the QEMU at {} does not keep VM {name}'s {} MiB of RAM in a shared memory \
                 backend; start it with the arguments of `pmvisor vm qemu-args {name}`",
                qmp_path.display(),
                record.spec.memory >> 20
            )));
        }
        save::prepare(name, &qmp, Instant::now() + COMMAND_TIMEOUT).await?;
        self.insert(Instance {
            name: name.into(),
            qmp,
            child: Mutex::new(None),
            state_file: self.paths.state(name),
            paused_by_save: AtomicBool::new(false),
        });
        self.status(name).await
    }

    /// Adopt every VM of the pool whose QMP socket in the run directory
    /// answers (QEMUs that outlived the last daemon); the names adopted.
    pub async fn adopt_running(&self) -> Vec<String> {
        let mut adopted = Vec::new();
        for record in super::spec::list(&self.pool).into_iter().flatten() {
            let qmp = self.paths.qmp(&record.name);
            if !qmp.exists() || self.get(&record.name).is_some() {
                continue;
            }
            match self.register(&record.name, &qmp).await {
                Ok(_) => adopted.push(record.name),
                Err(err) => tracing::debug!(vm = %record.name, "not adopted: {err}"),
            }
        }
        adopted
    }

    /// Pause and save every VM, all in parallel, each within `deadline`;
    /// one report per VM, by name.
    pub async fn save_all(&self, deadline: Instant) -> Vec<VmSaveReport> {
        let instances: Vec<Arc<Instance>> = lock(&self.running).values().cloned().collect();
        let mut tasks = tokio::task::JoinSet::new();
        for instance in instances {
            tasks.spawn(save_one(instance, deadline));
        }
        let mut reports = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(report) => reports.push(report),
                Err(err) => tracing::error!("a VM save task failed: {err}"),
            }
        }
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }

    /// Pause and save VM `name` within `deadline`.
    pub async fn save(&self, name: &str, deadline: Instant) -> Result<VmSaveReport, VmError> {
        let instance = self.get(name).ok_or_else(|| VmError::NotRunning { name: name.into() })?;
        Ok(save_one(instance, deadline).await)
    }

    /// Power came back: let every VM a save paused run again (its saved
    /// state is discarded, the VM goes on from where it is).
    pub async fn cancel_all(&self) -> Vec<VmResumeReport> {
        let instances: Vec<Arc<Instance>> = lock(&self.running)
            .values()
            .filter(|i| i.paused_by_save.load(Ordering::Acquire))
            .cloned()
            .collect();
        let mut reports = Vec::new();
        for instance in instances {
            reports.push(self.cont(&instance).await);
        }
        reports
    }

    /// Let VM `name` run again: `cont` if its QEMU is here and paused,
    /// else start a new QEMU from its saved state.
    pub async fn resume(&self, name: &str) -> Result<VmResumeReport, VmError> {
        if let Some(instance) = self.get(name) {
            if !instance.exited() {
                let report = self.cont(&instance).await;
                return match &report.error {
                    None => Ok(report),
                    Some(_) => Err(VmError::Migration {
                        name: name.into(),
                        what: "resume",
                        detail: report.error.unwrap_or_default(),
                    }),
                };
            }
            lock(&self.running).remove(name);
        }
        let _starting = self.claim(name)?;
        let plan = self.plan(name)?;
        if !plan.state.exists() {
            return Err(VmError::NoSavedState { name: name.into(), path: plan.state.clone() });
        }
        let start = Instant::now();
        let deadline = start + START_TIMEOUT;
        let instance = self.launch(&plan, plan.incoming_args(), deadline).await?;
        let restored = match save::restore(name, &instance.qmp, &plan.state, deadline).await {
            Ok(restored) => restored,
            Err(err) => {
                kill(&instance);
                return Err(err);
            }
        };
        // The state is spent: the guest's RAM moves on from it.
        if let Err(err) = std::fs::remove_file(&plan.state) {
            tracing::warn!(vm = %name, "cannot remove the spent state {}: {err}", plan.state.display());
        }
        self.insert(instance);
        Ok(VmResumeReport {
            name: name.into(),
            resumed: true,
            how: ResumeKind::Restore,
            error: None,
            restore_us: micros(restored),
            total_us: micros(start.elapsed()),
        })
    }

    /// Shut VM `name` down (QMP `quit`) and forget it; without a QEMU,
    /// discard its saved state so the next start boots afresh.
    pub async fn stop(&self, name: &str) -> Result<(), VmError> {
        let Some(instance) = lock(&self.running).remove(name) else {
            let state = self.paths.state(name);
            super::spec::load(&self.pool, name)?;
            return match std::fs::remove_file(&state) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    Err(VmError::NotRunning { name: name.into() })
                }
                Err(source) => Err(VmError::Files { name: name.into(), path: state, source }),
            };
        };
        let quit = instance.qmp.execute_by("quit", Value::Null, Instant::now() + COMMAND_TIMEOUT);
        if let Err(err) = quit.await {
            tracing::warn!(vm = %name, "QMP quit failed ({err}); killing QEMU");
            kill(&instance);
        }
        let waited = Instant::now();
        while instance.pid().is_some() && !instance.exited() {
            if waited.elapsed() > QUIT_TIMEOUT {
                kill(&instance);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The VMs that run now, by name.
    pub async fn list(&self) -> Vec<VmStatus> {
        let names: Vec<String> = lock(&self.running).keys().cloned().collect();
        let mut list = Vec::new();
        for name in names {
            if let Ok(status) = self.status(&name).await {
                list.push(status);
            }
        }
        list
    }

    /// VM `name` as it runs now.
    pub async fn status(&self, name: &str) -> Result<VmStatus, VmError> {
        let instance = self.get(name).ok_or_else(|| VmError::NotRunning { name: name.into() })?;
        let deadline = Instant::now() + Duration::from_secs(2);
        let state = if instance.exited() {
            "exited".to_string()
        } else {
            match instance.qmp.execute_by("query-status", Value::Null, deadline).await {
                Ok(status) => status["status"].as_str().unwrap_or("unknown").to_string(),
                Err(_) => "unreachable".to_string(),
            }
        };
        let registered = lock(&instance.child).is_none();
        Ok(VmStatus {
            name: name.into(),
            state,
            pid: instance.pid(),
            qmp: instance.qmp.path().to_path_buf(),
            registered,
            qemu: instance.qmp.version().to_string(),
        })
    }

    /// QEMU's process id of VM `name`, when pmvisor launched it.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.get(name)?.pid()
    }

    fn get(&self, name: &str) -> Option<Arc<Instance>> {
        lock(&self.running).get(name).cloned()
    }

    fn insert(&self, instance: Instance) {
        lock(&self.running).insert(instance.name.clone(), Arc::new(instance));
    }

    /// Claim `name` for a start; refused while it runs or starts.
    fn claim(&self, name: &str) -> Result<Claim<'_>, VmError> {
        if let Some(instance) = self.get(name) {
            if !instance.exited() {
                return Err(VmError::Running {
                    name: name.into(),
                    qmp: instance.qmp.path().into(),
                });
            }
            lock(&self.running).remove(name);
        }
        if !lock(&self.starting).insert(name.to_string()) {
            return Err(VmError::Running { name: name.into(), qmp: self.paths.qmp(name) });
        }
        Ok(Claim { vms: self, name: name.to_string() })
    }

    /// Spawn QEMU with `args` and connect to its QMP socket.
    async fn launch(
        &self,
        plan: &LaunchPlan,
        args: Vec<String>,
        deadline: Instant,
    ) -> Result<Instance, VmError> {
        let name = plan.name();
        if self.qemu_version.get().is_none() {
            let qemu = self.qemu.clone();
            let checked = tokio::task::spawn_blocking(move || check_binary(&qemu)).await;
            let version = checked.map_err(|err| VmError::Spawn {
                name: name.into(),
                source: std::io::Error::other(err.to_string()),
            })??;
            let _ = self.qemu_version.set(version);
        }
        let files = |path: &Path| {
            let path = path.to_path_buf();
            move |source| VmError::Files { name: name.into(), path, source }
        };
        for dir in [&self.paths.run_dir, &self.paths.state_dir] {
            std::fs::create_dir_all(dir).map_err(files(dir))?;
        }
        match std::fs::remove_file(&plan.qmp) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(files(&plan.qmp)(err))
            }
            _ => {}
        }
        let log_path = self.paths.log(name);
        let log = std::fs::File::create(&log_path).map_err(files(&log_path))?;
        let child = Command::new(&self.qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|source| VmError::Spawn { name: name.into(), source })?;
        let pid = child.id();
        let child = Mutex::new(Some(child));
        let qmp = loop {
            let attempt =
                Qmp::connect_when_ready(&plan.qmp, Instant::now() + Duration::from_millis(100));
            match attempt.await {
                Ok(qmp) => break qmp,
                Err(source) => {
                    let exited = lock(&child).as_mut().and_then(|c| c.try_wait().ok().flatten());
                    if let Some(status) = exited {
                        let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
                        return Err(VmError::Exited {
                            name: name.into(),
                            status: status.to_string(),
                            stderr: stderr.trim().lines().last().unwrap_or("").to_string(),
                        });
                    }
                    if Instant::now() >= deadline {
                        if let Some(mut c) = lock(&child).take() {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                        return Err(VmError::Qmp { name: name.into(), source });
                    }
                }
            }
        };
        if let Err(err) = save::prepare(name, &qmp, deadline).await {
            if let Some(mut c) = lock(&child).take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(err);
        }
        tracing::info!(vm = %name, pid, qmp = %plan.qmp.display(), "QEMU {} started", qmp.version());
        Ok(Instance {
            name: name.into(),
            qmp,
            child,
            state_file: plan.state.clone(),
            paused_by_save: AtomicBool::new(false),
        })
    }

    async fn cont(&self, instance: &Instance) -> VmResumeReport {
        let start = Instant::now();
        let result = save::cont(&instance.name, &instance.qmp, start + COMMAND_TIMEOUT).await;
        if result.is_ok() {
            instance.set_nice(0);
            instance.paused_by_save.store(false, Ordering::Release);
            // The saved state is stale once the guest runs on.
            let _ = std::fs::remove_file(&instance.state_file);
        }
        VmResumeReport {
            name: instance.name.clone(),
            resumed: result.is_ok(),
            how: ResumeKind::Cont,
            error: result.err().map(|err| crate::daemon::api::sentence(&err)),
            restore_us: 0,
            total_us: micros(start.elapsed()),
        }
    }
}

/// Save one VM; never fails, the report says what happened.
async fn save_one(instance: Arc<Instance>, deadline: Instant) -> VmSaveReport {
    let start = Instant::now();
    instance.set_nice(super::priority::SAVING_NICE);
    let result = save::save(&instance.name, &instance.qmp, &instance.state_file, deadline).await;
    // Whatever happened, the VM may be stopped now: cancel must `cont` it.
    instance.paused_by_save.store(true, Ordering::Release);
    let total_us = micros(start.elapsed());
    let mut report = VmSaveReport {
        name: instance.name.clone(),
        state_file: instance.state_file.clone(),
        saved: false,
        error: None,
        state_bytes: 0,
        stop_us: 0,
        migrate_us: 0,
        sync_us: 0,
        total_us,
    };
    match result {
        Ok(t) => {
            report.saved = true;
            report.state_bytes = t.state_bytes;
            report.stop_us = micros(t.stop);
            report.migrate_us = micros(t.migrate);
            report.sync_us = micros(t.sync);
            tracing::info!(vm = %instance.name, bytes = t.state_bytes, total_us, "VM saved");
        }
        Err(err) => {
            let sentence = crate::daemon::api::sentence(&err);
            tracing::error!(vm = %instance.name, "VM not saved: {sentence}");
            report.error = Some(sentence);
        }
    }
    report
}

fn kill(instance: &Instance) {
    if let Some(child) = lock(&instance.child).as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A start in progress; the name is released on drop.
struct Claim<'a> {
    vms: &'a Vms,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.vms.starting).remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::CreateOptions;
    use crate::vm::spec::VmSpec;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// How a fake QEMU treats `stop`.
    #[derive(Clone, Copy)]
    enum OnStop {
        /// Closes the connection (QEMU died).
        Die,
        /// Never answers (QEMU hangs).
        Hang,
    }

    /// A fake QEMU on `path` with `memory` bytes of shared RAM.
    async fn fake_qemu(path: &Path, memory: u64, on_stop: OnStop) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}}, "capabilities": []}}"#;
            write.write_all(format!("{greeting}\n").as_bytes()).await.unwrap();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let request: Value = serde_json::from_str(&line).unwrap();
                let answer = match request["execute"].as_str().unwrap() {
                    "query-memdev" => serde_json::json!([{ "size": memory, "share": true }]),
                    "query-status" => serde_json::json!({ "status": "running" }),
                    "stop" => match on_stop {
                        OnStop::Die => return,
                        OnStop::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    },
                    _ => serde_json::json!({}),
                };
                let reply = serde_json::json!({ "return": answer, "id": request["id"] });
                write.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            }
        });
    }

    #[test]
    fn a_dead_or_hung_qemu_is_reported_by_its_save_and_costs_at_most_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let options = CreateOptions { size: 16 << 20, ..CreateOptions::default() };
        let pool = Arc::new(Pool::create(&dir.path().join("p.pool"), &options).unwrap());
        let paths =
            VmPaths { run_dir: dir.path().join("run"), state_dir: dir.path().join("state") };
        let vms = Vms::new(Arc::clone(&pool), paths);
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            for (name, on_stop) in [("dead", OnStop::Die), ("hung", OnStop::Hang)] {
                crate::vm::spec::create(&pool, name, &VmSpec::new(1 << 20)).unwrap();
                let qmp = dir.path().join(format!("{name}.qmp"));
                fake_qemu(&qmp, 1 << 20, on_stop).await;
                let status = vms.register(name, &qmp).await.unwrap();
                assert_eq!((status.state.as_str(), status.registered), ("running", true));
            }
            let start = Instant::now();
            let reports = vms.save_all(start + Duration::from_millis(200)).await;
            let took = start.elapsed();
            assert!(took < Duration::from_secs(2), "the saves took {took:?}");
            let errors: Vec<_> = reports
                .iter()
                .map(|r| (r.name.as_str(), r.saved, r.error.clone().unwrap()))
                .collect();
            assert_eq!(errors[0].0, "dead");
            assert!(!errors[0].1);
            assert_eq!(errors[0].2, "QMP of VM dead: QEMU closed the QMP connection");
            assert_eq!(
                errors[1],
                ("hung", false, "VM hung was not saved before the deadline".into())
            );
        });
    }

    #[test]
    fn a_qemu_without_the_vms_ram_as_a_shared_backend_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let options = CreateOptions { size: 16 << 20, ..CreateOptions::default() };
        let pool = Arc::new(Pool::create(&dir.path().join("p.pool"), &options).unwrap());
        let paths =
            VmPaths { run_dir: dir.path().join("run"), state_dir: dir.path().join("state") };
        let vms = Vms::new(Arc::clone(&pool), paths);
        crate::vm::spec::create(&pool, "web", &VmSpec::new(2 << 20)).unwrap();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let qmp = dir.path().join("web.qmp");
            fake_qemu(&qmp, 1 << 20, OnStop::Die).await;
            let err = vms.register("web", &qmp).await.unwrap_err();
            assert!(
                err.to_string().ends_with(
                    "does not keep VM web's 2 MiB of RAM in a shared memory backend; start it \
                     with the arguments of `pmvisor vm qemu-args web`"
                ),
                "{err}"
            );
        });
    }
}
