//! The KVM VM: `/dev/kvm`, the VM fd, guest memory slots, the in-kernel irqchip and PIT,
//! and irqfds (KVM API doc, Documentation/virt/kvm/api.rst, sections cited per item).

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::{layout, GuestRam};

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}; check that KVM is enabled (modprobe kvm_intel/kvm_amd) and that you can read and write /dev/kvm (group kvm)")]
    OpenKvm(kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("KVM API version {0} is not the stable version 12")]
    ApiVersion(i32),
    /// A capability ax-vmm needs is missing.
    #[error("KVM lacks {0:?}; ax-vmm needs a host kernel with it")]
    MissingCap(Cap),
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Capabilities checked before anything else (KVM API doc §8 "Other capabilities").
const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Irqfd,
    Cap::Ioeventfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
];

/// An open KVM VM.
pub struct Vm {
    /// The /dev/kvm handle (system ioctls: KVM_GET_SUPPORTED_CPUID, ...).
    pub kvm: Kvm,
    /// The VM fd.
    pub fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm and creates a VM (KVM_CREATE_VM) with the x86 setup every vCPU needs:
    /// KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR, `ram` as memory slots ([`Vm::set_memory`]),
    /// KVM_CREATE_IRQCHIP (PIC + IOAPIC + per-vCPU LAPICs in the kernel) and, if `pit`,
    /// KVM_CREATE_PIT2 with a dummy speaker port.
    ///
    /// The slots go in before the irqchip on purpose. Every memslot change waits for an SRCU
    /// grace period on the VM (`synchronize_srcu_expedited(&kvm->srcu)`), and creating the
    /// irqchip (its PIC/IOAPIC devices on the KVM I/O buses) leaves grace-period work behind
    /// that takes several timer ticks to finish. A KVM_SET_USER_MEMORY_REGION issued after
    /// KVM_CREATE_IRQCHIP waited for it: 4–12 ms on kvm-pvm, most of ax-vmm's spawn time; issued
    /// before, it takes ~0.1 ms (docs/benchmarks.md, "ax-vmm"). Firecracker registers memory
    /// after its irqchip and pays it; Cloud Hypervisor (split irqchip) does not.
    pub fn new(pit: bool, ram: &GuestRam) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(VmError::ApiVersion(v));
        }
        for &cap in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(cap));
            }
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_VM", e))?;
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Ioctl("KVM_SET_TSS_ADDR", e))?;
        if kvm.check_extension(Cap::SetIdentityMapAddr) {
            fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
                .map_err(|e| VmError::Ioctl("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        }
        let vm = Vm { kvm, fd };
        vm.set_memory(ram)?;
        vm.fd
            .create_irq_chip()
            .map_err(|e| VmError::Ioctl("KVM_CREATE_IRQCHIP", e))?;
        if pit {
            let cfg = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.fd
                .create_pit2(cfg)
                .map_err(|e| VmError::Ioctl("KVM_CREATE_PIT2", e))?;
        }
        Ok(vm)
    }

    /// Registers every RAM region as a KVM memory slot (KVM API doc §4.35
    /// KVM_SET_USER_MEMORY_REGION), slot i for region i.
    pub fn set_memory(&self, ram: &GuestRam) -> Result<(), VmError> {
        for (slot, (guest, size, host)) in ram.regions().into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: guest,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: the region maps memory owned by `ram`, which the caller keeps alive for
            // as long as the VM runs (Machine owns both and drops the VM first).
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|e| VmError::Ioctl("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        Ok(())
    }

    /// Deletes the slots [`Vm::set_memory`] registered (KVM_SET_USER_MEMORY_REGION with
    /// `memory_size` 0), for teardown once no vCPU runs any more.
    ///
    /// Closing the VM fd waits (`srcu_barrier` in `kvm_destroy_vm`) for the SRCU grace period
    /// still pending from KVM_CREATE_IRQCHIP (see [`Vm::new`]); a normal grace period backs off
    /// by timer ticks and finishes ~14 ms after the irqchip was created. A slot deletion waits for
    /// an *expedited* grace period, which hurries the pending one along: for a VM that lived 3 ms,
    /// delete + close took ~3 ms instead of ~11 ms (kvm-pvm, docs/benchmarks.md "ax-vmm"); for
    /// a VM that lived longer it costs ~0.1 ms.
    pub fn delete_memory(&self, ram: &GuestRam) -> Result<(), VmError> {
        for (slot, (guest, _, host)) in ram.regions().into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: guest,
                memory_size: 0,
                userspace_addr: host,
            };
            // SAFETY: a zero-size region removes the slot; no host memory is handed to KVM.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|e| VmError::Ioctl("KVM_SET_USER_MEMORY_REGION (delete)", e))?;
        }
        Ok(())
    }

    /// An eventfd wired to `gsi` with KVM_IRQFD (KVM API doc §4.75): writing 1 to it injects
    /// an edge on that GSI without a VM exit. This is how devices (serial now, virtio-mmio
    /// later) raise interrupts.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, VmError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(|e| VmError::Ioctl("KVM_IRQFD", e))?;
        Ok(evt)
    }
}

impl Vm {
    /// An eventfd that KVM signals when the guest writes to MMIO address `addr` (optionally
    /// only when the written value equals `datamatch`), without a VM exit: KVM_IOEVENTFD (KVM
    /// API doc §4.59). A virtio-mmio transport registers one per virtqueue on its
    /// QueueNotify register (virtio 1.2 §4.2.2, offset 0x050, datamatch = queue index).
    pub fn ioeventfd(&self, addr: u64, datamatch: Option<u32>) -> Result<EventFd, VmError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        let a = kvm_ioctls::IoEventAddress::Mmio(addr);
        match datamatch {
            Some(v) => self.fd.register_ioevent(&evt, &a, v),
            None => self.fd.register_ioevent(&evt, &a, kvm_ioctls::NoDatamatch),
        }
        .map_err(|e| VmError::Ioctl("KVM_IOEVENTFD", e))?;
        Ok(evt)
    }
}

/// True if the host's KVM is kvm-pvm (software, no VMX/SVM): `/sys/module/kvm_pvm` exists.
pub fn host_is_kvm_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irqfd_and_ioeventfd_register() {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: vm::tests::irqfd_and_ioeventfd_register: cannot open /dev/kvm: {e}"
            );
            return;
        }
        let ram = GuestRam::new(2 << 20).unwrap();
        let vm = Vm::new(false, &ram).unwrap();
        let irq = vm.irqfd(4).unwrap();
        irq.write(1).unwrap();
        let (base, gsi) = layout::virtio_mmio_slot(0).unwrap();
        vm.irqfd(gsi).unwrap();
        vm.ioeventfd(base + 0x50, Some(0)).unwrap();
        vm.ioeventfd(base + 0x50, Some(1)).unwrap();
        // The same address and datamatch twice is refused by KVM (EEXIST): an error, not a panic.
        assert!(vm.ioeventfd(base + 0x50, Some(1)).is_err());
    }
}
