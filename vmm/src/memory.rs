//! Guest physical memory: the x86_64 layout of an ax microVM and guest RAM backed by a memfd.
//!
//! Guest RAM is one `memfd_create(2)` file mapped `MAP_SHARED`, so a vhost-user backend
//! (virtio-fs, virtio-net) can map the very same pages from the fd we pass it
//! (vhost-user spec, "Memory region description": fd + mmap offset). vm-memory's
//! [`GuestMemoryMmap`] regions carry the `FileOffset` of their slice of that file.
//!
//! ```text
//!  0x0000_0000  ┌──────────────────────────────┐  low RAM
//!               │ 0x500  GDT, 0x520 IDT        │  (64-bit boot protocol only)
//!               │ 0x6000 hvm_start_info        │  PVH (start_info.h)
//!               │ 0x6100 PVH memory map        │
//!               │ 0x6e00 PVH module list       │
//!               │ 0x7000 zero page (boot_params)│ Linux boot protocol
//!               │ 0x8ff0 boot stack            │
//!               │ 0x9000 PML4/PDPT/PD          │  identity map of the first 1 GiB
//!               │ 0x20000 kernel command line  │
//!  0x0009_fc00  ├──────────────────────────────┤  EBDA (not RAM in e820)
//!  0x000e_0000  ├──────────────────────────────┤  ACPI tables (RSDP first), reserved in e820
//!  0x0010_0000  ├──────────────────────────────┤  kernel (HIMEM_START) ... initrd at the top
//!  0xc000_0000  ├──────────────────────────────┤  32-bit MMIO hole (not RAM)
//!               │ 0xd000_0000 virtio-mmio devices, 4 KiB each, GSI 5..     │
//!               │ 0xfec0_0000 IOAPIC, 0xfee0_0000 LAPIC                  │
//!  0x1_0000_0000├──────────────────────────────┤  RAM above 4 GiB (if memory > 3 GiB)
//! ```

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The guest memory type used everywhere in ax-vmm.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Guest physical addresses of everything the VMM places in the guest.
pub mod layout {
    /// GDT for the 64-bit boot protocol (and reloadable by PVH guests).
    pub const BOOT_GDT_START: u64 = 0x500;
    /// Null IDT for the 64-bit boot protocol.
    pub const BOOT_IDT_START: u64 = 0x520;
    /// `struct hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).
    pub const PVH_INFO_START: u64 = 0x6000;
    /// `struct hvm_memmap_table_entry[]`, right after the start info.
    pub const PVH_MEMMAP_START: u64 = 0x6100;
    /// Maximum number of PVH memory map entries (fits below [`PVH_MODLIST_START`]).
    pub const PVH_MEMMAP_MAX_ENTRIES: usize = 64;
    /// `struct hvm_modlist_entry[]` (the initrd is module 0).
    pub const PVH_MODLIST_START: u64 = 0x6e00;
    /// The zero page: `struct boot_params` (Documentation/arch/x86/zero-page.rst).
    pub const ZERO_PAGE_START: u64 = 0x7000;
    /// Initial stack pointer for the 64-bit boot protocol.
    pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
    /// Page-map level 4 table of the boot identity map.
    pub const PML4_START: u64 = 0x9000;
    /// Page directory pointer table of the boot identity map.
    pub const PDPTE_START: u64 = 0xa000;
    /// Page directory (2 MiB pages) of the boot identity map.
    pub const PDE_START: u64 = 0xb000;
    /// Kernel command line (NUL terminated).
    pub const CMDLINE_START: u64 = 0x20000;
    /// Maximum command line length including the NUL (Linux x86 COMMAND_LINE_SIZE is 2048;
    /// the boot protocol's `cmdline_size` may allow more).
    pub const CMDLINE_MAX_SIZE: usize = 4096;
    /// Start of the Extended BIOS Data Area: RAM below it is usable.
    pub const EBDA_START: u64 = 0x9fc00;
    /// ACPI tables area; the RSDP sits at its start so the legacy scan
    /// (ACPI 6.5 §5.2.5.1, 0xe0000..0xfffff) finds it too.
    pub const ACPI_START: u64 = 0x000e_0000;
    /// End (exclusive) of the ACPI tables area.
    pub const ACPI_END: u64 = 0x0010_0000;
    /// Where the kernel is loaded (1 MiB, the start of "high memory").
    pub const HIMEM_START: u64 = 0x0010_0000;
    /// Start of the 32-bit MMIO hole: no RAM between here and 4 GiB.
    pub const MMIO_HOLE_START: u64 = 0xc000_0000;
    /// End (exclusive) of the 32-bit MMIO hole.
    pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
    /// First virtio-mmio device window (virtio 1.2 §4.2.2); each device gets
    /// [`VIRTIO_MMIO_SIZE`] bytes and GSI [`VIRTIO_MMIO_FIRST_GSI`] + index.
    pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
    /// Size of one virtio-mmio register window.
    pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
    /// GSI of the first virtio-mmio device (0..4 are legacy ISA, 4 is COM1).
    pub const VIRTIO_MMIO_FIRST_GSI: u32 = 5;
    /// Last usable IOAPIC pin (the in-kernel IOAPIC has 24).
    pub const MAX_GSI: u32 = 23;

