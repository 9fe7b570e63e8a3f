//! The upstream TLS client configs under the path `jail::prepare` loads them by before the
//! jail. They are made and cached by `upstream::Connector::tls_config`; this module goes once
//! the jail calls that.

use crate::context::Context;
use rustls::ClientConfig;
use std::sync::Arc;

/// The client config for `host` offering `alpn` (`upstream::Connector::tls_config`).
pub(crate) fn config(
    ctx: &Context,
    host: &str,
    alpn: &[Vec<u8>],
) -> anyhow::Result<Arc<ClientConfig>> {
    ctx.upstream.tls_config(host, alpn)
}
