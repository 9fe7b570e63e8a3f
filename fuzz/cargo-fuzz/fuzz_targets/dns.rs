#![no_main]
//! Fuzz target `dns`: [`ax_fuzz::net::dns`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::net::dns(data));
