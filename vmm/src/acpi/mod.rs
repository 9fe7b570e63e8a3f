//! ACPI tables for the microVM: RSDP, XSDT, FADT (hardware-reduced), MADT and DSDT (ACPI 6.5).
//!
//! The tables live in the legacy BIOS area `[ACPI_START, ACPI_END)` (0xE0000–0xFFFFF), the RSDP
//! first, so a guest finds it either through the PVH start info (`rsdp_paddr`) or by the legacy
//! scan of that range on 16-byte boundaries (ACPI 6.5 §5.2.5.1). The e820 map must mark the region
//! reserved. Layout, contents and the power-management registers are documented in `docs/acpi.md`.
//!
//! The platform is *hardware-reduced* (ACPI 6.5 §4.1, FADT flag `HW_REDUCED_ACPI`): no PM1 blocks,
//! no SCI, no GPEs. Power-off goes through the FADT's sleep control register
//! ([`ACPI_SLEEP_CONTROL_PORT`]) with the `_S5_` sleep type from the DSDT; reboot through the reset
//! register ([`ACPI_RESET_PORT`]). [`AcpiShutdown`] is the PIO bus device that decodes both.

mod dsdt;
mod shutdown;
mod tables;
#[cfg(test)]
mod tests;

pub use shutdown::{AcpiShutdown, PowerEvent};

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// First byte of the ACPI region; the RSDP is written here.
pub const ACPI_START: u64 = 0x000e_0000;
/// One past the last byte of the ACPI region.
pub const ACPI_END: u64 = 0x0010_0000;

/// First I/O port of the ACPI power-management register block served by [`AcpiShutdown`].
pub const ACPI_PM_PORT_BASE: u16 = 0x600;
/// Number of I/O ports in the block: sleep control, sleep status, reset.
pub const ACPI_PM_PORT_LEN: u16 = 3;
/// FADT `SLEEP_CONTROL_REG` (ACPI 6.5 §4.8.3.7): an 8-bit I/O port; `SLP_TYPx` in bits 2–4,
/// `SLP_EN` in bit 5.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = ACPI_PM_PORT_BASE;
/// FADT `SLEEP_STATUS_REG` (ACPI 6.5 §4.8.3.7): an 8-bit I/O port; `WAK_STS` in bit 7 (always 0
/// here: the guest never wakes from S5).
pub const ACPI_SLEEP_STATUS_PORT: u16 = ACPI_PM_PORT_BASE + 1;
/// FADT `RESET_REG` (ACPI 6.5 §4.8.3.6): an 8-bit I/O port; writing [`ACPI_RESET_VALUE`] resets.
pub const ACPI_RESET_PORT: u16 = ACPI_PM_PORT_BASE + 2;
/// FADT `RESET_VALUE`.
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// `SLP_TYPa`/`SLP_TYPb` of `\_S5_` (ACPI 6.5 §7.4.2): the guest writes
/// `(S5_SLEEP_TYPE << 2) | SLP_EN` = 0x34 to the sleep control register to power off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Local APIC MMIO base announced in the MADT.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// I/O APIC MMIO base announced in the MADT (KVM's in-kernel I/O APIC default).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Pins of KVM's in-kernel I/O APIC: GSIs 0–23. Every GSI handed to the tables must be below.
pub const IOAPIC_NUM_PINS: u32 = 24;

/// What the tables describe.
#[derive(Debug, Clone, Default)]
pub struct AcpiConfig {
    /// vCPUs; APIC ids and ACPI processor UIDs are `0..num_cpus`.
    pub num_cpus: u8,
    /// The 8250 UART: (I/O port base, normally 0x3f8; GSI, normally 4).
    pub serial: Option<(u16, u32)>,
    /// virtio-mmio transports, in the order the guest should number them.
    pub mmio_devices: Vec<MmioDeviceDesc>,
}

/// One virtio-mmio transport (virtio 1.2 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceDesc {
    /// Guest-physical base of the register window; with `size`, must lie below 4 GiB.
    pub base: u64,
    /// Length of the register window (0x200 for virtio-mmio with config space; at least 0x100).
    pub size: u64,
    /// Its GSI (I/O APIC pin), edge-triggered, active-high.
    pub gsi: u32,
}

