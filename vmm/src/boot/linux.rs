//! The Linux x86 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit Boot
//! Protocol"): the protected-mode kernel of a bzImage is loaded at 1 MiB and entered at
//! load address + 0x200 in long mode, with an identity map covering the kernel, boot_params
//! and command line, `%rsi` = address of the zero page (`struct boot_params`,
//! Documentation/arch/x86/zero-page.rst), and a GDT with __BOOT_CS (0x10)/__BOOT_DS (0x18)
//! style flat segments (any selectors work; the kernel reloads its own GDT).

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Address, Bytes, GuestAddress};

use super::BootError;
use crate::memory::{layout, memory_map, GuestMemoryMmap};

/// `boot_flag` value (boot.rst: "0xAA55").
const BOOT_FLAG: u16 = 0xaa55;
/// `header` magic "HdrS".
const HDRS: u32 = 0x5372_6448;
/// `type_of_loader` 0xff: undefined/other boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// `xloadflags` bit 0: the kernel has the 64-bit entry point at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address.
pub const STARTUP_64_OFFSET: u64 = 0x200;

/// Fills and writes the zero page; returns its address for `%rsi`.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    hdr: setup_header,
    cmdline: GuestAddress,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<GuestAddress, BootError> {
    let mut p = boot_params {
        hdr,
        ..Default::default()
    };
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.boot_flag = BOOT_FLAG;
    p.hdr.header = HDRS;
    p.hdr.cmd_line_ptr = cmdline.raw_value() as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr.raw_value() as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    let map = memory_map(mem_size);
    if map.len() > p.e820_table.len() {
        return Err(BootError::TooManyE820);
    }
    for (slot, e) in p.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    p.e820_entries = map.len() as u8;
    let at = GuestAddress(layout::ZERO_PAGE_START);
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&p, at), mem)
        .map_err(BootError::Params)?;
    Ok(at)
}

/// Writes the boot identity map of the first 1 GiB with 2 MiB pages (PML4 → PDPT → PD).
pub fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|_| BootError::PageTables)
    };
    w(layout::PDPTE_START | 0x3, layout::PML4_START)?;
    w(layout::PDE_START | 0x3, layout::PDPTE_START)?;
    for i in 0..512u64 {
        // present | writable | page size (2 MiB)
        w((i << 21) | 0x83, layout::PDE_START + i * 8)?;
    }
    Ok(())
}
