//! TLS interception: the guest's TLS terminated with a leaf from the agent's CA ([`crate::ca`]),
//! TLS to the upstream (`upstream::tls`), and the HTTP proxy ([`crate::http`]) between
//! the two.
//!
//! Sequence for one intercepted connection (docs/network.md, "TLS interception"):
//! 1. read the guest's ClientHello (SNI, ALPN offers) without answering yet;
//! 2. TLS to the upstream with the same SNI, offering the guest's ALPN protocols among `h2`
//!    and `http/1.1`, verified against the system roots plus the route's extra CAs;
//! 3. answer the guest with a leaf for its SNI, offering exactly the protocol the upstream
//!    chose (so both sides speak the same HTTP version);
//! 4. proxy HTTP requests (crate::http). If step 2 failed, the guest handshake still
//!    completes and every request is answered 502 with the reason (and audited).

pub(crate) mod client;

use crate::context::Context;
use crate::http::{Proxy, UpstreamConn, H1, H2};
use crate::upstream;
use crate::{BoxStream, Flow};
use std::sync::Arc;

/// Serves one intercepted connection: TLS from the guest (leaf for its SNI), TLS to the
/// upstream (verified), HTTP/1.1 or HTTP/2 both sides, secrets swapped, usage metered.
/// Returns when either side closes. Errors: guest handshake failures (e.g. the guest does not
/// trust the agent CA), guest connection errors. Upstream failures are not errors: the guest
/// gets 502 responses.
pub async fn intercept(
    ctx: Arc<Context>,
    flow: Flow,
    guest: BoxStream,
    upstream: BoxStream,
) -> anyhow::Result<()> {
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), guest)
        .await
        .map_err(|e| {
            anyhow::anyhow!("flow {}: reading the guest's TLS ClientHello: {e}", flow.id)
        })?;
    let hello = start.client_hello();
    // The SNI in its normal form (crate::hostname); one without it is refused outright.
    let sni = hello
        .server_name()
        .map(crate::hostname::normalize)
        .transpose()
        .map_err(|e| anyhow::anyhow!("flow {}: refused: SNI {e}", flow.id))?;
    let offered: Vec<Vec<u8>> = hello
        .alpn()
        .map(|it| {
            it.filter(|p| *p == H2 || *p == H1)
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default();
    let name = sni
        .clone()
        .or_else(|| flow.host.clone())
        .unwrap_or_else(|| flow.dst.ip().to_string());

    let up = ctx.upstream.tls_connect(&name, &offered, upstream).await;
    let guest_alpn: Vec<Vec<u8>> = match &up {
        Ok(tls) => match tls.get_ref().1.alpn_protocol() {
            Some(p) => vec![p.to_vec()],
            None if offered.iter().any(|p| p == H1) => vec![H1.to_vec()],
            None => Vec::new(),
        },
        Err(_) => offered.first().cloned().into_iter().collect(),
    };
    let upstream = match up {
        Ok(tls) => {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(H2);
            match UpstreamConn::handshake(tls, h2).await {
                Ok(u) => u,
                Err(e) => {
                    UpstreamConn::Failed(format!("ax-netstack: HTTP with {name} failed: {e}"))
                }
            }
        }
        Err(e) => {
            let why = upstream::tls::explain(&name, &e);
            log::warn!("flow {} {name}: {why}", flow.id);
            UpstreamConn::Failed(why)
        }
    };

    let fallback = flow
        .host
        .clone()
        .unwrap_or_else(|| flow.dst.ip().to_string());
    let cfg = ctx.ca.server_config(&guest_alpn, &fallback)?;
    let tls = start
        .into_stream(cfg)
        .await
        .map_err(|e| anyhow::anyhow!("flow {} {name}: TLS handshake with the guest failed: {e} (does the guest trust the agent CA?)", flow.id))?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(H2);
    let proxy = Arc::new(Proxy {
        ctx,
        flow,
        name,
        upstream,
    });
    crate::http::serve(proxy, tls, h2).await
}
