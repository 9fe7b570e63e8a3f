//! TLS interception: the agent's CA, leaf certificates minted per SNI, and the HTTP proxy
//! between the guest (TLS server side) and the upstream (TLS client side).
//!
//! Sequence for one intercepted connection (docs/network.md, "TLS interception"):
//! 1. read the guest's ClientHello (SNI, ALPN offers) without answering yet;
//! 2. TLS to the upstream with the same SNI, offering the guest's ALPN protocols among `h2`
//!    and `http/1.1`, verified against the system roots plus the route's extra CAs;
//! 3. answer the guest with a leaf for its SNI, offering exactly the protocol the upstream
//!    chose (so both sides speak the same HTTP version);
//! 4. proxy HTTP requests (crate::http). If step 2 failed, the guest handshake still
//!    completes and every request is answered 502 with the reason (and audited).

mod ca;
pub(crate) mod client;

pub use ca::{Ca, BACKDATE, CA_VALIDITY, LEAF_VALIDITY};

use crate::context::Context;
use crate::http::{Proxy, Upstream};
use crate::{BoxStream, Flow};
use std::sync::Arc;

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

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
    let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
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

    let up = client::connect(&ctx, &name, &offered, upstream).await;
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
            match Upstream::handshake(tls, h2).await {
                Ok(u) => u,
                Err(e) => Upstream::Failed(format!("ax-netstack: HTTP with {name} failed: {e}")),
            }
        }
        Err(e) => {
            let why = client::explain(&name, &e);
            log::warn!("flow {} {name}: {why}", flow.id);
            Upstream::Failed(why)
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

/// A fresh upstream connection for `flow` (the server closed the previous one), offering
/// only `h2` (`h2`) or only `http/1.1`. Errors: connect or TLS failures, or a server that no
/// longer speaks the protocol the guest side was set up for.
pub(crate) async fn reconnect(
    ctx: &Context,
    flow: &Flow,
    name: &str,
    h2: bool,
) -> anyhow::Result<tokio_rustls::client::TlsStream<BoxStream>> {
    let io = ctx.upstream.connect(flow.host.as_deref(), flow.dst).await?;
    let want = if h2 { H2 } else { H1 };
    let tls = client::connect(ctx, name, &[want.to_vec()], io).await?;
    let got = tls.get_ref().1.alpn_protocol();
    if h2 && got != Some(H2) {
        anyhow::bail!(
            "{name} no longer negotiates h2 (got {:?})",
            got.map(String::from_utf8_lossy)
        );
    }
    Ok(tls)
}