/// One table as laid out in the region; see [`build_tables`].
#[derive(Debug, Clone)]
pub struct AcpiTable {
    /// "RSDP" for the root pointer, otherwise the 4-byte table signature: "XSDT", "FACP", "APIC",
    /// "DSDT".
    pub name: &'static str,
    /// Guest-physical address the table is written at.
    pub addr: GuestAddress,
    /// The table, checksummed.
    pub bytes: Vec<u8>,
}

/// Why the tables could not be built or written. Each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI: the VM has no vCPU; configure at least one")]
    NoCpus,
    #[error(
        "ACPI: {count} virtio-mmio devices, at most {max} fit (one I/O APIC pin each); remove devices"
    )]
    TooManyDevices { count: usize, max: usize },
    #[error(
        "ACPI: virtio-mmio device at {base:#x} (size {size:#x}) must be non-empty and lie below 4 GiB; \
         place it in the 32-bit MMIO hole"
    )]
    MmioOutOfRange { base: u64, size: u64 },
    #[error(
        "ACPI: virtio-mmio devices at {first:#x} and {second:#x} overlap; give each its own window"
    )]
    MmioOverlap { first: u64, second: u64 },
    #[error("ACPI: serial port {port:#x} (8 ports) does not fit the 16-bit I/O space; use 0x3f8")]
    SerialPortOutOfRange { port: u16 },
    #[error(
        "ACPI: GSI {gsi} is beyond the I/O APIC's pins 0..{}; allocate GSIs below {}",
        IOAPIC_NUM_PINS,
        IOAPIC_NUM_PINS
    )]
    GsiOutOfRange { gsi: u32 },
    #[error("ACPI: GSI {gsi} is given to two devices; edge-triggered interrupts cannot be shared, give each device its own")]
    GsiConflict { gsi: u32 },
    #[error(
        "ACPI: the tables need {size} bytes but the region holds {max}; describe fewer devices"
    )]
    TablesTooLarge { size: u64, max: u64 },
    #[error(
        "ACPI: guest memory does not cover {:#x}..{:#x}; give the guest at least 1 MiB of RAM starting at 0",
        ACPI_START,
        ACPI_END
    )]
    MemoryNotCovered,
    #[error(
        "ACPI: writing the tables into guest memory failed: {0}; check the guest memory layout"
    )]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Writes RSDP (at [`ACPI_START`], also found by the legacy 0xE0000–0xFFFFF scan), XSDT, FADT
/// (hardware-reduced ACPI, with the sleep control/status registers for S5 power-off), MADT (local
/// APICs + I/O APIC + interrupt source overrides as needed), DSDT (AML: one `LNRO0005` device per
/// virtio-mmio device with `_CRS` Memory32Fixed + Interrupt, the COM1 serial `PNP0501` with IO + IRQ,
/// and `_S5_`), returns the RSDP address.
///
/// Validates everything before writing a byte: on error nothing has been written, and nothing is
/// ever written outside `[ACPI_START, ACPI_END)`.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    let tables = build_tables(cfg)?;
    let len = (ACPI_END - ACPI_START) as usize;
    if !mem.check_range(GuestAddress(ACPI_START), len, Permissions::Write) {
        return Err(AcpiError::MemoryNotCovered);
    }
    for t in &tables {
        mem.write_slice(&t.bytes, t.addr)?;
    }
    Ok(GuestAddress(ACPI_START))
}

/// Builds every table at the address [`create_acpi_tables`] writes it to, without touching guest
/// memory: RSDP, XSDT, FACP, APIC, DSDT in that order. For tests and for dumping the tables.
pub fn build_tables(cfg: &AcpiConfig) -> Result<Vec<AcpiTable>, AcpiError> {
    build_tables_in(cfg, ACPI_START, ACPI_END)
}

/// Tables are placed on 16-byte boundaries (the RSDP must be; the rest are for tidiness).
const TABLE_ALIGN: u64 = 16;

