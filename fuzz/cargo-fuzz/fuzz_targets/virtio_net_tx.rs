#![no_main]
//! Fuzz target `virtio_net_tx`: [`ax_fuzz::virtio::net_tx`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::virtio::net_tx(data));
