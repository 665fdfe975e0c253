//! `/v1/vms`: persistent VMs (see [`crate::vm`]). Create and delete
//! register and forget a VM in the pool; start, register (adopt a QEMU
//! started elsewhere), resume and stop act on its QEMU, which the daemon
//! keeps a QMP session with. Every VM that runs is a participant of the
//! power-outage sequence: it is paused and saved on POD.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{enter_gate, join, parse_json, sentence, status_for, ApiError, SharedState};
use crate::vm::{
    self, DiskSpec, VmError, VmParticipant, VmRecord, VmResumeReport, VmSaveReport, VmSpec,
    VmStatus, Vms,
};

/// How long `POST /v1/vms/{name}/save` may take.
const SAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// The VM's name (its RAM is the memory region `NAME.ram`).
    pub name: String,
    /// RAM in bytes (rounded up to 1 MiB).
    pub memory: u64,
    /// vCPUs [default: 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `tcg` or `kvm` [default: tcg].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// QEMU's machine type and options [default: a lean q35].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Disks: block region names or absolute image paths, in order.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// A kernel to boot directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Its initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Its command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
    /// More QEMU arguments.
    #[serde(default)]
    pub qemu_args: Vec<String>,
}

impl CreateVmRequest {
    /// The spec this request asks for.
    pub fn spec(&self) -> VmSpec {
        let mut spec = VmSpec::new(self.memory);
        spec.cpus = self.cpus.unwrap_or(1);
        if let Some(accel) = &self.accel {
            spec.accel = accel.clone();
        }
        if let Some(machine) = &self.machine {
            spec.machine = machine.clone();
        }
        spec.disks = self.disks.clone();
        spec.kernel = self.kernel.clone();
        spec.initrd = self.initrd.clone();
        spec.append = self.append.clone();
        spec.qemu_args = self.qemu_args.clone();
        spec
    }
}

/// `POST /v1/vms/{name}/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterVmRequest {
    /// The QMP socket of the running QEMU.
    pub qmp: PathBuf,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmView {
    /// The VM.
    pub name: String,
    /// `running`, `paused`, ... (QEMU's run state), `saved` (a saved state
    /// waits for `resume`) or `stopped`.
    pub state: String,
    /// RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub cpus: u32,
    /// The memory region.
    pub ram_region: String,
    /// Its byte offset in the pool.
    pub ram_offset: u64,
    /// Disks: region names and image paths.
    pub disks: Vec<String>,
    /// QEMU's process id, when the daemon launched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The QMP socket, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<PathBuf>,
    /// The saved device state, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_state: Option<PathBuf>,
}

impl VmView {
    /// The view of `record`, running as `status` or not, with a saved
    /// state at `saved` or not.
    pub fn new(record: &VmRecord, status: Option<VmStatus>, saved: Option<PathBuf>) -> VmView {
        let state = match (&status, &saved) {
            (Some(status), _) => status.state.clone(),
            (None, Some(_)) => "saved".into(),
            (None, None) => "stopped".into(),
        };
        VmView {
            name: record.name.clone(),
            state,
            memory: record.spec.memory,
            cpus: record.spec.cpus,
            ram_region: record.ram_region.clone(),
            ram_offset: record.ram_offset,
            disks: record.spec.disks.iter().map(disk_label).collect(),
            pid: status.as_ref().and_then(|s| s.pid),
            qmp: status.map(|s| s.qmp),
            saved_state: saved,
        }
    }
}

/// `disk` as one word: a region name or an image path.
pub fn disk_label(disk: &DiskSpec) -> String {
    match disk {
        DiskSpec::Region(name) => name.clone(),
        DiskSpec::Image { path, .. } => path.display().to_string(),
    }
}

