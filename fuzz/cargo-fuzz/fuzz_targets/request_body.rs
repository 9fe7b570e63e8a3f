#![no_main]
//! Fuzz target `request_body`: [`ax_fuzz::net::request_body`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::net::request_body(data));
