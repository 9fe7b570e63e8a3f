//! Scripted LLM provider servers for the end-to-end tests: HTTPS on loopback with their own
//! test CA, playing api.anthropic.com (Messages API, [`anthropic`]) or api.openai.com
//! (Responses API, [`openai`]) for the real Claude Code and Codex CLIs.
//!
//! Each server records every request it gets (method, path, headers with the credential,
//! body) and the usage it answered with, so tests can check what the provider saw (the real
//! key, never a placeholder) and what the ledger must say. A conversation is scripted by its
//! state: the number of tool results the client has sent back so far picks the next model
//! turn (a tool call, or the final text). Requests outside the main conversation (titles,
//! quota probes, token counts) get a short text answer and are recorded too.
//!
//! HTTP/1.1 only (ALPN `http/1.1`); responses are written in several body chunks, SSE events
//! one chunk each.

pub mod anthropic;
pub mod host;
pub mod openai;
pub mod ws;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Token counts of one model answer, as the provider reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Uncached input tokens (Anthropic: excludes cache reads/writes; OpenAI: total input
    /// including `cached_tokens`).
    pub input: u64,
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache (Anthropic only).
    pub cache_write: u64,
}

/// One request as the server received it, and what it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path with query string.
    pub target: String,
    /// Header names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// HTTP status of the answer.
    pub status: u16,
    /// The usage the answer reported (None: not a model answer).
    pub usage: Option<Usage>,
    /// The model named in the answer.
    pub model: Option<String>,
    /// Which script step answered (`None`: a side request or an error).
    pub step: Option<usize>,
}

impl Recorded {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    /// The body as JSON (Null if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What a script answers to one request.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Body chunks, sent one after the other (an SSE stream: one event each).
    pub chunks: Vec<Vec<u8>>,
    pub usage: Option<Usage>,
    pub model: Option<String>,
    pub step: Option<usize>,
}

impl Reply {
    /// A JSON answer in one chunk.
    pub fn json(status: u16, v: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            chunks: vec![serde_json::to_vec(v).unwrap()],
            usage: None,
            model: None,
            step: None,
        }
    }
}

/// A provider script: turns a request (already recorded, body complete) into an answer.
pub trait Script: Send + Sync + 'static {
    fn reply(&self, req: &Recorded) -> Reply;
    /// Whether a WebSocket upgrade is accepted ([`ws`]); each client message then becomes a
    /// request with method `WS` whose body is the message with `"stream": true` added.
    fn websocket(&self) -> bool {
        false
    }
}

/// A test CA and a server certificate for `names` (DNS names, and IP addresses given as
/// text) signed by it.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl TestCa {
    pub fn new(names: &[&str]) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "ax scripted LLM provider test CA",
        );
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => rcgen::SanType::IpAddress(ip),
                    Err(_) => rcgen::SanType::DnsName((*n).try_into().unwrap()),
                });
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &issuer).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

/// A running scripted provider on `127.0.0.1:port`; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    /// The CA that signed the server's certificate (PEM), for clients and `[[route]] ca_pem`.
    pub ca_pem: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The names every test server's certificate carries.
pub const CERT_NAMES: &[&str] = &[
    "api.anthropic.com",
    "api.openai.com",
    "localhost",
    "127.0.0.1",
];