fn align_up(x: u64) -> u64 {
    x.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

fn build_tables_in(cfg: &AcpiConfig, start: u64, end: u64) -> Result<Vec<AcpiTable>, AcpiError> {
    validate(cfg)?;

    // Address-independent tables first, so their sizes fix the layout.
    let madt = tables::madt(cfg.num_cpus, &interrupt_source_overrides(cfg));
    let dsdt = dsdt::dsdt(cfg);

    let rsdp_addr = start;
    let xsdt_addr = align_up(rsdp_addr + tables::RSDP_LEN as u64);
    let fadt_addr = align_up(xsdt_addr + tables::xsdt_len(2) as u64);
    let madt_addr = align_up(fadt_addr + tables::FADT_LEN as u64);
    let dsdt_addr = align_up(madt_addr + madt.len() as u64);
    let total = dsdt_addr + dsdt.len() as u64 - start;
    if start + total > end {
        return Err(AcpiError::TablesTooLarge {
            size: total,
            max: end - start,
        });
    }

    let fadt = tables::fadt(dsdt_addr);
    let xsdt = tables::xsdt(&[fadt_addr, madt_addr]);
    let rsdp = tables::rsdp(xsdt_addr);

    Ok(vec![
        AcpiTable {
            name: "RSDP",
            addr: GuestAddress(rsdp_addr),
            bytes: rsdp,
        },
        AcpiTable {
            name: "XSDT",
            addr: GuestAddress(xsdt_addr),
            bytes: xsdt,
        },
        AcpiTable {
            name: "FACP",
            addr: GuestAddress(fadt_addr),
            bytes: fadt,
        },
        AcpiTable {
            name: "APIC",
            addr: GuestAddress(madt_addr),
            bytes: madt,
        },
        AcpiTable {
            name: "DSDT",
            addr: GuestAddress(dsdt_addr),
            bytes: dsdt,
        },
    ])
}

fn validate(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let max = IOAPIC_NUM_PINS as usize;
    if cfg.mmio_devices.len() > max {
        return Err(AcpiError::TooManyDevices {
            count: cfg.mmio_devices.len(),
            max,
        });
    }
    let mut gsis: Vec<u32> = cfg.mmio_devices.iter().map(|d| d.gsi).collect();
    if let Some((port, gsi)) = cfg.serial {
        if port.checked_add(7).is_none() {
            return Err(AcpiError::SerialPortOutOfRange { port });
        }
        gsis.push(gsi);
    }
    for (i, &gsi) in gsis.iter().enumerate() {
        if gsi >= IOAPIC_NUM_PINS {
            return Err(AcpiError::GsiOutOfRange { gsi });
        }
        if gsis[..i].contains(&gsi) {
            return Err(AcpiError::GsiConflict { gsi });
        }
    }
    for (i, d) in cfg.mmio_devices.iter().enumerate() {
        let fits = d.size > 0 && d.base.checked_add(d.size).is_some_and(|e| e <= 1 << 32);
        if !fits {
            return Err(AcpiError::MmioOutOfRange {
                base: d.base,
                size: d.size,
            });
        }
        for o in &cfg.mmio_devices[..i] {
            if d.base < o.base + o.size && o.base < d.base + d.size {
                return Err(AcpiError::MmioOverlap {
                    first: o.base,
                    second: d.base,
                });
            }
        }
    }
    Ok(())
}

/// ISA IRQ that legacy (non-ACPI) drivers assume for a COM port: 4 for COM1/COM3, 3 for
/// COM2/COM4.
fn com_isa_irq(port: u16) -> Option<u8> {
    match port {
        0x3f8 | 0x3e8 => Some(4),
        0x2f8 | 0x2e8 => Some(3),
        _ => None,
    }
}

/// MADT interrupt source overrides (ACPI 6.5 §5.2.12.5). KVM's default GSI routing is the
/// identity for pins 0–23 and every interrupt here is edge-triggered, active-high, which is what
/// an OS assumes for ISA IRQs without an override: so none is needed, except when the serial
/// port's GSI differs from the ISA IRQ a legacy 8250 driver hard-codes for its port (IRQ 4 for
/// 0x3f8): then ISA IRQ → GSI is overridden so that driver finds it too.
fn interrupt_source_overrides(cfg: &AcpiConfig) -> Vec<tables::Iso> {
    let mut isos = Vec::new();
    if let Some((port, gsi)) = cfg.serial {
        if let Some(irq) = com_isa_irq(port) {
            if u32::from(irq) != gsi {
                isos.push(tables::Iso { source: irq, gsi });
            }
        }
    }
    isos
}
