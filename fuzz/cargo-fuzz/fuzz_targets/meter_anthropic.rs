#![no_main]
//! Fuzz target `meter_anthropic`: [`ax_fuzz::meter::anthropic`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::meter::anthropic(data));
