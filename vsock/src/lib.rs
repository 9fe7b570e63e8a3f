//! Hybrid virtio-vsock for ax: the device logic and its vhost-user backend.
//!
//! The device implements the stream-socket half of the virtio socket device (virtio 1.2 §5.10)
//! with Firecracker's *hybrid* host interface: instead of host `AF_VSOCK` sockets, the host
//! side is a Unix socket.
//!
//! * Host → guest: a host client connects to [`HybridConfig::uds_path`], writes
//!   `CONNECT <port>\n` and, once the guest accepted, reads `OK <local_port>\n`; then the socket
//!   carries the stream both ways.
//! * Guest → host: a guest connection to CID 2 port P is connected to the Unix socket
//!   `<uds_path>_P`; if nothing listens there the guest gets RST (connection refused).
//!
//! [`VsockMuxer`] holds the transport-independent logic (connection table, credit-based flow
//! control, host socket multiplexing). [`vhost_user`] wraps it in a vhost-user backend for
//! QEMU's `vhost-user-vsock-device`; ax's own VMM drives [`VsockMuxer`] from its virtio-mmio
//! transport. The wire protocol and limits are documented in `docs/vsock.md`.

use std::path::PathBuf;

pub mod muxer;
pub mod vhost_user;

pub use muxer::{ConnKey, Hdr, MuxerOptions, MuxerStats, VsockMuxer, HOST_CID};
pub use vhost_user::{listen, serve, serve_vhost_user, serve_with, VhostUserListener};

/// Default guest CID (the first one not reserved by virtio 1.2 §5.10.4).
pub const DEFAULT_GUEST_CID: u64 = 3;

/// Configuration of one hybrid vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HybridConfig {
    /// The guest's CID, reported in the device configuration space (`guest_cid`, virtio 1.2
    /// §5.10.4). Must be in 3..=0xffff_fffe.
    pub guest_cid: u64,
    /// Host-side hybrid listener (`CONNECT <port>\n`); guest-initiated connections go to
    /// `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

impl HybridConfig {
    /// A configuration with the default guest CID (3).
    pub fn new(uds_path: impl Into<PathBuf>) -> Self {
        Self {
            guest_cid: DEFAULT_GUEST_CID,
            uds_path: uds_path.into(),
        }
    }
}

#[cfg(test)]
mod tests;
