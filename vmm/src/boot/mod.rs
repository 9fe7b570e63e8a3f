//! Loading a kernel into guest memory and describing the machine to it.
//!
//! * An ELF `vmlinux` with a `XEN_ELFNOTE_PHYS32_ENTRY` note boots through PVH ([`pvh`]).
//! * A bzImage boots through the Linux 64-bit boot protocol ([`linux`]).
//!
//! Both get the command line at [`layout::CMDLINE_START`], the initrd at the top of low RAM,
//! and the memory map of [`crate::memory::memory_map`].

pub mod gdt;
pub mod linux;
pub mod pvh;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::{layout, GuestMemoryMmap};

/// Errors loading the kernel or writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initrd file could not be read.
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    /// linux-loader rejected the kernel image.
    #[error(
        "cannot load kernel {0}: {1}; give an ELF vmlinux built with CONFIG_PVH=y or a bzImage"
    )]
    Load(String, linux_loader::loader::Error),
    /// An ELF kernel without the PVH note.
    #[error("kernel {0} is an ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y or boot its bzImage")]
    NoPvhNote(String),
    /// A bzImage without the 64-bit entry point.
    #[error("bzImage {0} has no 64-bit entry point (xloadflags XLF_KERNEL_64 unset); build a 64-bit kernel")]
    Not64Bit(String),
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// The initrd does not fit in low RAM above the kernel.
    #[error("initrd of {size} bytes does not fit in guest RAM above the kernel; raise memory_mib")]
    InitrdTooLarge {
        /// initrd size in bytes.
        size: u64,
    },
    /// Writing boot parameters failed.
    #[error("cannot write boot parameters: {0}")]
    Params(linux_loader::configurator::Error),
    /// The memory map has more entries than the zero page holds.
    #[error("memory map has too many entries for the zero page")]
    TooManyE820,
    /// Writing page tables or GDT failed.
    #[error("cannot write boot page tables/GDT into guest memory")]
    PageTables,
}

/// How the vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// PVH: 32-bit protected mode at `entry`, `%ebx` = `start_info`.
    Pvh {
        /// PHYS32_ENTRY address.
        entry: GuestAddress,
        /// hvm_start_info address.
        start_info: GuestAddress,
    },
    /// 64-bit boot protocol: long mode at `entry`, `%rsi` = `zero_page`.
    Linux64 {
        /// startup_64 address.
        entry: GuestAddress,
        /// boot_params address.
        zero_page: GuestAddress,
    },
}

/// What to boot.
pub struct BootSpec<'a> {
    /// Kernel image (ELF vmlinux with PVH note, or bzImage).
    pub kernel: &'a Path,
    /// Optional initrd / initramfs.
    pub initrd: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// RSDP address if ACPI tables were written.
    pub rsdp: Option<GuestAddress>,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Loads the kernel (and initrd, command line, boot parameters) into `mem` of `mem_size`
/// bytes; returns the entry point for vCPU 0.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    spec: &BootSpec,
) -> Result<EntryPoint, BootError> {
    let kname = spec.kernel.display().to_string();
    let mut kernel = File::open(spec.kernel).map_err(|e| BootError::Io(kname.clone(), e))?;
    let mut magic = [0u8; 4];
    let is_elf = kernel.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC;
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(|e| BootError::Io(kname.clone(), e))?;
    let himem = Some(GuestAddress(layout::HIMEM_START));

    let (cmdline_addr, cmdline_len) = write_cmdline(mem, spec.cmdline)?;
    if is_elf {
        let r = Elf::load(mem, None, &mut kernel, himem)
            .map_err(|e| BootError::Load(kname.clone(), e))?;
        let PvhBootCapability::PvhEntryPresent(entry) = r.pvh_boot_cap else {
            return Err(BootError::NoPvhNote(kname));
        };
        let initrd = load_initrd(mem, spec.initrd, r.kernel_end, u64::MAX)?;
        let start_info = pvh::write_start_info(mem, mem_size, cmdline_addr, initrd, spec.rsdp)?;
        Ok(EntryPoint::Pvh { entry, start_info })
    } else {
        let r = BzImage::load(mem, None, &mut kernel, himem)
            .map_err(|e| BootError::Load(kname.clone(), e))?;
        let hdr = r
            .setup_header
            .ok_or_else(|| BootError::Not64Bit(kname.clone()))?;
        if hdr.xloadflags & linux::XLF_KERNEL_64 == 0 {
            return Err(BootError::Not64Bit(kname));
        }
        let max = if hdr.initrd_addr_max != 0 {
            u64::from(hdr.initrd_addr_max)
        } else {
            0x37ff_ffff
        };
        let initrd = load_initrd(mem, spec.initrd, r.kernel_end, max)?;
        let zero_page =
            linux::write_zero_page(mem, mem_size, hdr, cmdline_addr, cmdline_len, initrd)?;
        linux::write_identity_map(mem)?;
        let entry = r
            .kernel_load
            .checked_add(linux::STARTUP_64_OFFSET)
            .ok_or(BootError::TooManyE820)?;
        Ok(EntryPoint::Linux64 { entry, zero_page })
    }
}

/// Validates the command line and writes it NUL-terminated at [`layout::CMDLINE_START`].
fn write_cmdline(mem: &GuestMemoryMmap, s: &str) -> Result<(GuestAddress, usize), BootError> {
    let mut c =
        Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !s.trim().is_empty() {
        c.insert_str(s).map_err(|e| {
            BootError::Cmdline(format!(
                "{e} (at most {} bytes of printable ASCII)",
                layout::CMDLINE_MAX_SIZE - 1
            ))
        })?;
    }
    let addr = GuestAddress(layout::CMDLINE_START);
    load_cmdline(mem, addr, &c).map_err(|e| BootError::Cmdline(e.to_string()))?;
    let len = c.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0);
    Ok((addr, len))
}

/// Reads the initrd into the top of low RAM (page aligned, below `max_end`), above
/// `kernel_end`.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: Option<&Path>,
    kernel_end: u64,
    max_end: u64,
) -> Result<Option<(GuestAddress, u64)>, BootError> {
    let Some(path) = path else { return Ok(None) };
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| BootError::Io(name.clone(), e))?;
    let size = f
        .metadata()
        .map_err(|e| BootError::Io(name.clone(), e))?
        .len();
    // Low RAM: the first region ends at min(RAM, MMIO hole).
    let low_end = mem
        .iter()
        .next()
        .map(vm_memory::GuestMemoryRegion::len)
        .unwrap_or(0)
        .min(max_end);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end.max(layout::HIMEM_START))
        .ok_or(BootError::InitrdTooLarge { size })?;
    let ga = GuestAddress(addr);
    mem.read_exact_volatile_from(ga, &mut f, size as usize)
        .map_err(|e| BootError::Io(name, std::io::Error::other(e.to_string())))?;
    Ok(Some((ga, size)))
}
