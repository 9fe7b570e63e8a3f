//! TLS interception: the agent's CA, leaf certificates minted per SNI, and the HTTP proxy
//! between the guest (TLS server side) and the upstream (TLS client side).
//! SKELETON: filled in by the TLS/secrets work.

use crate::context::Context;
use crate::{BoxStream, Flow};
use std::sync::Arc;

/// The per-agent certificate authority (generated at startup, never written to disk by the
/// netstack; its certificate goes to the guest trust store).
pub struct Ca {
    cert_pem: String,
}

impl Ca {
    /// Generates a fresh CA for `agent`.
    pub fn generate(agent: &str) -> anyhow::Result<Ca> {
        let _ = agent;
        Ok(Ca {
            cert_pem: String::new(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// Serves one intercepted connection: TLS from the guest (leaf for its SNI), TLS to the
/// upstream (verified), HTTP/1.1 or HTTP/2 both sides, secrets swapped, usage metered.
/// Returns when either side closes. Errors: handshake failures, upstream verification failures.
pub async fn intercept(
    ctx: Arc<Context>,
    flow: Flow,
    guest: BoxStream,
    upstream: BoxStream,
) -> anyhow::Result<()> {
    let _ = (ctx, flow, guest, upstream);
    anyhow::bail!("TLS interception is not implemented yet")
}
