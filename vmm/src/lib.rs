//! ax-vmm: the KVM microVM monitor.
//!
//! One small process per agent VM: guest RAM from a memfd ([`memory`]), a KVM VM with the
//! in-kernel irqchip ([`vm`]), vCPUs with a CPUID template ([`vcpu`], [`cpuid`]), a kernel
//! loaded through PVH or the Linux 64-bit boot protocol ([`boot`]), ACPI tables ([`acpi`]),
//! legacy devices on the PIO bus ([`devices`], [`bus`]). [`machine::Machine`] ties them
//! together; `main.rs` is the command line around it. The layout follows Cloud Hypervisor
//! and rust-vmm's vmm-reference: one module per concern.
//!
//! virtio-mmio devices (transport, blk, vsock, and the vhost-user frontend for virtio-fs and
//! virtio-net backends in other processes) live in [`devices::virtio`] (docs/virtio.md).
//! The [`jail`] (seccomp per thread kind, Landlock, capabilities, namespaces; docs/jail.md)
//! is applied between building and running the machine.

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod config;
pub mod cpuid;
pub mod devices;
pub mod exit;
pub mod jail;
pub mod machine;
pub mod memory;
pub mod vcpu;
pub mod vm;

pub use config::VmConfig;
pub use exit::GuestExit;
pub use machine::Machine;