/// `GET /v1/vms/{name}/qemu-args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuArgsView {
    /// The VM.
    pub vm: String,
    /// The QEMU program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl From<VmError> for ApiError {
    fn from(err: VmError) -> ApiError {
        let status = match &err {
            VmError::NotFound { .. } | VmError::NoSavedState { .. } => StatusCode::NOT_FOUND,
            VmError::Exists { .. } | VmError::Running { .. } | VmError::NotRunning { .. } => {
                StatusCode::CONFLICT
            }
            VmError::InvalidName { .. }
            | VmError::InvalidSpec(_)
            | VmError::Disk { .. }
            | VmError::Image { .. } => StatusCode::BAD_REQUEST,
            VmError::Pool(pool) => status_for(pool),
            VmError::Qemu(_) => StatusCode::NOT_IMPLEMENTED,
            VmError::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, message: sentence(&err) }
    }
}

/// Parse the body of `POST /v1/vms`.
pub fn parse_create_vm(body: &[u8]) -> Result<CreateVmRequest, ApiError> {
    parse_json(body, "\"name\", \"memory\" and optionally \"cpus\", \"disks\", \"kernel\", ...")
}

/// The view of VM `name` in `vms`.
pub async fn view(vms: &Vms, name: &str) -> Result<VmView, ApiError> {
    let record = vm::spec::load(vms.pool(), name)?;
    let status = vms.status(name).await.ok();
    let state = vms.paths().state(name);
    Ok(VmView::new(&record, status, state.exists().then_some(state)))
}

/// Make VM `name` a participant of the power-outage sequence.
fn join_pod(state: &SharedState, name: &str) {
    let participant =
        VmParticipant::new(Arc::clone(&state.vms), name, tokio::runtime::Handle::current());
    state.pod.participants().register(Arc::new(participant));
}

/// At start: adopt the QEMUs of the pool's VMs that outlived the last
/// daemon (their QMP sockets answer) and make them participants.
pub async fn adopt_running(state: &SharedState) {
    for name in state.vms.adopt_running().await {
        join_pod(state, &name);
        tracing::info!(vm = %name, "adopted the running VM");
    }
}

