//! VM drivers: how the supervisor turns an image into a running microVM.
//!
//! `--vmm auto|ax|qemu`: `qemu` runs `qemu-system-x86_64 -M microvm` (KVM where the host has
//! hardware virtualization, HVF on macOS, TCG otherwise); `ax` runs ax-vmm, which needs
//! hardware KVM; `auto` picks ax-vmm where hardware KVM is usable and ax-vmm is installed,
//! else QEMU.

pub mod axvmm;
pub mod qemu;

use crate::error::usage;
use anyhow::Result;
use std::path::PathBuf;

/// Which VMM to use, as given by `--vmm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Resolves `--vmm` to a concrete driver name (`ax` or `qemu`), or explains why it cannot be
/// used (a usage error, exit 2).
pub fn resolve(choice: VmmChoice) -> Result<&'static str> {
    match choice {
        VmmChoice::Ax => {
            if let Err(why) = hardware_kvm() {
                return Err(usage(
                    format!("--vmm ax needs hardware KVM, and here {why}"),
                    "use --vmm qemu (or --vmm auto, which picks QEMU here)",
                ));
            }
            axvmm::find_binary()?;
            Ok("ax")
        }
        VmmChoice::Auto if hardware_kvm().is_ok() && axvmm::find_binary().is_ok() => Ok("ax"),
        VmmChoice::Auto | VmmChoice::Qemu => {
            qemu::find_binary()?;
            Ok("qemu")
        }
    }
}

/// The accelerator a driver runs guests with: ax-vmm is always KVM.
pub fn accel_for(vmm: &str) -> Accel {
    if vmm == "ax" {
        Accel::Kvm
    } else {
        qemu_accel()
    }
}

/// Everything a driver needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// ELF vmlinux (PVH entry) or bzImage.
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
    /// vhost-user socket of the vsock backend (the backend listens, the VMM connects; QEMU
    /// only, ax-vmm has vsock built in).
    pub vhost_vsock_socket: PathBuf,
    pub accel: Accel,
    /// virtio-fs shares served by ax-fsd processes: (vhost-user socket, tag).
    pub fs_shares: Vec<(PathBuf, String)>,
    /// The image's agents layer (erofs, read-only), the guest's second virtio-blk disk
    /// [`AGENTS_DEVICE`]; agentd mounts it on `/opt/ax` when the command line carries
    /// [`agents_param`].
    pub agents: Option<PathBuf>,
    /// The virtio-net device served by ax-netstack, if the agent has a network.
    pub net: Option<NetDevice>,
}

/// A virtio-net device whose data path is ax-netstack.
#[derive(Debug, Clone)]
pub struct NetDevice {
    /// The socket ax-netstack listens on: vhost-user for ax-vmm (`--socket`), a QEMU netdev
    /// stream for QEMU (`--stream`).
    pub socket: PathBuf,
    /// The guest's MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// The guest device of the agents layer: the second virtio-blk disk, after the rootfs.
pub const AGENTS_DEVICE: &str = "/dev/vdb";

/// The kernel command line words telling agentd where the agents layer is (empty without
/// one): ` ax.agents=/dev/vdb`.
pub fn agents_param(has_agents: bool) -> String {
    if has_agents {
        format!(" ax.agents={AGENTS_DEVICE}")
    } else {
        String::new()
    }
}

/// The virtio-fs tag of the repository share; agentd mounts it on `/workspace`.
pub const WORKSPACE_TAG: &str = "workspace";
/// The virtio-fs tag of the host's object directory; agentd mounts it on `/run/ax/objects`.
pub const OBJECTS_TAG: &str = "objects";

/// The kernel command line every ax guest gets; `name` becomes the guest's host name, `net`
/// (the value of `ax.net=`, e.g. `100.96.0.2/30,100.96.0.1,1500`) configures eth0.
///
/// Under TCG the guest's TSC ticks at the host's TSC rate, and Linux's own calibration of it
/// against the emulated PIT fails on a busy host ("tsc: Unable to calibrate against PIT"):
/// the TSC is then marked unstable and boot can stall for minutes. So the host measures its
/// TSC rate and hands it over with `tsc_early_khz=` (Documentation/admin-guide/kernel-parameters).
pub fn kernel_cmdline(name: &str, accel: Accel, workspace: bool, net: Option<&str>) -> String {
    // panic=-1: a guest kernel panic reboots at once, and with -no-reboot the VMM exits, so a
    // dead guest is never mistaken for a running one.
    let mut c = format!("console=ttyS0 loglevel=4 panic=-1 ax.name={name}");
    if workspace {
        c.push_str(&format!(
            " ax.workspace={WORKSPACE_TAG} ax.objects={OBJECTS_TAG}"
        ));
    }
    if let Some(net) = net {
        c.push_str(&format!(" ax.net={net}"));
    }
    if accel == Accel::Tcg {
        if let Some(khz) = host_tsc_khz() {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    c
}

pub use ax_common::host::tsc_khz as host_tsc_khz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_cmdline_carries_the_host_tsc_rate() {
        let c = kernel_cmdline("fix-bug", Accel::Tcg, false, None);
        assert!(c.starts_with("console=ttyS0 "), "{c}");
        assert!(c.contains(" ax.name=fix-bug"), "{c}");
        let khz: u64 = c
            .split("tsc_early_khz=")
            .nth(1)
            .expect("tsc_early_khz")
            .parse()
            .unwrap();
        // Two measurements agree within 1 %.
        let again = host_tsc_khz().unwrap();
        assert!(khz.abs_diff(again) * 100 < khz, "{khz} vs {again}");
        assert!(!kernel_cmdline("x", Accel::Kvm, false, None).contains("tsc_early_khz"));
        assert!(!c.contains("ax.net="));
        let n = kernel_cmdline(
            "x",
            Accel::Kvm,
            false,
            Some("100.96.0.2/30,100.96.0.1,1500"),
        );
        assert!(n.ends_with(" ax.net=100.96.0.2/30,100.96.0.1,1500"), "{n}");
    }
}
