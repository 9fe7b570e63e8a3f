//! vCPUs: initial register state for each boot protocol, CPUID, MSRs, LAPIC, and the run
//! loop that dispatches exits to the buses (KVM API doc §4.10 KVM_RUN, §5 kvm_run).

use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::boot::{gdt, BootError, EntryPoint};
use crate::bus::Bus;
use crate::cpuid::{self, CpuTemplate};
use crate::exit::{ExitHandle, GuestExit};
use crate::memory::{layout, GuestMemoryMmap};
use crate::vm::Vm;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A vCPU ioctl failed.
    #[error("vCPU {0}: {1} failed: {2}")]
    Ioctl(u8, &'static str, kvm_ioctls::Error),
    /// Writing the boot GDT failed.
    #[error("vCPU {0}: {1}")]
    Boot(u8, BootError),
}

/// MSR numbers (Intel SDM Vol. 4, "Model-Specific Registers").
mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_MISC_ENABLE bit 0: fast string operations.
    pub const MISC_ENABLE_FAST_STRING: u64 = 1;
    /// MTRR default type: enabled (bit 11), write-back (6).
    pub const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
}

/// The MSRs every vCPU starts with (values a firmware would leave behind).
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (msr::IA32_SYSENTER_CS, 0),
        (msr::IA32_SYSENTER_ESP, 0),
        (msr::IA32_SYSENTER_EIP, 0),
        (msr::STAR, 0),
        (msr::CSTAR, 0),
        (msr::KERNEL_GS_BASE, 0),
        (msr::SYSCALL_MASK, 0),
        (msr::LSTAR, 0),
        (msr::IA32_TSC, 0),
        (msr::IA32_MISC_ENABLE, msr::MISC_ENABLE_FAST_STRING),
        (msr::IA32_MTRR_DEF_TYPE, msr::MTRR_ENABLE_WB),
    ]
}

/// Control-register bits (Intel SDM Vol. 3A §2.5).
mod cr {
    pub const CR0_PE: u64 = 1;
    pub const CR0_ET: u64 = 1 << 4;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
}

/// LAPIC register offsets and LVT delivery modes (Intel SDM Vol. 3A §11.5.1).
mod apic {
    pub const LVT_LINT0: usize = 0x350;
    pub const LVT_LINT1: usize = 0x360;
    pub const DM_NMI: u32 = 4;
    pub const DM_EXTINT: u32 = 7;
}

/// One vCPU.
pub struct Vcpu {
    /// The KVM vCPU fd.
    pub fd: VcpuFd,
    /// Index (= APIC ID).
    pub index: u8,
}

