//! Hybrid vsock.
