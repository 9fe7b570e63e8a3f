#![no_main]
//! Fuzz target `config_vmm`: [`ax_fuzz::configs::vmm`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::configs::vmm(data));
