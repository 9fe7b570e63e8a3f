//! PVH boot (xen/include/public/arch-x86/hvm/start_info.h; xen docs/misc/pvh.pandoc):
//! the VMM enters the kernel's `XEN_ELFNOTE_PHYS32_ENTRY` in 32-bit protected mode,
//! paging off, with `%ebx` = physical address of `struct hvm_start_info`. The start info
//! points to the command line, the module list (the initrd is module 0), the memory map
//! and the ACPI RSDP.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Address, GuestAddress};

use super::BootError;
use crate::memory::{layout, memory_map, GuestMemoryMmap, MemoryKind};

/// Writes `hvm_start_info` (version 1), the memory map and the module list; returns the
/// start info address for `%ebx`.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: GuestAddress,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: Option<GuestAddress>,
) -> Result<GuestAddress, BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = memory_map(mem_size)
        .into_iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: match e.kind {
                MemoryKind::Ram => XEN_HVM_MEMMAP_TYPE_RAM,
                MemoryKind::Reserved => XEN_HVM_MEMMAP_TYPE_RESERVED,
            },
            reserved: 0,
        })
        .collect();
    debug_assert!(memmap.len() <= layout::PVH_MEMMAP_MAX_ENTRIES);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: cmdline.raw_value(),
        rsdp_paddr: rsdp.map(|a| a.raw_value()).unwrap_or(0),
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let start = GuestAddress(layout::PVH_INFO_START);
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(addr, size)| hvm_modlist_entry {
            paddr: addr.raw_value(),
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = layout::PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&info, start);
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(layout::PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::Params)?;
    Ok(start)
}
