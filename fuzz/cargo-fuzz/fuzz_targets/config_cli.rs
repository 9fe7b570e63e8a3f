#![no_main]
//! Fuzz target `config_cli`: [`ax_fuzz::configs::cli`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::configs::cli(data));
