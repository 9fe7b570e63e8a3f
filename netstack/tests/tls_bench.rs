//! Latency bench: time to the first response byte through `tls::intercept`
//! versus a direct TLS connection to the same loopback upstream, in one run, interleaved.
//! Ignored by default; run it in release mode:
//!
//! ```sh
//! cargo test --release -p ax-netstack --test tls_bench -- --ignored --nocapture
//! ```
//!
//! "new connection": TCP + TLS handshake(s) + one GET until its first body byte (through the
//! proxy: the guest's handshake with the agent CA, the upstream handshake, the request
//! forwarded with a secret configured so substitution and scrubbing are active).
//! "keep-alive": one more GET on an established connection. The guest side of the proxy is an
//! in-memory duplex: this isolates TLS interception from the TCP stack (bench in
//! `stack_bench.rs`).

mod tls_util;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tls_util::*;

const API: &str = "api.anthropic.com";
const N: usize = 400;

enum Direct {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn direct_connect(up: &Upstream, cfg: Arc<rustls::ClientConfig>) -> Direct {
    let tcp = tokio::net::TcpStream::connect(up.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(API).unwrap(), tcp)
        .await
        .unwrap();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(c);
        Direct::H2(s)
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(c);
        Direct::H1(s)
    }
}

async fn direct_get(d: &mut Direct) {
    let resp = match d {
        Direct::H1(s) => {
            let req = http::Request::get("/plain")
                .header("host", API)
                .body(Full::new(Bytes::new()))
                .unwrap();
            s.ready().await.unwrap();
            s.send_request(req).await.unwrap()
        }
        Direct::H2(s) => {
            let req = http::Request::get(format!("https://{API}/plain"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            s.ready().await.unwrap();
            s.send_request(req).await.unwrap()
        }
    };
    first_byte(resp).await;
}

/// Reads a whole response body; returns its length.
async fn drain(resp: http::Response<hyper::body::Incoming>) -> usize {
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(f) = body.frame().await {
        n += f.unwrap().data_ref().map_or(0, |d| d.len());
    }
    n
}

async fn first_byte(resp: http::Response<hyper::body::Incoming>) {
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let f = body.frame().await.unwrap().unwrap();
    assert!(!f.data_ref().unwrap().is_empty());
    while body.frame().await.is_some() {}
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bench: run with --release -- --ignored --nocapture"]
async fn first_byte_latency_intercepted_vs_direct() {
    let dir = tempfile::tempdir().unwrap();
    for alpn in [&["h2", "http/1.1"][..], &["http/1.1"][..]] {
        let up = upstream(&[API], &["h2", "http/1.1"]).await;
        let key = TestSecret::new(
            "ANTHROPIC_API_KEY",
            &format!("sk-ant-api03-{}", "k".repeat(95)),
            &[API],
            false,
        );
        let ctx = context(dir.path(), &up, &[API], true, &[key], "");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut up.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        // Like the guest client in tls_util (a fresh config per connection): full handshakes.
        cfg.resumption = rustls::client::Resumption::disabled();
        let cfg = Arc::new(cfg);

        let (mut d_new, mut p_new, mut d_ka, mut p_ka) = (vec![], vec![], vec![], vec![]);
        for i in 0..N + 20 {
            let t = Instant::now();
            let mut d = direct_connect(&up, cfg.clone()).await;
            direct_get(&mut d).await;
            let a = t.elapsed();
            let t = Instant::now();
            direct_get(&mut d).await;
            let b = t.elapsed();

            let t = Instant::now();
            let mut g = guest(&ctx, &up, API, alpn).await;
            first_byte(g.send("GET", "/plain", &[], "").await).await;
            let c = t.elapsed();
            let t = Instant::now();
            first_byte(g.send("GET", "/plain", &[], "").await).await;
            let e = t.elapsed();
            if i >= 20 {
                // The first 20 rounds warm caches (leaf minted, sessions, allocator).
                d_new.push(a);
                d_ka.push(b);
                p_new.push(c);
                p_ka.push(e);
            }
        }
        let name = if alpn.len() == 2 { "h2" } else { "http/1.1" };
        // Bulk: a 64 MiB download on an established connection, best of 3 each.
        let (mut d_bulk, mut p_bulk, mut n_bulk) = (0f64, 0f64, 0f64);
        let mut d = direct_connect(&up, cfg.clone()).await;
        let mut g = guest(&ctx, &up, API, alpn).await;
        // The same interception with no secret configured and no LLM path: bodies pass as is.
        let bare = context(dir.path(), &up, &[API], true, &[], "");
        let mut gb = guest(&bare, &up, API, alpn).await;
        for _ in 0..3 {
            let t = Instant::now();
            let resp = match &mut d {
                Direct::H1(s) => {
                    s.ready().await.unwrap();
                    s.send_request(
                        http::Request::get("/big?mib=64")
                            .header("host", API)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                    .await
                    .unwrap()
                }
                Direct::H2(s) => {
                    s.ready().await.unwrap();
                    s.send_request(
                        http::Request::get(format!("https://{API}/big?mib=64"))
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                    .await
                    .unwrap()
                }
            };
            assert_eq!(drain(resp).await, 64 << 20);
            d_bulk = d_bulk.max(64.0 * 1.048576 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            assert_eq!(
                drain(g.send("GET", "/big?mib=64", &[], "").await).await,
                64 << 20
            );
            p_bulk = p_bulk.max(64.0 * 1.048576 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            assert_eq!(
                drain(gb.send("GET", "/big?mib=64", &[], "").await).await,
                64 << 20
            );
            n_bulk = n_bulk.max(64.0 * 1.048576 / t.elapsed().as_secs_f64());
        }
        println!(
            "{name:8} 64 MiB download direct {d_bulk:5.0} MB/s | intercepted, scrubbing {p_bulk:5.0} MB/s ({:.2}x) | intercepted, nothing to inspect {n_bulk:5.0} MB/s ({:.2}x)",
            p_bulk / d_bulk,
            n_bulk / d_bulk
        );
        for (what, d, p) in [
            ("new connection", &mut d_new, &mut p_new),
            ("keep-alive", &mut d_ka, &mut p_ka),
        ] {
            let (d50, d99, p50, p99) = (pct(d, 0.5), pct(d, 0.99), pct(p, 0.5), pct(p, 0.99));
            println!(
                "{name:8} {what:15} direct p50 {d50:7.0} µs p99 {d99:7.0} µs | intercepted p50 {p50:7.0} µs p99 {p99:7.0} µs | added p50 {:+7.0} µs ({:.2}x)",
                p50 - d50,
                p50 / d50
            );
        }
    }
}
