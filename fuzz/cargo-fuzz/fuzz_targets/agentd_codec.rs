#![no_main]
//! Fuzz target `agentd_codec`: [`ax_fuzz::proto::agentd_codec`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::proto::agentd_codec(data));
