//! The HTTP proxy inside an intercepted TLS connection: hyper serves the guest (HTTP/1.1 or
//! HTTP/2, RFC 9112 / RFC 9113, as negotiated by ALPN) and forwards each request over a hyper
//! client connection to the upstream (HTTP/2 if the upstream negotiated `h2`, else HTTP/1.1).
//! Per request: placeholders substituted or the request blocked (403), spend cap (429),
//! metering, response scrubbing, an audit record. Bodies stream both ways chunk by chunk.

pub mod body;
pub mod decode;

use crate::context::Context;
use crate::meter::request::{self, RequestInfo};
use crate::meter::routes::{self, Route};
use crate::meter::usage::strip::UsageChunkFilter;
use crate::meter::{CallMeter, Outcome, Provider, Refused, RequestRecord, Reservation};
use crate::{BoxStream, Flow};
use body::{full, BlockSlot, Pipe, ProxyBody};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
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

/// A request's answer from the proxy itself instead of the upstream (already logged and
/// audited): what a step of [`Proxy::handle`] returns when it refuses the request.
type Refusal = Box<Response<ProxyBody>>;

/// An LLM call's request, read and checked ([`Proxy::prepare_llm_call`]).
struct LlmRequest {
    /// The body to forward (maybe with `include_usage` added).
    body: http_body_util::Full<Bytes>,
    /// `include_usage` was added: remove the usage-only chunk from the response stream.
    strip_usage_chunk: bool,
    /// What the call holds against the caps.
    reservation: Reservation,
}

/// How [`Proxy::scrub_and_meter`] treats a response.
struct ResponseSide {
    /// Decode and inspect the body (secrets to scrub, or a metered call).
    process: bool,
    /// Remove the usage-only chunk of an OpenAI Chat stream (`include_usage` was added).
    strip: bool,
    /// Request body bytes sent (for the audit record).
    up_bytes: Arc<AtomicU64>,
}

