//! The host ↔ guest control protocol (agentd, docs/protocol.md) and the hybrid vsock
//! handshake line (docs/vsock.md).

use agentd::proto::{read_frame, Frame, ProtoError};

/// Reads frames from `data` until it ends: each decoded frame re-encodes to bytes that
/// decode to the same frame.
pub fn agentd_codec(data: &[u8]) {
    let mut r = data;
    loop {
        match read_frame(&mut r) {
            Ok(f) => {
                let bytes = f.encode();
                let back: Frame = read_frame(&mut &bytes[..]).expect("an encoded frame decodes");
                assert_eq!(back, f, "encode/decode round trip");
            }
            Err(ProtoError::BadJson(..)) | Err(ProtoError::UnknownKind(_)) => continue,
            Err(_) => return,
        }
    }
}

/// `CONNECT <port>\n` (the hybrid vsock handshake of a host client).
pub fn vsock_connect_line(data: &[u8]) {
    if let Some(port) = ax_vsock::muxer::parse_connect_line(data) {
        let line = format!("CONNECT {port}");
        assert_eq!(
            ax_vsock::muxer::parse_connect_line(line.as_bytes()),
            Some(port)
        );
    }
}
