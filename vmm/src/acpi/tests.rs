//! The tables as a guest reads them: from guest memory, starting at the RSDP.

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const MIB: usize = 1 << 20;

/// Signature → (address, bytes).
type Tables = BTreeMap<String, (u64, Vec<u8>)>;

fn mem(size: usize) -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

fn dev(i: u64) -> MmioDeviceDesc {
    MmioDeviceDesc {
        base: 0xd000_0000 + i * 0x1000,
        size: 0x200,
        gsi: 5 + i as u32,
    }
}

fn cfg(num_cpus: u8, devices: u64) -> AcpiConfig {
    AcpiConfig {
        num_cpus,
        serial: Some((0x3f8, 4)),
        mmio_devices: (0..devices).map(dev).collect(),
    }
}

/// The largest config: 255 vCPUs, COM1 on GSI 4 and a device on every other I/O APIC pin.
fn max_cfg() -> AcpiConfig {
    AcpiConfig {
        num_cpus: 255,
        serial: Some((0x3f8, 4)),
        mmio_devices: (0..IOAPIC_NUM_PINS)
            .filter(|&g| g != 4)
            .enumerate()
            .map(|(i, gsi)| MmioDeviceDesc {
                gsi,
                ..dev(i as u64)
            })
            .collect(),
    }
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn read(m: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// A system description table at `addr`: its header's length tells how much to read.
fn read_sdt(m: &GuestMemoryMmap<()>, addr: u64) -> Vec<u8> {
    assert!(
        (ACPI_START..ACPI_END - 36).contains(&addr),
        "table at {addr:#x} outside the ACPI region"
    );
    let len = u32_at(&read(m, addr, 36), 4) as usize;
    assert!(len >= 36);
    assert!(
        addr + len as u64 <= ACPI_END,
        "table at {addr:#x} runs past the region"
    );
    read(m, addr, len)
}

/// Follows RSDP → XSDT → {FACP → DSDT, APIC}, as an OS does. Returns signature → (addr, bytes).
fn walk(m: &GuestMemoryMmap<()>, rsdp: GuestAddress) -> Tables {
    let mut out = BTreeMap::new();
    let r = read(m, rsdp.0, 36);
    out.insert("RSDP".to_string(), (rsdp.0, r.clone()));
    let xsdt_addr = u64_at(&r, 24);
    let xsdt = read_sdt(m, xsdt_addr);
    for i in 0..(xsdt.len() - 36) / 8 {
        let addr = u64_at(&xsdt, 36 + 8 * i);
        let t = read_sdt(m, addr);
        let sig = String::from_utf8(t[0..4].to_vec()).unwrap();
        if sig == "FACP" {
            let dsdt_addr = u64_at(&t, 140);
            out.insert("DSDT".to_string(), (dsdt_addr, read_sdt(m, dsdt_addr)));
        }
        out.insert(sig, (addr, t));
    }
    out.insert("XSDT".to_string(), (xsdt_addr, xsdt));
    out
}

fn written(c: &AcpiConfig) -> (GuestMemoryMmap<()>, Tables) {
    let m = mem(2 * MIB);
    let rsdp = create_acpi_tables(&m, c).unwrap();
    assert_eq!(rsdp, GuestAddress(ACPI_START));
    let t = walk(&m, rsdp);
    (m, t)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn rsdp_signature_revision_and_both_checksums() {
    let (_, t) = written(&cfg(2, 3));
    let r = &t["RSDP"].1;
    assert_eq!(&r[0..8], b"RSD PTR ");
    assert_eq!(r[15], 2, "revision");
    assert_eq!(
        sum(&r[0..20]),
        0,
        "ACPI 1.0 checksum over the first 20 bytes"
    );
    assert_eq!(u32_at(r, 20), 36, "length");
    assert_eq!(sum(&r[0..36]), 0, "extended checksum");
    assert_eq!(u32_at(r, 16), 0, "no RSDT");
}

#[test]
fn legacy_scan_finds_the_rsdp_at_acpi_start() {
    // ACPI 6.5 §5.2.5.1: search 0xE0000–0xFFFFF on 16-byte boundaries.
    let m = mem(2 * MIB);
    create_acpi_tables(&m, &cfg(1, 1)).unwrap();
    let region = read(&m, 0xe_0000, 0x2_0000);
    let found = (0..region.len())
        .step_by(16)
        .find(|&o| &region[o..o + 8] == b"RSD PTR " && sum(&region[o..o + 20]) == 0)
        .map(|o| 0xe_0000 + o as u64);
    assert_eq!(found, Some(ACPI_START));
}

#[test]
fn xsdt_points_at_fadt_and_madt_and_fadt_at_dsdt() {
    let (_, t) = written(&cfg(1, 2));
    let x = &t["XSDT"].1;
    assert_eq!(&x[0..4], b"XSDT");
    assert_eq!(x.len(), 36 + 2 * 8);
    let entries: Vec<u64> = (0..2).map(|i| u64_at(x, 36 + 8 * i)).collect();
    assert_eq!(entries, vec![t["FACP"].0, t["APIC"].0]);
    let f = &t["FACP"].1;
    assert_eq!(u32_at(f, 40), 0, "32-bit DSDT unused");
    assert_eq!(u64_at(f, 140), t["DSDT"].0, "X_DSDT");
    assert_eq!(&t["DSDT"].1[0..4], b"DSDT");
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
    let (_, t) = written(&cfg(1, 0));
    let f = &t["FACP"].1;
    assert_eq!(f.len(), 276);
    assert_eq!((f[8], f[131]), (6, 5), "FADT 6.5");
    let flags = u32_at(f, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    // Generic Address Structures: SystemIO, 8 bits, offset 0, byte access, port.
    let gas = |off: usize| {
        (
            f[off],
            f[off + 1],
            f[off + 2],
            f[off + 3],
            u64_at(f, off + 4),
        )
    };
    assert_eq!(
        gas(116),
        (1, 8, 0, 1, u64::from(ACPI_RESET_PORT)),
        "RESET_REG"
    );
    assert_eq!(f[128], ACPI_RESET_VALUE);
    assert_eq!(gas(244), (1, 8, 0, 1, u64::from(ACPI_SLEEP_CONTROL_PORT)));
    assert_eq!(gas(256), (1, 8, 0, 1, u64::from(ACPI_SLEEP_STATUS_PORT)));
    // Hardware-reduced: no SCI, no PM1 blocks.
    assert_eq!(u32_at(f, 46) & 0xffff, 0, "SCI_INT");
    assert_eq!(u32_at(f, 56), 0, "PM1a_EVT_BLK");
    assert_eq!(&f[268..276], b"AXVMMKVM");
}

#[test]
fn every_table_checksums_to_zero() {
    for c in [cfg(1, 0), cfg(2, 3), cfg(255, 19), max_cfg()] {
        let (cpus, devs) = (c.num_cpus, c.mmio_devices.len());
        let (_, t) = written(&c);
        assert_eq!(t.len(), 5, "{:?}", t.keys().collect::<Vec<_>>());
        for (name, (_, b)) in &t {
            assert_eq!(sum(b), 0, "{name} checksum ({cpus} cpus, {devs} devices)");
            if name != "RSDP" {
                assert_eq!(u32_at(b, 4) as usize, b.len(), "{name} length");
            }
        }
    }
}

/// MADT entries: (type, bytes).
fn madt_entries(m: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut o = 44;
    while o < m.len() {
        let (ty, len) = (m[o], m[o + 1] as usize);
        assert!(
            len >= 2 && o + len <= m.len(),
            "malformed MADT entry at {o}"
        );
        out.push((ty, m[o..o + len].to_vec()));
        o += len;
    }
    out
}

#[test]
fn madt_lists_one_enabled_local_apic_per_cpu_and_the_ioapic() {
    for n in [1u8, 2, 4, 255] {
        let (_, t) = written(&cfg(n, 1));
        let m = &t["APIC"].1;
        assert_eq!(u32_at(m, 36), LAPIC_ADDR);
        assert_eq!(u32_at(m, 40) & 1, 1, "PCAT_COMPAT");
        let e = madt_entries(m);
        let lapics: Vec<_> = e.iter().filter(|(ty, _)| *ty == 0).collect();
        assert_eq!(lapics.len(), n as usize);
        for (i, (_, l)) in lapics.iter().enumerate() {
            assert_eq!(
                (l[1], l[2], l[3]),
                (8, i as u8, i as u8),
                "len, uid, apic id"
            );
            assert_eq!(u32_at(l, 4), 1, "enabled");
        }
        let ioapics: Vec<_> = e.iter().filter(|(ty, _)| *ty == 1).collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(u32_at(&ioapics[0].1, 4), IOAPIC_ADDR);
        assert_eq!(u32_at(&ioapics[0].1, 8), 0, "GSI base");
        // COM1 on GSI 4 is ISA IRQ 4: no override needed.
        assert!(e.iter().all(|(ty, _)| *ty != 2));
    }
}

#[test]
fn madt_overrides_the_com1_isa_irq_when_its_gsi_moves() {
    let c = AcpiConfig {
        num_cpus: 1,
        serial: Some((0x3f8, 9)),
        mmio_devices: vec![],
    };
    let (_, t) = written(&c);
    let isos: Vec<_> = madt_entries(&t["APIC"].1)
        .into_iter()
        .filter(|(ty, _)| *ty == 2)
        .collect();
    assert_eq!(isos.len(), 1);
    let iso = &isos[0].1;
    assert_eq!((iso[1], iso[2], iso[3]), (10, 0, 4), "len, ISA bus, IRQ 4");
    assert_eq!(u32_at(iso, 4), 9, "GSI");
}

#[test]
fn dsdt_has_one_lnro0005_per_device_com1_and_s5() {
    for n in [0, 1, 5, 19] {
        let (_, t) = written(&cfg(1, n));
        let d = &t["DSDT"].1;
        assert_eq!(count(d, b"LNRO0005"), n as usize);
        // EISAID("PNP0501") encodes as 0x41 0xD0 0x05 0x01.
        assert_eq!(count(d, &[0x41, 0xd0, 0x05, 0x01]), 1);
        assert_eq!(count(d, b"_S5_"), 1);
        for i in 0..n {
            let dv = dev(i);
            // Memory32Fixed descriptor: 0x86, length 9, read-write, base, size.
            let mut desc = vec![0x86, 9, 0, 1];
            desc.extend_from_slice(&(dv.base as u32).to_le_bytes());
            desc.extend_from_slice(&(dv.size as u32).to_le_bytes());
            assert_eq!(count(d, &desc), 1, "device {i} _CRS window");
            // Extended interrupt descriptor: 0x89, length 6, consumer|edge, 1 interrupt, gsi.
            let mut irq = vec![0x89, 6, 0, 0b11, 1];
            irq.extend_from_slice(&dv.gsi.to_le_bytes());
            assert_eq!(count(d, &irq), 1, "device {i} _CRS interrupt");
            assert_eq!(count(d, format!("V{i:03}").as_bytes()), 1);
        }
        // COM1: IO descriptor 0x47, decode16, min 0x3f8, max 0x3f8, align 1, length 8.
        assert_eq!(count(d, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
    }
}

#[test]
fn no_serial_no_com1() {
    let c = AcpiConfig {
        num_cpus: 1,
        serial: None,
        mmio_devices: vec![dev(0)],
    };
    let (_, t) = written(&c);
    assert_eq!(count(&t["DSDT"].1, &[0x41, 0xd0, 0x05, 0x01]), 0);
    assert_eq!(count(&t["DSDT"].1, b"LNRO0005"), 1);
}

#[test]
fn all_tables_lie_inside_the_region_and_do_not_overlap() {
    let tables = build_tables(&max_cfg()).unwrap();
    let names: Vec<_> = tables.iter().map(|t| t.name).collect();
    assert_eq!(names, ["RSDP", "XSDT", "FACP", "APIC", "DSDT"]);
    let mut end = ACPI_START;
    for t in &tables {
        assert!(t.addr.0 >= end, "{} overlaps the previous table", t.name);
        assert_eq!(t.addr.0 % 16, 0, "{} alignment", t.name);
        end = t.addr.0 + t.bytes.len() as u64;
        assert!(end <= ACPI_END, "{} ends at {end:#x}", t.name);
    }
    // Written bytes are exactly these, and nothing outside [ACPI_START, ACPI_END) changed.
    let m = mem(2 * MIB);
    create_acpi_tables(&m, &max_cfg()).unwrap();
    for t in &tables {
        assert_eq!(read(&m, t.addr.0, t.bytes.len()), t.bytes);
    }
    assert!(read(&m, 0, ACPI_START as usize).iter().all(|&b| b == 0));
    assert!(read(&m, ACPI_END, MIB).iter().all(|&b| b == 0));
}

/// Every rejected config leaves guest memory untouched.
fn rejected(c: &AcpiConfig) -> AcpiError {
    let m = mem(2 * MIB);
    let e = create_acpi_tables(&m, c).unwrap_err();
    assert!(
        read(&m, 0, 2 * MIB).iter().all(|&b| b == 0),
        "{e} but wrote"
    );
    assert!(!e.to_string().is_empty());
    e
}

#[test]
fn too_many_devices_is_an_error_not_a_panic() {
    let mut c = cfg(1, 0);
    c.mmio_devices = (0..25)
        .map(|i| MmioDeviceDesc {
            base: 0xd000_0000 + i * 0x1000,
            size: 0x200,
            gsi: i as u32,
        })
        .collect();
    assert!(matches!(
        rejected(&c),
        AcpiError::TooManyDevices { count: 25, max: 24 }
    ));
    let mut c = cfg(1, 0);
    c.mmio_devices = (0..10_000).map(dev).collect();
    assert!(matches!(rejected(&c), AcpiError::TooManyDevices { .. }));
}

#[test]
fn bad_configs_are_errors() {
    assert!(matches!(rejected(&cfg(0, 1)), AcpiError::NoCpus));
    // 19 devices on GSIs 5..=23 fit with COM1; a 20th needs GSI 24.
    assert!(matches!(
        rejected(&cfg(1, 20)),
        AcpiError::GsiOutOfRange { gsi: 24 }
    ));
    let mut c = cfg(1, 2);
    c.mmio_devices[1].gsi = 4;
    assert!(matches!(rejected(&c), AcpiError::GsiConflict { gsi: 4 }));
    let mut c = cfg(1, 2);
    c.mmio_devices[1].base = c.mmio_devices[0].base + 0x100;
    assert!(matches!(rejected(&c), AcpiError::MmioOverlap { .. }));
    for (base, size) in [
        (0xffff_ff00, 0x200),
        (1 << 32, 0x200),
        (0xd000_0000, 0),
        (u64::MAX, 2),
    ] {
        let mut c = cfg(1, 1);
        c.mmio_devices[0].base = base;
        c.mmio_devices[0].size = size;
        assert!(
            matches!(rejected(&c), AcpiError::MmioOutOfRange { .. }),
            "{base:#x}+{size:#x}"
        );
    }
    let mut c = cfg(1, 0);
    c.serial = Some((0xfffc, 4));
    assert!(matches!(
        rejected(&c),
        AcpiError::SerialPortOutOfRange { .. }
    ));
}

#[test]
fn tables_that_outgrow_the_region_are_an_error() {
    let c = cfg(255, 19);
    let need = {
        let t = build_tables(&c).unwrap();
        let last = t.last().unwrap();
        last.addr.0 + last.bytes.len() as u64 - ACPI_START
    };
    let e = build_tables_in(&c, ACPI_START, ACPI_START + need - 1).unwrap_err();
    assert!(matches!(e, AcpiError::TablesTooLarge { size, .. } if size == need));
    assert!(build_tables_in(&c, ACPI_START, ACPI_START + need).is_ok());
}

#[test]
fn guest_memory_that_misses_the_region_is_an_error() {
    let m = mem(ACPI_START as usize + 0x1000); // ends inside the region
    assert!(matches!(
        create_acpi_tables(&m, &cfg(1, 1)),
        Err(AcpiError::MemoryNotCovered)
    ));
    assert!(read(&m, ACPI_START, 0x1000).iter().all(|&b| b == 0));
}

#[test]
fn shutdown_device_decodes_s5_and_reset() {
    let ctl = u64::from(ACPI_SLEEP_CONTROL_PORT - ACPI_PM_PORT_BASE);
    let sts = u64::from(ACPI_SLEEP_STATUS_PORT - ACPI_PM_PORT_BASE);
    let rst = u64::from(ACPI_RESET_PORT - ACPI_PM_PORT_BASE);
    assert!(rst < u64::from(ACPI_PM_PORT_LEN));

    let mut d = AcpiShutdown::new();
    // Linux's acpi_hw_extended_sleep(): clear WAK_STS, then SLP_TYP << 2 | SLP_EN.
    assert!(!d.write(sts, &[0x80]));
    assert!(!d.write(ctl, &[3 << 2 | 1 << 5]), "S3 is not offered");
    assert!(!d.write(ctl, &[5 << 2]), "SLP_EN not set");
    assert!(!d.write(ctl, &[0x34, 0]), "wrong width");
    assert!(!d.write(7, &[0x34]), "outside the block");
    assert_eq!(d.requested(), None);
    assert!(d.write(ctl, &[0x34]));
    assert_eq!(d.requested(), Some(PowerEvent::PowerOff));
    let mut buf = [0xffu8; 1];
    d.read(sts, &mut buf);
    assert_eq!(buf, [0]);

    let mut d = AcpiShutdown::new();
    assert!(!d.write(rst, &[0x02]));
    assert!(d.write(rst, &[ACPI_RESET_VALUE]));
    assert_eq!(d.requested(), Some(PowerEvent::Reset));
}

#[test]
fn fadt_registers_and_the_device_agree_with_s5() {
    // The value the guest computes from \_S5_ and writes to SLEEP_CONTROL_REG powers off.
    let (_, t) = written(&cfg(1, 0));
    let d = &t["DSDT"].1;
    let at = d.windows(4).position(|w| w == b"_S5_").unwrap();
    // Name(_S5_, Package(4) { 0x0A 5, 0x0A 5, Zero, Zero }): PackageOp, PkgLength, count, ...
    let pkg = &d[at + 4..];
    assert_eq!(pkg[0], 0x12);
    assert_eq!(pkg[2], 4);
    assert_eq!(&pkg[3..5], &[0x0a, S5_SLEEP_TYPE]);
    let slp_typ = pkg[4];
    let mut dev = AcpiShutdown::new();
    assert!(dev.write(0, &[slp_typ << 2 | 1 << 5]));
}