    /// The register window and GSI of virtio-mmio device `index` (0-based), or `None` when
    /// the IOAPIC has no pin left for it (at most 19 devices: GSIs 5..=23).
    pub fn virtio_mmio_slot(index: u32) -> Option<(u64, u32)> {
        let gsi = VIRTIO_MMIO_FIRST_GSI
            .checked_add(index)
            .filter(|&g| g <= MAX_GSI)?;
        Some((VIRTIO_MMIO_START + u64::from(index) * VIRTIO_MMIO_SIZE, gsi))
    }
    /// IOAPIC MMIO base (in-kernel irqchip).
    pub const IOAPIC_START: u64 = 0xfec0_0000;
    /// Local APIC MMIO base.
    pub const LAPIC_START: u64 = 0xfee0_0000;
    /// KVM_SET_TSS_ADDR: three pages the VMX TSS needs, inside the MMIO hole.
    pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
    /// KVM_SET_IDENTITY_MAP_ADDR: one page, just below the TSS.
    pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
    /// RAM above the hole starts here.
    pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
}

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memory_mib is zero or too small for the fixed layout.
    #[error("guest memory of {0} MiB is too small (need at least 2 MiB)")]
    TooSmall(u64),
    /// memfd_create or ftruncate failed.
    #[error("cannot create the guest RAM memfd: {0}")]
    Memfd(std::io::Error),
    /// mmap of the memfd failed.
    #[error("cannot map guest RAM: {0}")]
    Mmap(String),
}

/// The RAM ranges (guest address, size) for `size` bytes of guest memory: low RAM up to the
/// MMIO hole, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(layout::MMIO_HOLE_START);
    let mut v = vec![(GuestAddress(0), low)];
    if size > low {
        v.push((GuestAddress(layout::RAM_64BIT_START), size - low));
    }
    v
}

