#![no_main]
//! Fuzz target `launch_record`: [`ax_fuzz::configs::launch_record`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::configs::launch_record(data));
