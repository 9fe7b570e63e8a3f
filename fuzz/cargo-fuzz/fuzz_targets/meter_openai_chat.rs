#![no_main]
//! Fuzz target `meter_openai_chat`: [`ax_fuzz::meter::openai_chat`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::meter::openai_chat(data));
