//! TCP through the stack: a smoltcp guest connects through `GuestPort` to real host servers
//! on loopback, reached by `[[route]]` overrides (the only way to loopback).

mod stack_support;

use smoltcp::socket::tcp::State;
use stack_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A host server that echoes everything and closes after the client's FIN.
async fn echo_server() -> (u16, tokio::task::JoinHandle<u64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
            s.write_all(&buf[..n]).await.unwrap();
        }
        s.shutdown().await.unwrap();
        total
    });
    (port, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_data_and_teardown_through_a_route() {
    let (port, server) = echo_server().await;
    let (_ns, gp) = start(&format!(
        "[[route]]\nhost = \"echo.test\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve("echo.test").await;
    assert!(
        ip.octets()[0] == 198 && (ip.octets()[1] & 0xfe) == 18,
        "synthetic address {ip}"
    );
    let h = g.connect(ip, 80, 40000);
    assert!(
        g.until(10, |g| g.tcp(h).state() == State::Established)
            .await,
        "handshake"
    );
    // 3 MiB each way: more than both windows, so backpressure and window updates are exercised.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut sent = 0;
    let mut got = Vec::with_capacity(data.len());
    let ok = g
        .until(60, |g| {
            let s = g.tcp(h);
            if sent < data.len() && s.can_send() {
                sent += s.send_slice(&data[sent..]).unwrap();
                if sent == data.len() {
                    s.close(); // FIN after the data
                }
            }
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            !s.may_recv() && sent == data.len()
        })
        .await;
    assert!(ok, "echo incomplete: sent {sent}, got {}", got.len());
    assert!(got == data, "echoed bytes differ");
    // The server saw our FIN (its read returned 0) and closed; we saw its FIN.
    assert_eq!(server.await.unwrap(), data.len() as u64);
    assert!(
        g.until(10, |g| matches!(
            g.tcp(h).state(),
            State::TimeWait | State::Closed
        ))
        .await,
        "clean close, state {}",
        g.tcp(h).state()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_reaches_the_guest_as_fin() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"hello from upstream").await.unwrap();
        s.shutdown().await.unwrap(); // FIN first, from the upstream side
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        rest
    });
    let (_ns, gp) = start(&format!(
        "[[route]]\nhost = \"srv.test\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve("srv.test").await;
    let h = g.connect(ip, 443, 40001);
    let mut got = Vec::new();
    let ok = g
        .until(10, |g| {
            let s = g.tcp(h);
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            s.state() != State::SynSent && !s.may_recv()
        })
        .await;
    assert!(ok, "no FIN from upstream reached the guest");
    assert_eq!(got, b"hello from upstream");
    assert_eq!(
        g.tcp(h).state(),
        State::CloseWait,
        "half-closed: the guest may still send"
    );
    g.tcp(h).send_slice(b"bye").unwrap();
    g.tcp(h).close();
    assert!(
        g.until(10, |g| g.tcp(h).state() == State::Closed
            || g.tcp(h).state() == State::TimeWait)
            .await
    );
    assert_eq!(server.await.unwrap(), b"bye");
}
