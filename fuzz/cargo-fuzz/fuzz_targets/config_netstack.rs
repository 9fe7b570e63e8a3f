#![no_main]
//! Fuzz target `config_netstack`: [`ax_fuzz::configs::netstack`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::configs::netstack(data));
