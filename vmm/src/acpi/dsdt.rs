//! The DSDT (ACPI 6.5 §5.2.11.1): the AML namespace of the devices the guest cannot discover.
//!
//! ```text
//! Scope (\_SB) {
//!     Device (COM1) { _HID EISAID("PNP0501"), _UID 1, _DDN "COM1",
//!                     _CRS { IO (Decode16, port, port, 1, 8), Interrupt (Edge, ActiveHigh) {gsi} } }
//!     Device (V000) { _HID "LNRO0005", _UID 0, _CCA 1,
//!                     _CRS { Memory32Fixed (ReadWrite, base, size), Interrupt (Edge, ActiveHigh) {gsi} } }
//!     ...                                           (one Vnnn per virtio-mmio device)
//! }
//! Name (\_S5, Package () { 5, 5, 0, 0 })            (§7.4.2: SLP_TYPa, SLP_TYPb, reserved)
//! ```
//!
//! `LNRO0005` is the ACPI id Linux's virtio-mmio driver matches (`virtio_mmio_acpi_match` in
//! drivers/virtio/virtio_mmio.c); it reads the register window and the interrupt from `_CRS`.
//! Interrupts are edge-triggered (irqfd injects edges) and exclusive.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
    ONE,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::tables::{OEM_ID, OEM_REVISION};
use super::{AcpiConfig, MmioDeviceDesc, S5_SLEEP_TYPE};

/// DSDT revision 2: AML integers are 64-bit (§5.2.11.1).
const DSDT_REVISION: u8 = 2;
/// Ports an 8250 UART decodes.
const SERIAL_PORT_LEN: u8 = 8;

/// Already-encoded AML, so devices built in a loop can sit in one `Scope`.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn encode(aml: &dyn Aml) -> RawAml {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    RawAml(v)
}

/// `Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }` (§6.4.3.6).
fn edge_interrupt(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

fn serial_device(port: u16, gsi: u32) -> RawAml {
    let io = IO::new(port, port, 1, SERIAL_PORT_LEN);
    let irq = edge_interrupt(gsi);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    encode(&Device::new(
        Path::new("COM1"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
            &Name::new(Path::new("_UID"), &ONE),
            &Name::new(Path::new("_DDN"), &"COM1"),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

fn virtio_mmio_device(index: usize, d: &MmioDeviceDesc) -> RawAml {
    // validate() guarantees base + size <= 4 GiB and index < 24.
    let base = d.base as u32;
    let size = d.size as u32;
    let uid = index as u32;
    let window = Memory32Fixed::new(true, base, size);
    let irq = edge_interrupt(d.gsi);
    let crs = ResourceTemplate::new(vec![&window, &irq]);
    let name = format!("V{index:03}");
    encode(&Device::new(
        Path::new(&name),
        vec![
            &Name::new(Path::new("_HID"), &"LNRO0005"),
            &Name::new(Path::new("_UID"), &uid),
            // Cache-coherent DMA (§6.2.17).
            &Name::new(Path::new("_CCA"), &ONE),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

/// The AML definition block (without the table header).
pub(super) fn aml(cfg: &AcpiConfig) -> Vec<u8> {
    let mut devices: Vec<RawAml> = Vec::new();
    if let Some((port, gsi)) = cfg.serial {
        devices.push(serial_device(port, gsi));
    }
    for (i, d) in cfg.mmio_devices.iter().enumerate() {
        devices.push(virtio_mmio_device(i, d));
    }
    let children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();

    let mut out = Vec::new();
    Scope::new(Path::new("\\_SB_"), children).to_aml_bytes(&mut out);
    let s5 = S5_SLEEP_TYPE;
    Name::new(Path::new("_S5_"), &Package::new(vec![&s5, &s5, &0u8, &0u8])).to_aml_bytes(&mut out);
    out
}

/// The DSDT: header + [`aml`], checksummed.
pub(super) fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        *b"AXVMDSDT",
        OEM_REVISION,
    );
    t.append_slice(&aml(cfg));
    t.as_slice().to_vec()
}
