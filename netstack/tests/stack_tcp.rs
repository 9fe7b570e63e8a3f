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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_propagate_both_ways() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (_ns, gp) = start(&format!(
        "[[route]]\nhost = \"rst.test\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve("rst.test").await;

    // Guest RST → the upstream sees a reset, not a clean EOF.
    let h = g.connect(ip, 80, 40100);
    let (acc, est) = tokio::join!(l.accept(), established(&mut g, h));
    let (mut up, _) = acc.unwrap();
    assert!(est);
    g.tcp(h).send_slice(b"x").unwrap();
    let rd = tokio::spawn(async move {
        let mut b = [0u8; 1];
        up.read_exact(&mut b).await.unwrap();
        up
    });
    assert!(
        g.until(10, |_| rd.is_finished()).await,
        "the byte reached the upstream"
    );
    let mut up = rd.await.unwrap();
    let mut b = [0u8; 1];
    g.tcp(h).abort();
    g.pump();
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), up.read(&mut b))
        .await
        .unwrap();
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);

    // Upstream RST → the guest's connection is reset (Closed without passing CLOSE-WAIT).
    let h = g.connect(ip, 80, 40101);
    let (acc, est) = tokio::join!(l.accept(), established(&mut g, h));
    let (up, _) = acc.unwrap();
    assert!(est);
    up.set_zero_linger().unwrap();
    drop(up);
    let mut saw_close_wait = false;
    assert!(
        g.until(10, |g| {
            saw_close_wait |= g.tcp(h).state() == State::CloseWait;
            g.tcp(h).state() == State::Closed
        })
        .await
    );
    assert!(!saw_close_wait, "a reset, not a FIN");
}

