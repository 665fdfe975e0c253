//! The QEMU command line of a persistent VM, and where its files go.
//!
//! RAM is `memory-backend-file` on the pool file at the memory region's
//! offset with `share=on`, so the guest's memory *is* the region and a
//! migration with `x-ignore-shared` leaves it out of the saved state. The
//! command line is a pure function of the VM's record and the pool's
//! attributes: a resumed QEMU must be built exactly like the one that saved
//! (same machine, devices and ids), plus `-incoming defer`.
//!
//! Files: the QMP socket, the console log and QEMU's stderr go to the run
//! directory (`<control socket dir>/vms/`); the saved device state goes to
//! the state directory (`<state dir>/vms/NAME.vmstate`), which must survive
//! the outage.

use std::path::{Path, PathBuf};

use super::spec::{DiskSpec, VmRecord};
use super::VmError;
use crate::agent::{qemu_args, region_serial};
use crate::daemon::agents::AgentRecord;
use crate::daemon::exports::ExportKind;
use crate::pool::Pool;

/// QEMU's id of the RAM backend.
const RAM_ID: &str = "pmvisor-ram";
/// QEMU's id of the console chardev.
const CONSOLE_ID: &str = "pmvisor-console";

/// Where a VM's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// QMP sockets, console logs, QEMU's stderr.
    pub run_dir: PathBuf,
    /// Saved device states.
    pub state_dir: PathBuf,
}

impl VmPaths {
    /// The daemon's: `<socket dir>/vms` and `<state dir>/vms`.
    pub fn for_daemon(socket: &Path, state_dir: &Path) -> VmPaths {
        let run = socket.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        VmPaths { run_dir: run.join("vms"), state_dir: state_dir.join("vms") }
    }

    /// VM `name`'s QMP socket.
    pub fn qmp(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.qmp"))
    }

    /// VM `name`'s console log (the guest's serial port, appended).
    pub fn console(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.console"))
    }

    /// QEMU's stderr for VM `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.log"))
    }

    /// VM `name`'s saved device state.
    pub fn state(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.vmstate"))
    }
}

/// Everything needed to start VM `name`'s QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The VM.
    pub record: VmRecord,
    /// The pool file QEMU maps.
    pub pool_path: PathBuf,
    /// QEMU arguments of each disk.
    pub disks: Vec<Vec<String>>,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// The console log.
    pub console: PathBuf,
    /// Where the device state is saved.
    pub state: PathBuf,
}

impl LaunchPlan {
    /// The plan of VM `name` of `pool`: its record, and its disks as the
    /// pool's attributes say they are served.
    pub fn load(pool: &Pool, name: &str, paths: &VmPaths) -> Result<LaunchPlan, VmError> {
        let record = super::spec::load(pool, name)?;
        let pool_path = std::fs::canonicalize(pool.path())
            .map_err(|source| VmError::Image { path: pool.path().to_path_buf(), source })?;
        let mut disks = Vec::new();
        for (index, disk) in record.spec.disks.iter().enumerate() {
            disks.push(match disk {
                DiskSpec::Region(region) => region_disk(pool, name, region)?,
                DiskSpec::Image { path, format } => image_disk(index, path, format.driver()),
            });
        }
        Ok(LaunchPlan {
            record,
            pool_path,
            disks,
            qmp: paths.qmp(name),
            console: paths.console(name),
            state: paths.state(name),
        })
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// QEMU's arguments (without the program) for a fresh start.
    pub fn args(&self) -> Vec<String> {
        let spec = &self.record.spec;
        let mib = spec.memory >> 20;
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("guest={},debug-threads=on", escape(self.name())),
            "-accel".into(),
            spec.accel.clone(),
            "-machine".into(),
            format!("{},memory-backend={RAM_ID}", spec.machine),
            "-m".into(),
            format!("{mib}M"),
            "-smp".into(),
            spec.cpus.to_string(),
            "-object".into(),
            format!(
                "memory-backend-file,id={RAM_ID},mem-path={},offset={},size={mib}M,share=on",
                escape(&self.pool_path.display().to_string()),
                self.record.ram_offset
            ),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-chardev".into(),
            format!(
                "file,id={CONSOLE_ID},path={},append=on",
                escape(&self.console.display().to_string())
            ),
            "-serial".into(),
            format!("chardev:{CONSOLE_ID}"),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", escape(&self.qmp.display().to_string())),
        ];
        if let Some(kernel) = &spec.kernel {
            args.extend(["-kernel".into(), kernel.display().to_string()]);
        }
        if let Some(initrd) = &spec.initrd {
            args.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        if let Some(append) = &spec.append {
            args.extend(["-append".into(), append.clone()]);
        }
        for disk in &self.disks {
            args.extend(disk.iter().cloned());
        }
        args.extend(spec.qemu_args.iter().cloned());
        args
    }

    /// QEMU's arguments to resume from a saved state: a start that waits
    /// for `migrate-incoming`.
    pub fn incoming_args(&self) -> Vec<String> {
        let mut args = self.args();
        args.extend(["-incoming".into(), "defer".into()]);
        args
    }
}

/// A block region disk: its NBD export and, if attached, its agent's port.
fn region_disk(pool: &Pool, vm: &str, region: &str) -> Result<Vec<String>, VmError> {
    let info = pool.region(region).map_err(|err| VmError::Disk {
        vm: vm.into(),
        disk: region.into(),
        why: format!("{err}"),
    })?;
    let disk_error = |why: String| VmError::Disk { vm: vm.into(), disk: region.into(), why };
    let nbd = match ExportKind::from_attrs(&info.attrs) {
        Some(Ok(ExportKind::Nbd(addr))) => addr,
        Some(Ok(ExportKind::Ublk { .. })) => {
            return Err(disk_error(format!(
                "it is exported as a ublk device; export it over NBD instead (`pmvisor export \
                 remove {region}`, then `pmvisor export add {region} --nbd`)"
            )))
        }
        Some(Err(problem)) => {
            return Err(disk_error(format!("its export record is damaged: {problem}")))
        }
        None => {
            return Err(disk_error(format!(
                "it is not exported; export it with `pmvisor export add {region} --nbd`"
            )))
        }
    };
    let agent = AgentRecord::from_attrs(region, &info.attrs)
        .transpose()
        .map_err(|problem| disk_error(format!("its agent record is damaged: {problem}")))?;
    let serial = agent.as_ref().map_or_else(|| region_serial(region), |a| a.serial.clone());
    Ok(qemu_args(region, &nbd, &serial, agent.as_ref().map(|a| &a.addr)))
}

/// An image disk: a file node, its format node and a virtio disk.
fn image_disk(index: usize, path: &Path, driver: &str) -> Vec<String> {
    let node = format!("pmvisor-disk{index}");
    vec![
        "-blockdev".into(),
        format!(
            "driver={driver},node-name={node},file.driver=file,file.filename={}",
            escape(&path.display().to_string())
        ),
        "-device".into(),
        format!("virtio-blk-pci,drive={node},serial=pmvisor-disk{index}"),
    ]
}

/// Escape a value for QEMU's option syntax (a comma is doubled).
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::spec::{ImageFormat, VmSpec};

