//! The HTTP proxy inside an intercepted TLS connection: hyper serves the guest (HTTP/1.1 or
//! HTTP/2, RFC 9112 / RFC 9113, as negotiated by ALPN) and forwards each request over a hyper
//! client connection to the upstream (HTTP/2 if the upstream negotiated `h2`, else HTTP/1.1).
//! Per request: placeholders substituted or the request blocked (403), spend cap (429),
//! metering, response scrubbing, an audit record. Bodies stream both ways chunk by chunk.

pub mod body;
pub mod decode;

use crate::context::Context;
use crate::meter::RequestRecord;
use crate::{BoxStream, Flow};
use body::{full, BlockSlot, Pipe, ProxyBody};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::{http1 as c1, http2 as c2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// ALPN protocol ID of HTTP/2 (RFC 9113 §3.1).
pub(crate) const H2: &[u8] = b"h2";
/// ALPN protocol ID of HTTP/1.1 (RFC 7301 §6).
pub(crate) const H1: &[u8] = b"http/1.1";

/// The upstream side of one intercepted connection.
pub enum UpstreamConn {
    /// HTTP/1.1: one request at a time; re-connected when the server closed it.
    H1(tokio::sync::Mutex<Option<c1::SendRequest<ProxyBody>>>),
    /// HTTP/2: requests multiplexed; re-connected when the server closed it (GOAWAY). The
    /// number counts connections, so that concurrent failures re-connect once.
    H2(tokio::sync::Mutex<(u64, c2::SendRequest<ProxyBody>)>),
    /// The upstream could not be reached or verified: every request gets 502 with this text.
    Failed(String),
}

impl UpstreamConn {
    /// Runs the HTTP client handshake on a connected (TLS) stream.
    pub async fn handshake<S: crate::IoStream>(io: S, h2: bool) -> anyhow::Result<UpstreamConn> {
        let io = TokioIo::new(io);
        if h2 {
            Ok(UpstreamConn::H2(tokio::sync::Mutex::new((
                0,
                h2_handshake(io).await?,
            ))))
        } else {
            Ok(UpstreamConn::H1(tokio::sync::Mutex::new(Some(
                h1_handshake(io).await?,
            ))))
        }
    }
}

async fn h2_handshake<S: crate::IoStream>(
    io: TokioIo<S>,
) -> anyhow::Result<c2::SendRequest<ProxyBody>> {
    let (send, conn) = c2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("upstream h2 connection ended: {e}");
        }
    });
    Ok(send)
}

async fn h1_handshake<S: crate::IoStream>(
    io: TokioIo<S>,
) -> anyhow::Result<c1::SendRequest<ProxyBody>> {
    let (send, conn) = c1::handshake(io).await?;
    tokio::spawn(async move {
        // with_upgrades: a 101 response hands the connection to the Upgrade splice.
        if let Err(e) = conn.with_upgrades().await {
            log::debug!("upstream http/1.1 connection ended: {e}");
        }
    });
    Ok(send)
}

/// One intercepted connection's proxy state.
pub struct Proxy {
    /// The agent's shared state.
    pub ctx: Arc<Context>,
    /// The guest connection.
    pub flow: Flow,
    /// The verified upstream name (the guest's SNI, else the resolved host, else the IP):
    /// secrets, metering and audit go by this name, never by the `Host` header.
    pub name: String,
    /// Where requests go.
    pub upstream: UpstreamConn,
}

/// Serves the guest side of `io` (already TLS-terminated) until it closes.
pub async fn serve<S: crate::IoStream>(proxy: Arc<Proxy>, io: S, h2: bool) -> anyhow::Result<()> {
    let svc = hyper::service::service_fn(move |req| {
        let p = proxy.clone();
        async move { Ok::<_, std::convert::Infallible>(p.handle(req).await) }
    });
    let io = TokioIo::new(io);
    if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await?;
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await?;
    }
    Ok(())
}