/// Resume VMs `names` from their saved states, all in parallel, as
/// `POST /v1/vms/{name}/resume` does for one (for `serve --resume-vms`);
/// one result per VM, by name.
pub async fn resume_all(
    state: &SharedState,
    names: Vec<String>,
) -> Vec<(String, Result<VmResumeReport, ApiError>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for name in names {
        let state = Arc::clone(state);
        tasks.spawn(async move {
            let resumed = resume_one(&state, &name).await;
            (name, resumed)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(err) => tracing::error!("a VM resume task failed: {err}"),
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    results
}

async fn resume_one(state: &SharedState, name: &str) -> Result<VmResumeReport, ApiError> {
    drop(enter_gate(state)?);
    let report = state.vms.resume(name).await?;
    join_pod(state, name);
    Ok(report)
}

/// `GET /v1/vms`.
pub async fn list_vms(State(state): State<SharedState>) -> Result<Json<Vec<VmView>>, ApiError> {
    let mut views = Vec::new();
    for record in vm::spec::list(&state.pool) {
        let record = record?;
        views.push(view(&state.vms, &record.name).await?);
    }
    Ok(Json(views))
}

/// `POST /v1/vms` → 201 with the new VM.
pub async fn create_vm(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<(StatusCode, Json<VmView>), ApiError> {
    let request = parse_create_vm(&body)?;
    let _one_change = state.changes.lock().await;
    let guard = enter_gate(&state)?;
    let pool = Arc::clone(&state.pool);
    let spec = request.spec();
    let name = request.name.clone();
    let record = join(
        tokio::task::spawn_blocking(move || {
            let created = vm::spec::create(&pool, &name, &spec).map_err(ApiError::from);
            drop(guard);
            created
        })
        .await,
    )?;
    tracing::info!(vm = %record.name, memory = record.spec.memory, "created VM");
    Ok((StatusCode::CREATED, Json(VmView::new(&record, None, None))))
}

/// `GET /v1/vms/{name}`.
pub async fn get_vm(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<VmView>, ApiError> {
    view(&state.vms, &name).await.map(Json)
}

/// `DELETE /v1/vms/{name}` → 204; refused while the VM runs.
pub async fn delete_vm(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _one_change = state.changes.lock().await;
    if let Ok(status) = state.vms.status(&name).await {
        return Err(VmError::Running { name, qmp: status.qmp }.into());
    }
    let guard = enter_gate(&state)?;
    let pool = Arc::clone(&state.pool);
    let owned = name.clone();
    join(
        tokio::task::spawn_blocking(move || {
            let deleted = vm::spec::delete(&pool, &owned).map_err(ApiError::from);
            drop(guard);
            deleted
        })
        .await,
    )?;
    let _ = std::fs::remove_file(state.vms.paths().state(&name));
    tracing::info!(vm = %name, "deleted VM");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/vms/{name}/start`: launch its QEMU.
pub async fn start_vm(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<VmView>, ApiError> {
    // A fenced pool must not get a running guest: its QEMU writes the
    // RAM through a mapping of its own. Starting itself touches no pool
    // page, so the gate is not held while QEMU starts.
    drop(enter_gate(&state)?);
    state.vms.start(&name).await?;
    join_pod(&state, &name);
    view(&state.vms, &name).await.map(Json)
}

/// `POST /v1/vms/{name}/register`: adopt a QEMU started elsewhere.
pub async fn register_vm(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<VmView>, ApiError> {
    let request: RegisterVmRequest = parse_json(&body, "\"qmp\" (the QMP socket's path)")?;
    drop(enter_gate(&state)?);
    state.vms.register(&name, &request.qmp).await?;
    join_pod(&state, &name);
    view(&state.vms, &name).await.map(Json)
}

/// `POST /v1/vms/{name}/resume`: `cont` a paused VM, or restore a saved
/// one into a new QEMU.
pub async fn resume_vm(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<VmResumeReport>, ApiError> {
    resume_one(&state, &name).await.map(Json)
}

/// `POST /v1/vms/{name}/save`: pause the VM and save its device state, as
/// a power outage would (its RAM stays in the pool); `resume` goes on.
pub async fn save_vm(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<VmSaveReport>, ApiError> {
    drop(enter_gate(&state)?);
    let deadline = std::time::Instant::now() + SAVE_TIMEOUT;
    let report = state.vms.save(&name, deadline).await?;
    match &report.error {
        None => Ok(Json(report)),
        Some(error) => Err(ApiError::internal(error.clone())),
    }
}

/// `POST /v1/vms/{name}/stop` → 204: quit its QEMU (or discard its saved
/// state).
pub async fn stop_vm(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    drop(enter_gate(&state)?);
    state.pod.participants().unregister(&name);
    state.vms.stop(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/vms/{name}/qemu-args`.
pub async fn get_qemu_args(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<QemuArgsView>, ApiError> {
    let plan = state.vms.plan(&name)?;
    Ok(Json(QemuArgsView {
        vm: name,
        program: state.vms.qemu().display().to_string(),
        args: plan.args(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_takes_defaults_and_refuses_unknown_fields() {
        let request =
            parse_create_vm(br#"{"name": "web", "memory": 1000000, "disks": [{"region": "d"}]}"#)
                .unwrap();
        let spec = request.spec();
        assert_eq!((spec.memory, spec.cpus, spec.accel.as_str()), (1 << 20, 1, "tcg"));
        assert_eq!(spec.disks, [DiskSpec::Region("d".into())]);
        let err = parse_create_vm(br#"{"name": "web", "memory": 1, "colour": 1}"#).unwrap_err();
        assert!(err.message.contains("unknown field `colour`"), "{}", err.message);
    }

    #[test]
    fn vm_errors_map_to_statuses() {
        let status = |err: VmError| ApiError::from(err).status;
        assert_eq!(status(VmError::NotFound { name: "a".into() }), StatusCode::NOT_FOUND);
        assert_eq!(status(VmError::NotRunning { name: "a".into() }), StatusCode::CONFLICT);
        assert_eq!(status(VmError::InvalidSpec("x".into())), StatusCode::BAD_REQUEST);
    }
}
