#![no_main]
//! Fuzz target `http_head`: [`ax_fuzz::net::http_head`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::net::http_head(data));