    fn plan(spec: VmSpec) -> LaunchPlan {
        let paths = VmPaths {
            run_dir: "/run/pmvisor/vms".into(),
            state_dir: "/var/lib/pmvisor/vms".into(),
        };
        LaunchPlan {
            record: VmRecord {
                name: "web".into(),
                ram_region: "web.ram".into(),
                ram_offset: 1 << 20,
                spec,
            },
            pool_path: "/dev/shm/a,b.pool".into(),
            disks: vec![image_disk(0, Path::new("/mnt/rvm/web.qcow2"), "qcow2")],
            qmp: paths.qmp("web"),
            console: paths.console("web"),
            state: paths.state("web"),
        }
    }

    #[test]
    fn ram_is_the_memory_region_of_the_pool_file_shared_at_its_offset() {
        let mut spec = VmSpec::new(256 << 20);
        spec.disks.push(DiskSpec::Image {
            path: "/mnt/rvm/web.qcow2".into(),
            format: ImageFormat::Qcow2,
        });
        spec.kernel = Some("/boot/vmlinuz".into());
        spec.append = Some("console=ttyS0 quiet".into());
        spec.qemu_args = vec!["-no-reboot".into()];
        let args = plan(spec).args();
        let joined = args.join(" ");
        assert!(joined.starts_with(
            "-name guest=web,debug-threads=on -accel tcg \
             -machine q35,sata=off,smbus=off,usb=off,vmport=off,memory-backend=pmvisor-ram -m 256M -smp 1 \
             -object memory-backend-file,id=pmvisor-ram,mem-path=/dev/shm/a,,b.pool,offset=1048576,size=256M,share=on \
             -nodefaults -no-user-config -display none \
             -chardev file,id=pmvisor-console,path=/run/pmvisor/vms/web.console,append=on -serial chardev:pmvisor-console \
             -qmp unix:/run/pmvisor/vms/web.qmp,server=on,wait=off -kernel /boot/vmlinuz"
        ), "{joined}");
        assert!(args.contains(&"console=ttyS0 quiet".to_string()));
        assert!(joined.contains(
            "-blockdev driver=qcow2,node-name=pmvisor-disk0,file.driver=file,file.filename=/mnt/rvm/web.qcow2 \
             -device virtio-blk-pci,drive=pmvisor-disk0,serial=pmvisor-disk0 -no-reboot"
        ), "{joined}");
    }

    #[test]
    fn a_resume_starts_the_same_machine_waiting_for_its_state() {
        let plan = plan(VmSpec::new(64 << 20));
        let incoming = plan.incoming_args();
        assert_eq!(incoming[..incoming.len() - 2], plan.args()[..]);
        assert_eq!(incoming[incoming.len() - 2..], ["-incoming", "defer"]);
        assert_eq!(plan.state, Path::new("/var/lib/pmvisor/vms/web.vmstate"));
    }
}
