//! agentd: the guest's PID 1, and the host<->guest control protocol.
//!
//! The library part is [`proto`], the versioned, length-framed wire protocol spoken on vsock
//! port [`proto::CONTROL_PORT`]; `axctl` links it to talk to the guest. The `agentd` binary
//! (src/main.rs) is the guest init that serves it. The format is documented in
//! `docs/protocol.md`.

pub mod proto;
