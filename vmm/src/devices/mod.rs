//! Emulated devices: 8250 UART, i8042 (reset only), the boot-timer port; virtio-mmio
//! devices in [`virtio`].

pub mod boot_timer;
pub mod i8042;
pub mod serial;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// A `vm_superio::Trigger` that raises a GSI by writing to an irqfd
/// (KVM API doc §4.75 KVM_IRQFD).
pub struct IrqTrigger(pub EventFd);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
