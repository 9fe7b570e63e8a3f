//! VM configuration: one TOML or JSON file (documented in docs/vmm-config.md) overridden by
//! command-line flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cpuid::CpuTemplate;
use crate::jail::SeccompMode;

/// Upper bound on vCPUs (one MADT/IOAPIC-era microVM; raise with x2APIC support).
pub const MAX_CPUS: u8 = 32;

/// Where the guest's COM1 output goes.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SerialOutput {
    /// The VMM's stdout (written unbuffered).
    #[default]
    Stdout,
    /// Discarded.
    None,
    /// Appended to a file (created if missing).
    File(PathBuf),
}

impl TryFrom<String> for SerialOutput {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<SerialOutput> for String {
    fn from(s: SerialOutput) -> String {
        match s {
            SerialOutput::Stdout => "stdout".into(),
            SerialOutput::None => "none".into(),
            SerialOutput::File(p) => format!("file:{}", p.display()),
        }
    }
}

impl std::str::FromStr for SerialOutput {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(SerialOutput::Stdout),
            "none" => Ok(SerialOutput::None),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(SerialOutput::File(PathBuf::from(p))),
                _ => Err(format!(
                    "invalid serial output {s:?}; use \"stdout\", \"none\" or \"file:PATH\""
                )),
            },
        }
    }
}

fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1".into()
}
fn default_cpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    128
}
fn default_true() -> bool {
    true
}
fn default_template() -> CpuTemplate {
    CpuTemplate::Auto
}

fn default_guest_cid() -> u64 {
    3
}

/// One virtio-blk disk (`[[block]]`, virtio 1.2 §5.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// Backing file (a raw image; its size, rounded down to 512 bytes, is the capacity).
    pub path: PathBuf,
    /// Offer `VIRTIO_BLK_F_RO` and refuse writes (default: true, the rootfs case).
    #[serde(default = "default_true")]
    pub read_only: bool,
}

/// The hybrid virtio-vsock device (`[vsock]`, virtio 1.2 §5.10; protocol in docs/vsock.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's CID (3..=4294967294).
    #[serde(default = "default_guest_cid")]
    pub guest_cid: u64,
    /// Host Unix socket for `CONNECT <port>` clients; guest connections to host port P go
    /// to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// The kind of device a vhost-user backend implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VhostUserType {
    /// virtio-fs (virtio 1.2 §5.11, device ID 26): the frontend owns the configuration space
    /// (`tag`, `num_request_queues`).
    Fs,
    /// virtio-net (virtio 1.2 §5.1, device ID 1): configuration from the backend
    /// (VHOST_USER_GET_CONFIG) if it offers it, else `mac` and link up.
    Net,
}

impl std::fmt::Display for VhostUserType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VhostUserType::Fs => "fs",
            VhostUserType::Net => "net",
        })
    }
}

fn default_vhost_user_queues() -> u16 {
    2
}
fn default_vhost_user_queue_size() -> u16 {
    1024
}

/// Longest virtio-fs tag: `u8 tag[36]` (virtio 1.2 §5.11.4).
pub const FS_TAG_MAX: usize = 36;