/// A CONNECT proxy on loopback that holds each tunnel until told, then echoes.
async fn holding_proxy(
    status: &'static str,
) -> (
    u16,
    tokio::sync::mpsc::Receiver<String>,
    tokio::sync::mpsc::Sender<()>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(4);
    let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        req_tx.send(String::from_utf8(head).unwrap()).await.unwrap();
        go_rx.recv().await;
        s.write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    (port, req_rx, go_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_answered_only_after_the_upstream_connect_via_connect_proxy() {
    let (pport, mut reqs, go) = holding_proxy("200 Connection established").await;
    let (_ns, gp) = start(&format!(
        "[network]\nupstream_proxy = \"http://127.0.0.1:{pport}\"\n"
    ));
    let mut g = Guest::new(gp);
    // With a proxy, names the host cannot resolve still get an address (the proxy resolves).
    let ip = g.resolve("held.example").await;
    let h = g.connect(ip, 443, 40200);
    let mut req = None;
    assert!(
        g.until(10, |_| {
            req = reqs.try_recv().ok();
            req.is_some()
        })
        .await,
        "CONNECT reached the proxy"
    );
    let req = req.unwrap();
    assert!(
        req.starts_with("CONNECT held.example:443 HTTP/1.1\r\n"),
        "{req:?}"
    );
    assert!(req.contains("\r\nHost: held.example:443\r\n"), "{req:?}");
    // The proxy has not answered: the guest's SYN is still unanswered.
    g.until(1, |_| false).await;
    assert_eq!(
        g.tcp(h).state(),
        State::SynSent,
        "SYN-ACK before the upstream connect finished"
    );
    go.send(()).await.unwrap();
    assert!(
        established(&mut g, h).await,
        "SYN-ACK once the tunnel is up"
    );
    g.tcp(h).send_slice(b"through the tunnel").unwrap();
    let mut got = Vec::new();
    assert!(
        g.until(10, |g| {
            let s = g.tcp(h);
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            got.len() >= 18
        })
        .await
    );
    assert_eq!(got, b"through the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refusing_connect_is_rst() {
    let (pport, _reqs, go) = holding_proxy("403 Forbidden").await;
    go.send(()).await.unwrap();
    let (_ns, gp) = start(&format!(
        "[network]\nupstream_proxy = \"http://127.0.0.1:{pport}\"\n"
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve("forbidden.example").await;
    let h = g.connect(ip, 443, 40300);
    assert!(
        !established(&mut g, h).await,
        "RST when the proxy refuses CONNECT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_of_a_connection_in_time_wait_can_be_reused_at_once() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(b"hi").await.unwrap();
                s.shutdown().await.unwrap(); // the upstream closes first: the stack ends in TIME-WAIT
                let _ = s.read_to_end(&mut Vec::new()).await;
            });
        }
    });
    let (_ns, gp) = start(&format!(
        "[[route]]\nhost = \"tw.test\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve("tw.test").await;
    for round in 0..2 {
        let h = g.connect(ip, 80, 40400); // the same ports both times
        assert!(established(&mut g, h).await, "round {round}: established");
        assert!(
            g.until(10, |g| {
                let s = g.tcp(h);
                while s.can_recv() {
                    s.recv(|b| (b.len(), ())).unwrap();
                }
                s.state() == State::CloseWait
            })
            .await,
            "round {round}: upstream FIN"
        );
        g.tcp(h).close();
        assert!(g.until(10, |g| g.tcp(h).state() == State::Closed).await);
        g.sockets.remove(h);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_parallel_connections_to_one_destination_keep_their_own_bytes() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let (_ns, gp) = start(&format!(
        "[[route]]\nhost = \"many.test\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve("many.test").await;
    // All SYNs leave in one burst: the stack holds 24 connects to the same destination at once.
    let n = 24u16;
    let hs: Vec<_> = (0..n).map(|i| g.connect(ip, 443, 42000 + i)).collect();
    let payload = |i: usize| format!("connection {i} ").repeat(2000).into_bytes();
    let mut sent = vec![0usize; n as usize];
    let mut got = vec![Vec::new(); n as usize];
    let ok = g
        .until(60, |g| {
            let mut done = true;
            for (i, h) in hs.iter().enumerate() {
                let p = payload(i);
                let s = g.tcp(*h);
                if s.can_send() && sent[i] < p.len() {
                    sent[i] += s.send_slice(&p[sent[i]..]).unwrap();
                    if sent[i] == p.len() {
                        s.close();
                    }
                }
                while s.can_recv() {
                    s.recv(|b| {
                        got[i].extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
                }
                done &= got[i].len() == p.len();
            }
            done
        })
        .await;
    assert!(
        ok,
        "not all echoes complete: {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for (i, b) in got.iter().enumerate() {
        assert!(
            *b == payload(i),
            "connection {i} got another connection's bytes"
        );
    }
}

const STALL_TOTAL: usize = 12 << 20;
/// Far above what the stack (256 KiB socket buffer + 64 KiB copy buffer) and the kernel's
/// loopback socket buffers (a few MiB) can hold, far below `STALL_TOTAL`.
const STALL_LIMIT: usize = 9 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_stops_reading_stops_the_upstream() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w2 = written.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        // A bounded kernel send buffer, so that what may pile up is the stack's doing alone.
        let size: libc::c_int = 256 * 1024;
        // SAFETY: setsockopt on a valid socket with a c_int option value.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let chunk = vec![7u8; 16 * 1024];
        while w2.load(std::sync::atomic::Ordering::SeqCst) < STALL_TOTAL {
            s.write_all(&chunk).await.unwrap();
            w2.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
        }
        s.shutdown().await.unwrap();
    });
    let (_ns, gp) = start(&format!(
        "[[route]]\nhost = \"bp.test\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve("bp.test").await;
    let h = g.connect(ip, 80, 40500);
    assert!(established(&mut g, h).await);
    // The guest reads nothing for a while: its window closes and the upstream must stall.
    g.until(2, |_| false).await;
    let stalled_at = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        stalled_at < STALL_LIMIT,
        "upstream wrote {stalled_at} bytes into a closed window"
    );
    // Reading resumes: everything arrives.
    let mut got = 0usize;
    assert!(
        g.until(60, |g| {
            let s = g.tcp(h);
            while s.can_recv() {
                got += s.recv(|b| (b.len(), b.len())).unwrap();
            }
            s.state() == State::CloseWait
        })
        .await,
        "transfer after the stall, got {got}"
    );
    assert_eq!(got, STALL_TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_stops_the_guest() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        go_rx.await.unwrap(); // read nothing until told
        let mut n = 0usize;
        let mut buf = vec![0u8; 65536];
        while n < STALL_TOTAL {
            let k = s.read(&mut buf).await.unwrap();
            assert!(k > 0);
            n += k;
        }
        n
    });
    let (_ns, gp) = start(&format!(
        "[[route]]\nhost = \"bp.test\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve("bp.test").await;
    let h = g.connect(ip, 80, 40501);
    assert!(established(&mut g, h).await);
    let chunk = vec![9u8; 64 * 1024];
    let sent = std::cell::Cell::new(0usize);
    let send = |g: &mut Guest| {
        let s = g.tcp(h);
        while sent.get() < STALL_TOTAL && s.can_send() {
            let n = chunk.len().min(STALL_TOTAL - sent.get());
            sent.set(sent.get() + s.send_slice(&chunk[..n]).unwrap());
        }
        sent.get() == STALL_TOTAL
    };
    g.until(2, send).await;
    assert!(
        sent.get() < STALL_LIMIT,
        "the guest sent {} bytes to an upstream that reads nothing",
        sent.get()
    );
    go_tx.send(()).unwrap();
    assert!(
        g.until(60, send).await,
        "sending after the stall, sent {}",
        sent.get()
    );
    g.tcp(h).close();
    let (n, _) = tokio::join!(server, g.until(60, |g| g.tcp(h).send_queue() == 0));
    assert_eq!(n.unwrap(), STALL_TOTAL);
}
