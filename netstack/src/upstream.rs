//! Connecting to the real destination: route overrides, blocked address ranges (loopback,
//! link-local, private, metadata), the optional HTTP CONNECT proxy, and the extra CAs per host.
//! SKELETON: filled in by the netstack-stack work.

use crate::config::Config;
use crate::BoxStream;
use std::net::SocketAddr;

/// Makes upstream connections for one agent.
pub struct Connector {}

impl Connector {
    /// Reads route CA files (before the jail). Errors: an unreadable or invalid CA file.
    pub fn new(config: &Config) -> anyhow::Result<Connector> {
        let _ = config;
        Ok(Connector {})
    }

    /// Connects to `dst` (or the route override for `host`), refusing blocked ranges unless an
    /// explicit route points there. Errors: connect failures, blocked addresses
    /// (`io::ErrorKind::PermissionDenied`).
    pub async fn connect(&self, host: Option<&str>, dst: SocketAddr) -> std::io::Result<BoxStream> {
        let _ = host;
        let s = tokio::net::TcpStream::connect(dst).await?;
        Ok(Box::new(s))
    }

    /// Extra trust anchors (DER) for `host`'s upstream TLS, from its route; empty if none.
    pub fn extra_roots(&self, host: &str) -> Vec<Vec<u8>> {
        let _ = host;
        Vec::new()
    }
}
