//! The fixed-format tables: RSDP, XSDT, FADT, MADT (ACPI 6.5 §5.2).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
    IOAPIC_ADDR, LAPIC_ADDR,
};

/// OEMID of every table (6 bytes, space-padded).
pub(super) const OEM_ID: [u8; 6] = *b"AXVMM ";
/// OEM revision of every table.
pub(super) const OEM_REVISION: u32 = 1;
/// FADT `Hypervisor Vendor Identity` (ACPI 6.5 §5.2.9, offset 268).
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"AXVMMKVM";

/// ACPI 2.0+ RSDP length (§5.2.5.3).
pub(super) const RSDP_LEN: usize = 36;
/// ACPI 6.5 FADT (major 6, minor 5) length (§5.2.9).
pub(super) const FADT_LEN: usize = 276;
/// System description table header length (§5.2.6).
const HEADER_LEN: usize = 36;

/// MADT flags bit 0, PCAT_COMPAT (§5.2.12, Table 5.44): KVM's in-kernel irqchip has the dual
/// 8259s, which the OS must mask before using the I/O APIC.
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT revision (ACPI 6.2–6.4 numbering, accepted by every OS and by iasl).
const MADT_REVISION: u8 = 5;
/// Interrupt Source Override structure type and length (§5.2.12.5).
const MADT_TYPE_ISO: u8 = 2;
const MADT_ISO_LEN: u8 = 10;
/// IA-PC boot architecture flag "VGA Not Present" (§5.2.9.3, bit 2).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// An interrupt source override: ISA IRQ `source` is GSI `gsi`, conforming polarity/trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Iso {
    pub source: u8,
    pub gsi: u32,
}

fn bytes_of(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

/// RSDP (§5.2.5.3): revision 2, no RSDT, XSDT at `xsdt_addr`, both checksums set.
pub(super) fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let v = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    debug_assert_eq!(v.len(), RSDP_LEN);
    v
}

pub(super) fn xsdt_len(entries: usize) -> usize {
    HEADER_LEN + 8 * entries
}

/// XSDT (§5.2.8): 64-bit pointers to the FADT and the MADT (the DSDT hangs off the FADT).
pub(super) fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut x = XSDT::new(OEM_ID, *b"AXVMXSDT", OEM_REVISION);
    for &e in entries {
        x.add_entry(e);
    }
    let v = bytes_of(&x);
    debug_assert_eq!(v.len(), xsdt_len(entries.len()));
    v
}

fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// FADT (§5.2.9), revision 6.5, hardware-reduced (`HW_REDUCED_ACPI`, §5.2.9.1 flag bit 20): no
/// PM1/PM2/PM timer/GPE blocks and no SCI; `SLEEP_CONTROL_REG`/`SLEEP_STATUS_REG` (§4.8.3.7)
/// and `RESET_REG` (§4.8.3.6, `RESET_REG_SUP`) are 8-bit I/O ports served by `AcpiShutdown`.
/// No FACS (optional when hardware-reduced). The DSDT is referenced by `X_DSDT` only.
pub(super) fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"AXVMFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power/sleep buttons (the flags mean "not present as fixed hardware").
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    f.reset_reg = io_byte_register(ACPI_RESET_PORT);
    f.reset_value = ACPI_RESET_VALUE;
    f.sleep_control_reg = io_byte_register(ACPI_SLEEP_CONTROL_PORT);
    f.sleep_status_reg = io_byte_register(ACPI_SLEEP_STATUS_PORT);
    f.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    let v = bytes_of(&f.finalize());
    debug_assert_eq!(v.len(), FADT_LEN);
    v
}

/// MADT (§5.2.12): local APIC address, PCAT_COMPAT, one enabled Processor Local APIC (§5.2.12.2)
/// per vCPU (UID = APIC id = index), the I/O APIC (§5.2.12.3, id 0, GSI base 0) and the
/// interrupt source overrides (§5.2.12.5).
pub(super) fn madt(num_cpus: u8, isos: &[Iso]) -> Vec<u8> {
    let mut m = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        *b"AXVMAPIC",
        OEM_REVISION,
    );
    m.write_u32(36, LAPIC_ADDR);
    m.write_u32(40, MADT_PCAT_COMPAT);
    let mut body = Vec::new();
    for cpu in 0..num_cpus {
        ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled).to_aml_bytes(&mut body);
    }
    IoApic::new(0, IOAPIC_ADDR, 0).to_aml_bytes(&mut body);
    for iso in isos {
        body.extend_from_slice(&[
            MADT_TYPE_ISO,
            MADT_ISO_LEN,
            0, /* ISA bus */
            iso.source,
        ]);
        body.extend_from_slice(&iso.gsi.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes()); // MPS INTI flags: conforming
    }
    m.append_slice(&body);
    m.as_slice().to_vec()
}