/// A device whose data path runs in a vhost-user backend process (`[[vhost_user]]`;
/// docs/virtio.md "vhost-user").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserConfig {
    /// The backend's listening Unix socket (ax-vmm connects at start).
    pub socket: PathBuf,
    /// "fs" or "net".
    pub device_type: VhostUserType,
    /// Virtqueues: fs = 1 hiprio + request queues (2..); net = 2 (rx, tx).
    #[serde(default = "default_vhost_user_queues")]
    pub num_queues: u16,
    /// QueueNumMax of every queue (a power of two, 1..=32768).
    #[serde(default = "default_vhost_user_queue_size")]
    pub queue_size: u16,
    /// fs only (required): the tag the guest mounts (`mount -t virtiofs TAG DIR`), 1..=36 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// net only: the MAC address ("52:54:00:12:34:56") when the backend does not provide the
    /// configuration space itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl VhostUserConfig {
    /// `--vhost-user-fs SOCKET:TAG` (the tag follows the last ':').
    pub fn fs_flag(s: &str) -> Result<Self, String> {
        match s.rsplit_once(':') {
            Some((sock, tag)) if !sock.is_empty() && !tag.is_empty() => Ok(VhostUserConfig {
                socket: sock.into(),
                device_type: VhostUserType::Fs,
                num_queues: default_vhost_user_queues(),
                queue_size: default_vhost_user_queue_size(),
                tag: Some(tag.into()),
                mac: None,
            }),
            _ => Err(format!(
                "--vhost-user-fs {s:?}: expected SOCKET:TAG, e.g. /run/ax/fs.sock:workspace"
            )),
        }
    }

    /// `--vhost-user-net SOCKET`.
    pub fn net_flag(socket: PathBuf) -> Self {
        VhostUserConfig {
            socket,
            device_type: VhostUserType::Net,
            num_queues: default_vhost_user_queues(),
            queue_size: default_vhost_user_queue_size(),
            tag: None,
            mac: None,
        }
    }

    fn validate(&self, i: usize) -> Result<(), String> {
        let what = format!(
            "[[vhost_user]] #{i} ({}, {})",
            self.device_type,
            self.socket.display()
        );
        if self.queue_size == 0 || !self.queue_size.is_power_of_two() {
            return Err(format!(
                "{what}: queue_size = {} is not a power of two in 1..=32768",
                self.queue_size
            ));
        }
        let dir = self.socket.parent().filter(|p| !p.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(format!(
                "{what}: the socket's directory does not exist; start the backend first or fix socket"
            ));
        }
        match self.device_type {
            VhostUserType::Fs => {
                let Some(tag) = &self.tag else {
                    return Err(format!("{what}: fs needs a tag (tag = \"workspace\")"));
                };
                if tag.is_empty() || tag.len() > FS_TAG_MAX || tag.contains('\0') {
                    return Err(format!(
                        "{what}: tag {tag:?} must be 1..={FS_TAG_MAX} bytes without NUL (virtio 1.2 §5.11.4)"
                    ));
                }
                if !(2..=65).contains(&self.num_queues) {
                    return Err(format!(
                        "{what}: num_queues = {} is out of range; fs uses 1 hiprio + 1..=64 request queues (2..=65)",
                        self.num_queues
                    ));
                }
                if self.mac.is_some() {
                    return Err(format!("{what}: mac is for net devices only"));
                }
            }
            VhostUserType::Net => {
                if self.tag.is_some() {
                    return Err(format!("{what}: tag is for fs devices only"));
                }
                if self.num_queues != 2 {
                    return Err(format!(
                        "{what}: num_queues = {}; net supports one rx/tx pair (2) (no VIRTIO_NET_F_MQ yet)",
                        self.num_queues
                    ));
                }
                if let Some(m) = &self.mac {
                    if parse_mac(m).is_none() {
                        return Err(format!(
                            "{what}: mac {m:?} is not of the form 52:54:00:12:34:56"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Most virtio-mmio devices: one GSI each, 5..=23.
pub const MAX_VIRTIO_DEVICES: usize = 19;

/// A whole VM description. Every field but `kernel` has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel: ELF vmlinux with a PVH note, or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs (1..=32).
    #[serde(default = "default_cpus")]
    pub cpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// COM1 output: "stdout", "none" or "file:PATH".
    #[serde(default)]
    pub serial: SerialOutput,
    /// CPUID template: "auto", "host" or "pvm" (see `cpuid`).
    #[serde(default = "default_template")]
    pub cpu_template: CpuTemplate,
    /// Create the in-kernel i8254 PIT. Unset: only without ACPI. A hardware-reduced ACPI
    /// guest (ACPI 6.5 §4.1; Linux skips the legacy PIC/PIT timer setup for it) does not use
    /// it, and on kvm-pvm the PIT costs ~16 ms at VM teardown (KVM destroys its kthread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<bool>,
    /// Write ACPI tables (when the ACPI module is built in).
    #[serde(default = "default_true")]
    pub acpi: bool,
    /// Jail the VMM once the VM is built: seccomp per thread, Landlock, no capabilities,
    /// namespaces (docs/jail.md). Turn off only to debug.
    #[serde(default = "default_true")]
    pub jail: bool,
    /// What a syscall outside the jail's allowlist does: "kill" (default) or "log".
    #[serde(default)]
    pub seccomp: SeccompMode,
    /// Also put the jailed VMM in a new network namespace (root only; ~0.5 ms of spawn).
    #[serde(default)]
    pub jail_netns: bool,
    /// virtio-blk disks, in order (virtio-mmio slots 0.., before vsock).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<BlockConfig>,
    /// The hybrid vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// vhost-user devices (virtio-mmio slots after the disks and vsock).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vhost_user: Vec<VhostUserConfig>,
}

/// Configuration errors (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The config file does not parse.
    #[error("invalid config {0}: {1}")]
    Parse(PathBuf, String),
    /// A value is out of range or missing.
    #[error("{0}")]
    Invalid(String),
}

/// Flags that override the file (all optional).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// --kernel
    pub kernel: Option<PathBuf>,
    /// --initrd
    pub initrd: Option<PathBuf>,
    /// --cmdline
    pub cmdline: Option<String>,
    /// --cpus
    pub cpus: Option<u8>,
    /// --memory-mib
    pub memory_mib: Option<u64>,
    /// --serial
    pub serial: Option<SerialOutput>,
    /// --cpu-template
    pub cpu_template: Option<CpuTemplate>,
    /// --pit (true) / --no-pit (false)
    pub pit: Option<bool>,
    /// --no-acpi
    pub no_acpi: bool,
    /// --no-jail
    pub no_jail: bool,
    /// --seccomp
    pub seccomp: Option<SeccompMode>,
    /// --jail-netns
    pub jail_netns: bool,
    /// --block PATH (read-only) and --block-rw PATH, appended after the file's disks.
    pub block: Vec<BlockConfig>,
    /// --vsock-uds
    pub vsock_uds: Option<PathBuf>,
    /// --vsock-cid
    pub vsock_cid: Option<u64>,
    /// --vhost-user-fs SOCKET:TAG and --vhost-user-net SOCKET, after the file's devices.
    pub vhost_user: Vec<VhostUserConfig>,
}

impl VmConfig {
    /// How many virtio-mmio devices the VM has (each gets a slot and a device thread).
    pub fn virtio_device_count(&self) -> usize {
        self.block.len() + usize::from(self.vsock.is_some()) + self.vhost_user.len()
    }

    /// Whether to create the in-kernel PIT: as configured, else only without ACPI.
    pub fn wants_pit(&self) -> bool {
        self.pit.unwrap_or(!self.acpi)
    }

    /// Parses a config file: JSON if it ends in `.json`, TOML otherwise.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        Self::parse(&text, path.extension().is_some_and(|e| e == "json"))
            .map_err(|e| ConfigError::Parse(path.into(), e))
    }

    /// Parses config text (`json` or TOML).
    pub fn parse(text: &str, json: bool) -> Result<Self, String> {
        if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
        }
    }

    /// Builds the config from an optional file and the flags, then validates it.
    pub fn resolve(file: Option<&Path>, o: Overrides) -> Result<Self, ConfigError> {
        let mut c = match file {
            Some(p) => Self::from_file(p)?,
            None => {
                let kernel = o.kernel.clone().ok_or_else(|| {
                    ConfigError::Invalid("no kernel given; pass --kernel PATH or --config FILE (see docs/vmm-config.md)".into())
                })?;
                VmConfig {
                    kernel,
                    initrd: None,
                    cmdline: default_cmdline(),
                    cpus: default_cpus(),
                    memory_mib: default_memory(),
                    serial: SerialOutput::default(),
                    cpu_template: default_template(),
                    pit: None,
                    acpi: true,
                    jail: true,
                    seccomp: SeccompMode::Kill,
                    jail_netns: false,
                    block: Vec::new(),
                    vsock: None,
                    vhost_user: Vec::new(),
                }
            }
        };
        if let Some(v) = o.kernel {
            c.kernel = v;
        }
        if o.initrd.is_some() {
            c.initrd = o.initrd;
        }
        if let Some(v) = o.cmdline {
            c.cmdline = v;
        }
        if let Some(v) = o.cpus {
            c.cpus = v;
        }
        if let Some(v) = o.memory_mib {
            c.memory_mib = v;
        }
        if let Some(v) = o.serial {
            c.serial = v;
        }
        if let Some(v) = o.cpu_template {
            c.cpu_template = v;
        }
        if o.pit.is_some() {
            c.pit = o.pit;
        }
        if o.no_acpi {
            c.acpi = false;
        }
        if o.no_jail {
            c.jail = false;
        }
        if let Some(m) = o.seccomp {
            c.seccomp = m;
        }
        if o.jail_netns {
            c.jail_netns = true;
        }
        c.block.extend(o.block);
        c.vhost_user.extend(o.vhost_user);
        match (&mut c.vsock, o.vsock_uds) {
            (Some(v), Some(uds)) => v.uds_path = uds,
            (v @ None, Some(uds)) => {
                *v = Some(VsockConfig {
                    guest_cid: default_guest_cid(),
                    uds_path: uds,
                })
            }
            _ => {}
        }
        if let Some(cid) = o.vsock_cid {
            match &mut c.vsock {
                Some(v) => v.guest_cid = cid,
                None => {
                    return Err(ConfigError::Invalid(
                        "--vsock-cid needs a vsock device; also pass --vsock-uds PATH or set [vsock] uds_path".into(),
                    ))
                }
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks ranges and that the files exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return bad(format!(
                "cpus = {} is out of range; use 1..={MAX_CPUS}",
                self.cpus
            ));
        }
        if !(2..=1 << 20).contains(&self.memory_mib) {
            return bad(format!(
                "memory_mib = {} is out of range; use 2..=1048576",
                self.memory_mib
            ));
        }
        if !self.kernel.is_file() {
            return bad(format!(
                "kernel {} is not a readable file; fix the kernel path",
                self.kernel.display()
            ));
        }
        if let Some(i) = &self.initrd {
            if !i.is_file() {
                return bad(format!(
                    "initrd {} is not a readable file; fix the initrd path",
                    i.display()
                ));
            }
        }
        for b in &self.block {
            if !b.path.exists() {
                return bad(format!(
                    "block device {} does not exist; fix [[block]] path",
                    b.path.display()
                ));
            }
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid <= 2 || v.guest_cid >= u64::from(u32::MAX) {
                return bad(format!(
                    "vsock guest_cid = {} is reserved (virtio 1.2 §5.10.4); use 3..=4294967294",
                    v.guest_cid
                ));
            }
            let dir = v.uds_path.parent().filter(|p| !p.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return bad(format!(
                    "vsock uds_path {}: its directory does not exist; create it or fix the path",
                    v.uds_path.display()
                ));
            }
        }
        for (i, v) in self.vhost_user.iter().enumerate() {
            v.validate(i).map_err(ConfigError::Invalid)?;
        }
        let n = self.virtio_device_count();
        if n > MAX_VIRTIO_DEVICES {
            return bad(format!(
                "{n} virtio devices configured; at most {MAX_VIRTIO_DEVICES} fit (GSIs 5..=23); remove some"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_parse_with_defaults() {
        let t = VmConfig::parse(
            "kernel = \"/k\"\nserial = \"file:/tmp/s\"\ncpus = 2\n",
            false,
        )
        .unwrap();
        assert_eq!(t.kernel, PathBuf::from("/k"));
        assert_eq!(t.serial, SerialOutput::File("/tmp/s".into()));
        assert_eq!((t.cpus, t.memory_mib, t.pit), (2, 128, None));
        assert!(!t.wants_pit());
        let legacy = VmConfig::parse("kernel = \"/k\"\nacpi = false\n", false).unwrap();
        assert!(legacy.wants_pit());
        let forced = VmConfig::parse("kernel = \"/k\"\npit = true\n", false).unwrap();
        assert!(forced.wants_pit());
        assert_eq!(t.cpu_template, CpuTemplate::Auto);
        let j = VmConfig::parse(
            r#"{"kernel":"/k","memory_mib":64,"cpu_template":"pvm","serial":"none"}"#,
            true,
        )
        .unwrap();
        assert_eq!(
            (j.memory_mib, j.cpu_template, j.serial),
            (64, CpuTemplate::Pvm, SerialOutput::None)
        );
    }

    #[test]
    fn block_and_vsock_tables() {
        let t = VmConfig::parse(
            "kernel = \"/k\"\n[[block]]\npath = \"/a\"\n[[block]]\npath = \"/b\"\nread_only = false\n[vsock]\nuds_path = \"/s\"\n",
            false,
        )
        .unwrap();
        assert_eq!(t.block.len(), 2);
        assert!(t.block[0].read_only);
        assert!(!t.block[1].read_only);
        assert_eq!(
            t.vsock,
            Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/s".into()
            })
        );
        assert!(VmConfig::parse("kernel = \"/k\"\n[vsock]\nguest_cid = 4\n", false).is_err());
        assert!(
            VmConfig::parse("kernel = \"/k\"\n[[block]]\npath = \"/a\"\nro = 1\n", false).is_err()
        );
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, b"x").unwrap();
        let o = Overrides {
            kernel: Some(k.clone()),
            block: vec![BlockConfig {
                path: k.clone(),
                read_only: true,
            }],
            vsock_uds: Some(dir.path().join("v.sock")),
            vsock_cid: Some(7),
            ..Default::default()
        };
        let c = VmConfig::resolve(None, o).unwrap();
        assert_eq!((c.block.len(), c.vsock.unwrap().guest_cid), (1, 7));
        let o = Overrides {
            kernel: Some(k.clone()),
            vsock_uds: Some(dir.path().join("v.sock")),
            vsock_cid: Some(2),
            ..Default::default()
        };
        assert!(VmConfig::resolve(None, o)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        let o = Overrides {
            kernel: Some(k.clone()),
            vsock_cid: Some(5),
            ..Default::default()
        };
        assert!(VmConfig::resolve(None, o).is_err());
        let o = Overrides {
            kernel: Some(k),
            block: vec![BlockConfig {
                path: "/nonexistent/disk".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        assert!(VmConfig::resolve(None, o)
            .unwrap_err()
            .to_string()
            .contains("block"));
    }

    #[test]
    fn vhost_user_tables_and_flags() {
        let t = VmConfig::parse(
            "kernel = \"/k\"\n[[vhost_user]]\nsocket = \"/run/fs.sock\"\ndevice_type = \"fs\"\ntag = \"workspace\"\n[[vhost_user]]\nsocket = \"/run/net.sock\"\ndevice_type = \"net\"\nmac = \"52:54:00:00:00:01\"\n",
            false,
        )
        .unwrap();
        assert_eq!(t.vhost_user.len(), 2);
        assert_eq!(t.vhost_user[0].device_type, VhostUserType::Fs);
        assert_eq!(
            (t.vhost_user[0].num_queues, t.vhost_user[0].queue_size),
            (2, 1024)
        );
        assert_eq!(t.vhost_user[0].tag.as_deref(), Some("workspace"));
        assert_eq!(t.vhost_user[1].device_type, VhostUserType::Net);
        assert_eq!(t.virtio_device_count(), 2);
        assert!(VmConfig::parse(
            "kernel = \"/k\"\n[[vhost_user]]\nsocket = \"/s\"\ndevice_type = \"blk\"\n",
            false
        )
        .is_err());
        assert_eq!(
            parse_mac("52:54:00:00:00:01"),
            Some([0x52, 0x54, 0, 0, 0, 1])
        );
        for bad in [
            "52:54:00:00:00",
            "52:54:00:00:00:01:02",
            "5:54:00:00:00:01",
            "zz:54:00:00:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        let f = VhostUserConfig::fs_flag("/a:b/fs.sock:tag").unwrap();
        assert_eq!(
            (f.socket, f.tag),
            ("/a:b/fs.sock".into(), Some("tag".into()))
        );
        assert!(VhostUserConfig::fs_flag("/fs.sock").is_err());
        assert!(VhostUserConfig::fs_flag("/fs.sock:").is_err());

        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, b"x").unwrap();
        let with = |v: VhostUserConfig| {
            VmConfig::resolve(
                None,
                Overrides {
                    kernel: Some(k.clone()),
                    vhost_user: vec![v],
                    ..Default::default()
                },
            )
        };
        let sock = dir.path().join("fs.sock");
        let fs = VhostUserConfig::fs_flag(&format!("{}:ws", sock.display())).unwrap();
        assert!(with(fs.clone()).is_ok());
        for (v, msg) in [
            (
                VhostUserConfig {
                    tag: Some("x".repeat(37)),
                    ..fs.clone()
                },
                "1..=36",
            ),
            (
                VhostUserConfig {
                    tag: None,
                    ..fs.clone()
                },
                "needs a tag",
            ),
            (
                VhostUserConfig {
                    num_queues: 1,
                    ..fs.clone()
                },
                "num_queues",
            ),
            (
                VhostUserConfig {
                    queue_size: 1000,
                    ..fs.clone()
                },
                "power of two",
            ),
            (
                VhostUserConfig {
                    mac: Some("52:54:00:00:00:01".into()),
                    ..fs.clone()
                },
                "net devices only",
            ),
            (
                VhostUserConfig {
                    num_queues: 4,
                    ..VhostUserConfig::net_flag(sock.clone())
                },
                "one rx/tx pair",
            ),
            (
                VhostUserConfig {
                    mac: Some("nope".into()),
                    ..VhostUserConfig::net_flag(sock.clone())
                },
                "not of the form",
            ),
            (
                VhostUserConfig::net_flag("/nonexistent/dir/n.sock".into()),
                "directory does not exist",
            ),
        ] {
            let e = with(v).unwrap_err().to_string();
            assert!(e.contains(msg), "{msg:?} not in {e:?}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        assert!(VmConfig::parse("kernel = \"/k\"\nram = 5\n", false).is_err());
        assert!(VmConfig::parse("kernel = \"/k\"\nserial = \"tty\"\n", false).is_err());
        assert!(VmConfig::parse("kernel = \"/k\"\ncpu_template = \"fast\"\n", false).is_err());
    }

    #[test]
    fn flags_override_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, b"x").unwrap();
        let f = dir.path().join("vm.toml");
        std::fs::write(&f, format!("kernel = {:?}\ncpus = 2\n", k)).unwrap();
        let c = VmConfig::resolve(
            Some(&f),
            Overrides {
                cpus: Some(1),
                pit: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((c.cpus, c.pit), (1, Some(false)));
        let e = VmConfig::resolve(
            Some(&f),
            Overrides {
                cpus: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("cpus"));
        assert!(VmConfig::resolve(None, Overrides::default()).is_err());
        let missing = Overrides {
            kernel: Some("/nonexistent".into()),
            ..Default::default()
        };
        assert!(VmConfig::resolve(None, missing)
            .unwrap_err()
            .to_string()
            .contains("kernel"));
    }
}
