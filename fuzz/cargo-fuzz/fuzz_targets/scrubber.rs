#![no_main]
//! Fuzz target `scrubber`: [`ax_fuzz::net::scrubber`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::net::scrubber(data));