impl Server {
    /// Starts `script` behind TLS (a fresh [`TestCa`] for [`CERT_NAMES`]).
    pub fn start(script: impl Script) -> Server {
        let ca = TestCa::new(CERT_NAMES);
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ca.cert_der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ca.key_der.clone().into()),
        )
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let script: Arc<dyn Script> = Arc::new(script);
        let reqs = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (tcp, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                        _ = &mut stop_rx => return,
                    };
                    let (acceptor, script, reqs) = (acceptor.clone(), script.clone(), reqs.clone());
                    tokio::spawn(async move {
                        let tls = match acceptor.accept(tcp).await {
                            Ok(t) => t,
                            Err(e) => {
                                eprintln!("llm test server: TLS handshake failed: {e}");
                                return;
                            }
                        };
                        let svc = hyper::service::service_fn(move |req| {
                            handle(req, script.clone(), reqs.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        });
        Server {
            addr,
            ca_pem: ca.ca_pem,
            requests,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The sum of the usage of every answer.
    pub fn total_usage(&self) -> Usage {
        let mut t = Usage::default();
        for u in self.requests().iter().filter_map(|r| r.usage) {
            t.input += u.input;
            t.output += u.output;
            t.cache_read += u.cache_read;
            t.cache_write += u.cache_write;
        }
        t
    }

    /// One line per request (method, target, status, step, usage), for failure messages.
    pub fn summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} -> {} step {:?} usage {:?} model {:?}\n",
                    r.method, r.target, r.status, r.step, r.usage, r.model
                )
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn handle(
    req: hyper::Request<Incoming>,
    script: Arc<dyn Script>,
    reqs: Arc<Mutex<Vec<Recorded>>>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let is_ws = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_ws && script.websocket() {
        return Ok(websocket(req, script, reqs));
    }
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let body = decode_body(&parts.headers, body);
    let mut rec = Recorded {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect(),
        body,
        status: 0,
        usage: None,
        model: None,
        step: None,
    };
    let reply = script.reply(&rec);
    rec.status = reply.status;
    rec.usage = reply.usage;
    rec.model = reply.model.clone();
    rec.step = reply.step;
    reqs.lock().unwrap().push(rec);
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for c in reply.chunks {
            if tx.send(Bytes::from(c)).await.is_err() {
                return;
            }
        }
    });
    let resp = hyper::Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type)
        .header("request-id", "req_ax_scripted")
        .body(ChanBody(rx).boxed())
        .unwrap();
    Ok(resp)
}

/// Accepts a WebSocket upgrade and serves the script over it (see [`ws`]).
fn websocket(
    mut req: hyper::Request<Incoming>,
    script: Arc<dyn Script>,
    reqs: Arc<Mutex<Vec<Recorded>>>,
) -> hyper::Response<Body> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let target = req.uri().to_string();
    reqs.lock().unwrap().push(Recorded {
        method: "GET".into(),
        target: target.clone(),
        headers: headers.clone(),
        body: Vec::new(),
        status: 101,
        usage: None,
        model: None,
        step: None,
    });
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut io = TokioIo::new(up);
        while let Some(msg) = ws::read_message(&mut io).await {
            let mut body: serde_json::Value =
                serde_json::from_slice(&msg).unwrap_or(serde_json::Value::Null);
            if let Some(o) = body.as_object_mut() {
                o.insert("stream".into(), true.into());
            }
            let mut rec = Recorded {
                method: "WS".into(),
                target: target.clone(),
                headers: headers.clone(),
                body: serde_json::to_vec(&body).unwrap(),
                status: 0,
                usage: None,
                model: None,
                step: None,
            };
            let reply = script.reply(&rec);
            rec.status = reply.status;
            rec.usage = reply.usage;
            rec.model = reply.model.clone();
            rec.step = reply.step;
            reqs.lock().unwrap().push(rec);
            for c in &reply.chunks {
                let data = ws::sse_data(c).unwrap_or(c);
                if ws::write_frame(&mut io, 0x1, data).await.is_err() {
                    return;
                }
            }
        }
    });
    hyper::Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", ws::accept_key(&key))
        .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
        .unwrap()
}

/// Request bodies may be compressed (Codex sends zstd or gzip when it can); only gzip is
/// decoded here, anything else is kept as is (and then does not parse as JSON).
fn decode_body(h: &http::HeaderMap, body: Vec<u8>) -> Vec<u8> {
    match h.get("content-encoding").and_then(|v| v.to_str().ok()) {
        Some("gzip") => {
            use std::io::Read;
            let mut out = Vec::new();
            match flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out) {
                Ok(_) => out,
                Err(_) => body,
            }
        }
        _ => body,
    }
}

/// A response body fed chunk by chunk from a channel.
struct ChanBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// One SSE event (`event:` line, one `data:` line, blank line), WHATWG HTML §9.2.
pub fn sse_event(event: &str, data: &serde_json::Value) -> Vec<u8> {
    format!(
        "event: {event}\ndata: {}\n\n",
        serde_json::to_string(data).unwrap()
    )
    .into_bytes()
}

/// Splits `s` into `n` roughly equal pieces on char boundaries (for streamed deltas).
pub fn split_text(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let size = chars.len().div_ceil(n.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}
