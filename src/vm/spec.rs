//! What a persistent VM is, as recorded in the pool.
//!
//! A VM named `web` owns the `memory` region `web.ram` (one contiguous
//! extent, so QEMU maps it at one offset of the pool file); the region's
//! attribute `vm` holds the VM's [`VmSpec`] as JSON: RAM size, CPUs,
//! accelerator, disks, boot kernel and extra QEMU arguments. Creating the
//! region with its attribute is one atomic pool change, so no crash leaves
//! a VM half-registered, and `pmvisor region list` shows the VM's RAM.
//!
//! A disk is a block region of the same pool (served over NBD by the
//! daemon) or an image file, raw or qcow2, typically on an RvmFS mount.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::VmError;
use crate::pool::{validate_name, Pool, RegionInfo, RegionKind, MAX_NAME_LEN};

/// The memory region attribute holding the VM's spec.
pub const VM_ATTR: &str = "vm";
/// A VM's memory region is its name and this.
pub const RAM_SUFFIX: &str = ".ram";
/// Most disks a VM may have.
pub const MAX_DISKS: usize = 16;
/// Most vCPUs.
pub const MAX_CPUS: u32 = 256;
/// RAM is a whole number of these (QEMU's `-m` works in MiB).
pub const MEMORY_UNIT: u64 = 1 << 20;

/// The name of VM `name`'s memory region.
pub fn ram_region(name: &str) -> String {
    format!("{name}{RAM_SUFFIX}")
}

/// The machine new VMs get: q35 without the devices a server VM does not
/// use (the AHCI controller, SMBus, USB, VMware port), which QEMU starts
/// about a quarter faster; a resume after a power outage waits for it.
pub const DEFAULT_MACHINE: &str = "q35,sata=off,smbus=off,usb=off,vmport=off";

fn legacy_machine() -> String {
    "q35".into()
}

/// A VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// RAM in bytes, a multiple of 1 MiB.
    pub memory: u64,
    /// vCPUs.
    pub cpus: u32,
    /// QEMU's `-accel` (`tcg` or `kvm`); a saved state only resumes on the
    /// accelerator that saved it.
    pub accel: String,
    /// QEMU's `-machine` type and options (the RAM backend is added); a
    /// saved state only resumes on the machine that saved it. VMs recorded
    /// before this field existed ran on plain `q35`.
    #[serde(default = "legacy_machine")]
    pub machine: String,
    /// Disks, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// A kernel to boot directly (else the firmware boots the first disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Its initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Its command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
    /// More QEMU arguments, appended as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qemu_args: Vec<String>,
}

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum DiskSpec {
    /// A block region of the pool, exported over NBD.
    Region(String),
    /// An image file.
    Image { path: PathBuf, format: ImageFormat },
}

/// The format of an image disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// QEMU's driver name.
    pub fn driver(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// A registered VM: its spec and where its RAM lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VM's name.
    pub name: String,
    /// Its memory region.
    pub ram_region: String,
    /// The memory region's byte offset in the pool.
    pub ram_offset: u64,
    /// Its configuration.
    pub spec: VmSpec,
}

impl VmSpec {
    /// A spec with `memory` bytes of RAM (rounded up to 1 MiB), one vCPU,
    /// TCG and nothing else.
    pub fn new(memory: u64) -> VmSpec {
        VmSpec {
            memory: memory.div_ceil(MEMORY_UNIT) * MEMORY_UNIT,
            cpus: 1,
            accel: "tcg".into(),
            machine: DEFAULT_MACHINE.into(),
            disks: Vec::new(),
            kernel: None,
            initrd: None,
            append: None,
            qemu_args: Vec::new(),
        }
    }

    /// Check what a pool cannot: sizes, counts, the accelerator.
    pub fn validate(&self) -> Result<(), VmError> {
        let bad = |why: String| Err(VmError::InvalidSpec(why));
        if self.memory == 0 || self.memory % MEMORY_UNIT != 0 {
            return bad(format!(
                "RAM must be a positive multiple of 1 MiB, not {} bytes",
                self.memory
            ));
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return bad(format!("a VM has 1 to {MAX_CPUS} vCPUs, not {}", self.cpus));
        }
        if !["tcg", "kvm"].contains(&self.accel.as_str()) {
            return bad(format!("the accelerator is tcg or kvm, not {:?}", self.accel));
        }
        let type_name = self.machine.split(',').next().unwrap_or_default();
        if type_name.is_empty()
            || !type_name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad(format!(
                "the machine {:?} is not a QEMU machine type with options, such as {DEFAULT_MACHINE}",
                self.machine
            ));
        }
        if self.machine.contains("memory-backend") {
            return bad(
                "the machine's memory backend is pmvisor's to set (the pool's RAM region)".into()
            );
        }
        if self.disks.len() > MAX_DISKS {
            return bad(format!("a VM has at most {MAX_DISKS} disks"));
        }
        if self.initrd.is_some() && self.kernel.is_none() {
            return bad("an initrd needs a kernel (--kernel)".into());
        }
        Ok(())
    }
}

