//! An intercepted HTTPS connection end to end through `GuestPort`: a rustls client in the
//! smoltcp guest resolves api.anthropic.com through the stack's DNS, connects (the stack holds
//! the SYN, the policy intercepts the LLM host, the route sends it to a loopback HTTPS server
//! with its own test CA), and sends a placeholder key; the upstream sees the real key, the
//! guest only ever sees the placeholder.

mod stack_support;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use stack_support::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const API: &str = "api.anthropic.com";

/// A loopback HTTPS server for `API` (HTTP/1.1): answers every request with the x-api-key it
/// received, and reports it on the channel.
async fn upstream() -> (u16, String, tokio::sync::mpsc::Receiver<String>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stack test upstream CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![API.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
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
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if tls.read(&mut b).await.unwrap() == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-api-key: "))
                    .unwrap_or("")
                    .to_string();
                tx.send(key.clone()).await.unwrap();
                let body = format!("key={key};end");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                tls.write_all(resp.as_bytes()).await.unwrap();
                tls.shutdown().await.unwrap();
            });
        }
    });
    (port, ca_cert.pem(), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_https_through_the_stack_swaps_the_placeholder() {
    let (port, ca_pem, mut seen) = upstream().await;
    let value = format!("sk-ant-api03-{}", "R3alK3y".repeat(12));
    let ph = ax_netstack::secrets::placeholder_for("ANTHROPIC_API_KEY", &value);
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _ns, gp) = start_ctx(&format!(
        r#"
[[route]]
host = "{API}"
address = "127.0.0.1:{port}"
ca_pem = '''
{ca_pem}'''
[[secret]]
name = "ANTHROPIC_API_KEY"
value = "{value}"
placeholder = "{ph}"
hosts = ["{API}"]
[meter]
ledger = {ledger:?}
"#,
        ledger = dir.path().join("ledger.sqlite").to_str().unwrap()
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve(API).await;
    let net = GuestNet::spawn(g);
    let conn = net
        .connect(ip, 443, 43000)
        .await
        .expect("connection accepted");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ctx.ca.cert_der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(API).unwrap(), conn),
    )
    .await
    .unwrap()
    .expect("guest TLS handshake with the agent CA, through the stack");
    let req = format!("GET /v1/models HTTP/1.1\r\nhost: {API}\r\nx-api-key: {ph}\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&resp).contains(";end") {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the response body");
            resp.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "no complete response: {:?}",
        String::from_utf8_lossy(&resp)
    );
    let resp = String::from_utf8_lossy(&resp).into_owned();

    assert_eq!(
        seen.recv().await.unwrap(),
        value,
        "the upstream got the real key"
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains(&format!("key={ph};end")),
        "echoed key scrubbed back: {resp}"
    );
    assert!(!resp.contains(&value), "the guest saw the real key");
    drop(tls);

    let rows = connections(&dir, 1).await;
    assert_eq!(rows[0].decision, "intercept");
    assert_eq!(rows[0].host.as_deref(), Some(API));
    assert!(
        rows[0].bytes_up > 0 && rows[0].bytes_down > 0,
        "{:?}",
        rows[0]
    );
}