impl Vcpu {
    /// KVM_CREATE_VCPU with id `index`.
    pub fn new(vm: &Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Ioctl(index, "KVM_CREATE_VCPU", e))?;
        Ok(Vcpu { fd, index })
    }

    /// Sets CPUID (KVM_SET_CPUID2), MSRs (KVM_SET_MSRS), the LAPIC LINT pins
    /// (KVM_SET_LAPIC: LINT0 = ExtINT so the PIC reaches the BSP, LINT1 = NMI, as the MP spec
    /// "virtual wire" mode expects) and the FPU; for the boot vCPU (`entry` given) also the
    /// registers of the boot protocol.
    pub fn configure(
        &self,
        supported: &CpuId,
        template: CpuTemplate,
        ncpus: u8,
        entry: Option<EntryPoint>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), VcpuError> {
        let i = self.index;
        let ioctl = |what: &'static str| move |e| VcpuError::Ioctl(i, what, e);
        let table = cpuid::build(supported, template, i, ncpus);
        self.fd
            .set_cpuid2(&table)
            .map_err(ioctl("KVM_SET_CPUID2"))?;

        let list = boot_msrs();
        let entries: Vec<kvm_msr_entry> = list
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        // Msrs::from_entries only fails above its fixed capacity, which 11 entries do not reach.
        if let Ok(msrs) = Msrs::from_entries(&entries) {
            let n = self.fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
            if n < list.len() {
                log::debug!(
                    "vCPU {i}: KVM accepted {n} of {} boot MSRs (first refused: {:#x})",
                    list.len(),
                    list[n].0
                );
            }
        }

        let mut lapic = self.fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
        for (off, mode) in [
            (apic::LVT_LINT0, apic::DM_EXTINT),
            (apic::LVT_LINT1, apic::DM_NMI),
        ] {
            let r = &mut lapic.regs[off..off + 4];
            let v = u32::from_le_bytes([r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8]);
            let v = (v & !0x700) | (mode << 8);
            for (d, s) in r.iter_mut().zip(v.to_le_bytes()) {
                *d = s as _;
            }
        }
        self.fd.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))?;

        // x87 control word 0x37f and MXCSR 0x1f80: the power-on defaults (SDM Vol. 1 §8.1.5, §10.2.3).
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))?;

        if let Some(entry) = entry {
            self.set_boot_registers(entry, mem)?;
        }
        Ok(())
    }

    /// Registers and segments for the boot vCPU.
    fn set_boot_registers(
        &self,
        entry: EntryPoint,
        mem: &GuestMemoryMmap,
    ) -> Result<(), VcpuError> {
        let i = self.index;
        let long_mode = matches!(entry, EntryPoint::Linux64 { .. });
        let table = gdt::boot_gdt(long_mode);
        for (n, e) in table.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(layout::BOOT_GDT_START + 8 * n as u64))
                .map_err(|_| VcpuError::Boot(i, BootError::PageTables))?;
        }
        mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
            .map_err(|_| VcpuError::Boot(i, BootError::PageTables))?;

        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(|e| VcpuError::Ioctl(i, "KVM_GET_SREGS", e))?;
        let code = gdt::segment(table[1], 1);
        let data = gdt::segment(table[2], 2);
        let tss = gdt::segment(table[3], 3);
        sregs.gdt.base = layout::BOOT_GDT_START;
        sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
        sregs.idt.base = layout::BOOT_IDT_START;
        sregs.idt.limit = 7;
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = tss;

        let mut regs = kvm_regs {
            rflags: 0x2,
            ..Default::default()
        };
        match entry {
            EntryPoint::Pvh { entry, start_info } => {
                // PVH ABI: 32-bit protected mode, paging disabled, %ebx = start_info.
                sregs.cr0 = cr::CR0_PE | cr::CR0_ET;
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rip = entry.raw_value();
                regs.rbx = start_info.raw_value();
            }
            EntryPoint::Linux64 { entry, zero_page } => {
                sregs.cr3 = layout::PML4_START;
                sregs.cr4 = cr::CR4_PAE;
                sregs.cr0 = cr::CR0_PE | cr::CR0_ET | cr::CR0_PG;
                sregs.efer = cr::EFER_LME | cr::EFER_LMA;
                regs.rip = entry.raw_value();
                regs.rsp = layout::BOOT_STACK_POINTER;
                regs.rbp = layout::BOOT_STACK_POINTER;
                regs.rsi = zero_page.raw_value();
            }
        }
        self.fd
            .set_sregs(&sregs)
            .map_err(|e| VcpuError::Ioctl(i, "KVM_SET_SREGS", e))?;
        self.fd
            .set_regs(&regs)
            .map_err(|e| VcpuError::Ioctl(i, "KVM_SET_REGS", e))?;
        Ok(())
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Runs the vCPU until the guest stops it or `stop` is set. Returns the reason when this
    /// vCPU caused the stop, `None` when it was asked to stop (by `stop`, or because another
    /// vCPU or a device already recorded a reason on `exit`).
    pub fn run(
        &mut self,
        pio: &Bus,
        mmio: &Bus,
        exit: &ExitHandle,
        stop: &AtomicBool,
    ) -> Option<GuestExit> {
        let vcpu = self.index;
        loop {
            if stop.load(Ordering::Acquire) || exit.requested() {
                return None;
            }
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !pio.write(u64::from(port), data) {
                        log::trace!("vCPU {vcpu}: write to unmapped port {port:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !pio.read(u64::from(port), data) {
                        // Nothing decodes the port: the ISA bus floats high.
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !mmio.read(addr, data) {
                        log::debug!("vCPU {vcpu}: read of unmapped MMIO {addr:#x}");
                        data.fill(0);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !mmio.write(addr, data) {
                        log::debug!("vCPU {vcpu}: write to unmapped MMIO {addr:#x}");
                    }
                    continue;
                }
                Ok(VcpuExit::Hlt) => Outcome::Exit(GuestExit::Halted { vcpu }),
                Ok(VcpuExit::Shutdown) => Outcome::TripleFault,
                Ok(VcpuExit::FailEntry(reason, _)) => Outcome::FailEntry(reason),
                Ok(VcpuExit::InternalError) => Outcome::Internal,
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::Exit(GuestExit::PowerOff),
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => Outcome::Exit(GuestExit::Reset),
                    k => Outcome::Other(format!("KVM_EXIT_SYSTEM_EVENT type {k}")),
                },
                Ok(other) => Outcome::Other(format!("unhandled exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => Outcome::Other(format!("KVM_RUN failed: {e}")),
            };
            return Some(match outcome {
                Outcome::Exit(x) => x,
                Outcome::TripleFault => GuestExit::TripleFault {
                    vcpu,
                    rip: self.rip(),
                },
                Outcome::FailEntry(reason) => GuestExit::FailEntry {
                    vcpu,
                    reason,
                    rip: self.rip(),
                },
                Outcome::Internal => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the kvm_run exit union.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    GuestExit::InternalError {
                        vcpu,
                        suberror,
                        rip: self.rip(),
                    }
                }
                Outcome::Other(what) => GuestExit::Error {
                    vcpu,
                    what,
                    rip: self.rip(),
                },
            });
        }
    }
}

enum Outcome {
    Exit(GuestExit),
    TripleFault,
    FailEntry(u64),
    Internal,
    Other(String),
}
