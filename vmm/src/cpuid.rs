//! Guest CPUID: what KVM supports (KVM_GET_SUPPORTED_CPUID, KVM API doc §4.46), filtered
//! through a template, plus per-vCPU topology fix-ups. Bit positions are from the Intel SDM
//! Vol. 2A, "CPUID—CPU Identification".
//!
//! # Templates
//!
//! | template | what the guest sees |
//! | --- | --- |
//! | `host` | everything KVM supports, with the fix-ups below |
//! | `pvm`  | `host` minus features kvm-pvm cannot run (measured, see FACTS.md): leaf 1 ECX CX16 (13), SSE4.1 (19), SSE4.2 (20), POPCNT (23), XSAVE (26), OSXSAVE (27), AVX (28); leaf 7 (all subleaves) and leaf 0xd (XSAVE state) zeroed |
//!
//! `auto` (the default) picks `pvm` when the host runs kvm-pvm, else `host`.
//!
//! # Fix-ups applied with every template
//!
//! * leaf 1: EBX[31:24] initial APIC ID = vCPU index, EBX[23:16] logical processors = vCPU
//!   count, EDX HTT (28) set when more than one vCPU; ECX bit 31 "hypervisor present".
//! * leaf 4 (deterministic cache parameters): EAX[31:26] = cores per package − 1.
//! * leaf 0xb (x2APIC topology): EDX = x2APIC ID = vCPU index on every subleaf.
//! * leaf 0xa (architectural performance monitoring): zeroed; ax-vmm exposes no PMU.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// A CPUID template (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuTemplate {
    /// `pvm` on kvm-pvm hosts, `host` elsewhere.
    Auto,
    /// Everything KVM supports.
    Host,
    /// Masks features kvm-pvm cannot run.
    Pvm,
}

impl std::str::FromStr for CpuTemplate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CpuTemplate::Auto),
            "host" => Ok(CpuTemplate::Host),
            "pvm" => Ok(CpuTemplate::Pvm),
            _ => Err(format!("unknown cpu template {s:?}; use auto, host or pvm")),
        }
    }
}

impl CpuTemplate {
    /// Resolves `Auto` for this host.
    pub fn resolve(self, host_is_pvm: bool) -> CpuTemplate {
        match self {
            CpuTemplate::Auto if host_is_pvm => CpuTemplate::Pvm,
            CpuTemplate::Auto => CpuTemplate::Host,
            t => t,
        }
    }
}

mod bits {
    pub const L1_ECX_SSE41: u32 = 1 << 19;
    pub const L1_ECX_SSE42: u32 = 1 << 20;
    pub const L1_ECX_CX16: u32 = 1 << 13;
    pub const L1_ECX_POPCNT: u32 = 1 << 23;
    pub const L1_ECX_XSAVE: u32 = 1 << 26;
    pub const L1_ECX_OSXSAVE: u32 = 1 << 27;
    pub const L1_ECX_AVX: u32 = 1 << 28;
    pub const L1_ECX_HYPERVISOR: u32 = 1 << 31;
    pub const L1_EDX_HTT: u32 = 1 << 28;
}

/// Features the `pvm` template removes from leaf 1 ECX.
pub const PVM_LEAF1_ECX_MASK: u32 = bits::L1_ECX_CX16
    | bits::L1_ECX_SSE41
    | bits::L1_ECX_SSE42
    | bits::L1_ECX_POPCNT
    | bits::L1_ECX_XSAVE
    | bits::L1_ECX_OSXSAVE
    | bits::L1_ECX_AVX;

/// Applies `template` (already resolved, not `Auto`) and the topology fix-ups for vCPU
/// `vcpu` of `ncpus` to one entry.
pub fn filter_entry(e: &mut kvm_cpuid_entry2, template: CpuTemplate, vcpu: u8, ncpus: u8) {
    let pvm = template == CpuTemplate::Pvm;
    match e.function {
        1 => {
            e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(vcpu) << 24) | (u32::from(ncpus) << 16);
            if ncpus > 1 {
                e.edx |= bits::L1_EDX_HTT;
            } else {
                e.edx &= !bits::L1_EDX_HTT;
            }
            e.ecx |= bits::L1_ECX_HYPERVISOR;
            if pvm {
                e.ecx &= !PVM_LEAF1_ECX_MASK;
            }
        }
        4 => {
            let cores = u32::from(ncpus.max(1) - 1) & 0x3f;
            e.eax = (e.eax & 0x03ff_ffff) | (cores << 26);
        }
        7 | 0xd if pvm => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xa => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xb => e.edx = u32::from(vcpu),
        _ => {}
    }
}

/// The CPUID table for vCPU `vcpu`: `supported` filtered by `template`.
pub fn build(supported: &CpuId, template: CpuTemplate, vcpu: u8, ncpus: u8) -> CpuId {
    let mut c = supported.clone();
    for e in c.as_mut_slice() {
        filter_entry(e, template, vcpu, ncpus);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ecx,
            ebx: 0xffff_ffff,
            eax: 0xffff_ffff,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn pvm_masks_leaf1_and_leaf7() {
        let mut e = entry(1, 0xffff_ffff);
        filter_entry(&mut e, CpuTemplate::Pvm, 1, 2);
        assert_eq!(e.ecx & PVM_LEAF1_ECX_MASK, 0);
        assert_ne!(e.ecx & bits::L1_ECX_HYPERVISOR, 0);
        assert_eq!(e.ebx >> 24, 1);
        assert_eq!((e.ebx >> 16) & 0xff, 2);
        assert_ne!(e.edx & bits::L1_EDX_HTT, 0);
        let mut e7 = entry(7, 0xffff_ffff);
        filter_entry(&mut e7, CpuTemplate::Pvm, 0, 1);
        assert_eq!((e7.eax, e7.ebx, e7.ecx, e7.edx), (0, 0, 0, 0));
    }

    #[test]
    fn host_keeps_features() {
        let mut e = entry(1, bits::L1_ECX_CX16);
        filter_entry(&mut e, CpuTemplate::Host, 0, 1);
        assert_ne!(e.ecx & bits::L1_ECX_CX16, 0);
        let mut e7 = entry(7, 5);
        filter_entry(&mut e7, CpuTemplate::Host, 0, 1);
        assert_eq!(e7.ecx, 5);
        assert_eq!(CpuTemplate::Auto.resolve(true), CpuTemplate::Pvm);
        assert_eq!(CpuTemplate::Auto.resolve(false), CpuTemplate::Host);
    }
}
