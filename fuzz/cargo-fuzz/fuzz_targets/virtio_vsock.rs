#![no_main]
//! Fuzz target `virtio_vsock`: [`ax_fuzz::virtio::vsock`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::virtio::vsock(data));
