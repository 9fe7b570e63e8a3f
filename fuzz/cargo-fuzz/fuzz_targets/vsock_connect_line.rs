#![no_main]
//! Fuzz target `vsock_connect_line`: [`ax_fuzz::proto::vsock_connect_line`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::proto::vsock_connect_line(data));
