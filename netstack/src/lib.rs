//! ax-netstack: userspace networking, TLS interception, metering (issue #5)
//!
//! Placeholder crate: filled by its issue.
