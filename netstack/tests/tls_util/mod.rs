//! Test harness for TLS interception: a loopback HTTPS upstream with its own test CA that
//! records what it received, and a guest client (real rustls + hyper) talking to
//! `tls::intercept` over an in-memory duplex stream.
#![allow(dead_code)]

use ax_netstack::config::Config;
use ax_netstack::context::Context;
use ax_netstack::{tls, Flow};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Poll};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body fed from a channel (lets the upstream send chunks one by one).
pub struct ChanBody(mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// One request as the upstream received it (recorded once its body was read completely).
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: Version,
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// The loopback upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// `/sse` and streaming `/v1/messages` wait for one permit before their second half.
    pub release: Arc<Semaphore>,
    /// TLS connections accepted so far.
    pub connections: Arc<AtomicU64>,
}

/// A test CA plus a server config for `names`, offering `alpn`.
fn server_config(names: &[&str], alpn: &[&str]) -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "loopback upstream test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    (ca_cert.pem(), cfg)
}

/// Starts an upstream serving `names` with a fresh test CA, offering `alpn`.
pub async fn upstream(names: &[&str], alpn: &[&str]) -> Upstream {
    let (ca_pem, cfg) = server_config(names, alpn);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(Semaphore::new(0));
    let (s2, r2) = (seen.clone(), release.clone());
    let connections = Arc::new(AtomicU64::new(0));
    let c2 = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tcp.set_nodelay(true).unwrap();
            let (acceptor, seen, release) = (acceptor.clone(), s2.clone(), r2.clone());
            let conns = c2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let first = conns.fetch_add(1, Ordering::Relaxed) == 0;
                // `/goaway` on the first connection ends it gracefully (GOAWAY) while answering.
                let goaway = Arc::new(tokio::sync::Notify::new());
                let g2 = goaway.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, release) = (seen.clone(), release.clone());
                    if first && req.uri().path() == "/goaway" {
                        g2.notify_one();
                    }
                    async move { Ok::<_, std::convert::Infallible>(serve(req, seen, release).await) }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = goaway.notified() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    Upstream {
        addr,
        ca_pem,
        seen,
        release,
        connections,
    }
}

async fn serve(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Semaphore>,
) -> Response<TestBody> {
    // `/ws`: a 101 to protocol `ax-echo`, then every byte is echoed back.
    let upgrade = (req.uri().path() == "/ws").then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return Response::builder()
            .status(400)
            .body(full("aborted body"))
            .unwrap();
    };
    seen.lock().unwrap().push(Seen {
        version: parts.version,
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.to_vec(),
    });
    let h = |n: &str| {
        parts
            .headers
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    match parts.uri.path() {
        "/ws" => {
            let on = upgrade.unwrap();
            tokio::spawn(async move {
                let Ok(io) = on.await else { return };
                let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "ax-echo")
                .body(full(""))
                .unwrap()
        }
        "/echo" => {
            let (auth, key) = (h("authorization"), h("x-api-key"));
            let text = serde_json::json!({
                "authorization": auth,
                "x_api_key": key,
                "x_api_key_b64": STANDARD.encode(&key),
                "x_api_key_b64url": URL_SAFE_NO_PAD.encode(&key),
                "body": String::from_utf8_lossy(&body),
            })
            .to_string();
            let mut resp = Response::builder()
                .header(
                    "x-echo-auth",
                    parts
                        .headers
                        .get("authorization")
                        .cloned()
                        .unwrap_or(http::HeaderValue::from_static("-")),
                )
                .header(
                    "x-echo-key",
                    parts
                        .headers
                        .get("x-api-key")
                        .cloned()
                        .unwrap_or(http::HeaderValue::from_static("-")),
                )
                .header("content-type", "application/json");
            let mut data = text.into_bytes();
            if !h("x-gzip").is_empty() {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&data).unwrap();
                data = gz.finish().unwrap();
                resp = resp.header("content-encoding", "gzip");
            }
            let split: usize = h("x-split").parse().unwrap_or(0);
            if split == 0 {
                return resp.body(full(data)).unwrap();
            }
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for c in data.chunks(split) {
                    if tx.send(Bytes::copy_from_slice(c)).await.is_err() {
                        return;
                    }
                    // Give each chunk its own TLS record and read on the proxy side.
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            });
            resp.body(ChanBody(rx).boxed()).unwrap()
        }
        "/v1/messages" if body.windows(13).any(|w| w == b"\"stream\":true") => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let first = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"usage\":{\"input_tokens\":120,\"output_tokens\":1}}}\n\n";
                let _ = tx.send(Bytes::from(first)).await;
                let Ok(p) = release.acquire().await else {
                    return;
                };
                p.forget();
                for ev in [
                    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
                    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":30}}\n\n",
                    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                ] {
                    let _ = tx.send(Bytes::from(ev)).await;
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(ChanBody(rx).boxed())
                .unwrap()
        }
        "/v1/messages" => {
            let text = r#"{"id":"msg_2","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":100,"output_tokens":20}}"#;
            Response::builder()
                .header("content-type", "application/json")
                .body(full(text))
                .unwrap()
        }
        "/big" => {
            // `/big?mib=N`: N MiB of text in 64 KiB chunks.
            let mib: usize = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("mib="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let chunk = Bytes::from(
                (0..64 * 1024)
                    .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[i % 38])
                    .collect::<Vec<u8>>(),
            );
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                for _ in 0..mib * 16 {
                    if tx.send(chunk.clone()).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder().body(ChanBody(rx).boxed()).unwrap()
        }
        "/trailers" => {
            // The x-api-key echoed in a trailer (HTTP/2 only).
            let mut t = HeaderMap::new();
            t.insert("x-echo-key", parts.headers["x-api-key"].clone());
            let body = Full::new(Bytes::from("body"))
                .map_err(|n| match n {})
                .with_trailers(async move { Some(Ok(t)) });
            Response::builder().body(body.boxed()).unwrap()
        }
        "/close" => Response::builder()
            .header("connection", "close")
            .body(full("closing"))
            .unwrap(),
        _ => Response::builder()
            .status(StatusCode::OK)
            .body(full("ok"))
            .unwrap(),
    }
}