/// A plain-text response made by the proxy itself.
fn answer(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those HTTP/2 forbids (RFC 9113 §8.2.2).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    ] {
        h.remove(n);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

/// Whether a failed upstream request may be sent again: a refused stream (never processed,
/// RFC 9113 §8.7) always; a connection that went away (GOAWAY, closed, canceled) under the
/// request only for safe methods (RFC 9110 §9.2.1), which may have been processed.
fn retryable(e: &anyhow::Error, method: &Method) -> bool {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        return false;
    };
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if h.is_canceled() || h.is_closed() {
        return safe;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(h);
    while let Some(e) = src {
        let text = e.to_string();
        if text.contains("refused stream") {
            return true;
        }
        if text.contains("connection error") || text.contains("go away") {
            return safe;
        }
        src = e.source();
    }
    false
}

/// A copy of a request head without extensions (for the meter, before substitution).
fn copy_head(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

impl Proxy {
    fn audit(
        &self,
        method: &Method,
        path: &str,
        status: u16,
        up: u64,
        down: u64,
        blocked: Option<String>,
    ) {
        self.ctx.audit.request(RequestRecord {
            flow_id: self.flow.id,
            host: self.name.clone(),
            method: method.to_string(),
            path: path.to_string(),
            status,
            bytes_up: up,
            bytes_down: down,
            blocked,
        });
    }

    /// Answers `status` with `why` and audits it as blocked.
    fn refuse(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        why: String,
    ) -> Response<ProxyBody> {
        log::warn!(
            "flow {} {} {method} {path}: {} {why}",
            self.flow.id,
            self.name,
            status.as_u16()
        );
        self.audit(method, path, status.as_u16(), 0, 0, Some(why.clone()));
        answer(status, &why)
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        // HTTP/1.1 Upgrade (WebSocket, RFC 6455 §4): forwarded, then the two connections are
        // spliced; only possible when the upstream speaks HTTP/1.1 too.
        let upgrade = match (&self.upstream, req.version()) {
            (UpstreamConn::H1(_), Version::HTTP_11) => req.headers().get(header::UPGRADE).cloned(),
            _ => None,
        };
        let guest_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        let path = parts.uri.path().to_string();
        if let UpstreamConn::Failed(why) = &self.upstream {
            return self.refuse(&method, &path, StatusCode::BAD_GATEWAY, why.clone());
        }
        let ctx = self.ctx.clone();
        let meter_head = copy_head(&parts);
        if let Err(b) = ctx
            .secrets
            .rewrite_request_head(&self.name, &parts.uri, &mut parts.headers)
        {
            return self.refuse(&method, &path, StatusCode::FORBIDDEN, b.0);
        }
        let provider = ctx.meter.provider_for(&self.name, &path);
        if provider.is_some() && parts.headers.contains_key(header::UPGRADE) {
            // A WebSocket to an LLM API (Codex prefers the Responses WebSocket) would be
            // spliced unmetered and unscrubbed; refused with 404, which clients read as "no
            // WebSocket here" and fall back to HTTPS + SSE, which is metered.
            return self.refuse(
                &method,
                &path,
                StatusCode::NOT_FOUND,
                "ax-netstack: WebSocket transports to LLM APIs are refused (not metered yet); use HTTPS".into(),
            );
        }
        if provider.is_some() {
            if let Err(e) = ctx.meter.check_cap() {
                return self.refuse(&method, &path, StatusCode::TOO_MANY_REQUESTS, e.to_string());
            }
        }
        let process = !ctx.secrets.is_empty() || provider.is_some();

        // The request head as the upstream protocol wants it.
        let authority = parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| self.name.clone());
        strip_hop_by_hop(&mut parts.headers);
        if let Some(u) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, u.clone());
        }
        if process {
            let accept = parts
                .headers
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok());
            if let Some(v) = accept {
                match decode::filter_accept_encoding(v) {
                    Some(f) => {
                        let f = HeaderValue::from_str(&f).expect("a subset of a valid value");
                        parts.headers.insert(header::ACCEPT_ENCODING, f);
                    }
                    None => {
                        parts.headers.remove(header::ACCEPT_ENCODING);
                    }
                }
            }
        }
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let h2 = matches!(self.upstream, UpstreamConn::H2(_));
        if h2 {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
            parts.uri = match Uri::builder()
                .scheme("https")
                .authority(authority.as_str())
                .path_and_query(pq.as_str())
                .build()
            {
                Ok(u) => u,
                Err(e) => {
                    return self.refuse(
                        &method,
                        &path,
                        StatusCode::BAD_REQUEST,
                        format!("invalid request target: {e}"),
                    )
                }
            };
        } else {
            parts.version = Version::HTTP_11;
            if let Ok(v) = HeaderValue::from_str(&authority) {
                parts.headers.insert(header::HOST, v);
            }
            parts.uri = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
        }

        let blocked = BlockSlot::default();
        let up_bytes = Arc::new(AtomicU64::new(0));
        let llm = provider.is_some()
            || crate::policy::LLM_HOSTS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&self.name));
        let rewrite = ctx.secrets.request_body(&self.name, llm);
        let exact = rewrite.as_ref().is_none_or(|r| r.preserves_length());
        if !exact {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let (c2, name) = (ctx.clone(), self.name.clone());
        let empty = body.is_end_stream();
        let req_body = Pipe::new(body)
            .with_rewrite(rewrite, exact)
            .with_trailers(Box::new(move |t| {
                c2.secrets.check_trailers(&name, t).map_err(|b| b.0)
            }))
            .block_slot(blocked.clone())
            .count_into(up_bytes.clone())
            .boxed_unsync();
        // A request without a body can be sent again on a new connection if the old one
        // refused it (HTTP/2 REFUSED_STREAM or GOAWAY racing the request, RFC 9113 §8.7; an
        // HTTP/1.1 connection closed before the request went out).
        let retry = empty.then(|| copy_head(&parts));
        let mut call = provider.map(|p| ctx.meter.begin(p, &meter_head));
        let mut sent = self.send(Request::from_parts(parts, req_body), false).await;
        if let (Err(e), Some(head)) = (&sent, retry) {
            if retryable(e, &method) {
                log::debug!(
                    "flow {} {}: retrying on a new connection: {e:#}",
                    self.flow.id,
                    self.name
                );
                sent = self
                    .send(Request::from_parts(head, body::full("")), true)
                    .await;
            }
        }
        if let Some(why) = blocked.lock().unwrap().take() {
            if let Some(c) = call.take() {
                c.finish(crate::meter::Outcome::Aborted(
                    "blocked by ax-netstack".into(),
                ));
            }
            return self.refuse(&method, &path, StatusCode::FORBIDDEN, why);
        }
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let why = format!(
                    "ax-netstack: the upstream request to {} failed: {e:#}",
                    self.name
                );
                if let Some(c) = call.take() {
                    c.finish(crate::meter::Outcome::Aborted(why.clone()));
                }
                return self.refuse(&method, &path, StatusCode::BAD_GATEWAY, why);
            }
        };

        if let (StatusCode::SWITCHING_PROTOCOLS, Some(g)) = (resp.status(), guest_upgrade) {
            if let Some(c) = call.take() {
                c.finish(crate::meter::Outcome::Aborted(
                    "upgraded to another protocol".into(),
                ));
            }
            return self.splice(g, resp, &method, &path);
        }
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        ctx.secrets.scrub_headers(&mut rparts.headers);
        if let Some(c) = &mut call {
            c.response_head(rparts.status, &rparts.headers);
        }
        let status = rparts.status;
        let bodyless = method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let mut decoder = None;
        let scrubber = if bodyless {
            None
        } else {
            ctx.secrets.scrubber()
        };
        if process && !bodyless {
            let coding = rparts
                .headers
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .map(str::to_string);
            match coding.as_deref() {
                None | Some("") | Some("identity") => {}
                Some(c) => match decode::Decoder::new(c) {
                    Some(d) => {
                        decoder = Some(d);
                        rparts.headers.remove(header::CONTENT_ENCODING);
                    }
                    None => {
                        let why = format!(
                            "ax-netstack: {} answered with Content-Encoding {c:?}, which it cannot inspect (it asked for {} only)",
                            self.name,
                            decode::SUPPORTED
                        );
                        if let Some(c) = call.take() {
                            c.finish(crate::meter::Outcome::Aborted(why.clone()));
                        }
                        return self.refuse(&method, &path, StatusCode::BAD_GATEWAY, why);
                    }
                },
            }
            rparts.headers.remove(header::CONTENT_LENGTH);
        }
        let me = self.clone();
        let on_end = Box::new(move |down: u64, err: Option<String>| {
            if let Some(e) = &err {
                log::info!(
                    "flow {} {} {method} {path}: response ended early: {e}",
                    me.flow.id,
                    me.name
                );
            }
            me.audit(
                &method,
                &path,
                status.as_u16(),
                up_bytes.load(Ordering::Relaxed),
                down,
                None,
            );
        });
        let c2 = ctx.clone();
        let body = Pipe::new(rbody)
            .with_trailers(Box::new(move |t| {
                c2.secrets.scrub_headers(t);
                Ok(())
            }))
            .with_decoder(decoder)
            .with_rewrite(scrubber, false)
            .with_meter(if bodyless { None } else { call.take() })
            .on_end(on_end)
            .boxed_unsync();
        if let Some(c) = call.take() {
            c.finish(crate::meter::Outcome::Complete);
        }
        Response::from_parts(rparts, body)
    }

    /// Answers 101 to the guest and splices the upgraded connections (bytes pass unchanged:
    /// no substitution or scrubbing inside the new protocol).
    fn splice(
        &self,
        guest: hyper::upgrade::OnUpgrade,
        mut resp: Response<Incoming>,
        method: &Method,
        path: &str,
    ) -> Response<ProxyBody> {
        let upstream = hyper::upgrade::on(&mut resp);
        let (flow, name) = (self.flow.id, self.name.clone());
        tokio::spawn(async move {
            match (guest.await, upstream.await) {
                (Ok(g), Ok(u)) => {
                    let (mut g, mut u) = (TokioIo::new(g), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut g, &mut u).await {
                        log::debug!("flow {flow} {name}: upgraded connection ended: {e}");
                    }
                }
                (g, u) => log::info!(
                    "flow {flow} {name}: upgrade failed (guest: {:?}, upstream: {:?})",
                    g.err(),
                    u.err()
                ),
            }
        });
        let (mut parts, _) = resp.into_parts();
        self.ctx.secrets.scrub_headers(&mut parts.headers);
        self.audit(method, path, 101, 0, 0, None);
        Response::from_parts(parts, full(""))
    }

    /// Sends one request upstream; HTTP/1.1 connections the server closed are re-opened, and
    /// HTTP/2 ones after GOAWAY. `fresh`: open a new connection first (a retry).
    async fn send(
        &self,
        req: Request<ProxyBody>,
        fresh: bool,
    ) -> anyhow::Result<Response<Incoming>> {
        match &self.upstream {
            UpstreamConn::H2(m) => {
                let (gen, mut s) = m.lock().await.clone();
                if fresh || s.ready().await.is_err() {
                    let mut guard = m.lock().await;
                    if guard.0 == gen {
                        // Nobody replaced the broken connection yet.
                        let io = self.reconnect(true).await?;
                        *guard = (gen + 1, h2_handshake(TokioIo::new(io)).await?);
                    }
                    s = guard.1.clone();
                    drop(guard);
                    s.ready().await?;
                }
                Ok(s.send_request(req).await?)
            }
            UpstreamConn::H1(m) => {
                let mut guard = m.lock().await;
                let usable = match guard.as_mut() {
                    Some(s) if !fresh => s.ready().await.is_ok(),
                    _ => false,
                };
                if !usable {
                    *guard = None;
                    let io = self.reconnect(false).await?;
                    *guard = Some(h1_handshake(TokioIo::new(io)).await?);
                }
                let fut = guard.as_mut().unwrap().send_request(req);
                drop(guard);
                Ok(fut.await?)
            }
            UpstreamConn::Failed(why) => anyhow::bail!("{why}"),
        }
    }

    /// A fresh upstream connection for this flow (the server closed the previous one),
    /// offering only `h2` (`h2`) or only `http/1.1`. Errors: connect or TLS failures, or a
    /// server that no longer speaks the protocol the guest side was set up for.
    async fn reconnect(
        &self,
        h2: bool,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<BoxStream>> {
        let (ctx, name) = (&self.ctx, &self.name);
        let io = ctx
            .upstream
            .connect(self.flow.host.as_deref(), self.flow.dst)
            .await?;
        let want = if h2 { H2 } else { H1 };
        let tls = ctx.upstream.tls_connect(name, &[want.to_vec()], io).await?;
        let got = tls.get_ref().1.alpn_protocol();
        if h2 && got != Some(H2) {
            anyhow::bail!(
                "{name} no longer negotiates h2 (got {:?})",
                got.map(String::from_utf8_lossy)
            );
        }
        Ok(tls)
    }
}
