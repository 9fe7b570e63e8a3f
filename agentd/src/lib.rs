//! agentd: the guest's PID 1, and the host<->guest control protocol.
//!
//! The library part is [`proto`], the versioned, length-framed wire protocol spoken on vsock
//! port [`proto::CONTROL_PORT`]; `axctl` links it to talk to the guest. The `agentd` binary
//! (src/main.rs) is the guest init that serves it. The format is documented in
//! `docs/protocol.md`.
//!
//! On Linux the library also holds the protocol *server* ([`server`], [`session`], [`pty`],
//! [`outbox`], [`reaper`]), so it can be tested on the host over a Unix socket.

pub mod proto;

#[cfg(target_os = "linux")]
pub mod outbox;
#[cfg(target_os = "linux")]
pub mod pty;
#[cfg(target_os = "linux")]
pub mod reaper;
#[cfg(target_os = "linux")]
pub mod server;
#[cfg(target_os = "linux")]
pub mod session;