/// The request body on its way upstream ([`Proxy::substitute_in_body`]).
struct RequestBody {
    /// The body, substituted.
    pipe: ProxyBody,
    /// The guest sent no body (the request may be sent again).
    empty: bool,
    /// Why the body was blocked, if it was.
    blocked: BlockSlot,
    /// Bytes passed upstream.
    up_bytes: Arc<AtomicU64>,
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
        async move {
            let resp = p.handle(req).await.unwrap_or_else(|refusal| *refusal);
            Ok::<_, std::convert::Infallible>(resp)
        }
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

/// The HTTP/1.1 Upgrade (WebSocket, RFC 6455 §4) the guest asks for, when the upstream speaks
/// HTTP/1.1 too: the `Upgrade` value (forwarded) and the guest's side of the upgraded
/// connection (spliced with the upstream's after its 101).
fn take_upgrade(
    upstream: &UpstreamConn,
    req: &mut Request<Incoming>,
) -> Option<(HeaderValue, hyper::upgrade::OnUpgrade)> {
    let offer = match (upstream, req.version()) {
        (UpstreamConn::H1(_), Version::HTTP_11) => req.headers().get(header::UPGRADE).cloned(),
        _ => None,
    }?;
    Some((offer, hyper::upgrade::on(req)))
}

/// Ends a metered call that got no LLM answer: the request was refused, failed or upgraded.
fn abort(call: &mut Option<CallMeter>, why: String) {
    if let Some(c) = call.take() {
        c.finish(Outcome::Aborted(why));
    }
}

/// The credential headers' values (where placeholders are substituted), to tell whether
/// substitution changed any.
fn credential_headers(h: &HeaderMap) -> Vec<HeaderValue> {
    ["authorization", "x-api-key", "x-goog-api-key"]
        .iter()
        .flat_map(|n| h.get_all(*n).iter().cloned())
        .collect()
}

/// The host part of a `Host` header value (RFC 9110 §7.2: `uri-host [ ":" port ]`, IPv6 in
/// brackets); an unparsable value is returned whole (and then matches no verified name).
fn authority_host(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    match s.parse::<http::uri::Authority>() {
        Ok(a) => a
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        Err(_) => s.into_owned(),
    }
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
    fn refuse(&self, method: &Method, path: &str, status: StatusCode, why: String) -> Refusal {
        log::warn!(
            "flow {} {} {method} {path}: {} {why}",
            self.flow.id,
            self.name,
            status.as_u16()
        );
        self.audit(method, path, status.as_u16(), 0, 0, Some(why.clone()));
        Box::new(answer(status, &why))
    }

    /// Answers one guest request (`Err`: a step refused it; the refusal is the answer, logged
    /// and audited). The steps, in order: the guest's Upgrade offer taken aside, the upstream
    /// checked, secret substitution in the head, the upgrade refusal and the spend-cap check
    /// for LLM calls, the head made for the upstream, secret substitution in the body, send
    /// with retry, and the response scrubbed and metered (or, after a 101, both connections
    /// spliced).
    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let upgrade = take_upgrade(&self.upstream, &mut req);
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        let path = parts.uri.path().to_string();
        self.check_upstream(&method, &path)?;
        let meter_head = copy_head(&parts);
        let before = credential_headers(&parts.headers);
        self.substitute_in_head(&method, &path, &mut parts)?;
        let substituted = before != credential_headers(&parts.headers);
        if substituted {
            self.check_host_binding(&method, &path, &parts)?;
        }
        let provider = self.route(&method, &path, substituted, &parts.headers)?;
        self.refuse_llm_upgrade(&method, &path, provider, &parts.headers)?;
        let process = !self.ctx.secrets.is_empty() || provider.is_some();
        let offer = upgrade.as_ref().map(|(u, _)| u);
        self.upstream_head(&method, &path, &mut parts, offer, process)?;
        let (body, mut call, strip) = match provider {
            None => (
                self.substitute_in_body(&mut parts, body, false),
                None,
                false,
            ),
            Some(p) => {
                let llm = self
                    .prepare_llm_call(&method, &path, p, &mut parts, body)
                    .await?;
                let mut call = self.ctx.meter.begin(p, &meter_head);
                call.hold(llm.reservation);
                let body = self.substitute_in_body(&mut parts, llm.body, true);
                (body, Some(call), llm.strip_usage_chunk)
            }
        };
        let sent = self
            .send_with_retry(&method, parts, body.pipe, body.empty)
            .await;
        let resp = self.upstream_response(&method, &path, sent, &body.blocked, &mut call)?;
        if let (StatusCode::SWITCHING_PROTOCOLS, Some((_, guest))) = (resp.status(), upgrade) {
            abort(&mut call, "upgraded to another protocol".into());
            return Ok(self.splice(guest, resp, &method, &path));
        }
        let side = ResponseSide {
            process,
            strip,
            up_bytes: body.up_bytes,
        };
        self.scrub_and_meter(method, path, resp, call, side)
    }

