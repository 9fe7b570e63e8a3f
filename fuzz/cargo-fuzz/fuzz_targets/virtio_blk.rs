#![no_main]
//! Fuzz target `virtio_blk`: [`ax_fuzz::virtio::blk`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| ax_fuzz::virtio::blk(data));
