#![no_main]
//! Fuzz target `virtio_net_rx`: [`ax_fuzz::virtio::net_rx`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::virtio::net_rx(data));
