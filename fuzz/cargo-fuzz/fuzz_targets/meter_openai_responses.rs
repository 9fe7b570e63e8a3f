#![no_main]
//! Fuzz target `meter_openai_responses`: [`ax_fuzz::meter::openai_responses`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::meter::openai_responses(data));