/// A secret for the test config.
pub struct TestSecret {
    pub name: &'static str,
    pub value: String,
    pub placeholder: String,
    pub hosts: Vec<String>,
    pub body: bool,
}

impl TestSecret {
    pub fn new(name: &'static str, value: &str, hosts: &[&str], body: bool) -> TestSecret {
        TestSecret {
            name,
            value: value.to_string(),
            placeholder: ax_netstack::secrets::placeholder_for(name, value),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            body,
        }
    }
}

/// The agent's context: routes for `hosts` to `up` (trusting its CA when `trust`), secrets,
/// a ledger in `dir`, extra TOML appended.
pub fn context(
    dir: &std::path::Path,
    up: &Upstream,
    hosts: &[&str],
    trust: bool,
    secrets: &[TestSecret],
    extra: &str,
) -> Arc<Context> {
    let mut t = String::from("agent = \"tls-test\"\n");
    for h in hosts {
        t += &format!("[[route]]\nhost = \"{h}\"\naddress = \"{}\"\n", up.addr);
        if trust {
            t += &format!("ca_pem = '''\n{}'''\n", up.ca_pem);
        }
    }
    for s in secrets {
        t += &format!(
            "[[secret]]\nname = \"{}\"\nvalue = {}\nplaceholder = \"{}\"\nhosts = {:?}\nbody = {}\n",
            s.name,
            toml_string(&s.value),
            s.placeholder,
            s.hosts,
            s.body
        );
    }
    t += &format!(
        "[meter]\nledger = \"{}\"\n",
        dir.join("ledger.sqlite").display()
    );
    t += extra;
    Context::new(Config::parse(&t, "test").unwrap()).unwrap()
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The guest's HTTP connection through `tls::intercept`.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub struct Guest {
    pub sender: Sender,
    pub sni: String,
    pub alpn: Option<Vec<u8>>,
    pub leaf: CertificateDer<'static>,
    pub intercept: tokio::task::JoinHandle<anyhow::Result<()>>,
}

static FLOW: AtomicU64 = AtomicU64::new(1);

/// Connects a guest (trusting only the agent CA, offering `alpn`) to `up` through
/// `tls::intercept`, with SNI `sni`.
pub async fn guest(ctx: &Arc<Context>, up: &Upstream, sni: &str, alpn: &[&str]) -> Guest {
    let (guest_end, stack_end) = tokio::io::duplex(64 * 1024);
    let upstream = TcpStream::connect(up.addr).await.unwrap();
    // As the stack's upstream connector does.
    upstream.set_nodelay(true).unwrap();
    let flow = Flow {
        id: FLOW.fetch_add(1, Ordering::Relaxed),
        guest: "100.96.0.2:40000".parse().unwrap(),
        dst: "198.18.0.7:443".parse().unwrap(),
        host: Some(sni.to_string()),
    };
    let intercept = tokio::spawn(tls::intercept(
        ctx.clone(),
        flow,
        Box::new(stack_end),
        Box::new(upstream),
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ctx.ca.cert_der().clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), guest_end)
        .await
        .expect("guest TLS handshake with the agent CA");
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    let io = TokioIo::new(tls);
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Sender::H2(s)
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        Sender::H1(s)
    };
    Guest {
        sender,
        sni: sni.to_string(),
        alpn,
        leaf,
        intercept,
    }
}

impl Guest {
    /// Sends `method path` with `headers` and `body`; returns the response head and body.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> Response<Incoming> {
        let h2 = matches!(self.sender, Sender::H2(_));
        let uri = if h2 {
            format!("https://{}{path}", self.sni)
        } else {
            path.to_string()
        };
        let mut b = Request::builder().method(method).uri(uri);
        if !h2 {
            b = b.header("host", &self.sni);
        }
        for (n, v) in headers {
            b = b.header(*n, v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Sender::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        }
    }

    /// `send`, then the whole body as text.
    pub async fn text(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let r = self.send(method, path, headers, body).await;
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }
}

/// Every way the value of `s` could show up in text the guest receives.
pub fn leaked_forms(value: &str) -> Vec<String> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut v = vec![value.to_string()];
    let json = serde_json::to_string(value).unwrap();
    v.push(json[1..json.len() - 1].to_string());
    for enc in [STANDARD_NO_PAD.encode(value), URL_SAFE_NO_PAD.encode(value)] {
        v.push(enc[..enc.len() - 2].to_string());
    }
    v
}
