//! The ax control protocol, version 1 (documented in `docs/protocol.md`).
//!
//! Spoken over a byte stream: on the host that is the hybrid-vsock Unix socket after the
//! `CONNECT 1024\n` / `OK <port>\n` handshake; in the guest an `AF_VSOCK` stream socket on
//! [`CONTROL_PORT`].
//!
//! Every message is one frame:
//!
//! ```text
//! +----------------+-----------+---------------------------+
//! | len: u32 LE    | kind: u8  | payload: len - 1 bytes    |
//! +----------------+-----------+---------------------------+
//! ```
//!
//! `len` counts the kind byte and the payload, so `1 <= len <= MAX_FRAME_LEN`. Control
//! payloads are UTF-8 JSON objects; stream payloads ([`Frame::Stdin`], [`Frame::Stdout`],
//! [`Frame::Stderr`]) are raw bytes. The first frame on a connection must be
//! [`Frame::Hello`]; the server answers [`Frame::HelloOk`] with the version both speak, or
//! [`Frame::Error`] and closes. Any malformed or unexpected frame gets a [`Frame::Error`] and
//! the connection is closed; it never affects other connections or sessions.

mod codec;
mod messages;

pub use codec::{read_frame, write_frame, Frame, FrameKind, ProtoError};
pub use messages::*;

/// The vsock port agentd listens on for control connections.
pub const CONTROL_PORT: u32 = 1024;

/// Protocol versions this build speaks, newest last.
pub const VERSIONS: &[u32] = &[1];

/// Largest accepted value of a frame's `len` field (kind byte + payload), in bytes.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// Largest stream payload a sender should put in one frame, in bytes.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Picks the newest version both sides speak, or `None` if they share none.
pub fn negotiate(offered: &[u32]) -> Option<u32> {
    VERSIONS.iter().rev().copied().find(|v| offered.contains(v))
}

#[cfg(test)]
mod tests;