/// Check a VM name: a region name with room for the `.ram` suffix.
pub fn validate_vm_name(name: &str) -> Result<(), VmError> {
    let max = MAX_NAME_LEN - RAM_SUFFIX.len();
    if name.len() > max {
        return Err(VmError::InvalidName {
            name: name.into(),
            reason: "a VM name has at most 60 bytes",
        });
    }
    validate_name(name).map_err(|reason| VmError::InvalidName { name: name.into(), reason })
}

/// A `--disk` argument: a path (it has a `/`) is an image file whose format
/// is read from its header; anything else names a block region.
pub fn parse_disk(arg: &str) -> Result<DiskSpec, VmError> {
    if !arg.contains('/') {
        validate_name(arg).map_err(|reason| VmError::InvalidName { name: arg.into(), reason })?;
        return Ok(DiskSpec::Region(arg.to_string()));
    }
    let path =
        std::path::absolute(arg).map_err(|source| VmError::Image { path: arg.into(), source })?;
    let format = detect_format(&path)?;
    Ok(DiskSpec::Image { path, format })
}

/// qcow2 images start with `QFI\xfb`; any other regular file is raw.
pub fn detect_format(path: &Path) -> Result<ImageFormat, VmError> {
    let image = |source| VmError::Image { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(image)?;
    let mut magic = [0u8; 4];
    let mut read = 0;
    while read < magic.len() {
        match file.read(&mut magic[read..]).map_err(image)? {
            0 => break,
            n => read += n,
        }
    }
    Ok(if magic == *b"QFI\xfb" { ImageFormat::Qcow2 } else { ImageFormat::Raw })
}

/// Register VM `name`: create its memory region carrying `spec`.
pub fn create(pool: &Pool, name: &str, spec: &VmSpec) -> Result<VmRecord, VmError> {
    validate_vm_name(name)?;
    spec.validate()?;
    for disk in &spec.disks {
        if let DiskSpec::Region(region) = disk {
            let info = pool.region(region)?;
            if info.kind != RegionKind::Block {
                return Err(VmError::InvalidSpec(format!(
                    "disk {region} is a {} region; a VM's disks are block regions or image files",
                    info.kind
                )));
            }
        }
    }
    let json = serde_json::to_string(spec).expect("a spec serializes");
    let attrs = BTreeMap::from([(VM_ATTR.to_string(), json)]);
    let info = pool
        .create_region_with_attrs(&ram_region(name), RegionKind::Memory, spec.memory, attrs)
        .map_err(|err| match err.kind() {
            crate::pool::ErrorKind::AlreadyExists => VmError::Exists { name: name.into() },
            _ => VmError::Pool(err),
        })?;
    record_of(name, &info)
}

/// The record of VM `name`.
pub fn load(pool: &Pool, name: &str) -> Result<VmRecord, VmError> {
    validate_vm_name(name)?;
    let info = pool.region(&ram_region(name)).map_err(|err| match err.kind() {
        crate::pool::ErrorKind::NotFound => VmError::NotFound { name: name.into() },
        _ => VmError::Pool(err),
    })?;
    record_of(name, &info)
}

/// Every VM of the pool, by name; a damaged record is an `Err` in place.
pub fn list(pool: &Pool) -> Vec<Result<VmRecord, VmError>> {
    pool.regions()
        .iter()
        .filter(|r| r.kind == RegionKind::Memory && r.attrs.contains_key(VM_ATTR))
        .filter_map(|r| r.name.strip_suffix(RAM_SUFFIX).map(|name| record_of(name, r)))
        .collect()
}

/// Forget VM `name` and free its RAM.
pub fn delete(pool: &Pool, name: &str) -> Result<(), VmError> {
    load(pool, name)?;
    Ok(pool.delete_region(&ram_region(name))?)
}

fn record_of(name: &str, info: &RegionInfo) -> Result<VmRecord, VmError> {
    let damaged = |detail: String| VmError::Damaged { name: name.into(), detail };
    if info.kind != RegionKind::Memory {
        return Err(damaged(format!("{} is a {} region", info.name, info.kind)));
    }
    let json = info.attrs.get(VM_ATTR).ok_or_else(|| VmError::NotFound { name: name.into() })?;
    let spec: VmSpec = serde_json::from_str(json).map_err(|err| damaged(err.to_string()))?;
    let ram_offset = info.offset.ok_or_else(|| damaged("its memory region has no pages".into()))?;
    if info.size < spec.memory {
        return Err(damaged(format!(
            "its memory region holds {} bytes, less than its {} bytes of RAM",
            info.size, spec.memory
        )));
    }
    Ok(VmRecord { name: name.into(), ram_region: info.name.clone(), ram_offset, spec })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::CreateOptions;

    fn pool() -> (tempfile::TempDir, Pool) {
        let dir = tempfile::tempdir().unwrap();
        let options = CreateOptions { size: 64 << 20, ..CreateOptions::default() };
        let pool = Pool::create(&dir.path().join("p.pool"), &options).unwrap();
        (dir, pool)
    }

    #[test]
    fn a_created_vm_is_its_memory_region_and_comes_back_from_the_pool() {
        let (_dir, pool) = pool();
        pool.create_region("web-disk", RegionKind::Block, 4 << 20).unwrap();
        let mut spec = VmSpec::new(3 << 20);
        spec.disks.push(DiskSpec::Region("web-disk".into()));
        spec.append = Some("console=ttyS0".into());
        let created = create(&pool, "web", &spec).unwrap();
        let region = pool.region("web.ram").unwrap();
        assert_eq!(
            (region.kind, region.size, region.offset),
            (RegionKind::Memory, 3 << 20, Some(created.ram_offset))
        );
        assert_eq!(load(&pool, "web").unwrap(), created);
        assert_eq!(list(&pool).into_iter().map(Result::unwrap).collect::<Vec<_>>(), [created]);
        assert!(matches!(create(&pool, "web", &spec), Err(VmError::Exists { .. })));
        delete(&pool, "web").unwrap();
        assert_eq!(
            load(&pool, "web").unwrap_err().to_string(),
            "there is no VM web; create it with `pmvisor vm create web --memory SIZE`"
        );
    }

    #[test]
    fn bad_specs_and_disks_are_refused_with_a_sentence() {
        let (dir, pool) = pool();
        pool.create_region("fsr", RegionKind::Fs, 1 << 20).unwrap();
        let mut spec = VmSpec::new(1 << 20);
        spec.disks.push(DiskSpec::Region("fsr".into()));
        assert_eq!(
            create(&pool, "a", &spec).unwrap_err().to_string(),
            "disk fsr is a fs region; a VM's disks are block regions or image files"
        );
        spec.disks.clear();
        spec.cpus = 0;
        assert_eq!(
            create(&pool, "a", &spec).unwrap_err().to_string(),
            "a VM has 1 to 256 vCPUs, not 0"
        );
        assert!(create(&pool, &"x".repeat(61), &VmSpec::new(1 << 20)).is_err());
        spec.cpus = 1;
        spec.machine = "q35 -device evil".into();
        assert_eq!(
            create(&pool, "a", &spec).unwrap_err().to_string(),
            "the machine \"q35 -device evil\" is not a QEMU machine type with options, such as \
             q35,sata=off,smbus=off,usb=off,vmport=off"
        );
        spec.machine = "pc,memory-backend=mine".into();
        assert!(create(&pool, "a", &spec).unwrap_err().to_string().contains("pmvisor's to set"));

        let qcow = dir.path().join("a.qcow2");
        std::fs::write(&qcow, b"QFI\xfb\0\0\0\x03").unwrap();
        let raw = dir.path().join("a.img");
        std::fs::write(&raw, [0u8; 512]).unwrap();
        assert_eq!(
            parse_disk(qcow.to_str().unwrap()).unwrap(),
            DiskSpec::Image { path: qcow, format: ImageFormat::Qcow2 }
        );
        assert_eq!(
            parse_disk(raw.to_str().unwrap()).unwrap(),
            DiskSpec::Image { path: raw, format: ImageFormat::Raw }
        );
        assert_eq!(parse_disk("disk1").unwrap(), DiskSpec::Region("disk1".into()));
        assert!(parse_disk("./missing.img")
            .unwrap_err()
            .to_string()
            .starts_with("cannot read the disk image"));
    }

    #[test]
    fn the_recorded_spec_is_compact_json() {
        let mut spec = VmSpec::new(2 << 30);
        spec.disks = vec![
            DiskSpec::Region("d".into()),
            DiskSpec::Image { path: "/m/i.qcow2".into(), format: ImageFormat::Qcow2 },
        ];
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"memory":2147483648,"cpus":1,"accel":"tcg","machine":"q35,sata=off,smbus=off,usb=off,vmport=off","disks":[{"region":"d"},{"image":{"path":"/m/i.qcow2","format":"qcow2"}}]}"#
        );
    }

    #[test]
    fn a_vm_recorded_before_machines_were_recorded_keeps_plain_q35() {
        let old: VmSpec =
            serde_json::from_str(r#"{"memory":1048576,"cpus":1,"accel":"tcg"}"#).unwrap();
        assert_eq!(old.machine, "q35", "its saved state resumes on the machine that saved it");
        assert_eq!(VmSpec::new(1 << 20).machine, DEFAULT_MACHINE);
    }
}
