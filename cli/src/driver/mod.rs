//! VM drivers: how the supervisor turns an image into a running microVM.
//!
//! `--vmm auto|ax|qemu`: `qemu` runs `qemu-system-x86_64 -M microvm` (KVM where the host has
//! hardware virtualization, HVF on macOS, TCG otherwise); `ax` is ax-vmm (issue #3, not yet
//! available); `auto` picks ax-vmm on hardware KVM once it exists, else QEMU.

pub mod qemu;

use crate::error::usage;
use anyhow::Result;
use std::path::PathBuf;

/// Which VMM to use, as given by `--vmm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VmmChoice {
    Auto,
    Ax,
    Qemu,
}

/// The CPU virtualization a driver runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware KVM (`/dev/kvm` backed by VMX/SVM).
    Kvm,
    /// Apple Hypervisor.framework.
    Hvf,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Tcg => "tcg",
        }
    }
}

/// Why hardware KVM is or is not usable here, e.g. `"/dev/kvm is kvm-pvm (no VMX/SVM)"`.
pub fn hardware_kvm() -> std::result::Result<(), String> {
    if cfg!(not(target_os = "linux")) {
        return Err("not Linux".into());
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("/dev/kvm cannot be opened".into());
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return Err("/dev/kvm is kvm-pvm (nested, no VMX/SVM): it cannot run a Linux guest".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    if flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        Ok(())
    } else {
        Err("the CPU shows neither vmx nor svm".into())
    }
}

/// The accelerator QEMU should use on this host.
pub fn qemu_accel() -> Accel {
    if cfg!(target_os = "macos") {
        Accel::Hvf
    } else if hardware_kvm().is_ok() {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Resolves `--vmm` to a concrete driver name, or explains why it cannot be used.
pub fn resolve(choice: VmmChoice) -> Result<&'static str> {
    match choice {
        VmmChoice::Ax => Err(usage(
            "the ax-vmm driver is not available yet",
            "use --vmm qemu (or --vmm auto)",
        )),
        VmmChoice::Auto | VmmChoice::Qemu => {
            qemu::find_binary()?;
            Ok("qemu")
        }
    }
}

/// Everything a driver needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Read-only root disk (erofs), the guest's `/dev/vda`.
    pub rootfs: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Serial console output file.
    pub console_log: PathBuf,
    /// vhost-user socket of the vsock backend (the backend listens, the VMM connects).
    pub vhost_vsock_socket: PathBuf,
    pub accel: Accel,
}

/// The kernel command line every ax guest gets; `name` becomes the guest's host name.
pub fn kernel_cmdline(name: &str) -> String {
    // panic=-1: a guest kernel panic reboots at once, and with -no-reboot the VMM exits, so a
    // dead guest is never mistaken for a running one.
    format!("console=ttyS0 loglevel=4 panic=-1 ax.name={name}")
}