    /// An LLM call's request body, read whole (up to `request::MAX_REQUEST_BODY`, else 413)
    /// before it is forwarded: an OpenAI Responses `background` request is refused (403: its
    /// output is produced after the answer, unmetered); an OpenAI Chat stream without
    /// `stream_options.include_usage` gets it (`Content-Length` set to the new length); then
    /// the call reserves its worst case against the caps (`meter::Meter::reserve`; 429 when
    /// a cap is reached, 403 for an unknown model under `unknown_model = "refuse"`).
    async fn prepare_llm_call(
        &self,
        method: &Method,
        path: &str,
        provider: Provider,
        parts: &mut http::request::Parts,
        body: Incoming,
    ) -> Result<LlmRequest, Refusal> {
        let limit = request::MAX_REQUEST_BODY;
        let mut bytes = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let too_large = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                let (status, why) = if too_large {
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("ax-netstack: LLM request bodies are metered up to {} MiB; this one is larger", limit >> 20),
                    )
                } else {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("ax-netstack: the request body could not be read: {e}"),
                    )
                };
                return Err(self.refuse(method, path, status, why));
            }
        };
        let info = RequestInfo::parse(provider, &bytes);
        if info.background {
            return Err(self.refuse(
                method,
                path,
                StatusCode::FORBIDDEN,
                format!("ax-netstack refused {method} {path} with \"background\": true: a background response is generated after this request returns and cannot be metered; send it without background"),
            ));
        }
        let mut strip = false;
        if info.chat_stream_without_usage {
            if let Some(b) = request::add_include_usage(&bytes) {
                bytes = Bytes::from(b);
                strip = true;
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            }
        }
        let model = info
            .model
            .clone()
            .or_else(|| crate::meter::usage::model_from_path(provider, path));
        let reservation = self
            .ctx
            .meter
            .reserve(
                provider,
                model.as_deref(),
                info.reserve_output(),
                bytes.len() as u64,
            )
            .map_err(|e| match e {
                Refused::Cap(c) => {
                    self.refuse(method, path, StatusCode::TOO_MANY_REQUESTS, c.to_string())
                }
                Refused::UnknownModel(why) => self.refuse(method, path, StatusCode::FORBIDDEN, why),
            })?;
        Ok(LlmRequest {
            body: http_body_util::Full::new(bytes),
            strip_usage_chunk: strip,
            reservation,
        })
    }

    /// Upstream check: every request on a connection whose upstream could not be reached or
    /// verified is refused with 502 and the reason.
    fn check_upstream(&self, method: &Method, path: &str) -> Result<(), Refusal> {
        match &self.upstream {
            UpstreamConn::Failed(why) => {
                Err(self.refuse(method, path, StatusCode::BAD_GATEWAY, why.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Secret substitution in the request head: placeholders become the real values where
    /// their secret allows it for this upstream; a placeholder where it may not go refuses the
    /// request with 403 (`secrets::Secrets::rewrite_request_head`; where: the `secrets` docs).
    fn substitute_in_head(
        &self,
        method: &Method,
        path: &str,
        parts: &mut http::request::Parts,
    ) -> Result<(), Refusal> {
        self.ctx
            .secrets
            .rewrite_request_head(&self.name, &parts.uri, &mut parts.headers)
            .map_err(|b| self.refuse(method, path, StatusCode::FORBIDDEN, b.0))
    }

    /// Host binding: a request carrying a substituted credential goes out with the `Host` /
    /// `:authority` the guest wrote, so both must name the verified upstream (`self.name`, the
    /// SNI the upstream's certificate was checked against); another name is refused with 403
    /// (the credential would be presented to a virtual host it is not bound to).
    fn check_host_binding(
        &self,
        method: &Method,
        path: &str,
        parts: &http::request::Parts,
    ) -> Result<(), Refusal> {
        let named = parts
            .uri
            .authority()
            .map(|a| a.host().to_string())
            .into_iter()
            .chain(
                parts
                    .headers
                    .get_all(header::HOST)
                    .iter()
                    .map(|h| authority_host(h.as_bytes())),
            );
        let want = self.name.trim_end_matches('.');
        for host in named {
            let got = host.trim_end_matches('.');
            if !got.eq_ignore_ascii_case(want) {
                return Err(self.refuse(
                    method,
                    path,
                    StatusCode::FORBIDDEN,
                    format!(
                        "ax-netstack refused {method} {path}: the request names host {got:?} (Host / :authority) but the connection was verified for {want}; a credential is only sent with Host {want}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The metering route (`meter::routes`): on a provider host, a request carrying a
    /// substituted credential is metered, free, or refused with 403 naming the path (also any
    /// protocol upgrade on a path that is not metered, e.g. `/v1/realtime`, Gemini Live).
    /// Returns the API to meter, if any (requests without a substituted credential: by path,
    /// as before).
    fn route(
        &self,
        method: &Method,
        path: &str,
        substituted: bool,
        headers: &HeaderMap,
    ) -> Result<Option<Provider>, Refusal> {
        if headers.contains_key(header::UPGRADE) {
            // An upgrade on a metered path: answered 404 by `refuse_llm_upgrade` (clients
            // fall back to HTTPS + SSE), whatever the method.
            if let Some(p) = self.ctx.meter.provider_for(&self.name, path) {
                return Ok(Some(p));
            }
        }
        let route = if substituted {
            routes::route(&self.name, method.as_str(), path)
        } else {
            None
        };
        match route {
            None => Ok(self.ctx.meter.provider_for(&self.name, path)),
            Some(Route::Metered(p)) => Ok(Some(p)),
            Some(Route::Free) if !headers.contains_key(header::UPGRADE) => Ok(None),
            Some(_) => Err(self.refuse(
                method,
                path,
                StatusCode::FORBIDDEN,
                routes::refusal(&self.name, method.as_str(), path),
            )),
        }
    }

    /// Upgrade refusal: a WebSocket to an LLM API (Codex prefers the Responses WebSocket)
    /// would be spliced unmetered and unscrubbed; it is refused with 404, which clients read
    /// as "no WebSocket here" and fall back to HTTPS + SSE, which is metered.
    fn refuse_llm_upgrade(
        &self,
        method: &Method,
        path: &str,
        provider: Option<Provider>,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        if provider.is_some() && headers.contains_key(header::UPGRADE) {
            return Err(self.refuse(
                method,
                path,
                StatusCode::NOT_FOUND,
                "ax-netstack: WebSocket transports to LLM APIs are refused (not metered yet); use HTTPS".into(),
            ));
        }
        Ok(())
    }

    /// The request head as the upstream protocol wants it: hop-by-hop headers stripped (the
    /// guest's Upgrade `offer` put back), `Accept-Encoding` narrowed to what the proxy can
    /// decode when it inspects the response (`process`), and the target as HTTP/2
    /// (`:scheme`/`:authority`, no `Host`) or HTTP/1.1 (origin form and `Host`) wants it; a
    /// target that makes no HTTP/2 URI is refused with 400.
    fn upstream_head(
        &self,
        method: &Method,
        path: &str,
        parts: &mut http::request::Parts,
        offer: Option<&HeaderValue>,
        process: bool,
    ) -> Result<(), Refusal> {
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
        if let Some(u) = offer {
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
                    return Err(self.refuse(
                        method,
                        path,
                        StatusCode::BAD_REQUEST,
                        format!("invalid request target: {e}"),
                    ))
                }
            };
        } else {
            parts.version = Version::HTTP_11;
            if let Ok(v) = HeaderValue::from_str(&authority) {
                parts.headers.insert(header::HOST, v);
            }
            parts.uri = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
        }
        Ok(())
    }

    /// Secret substitution in the request body, chunk by chunk as it goes upstream
    /// (`secrets::Secrets::request_body`): placeholders of secrets with `body = true` are
    /// substituted, any other placeholder blocks the request (the reason lands in the block
    /// slot), except in requests to LLM APIs (`llm`, or a known LLM host), which pass
    /// unchanged; trailers holding a placeholder are refused. Bytes are counted;
    /// `Content-Length` goes when substitution may change the length.
    fn substitute_in_body<B>(
        &self,
        parts: &mut http::request::Parts,
        body: B,
        llm: bool,
    ) -> RequestBody
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<body::BoxError>,
    {
        let blocked = BlockSlot::default();
        let up_bytes = Arc::new(AtomicU64::new(0));
        let llm = llm
            || crate::policy::LLM_HOSTS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&self.name));
        let rewrite = self.ctx.secrets.request_body(&self.name, llm);
        let exact = rewrite.as_ref().is_none_or(|r| r.preserves_length());
        if !exact {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let (c2, name) = (self.ctx.clone(), self.name.clone());
        let empty = body.is_end_stream();
        let pipe = Pipe::new(body)
            .with_rewrite(rewrite, exact)
            .with_trailers(Box::new(move |t| {
                c2.secrets.check_trailers(&name, t).map_err(|b| b.0)
            }))
            .block_slot(blocked.clone())
            .count_into(up_bytes.clone())
            .boxed_unsync();
        RequestBody {
            pipe,
            empty,
            blocked,
            up_bytes,
        }
    }

    /// Send with retry: the request goes upstream ([`Proxy::send`]). A request without a body
    /// (`empty`) can be sent again on a new connection if the old one refused it (HTTP/2
    /// REFUSED_STREAM or GOAWAY racing the request, RFC 9113 §8.7; an HTTP/1.1 connection
    /// closed before the request went out): once, when [`retryable`].
    async fn send_with_retry(
        &self,
        method: &Method,
        parts: http::request::Parts,
        body: ProxyBody,
        empty: bool,
    ) -> anyhow::Result<Response<Incoming>> {
        let retry = empty.then(|| copy_head(&parts));
        let mut sent = self.send(Request::from_parts(parts, body), false).await;
        if let (Err(e), Some(head)) = (&sent, retry) {
            if retryable(e, method) {
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
        sent
    }

    /// The upstream's response, or the refusal that answers instead: 403 when the request
    /// was blocked on its way out (the reason in `blocked`), 502 when it failed. A refusal
    /// ends the metered call (`call`) as aborted.
    fn upstream_response(
        &self,
        method: &Method,
        path: &str,
        sent: anyhow::Result<Response<Incoming>>,
        blocked: &BlockSlot,
        call: &mut Option<CallMeter>,
    ) -> Result<Response<Incoming>, Refusal> {
        if let Some(why) = blocked.lock().unwrap().take() {
            abort(call, "blocked by ax-netstack".into());
            return Err(self.refuse(method, path, StatusCode::FORBIDDEN, why));
        }
        sent.map_err(|e| {
            let why = format!(
                "ax-netstack: the upstream request to {} failed: {e:#}",
                self.name
            );
            abort(call, why.clone());
            self.refuse(method, path, StatusCode::BAD_GATEWAY, why)
        })
    }

    /// Scrub and meter: the response head loses its hop-by-hop headers and any real secret
    /// value; the body is decoded when the proxy inspects it (`process`; a coding it cannot
    /// decode is refused with 502), scrubbed chunk by chunk, and metered (`call`); its audit
    /// record is written when it ends, with `up_bytes` sent and the bytes passed down.
    fn scrub_and_meter(
        self: &Arc<Self>,
        method: Method,
        path: String,
        resp: Response<Incoming>,
        mut call: Option<CallMeter>,
        side: ResponseSide,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let ResponseSide {
            process,
            strip,
            up_bytes,
        } = side;
        let ctx = &self.ctx;
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
                        abort(&mut call, why.clone());
                        return Err(self.refuse(&method, &path, StatusCode::BAD_GATEWAY, why));
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
        let sse = rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
        let filter = (strip && sse && !bodyless).then(UsageChunkFilter::new);
        let c2 = ctx.clone();
        let body = Pipe::new(rbody)
            .with_trailers(Box::new(move |t| {
                c2.secrets.scrub_headers(t);
                Ok(())
            }))
            .with_decoder(decoder)
            .with_filter(filter)
            .with_rewrite(scrubber, false)
            .with_meter(if bodyless { None } else { call.take() })
            .on_end(on_end)
            .boxed_unsync();
        if let Some(c) = call.take() {
            c.finish(Outcome::Complete);
        }
        Ok(Response::from_parts(rparts, body))
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
