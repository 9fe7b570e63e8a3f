#![no_main]
//! Fuzz target `fuse`: [`ax_fuzz::fuse::fuse`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::fuse::fuse(data));