/// Guest RAM: the mapped regions and the memfd that backs them.
pub struct GuestRam {
    /// The mapped guest memory.
    pub mem: GuestMemoryMmap,
    /// The memfd backing all regions (region i at the file offset recorded in its `FileOffset`).
    pub memfd: File,
    /// Total RAM in bytes.
    pub size: u64,
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM in a fresh memfd (`MFD_CLOEXEC`), laid out by
    /// [`ram_ranges`]. Pages are allocated lazily on first touch.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size < 2 * MIB {
            return Err(MemoryError::TooSmall(size / MIB));
        }
        // SAFETY: the name is a valid NUL-terminated string; the returned fd is checked.
        let fd = unsafe { libc::memfd_create(c"ax-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh, owned file descriptor.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd.set_len(size).map_err(MemoryError::Memfd)?;
        let mut offset = 0u64;
        let mut ranges = Vec::new();
        for (addr, len) in ram_ranges(size) {
            let fo = FileOffset::new(memfd.try_clone().map_err(MemoryError::Memfd)?, offset);
            ranges.push((addr, len as usize, Some(fo)));
            offset += len;
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|e| MemoryError::Mmap(e.to_string()))?;
        Ok(GuestRam { mem, memfd, size })
    }

    /// End (exclusive) of RAM below the MMIO hole.
    pub fn low_end(&self) -> u64 {
        self.size.min(layout::MMIO_HOLE_START)
    }

    /// The raw fd of the memfd (for vhost-user SET_MEM_TABLE).
    pub fn memfd_raw(&self) -> i32 {
        self.memfd.as_raw_fd()
    }

    /// (guest address, size, host address) of each region, for KVM_SET_USER_MEMORY_REGION.
    pub fn regions(&self) -> Vec<(u64, u64, u64)> {
        self.mem
            .iter()
            .map(|r| {
                let host = r
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .unwrap_or(std::ptr::null_mut());
                (r.start_addr().raw_value(), r.len(), host as u64)
            })
            .collect()
    }
}

/// An address range type in the guest's memory map (e820 / PVH memmap types,
/// ACPI 6.5 §15 "System Address Map Interfaces").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM (type 1).
    Ram = 1,
    /// Reserved (type 2).
    Reserved = 2,
}

/// One entry of the guest memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type.
    pub kind: MemoryKind,
}

/// The memory map given to the guest (e820 for the Linux boot protocol, the PVH memmap):
/// RAM below the EBDA, the ACPI area reserved, RAM from 1 MiB up to the hole, RAM above 4 GiB.
pub fn memory_map(size: u64) -> Vec<MemoryMapEntry> {
    let mut v = vec![
        MemoryMapEntry {
            addr: 0,
            size: layout::EBDA_START,
            kind: MemoryKind::Ram,
        },
        MemoryMapEntry {
            addr: layout::ACPI_START,
            size: layout::ACPI_END - layout::ACPI_START,
            kind: MemoryKind::Reserved,
        },
    ];
    for (addr, len) in ram_ranges(size) {
        let start = addr.raw_value().max(layout::HIMEM_START);
        let end = addr.raw_value() + len;
        if end > start {
            v.push(MemoryMapEntry {
                addr: start,
                size: end - start,
                kind: MemoryKind::Ram,
            });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn layout_splits_around_the_hole() {
        assert_eq!(ram_ranges(256 * MIB), vec![(GuestAddress(0), 256 * MIB)]);
        let r = ram_ranges(4 * GIB);
        assert_eq!(r[0], (GuestAddress(0), 3 * GIB));
        assert_eq!(r[1], (GuestAddress(4 * GIB), GIB));
        let m = memory_map(4 * GIB);
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[2],
            MemoryMapEntry {
                addr: MIB,
                size: 3 * GIB - MIB,
                kind: MemoryKind::Ram
            }
        );
    }

    #[test]
    fn memfd_backed_ram_is_shared() {
        use std::os::unix::fs::FileExt;
        let ram = GuestRam::new(16 * MIB).unwrap();
        ram.mem
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        let mut b = [0u8; 4];
        ram.memfd.read_exact_at(&mut b, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        assert_eq!(ram.regions().len(), 1);
    }

    #[test]
    fn virtio_mmio_slots_stop_at_the_last_ioapic_pin() {
        assert_eq!(layout::virtio_mmio_slot(0), Some((0xd000_0000, 5)));
        assert_eq!(layout::virtio_mmio_slot(18), Some((0xd001_2000, 23)));
        assert_eq!(layout::virtio_mmio_slot(19), None);
        assert_eq!(layout::virtio_mmio_slot(u32::MAX), None);
    }

    #[test]
    fn too_small_is_an_error() {
        assert!(GuestRam::new(MIB).is_err());
    }
}
