//! GDT entries and the matching `kvm_segment`s (Intel SDM Vol. 3A §3.4.5 "Segment
//! Descriptors"). KVM loads segment registers from `kvm_sregs`, not from the GDT, so the
//! two must agree: we build the descriptor once and derive the register state from it.

use kvm_bindings::kvm_segment;

/// Flags of a flat 32-bit code segment (G, D/B, P, S, type 0xb execute/read accessed).
pub const CODE32: u16 = 0xc09b;
/// Flags of a 64-bit code segment (G, L, P, S, type 0xb).
pub const CODE64: u16 = 0xa09b;
/// Flags of a flat read/write data segment (G, D/B, P, S, type 3).
pub const DATA: u16 = 0xc093;
/// Flags of a 32-bit busy TSS (P, type 0xb).
pub const TSS: u16 = 0x008b;

/// Builds a segment descriptor from `flags` (bits 0..7 = access byte, 12..15 = G, D/B, L, AVL),
/// `base` and a 20-bit `limit`.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The `kvm_segment` for GDT entry `index` holding `entry`.
pub fn segment(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff);
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if present == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// The boot GDT: null, code (32- or 64-bit), data, TSS. Selectors 0x8, 0x10, 0x18.
pub fn boot_gdt(long_mode: bool) -> [u64; 4] {
    [
        0,
        gdt_entry(if long_mode { CODE64 } else { CODE32 }, 0, 0xfffff),
        gdt_entry(DATA, 0, 0xfffff),
        gdt_entry(TSS, 0, 0x67),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip() {
        assert_eq!(gdt_entry(CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        let s = segment(gdt_entry(CODE64, 0, 0xfffff), 1);
        assert_eq!(
            (s.selector, s.l, s.db, s.g, s.limit, s.type_),
            (8, 1, 0, 1, 0xffff_ffff, 0xb)
        );
        let t = segment(gdt_entry(TSS, 0x1234_5678, 0x67), 3);
        assert_eq!((t.base, t.limit, t.g, t.present), (0x1234_5678, 0x67, 0, 1));
    }
}
