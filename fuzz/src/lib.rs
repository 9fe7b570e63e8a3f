//! The bodies of ax's fuzz targets (docs/fuzzing.md). Each `pub fn NAME(data: &[u8])` feeds
//! `data` to the real parser of guest- or network-controlled input and asserts its
//! invariants (never panics; chunking does not change results; encode/decode round-trips;
//! no placeholder or real secret where it must not be). The cargo-fuzz harness
//! (`fuzz/cargo-fuzz/fuzz_targets/NAME.rs`, nightly, not a workspace member) calls the same
//! function, and `tests/corpus.rs` replays the committed corpora (`corpus/NAME/`) and the
//! crash inputs (`regressions/NAME/`) on stable.
//!
//! [`TARGETS`] lists every target by name.

mod chunks;
pub mod configs;
pub mod fuse;
pub mod meter;
pub mod net;
pub mod proto;
pub mod virtio;

pub use chunks::Chunks;

/// A fuzz target: its name (the corpus directory and the cargo-fuzz target) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("dns", net::dns),
    ("http_head", net::http_head),
    ("request_body", net::request_body),
    ("scrubber", net::scrubber),
    ("meter_anthropic", meter::anthropic),
    ("meter_openai_chat", meter::openai_chat),
    ("meter_openai_responses", meter::openai_responses),
    ("meter_gemini", meter::gemini),
    ("agentd_codec", proto::agentd_codec),
    ("vsock_connect_line", proto::vsock_connect_line),
    ("fuse", fuse::fuse),
    ("virtio_blk", virtio::blk),
    ("virtio_vsock", virtio::vsock),
    ("virtio_net_tx", virtio::net_tx),
    ("virtio_net_rx", virtio::net_rx),
    ("config_netstack", configs::netstack),
    ("config_vmm", configs::vmm),
    ("config_cli", configs::cli),
    ("launch_record", configs::launch_record),
];
