#![no_main]
//! Fuzz target `meter_gemini`: [`ax_fuzz::meter::gemini`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::meter::gemini(data));
