//! Throughput bench: TCP through the stack versus a direct loopback
//! connection, in one run. Ignored by default; run it in release mode:
//!
//! ```sh
//! cargo test --release -p ax-netstack --test stack_bench -- --ignored --nocapture
//! ```
//!
//! The guest is a smoltcp interface in its own thread, pumping frames through `GuestPort`
//! as fast as they come (waiting on the RX eventfd when idle), so the number includes a
//! userspace guest TCP stack; a Linux guest behind vhost-user adds its own costs instead.

mod stack_support;

use smoltcp::socket::tcp::State;
use stack_support::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOTAL: usize = 256 * 1024 * 1024;

/// CPU time (user + system) of the whole process so far, seconds.
fn cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// A transfer's result: MB/s and CPU seconds per GB moved (all threads of the process).
#[derive(Clone, Copy)]
struct Rate {
    mbps: f64,
    cpu_per_gb: f64,
}

impl Rate {
    fn since(start: Instant, cpu0: f64) -> Rate {
        let secs = start.elapsed().as_secs_f64();
        Rate {
            mbps: TOTAL as f64 / secs / 1e6,
            cpu_per_gb: (cpu() - cpu0) / (TOTAL as f64 / 1e9),
        }
    }
}

/// Upload (guest → server) then download (server → guest) of TOTAL bytes through the stack.
fn through_stack(port: u16, rt: &tokio::runtime::Runtime) -> (Rate, Rate) {
    let (_ns, gp) = start(&format!(
        "[[route]]\nhost = \"bench.test\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let mut g = Guest::new(gp.clone());
    let ip = rt.block_on(g.resolve("bench.test"));
    let fd = gp.rx_eventfd();
    let wait = |ms: i32| {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) };
    };
    let run = |g: &mut Guest, upload: bool| -> Rate {
        let h = g.connect(ip, 80, if upload { 50000 } else { 50001 });
        while g.tcp(h).state() != State::Established {
            g.pump();
            wait(1);
        }
        // First byte tells the server the direction.
        g.tcp(h)
            .send_slice(if upload { b"U" } else { b"D" })
            .unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let (start, cpu0) = (Instant::now(), cpu());
        let mut moved = 0usize;
        while moved < TOTAL {
            let s = g.tcp(h);
            let mut progressed = false;
            if upload {
                while moved < TOTAL && s.can_send() {
                    let n = s
                        .send_slice(&chunk[..chunk.len().min(TOTAL - moved)])
                        .unwrap();
                    moved += n;
                    progressed |= n > 0;
                }
            } else {
                while s.can_recv() {
                    moved += s.recv(|b| (b.len(), b.len())).unwrap();
                    progressed = true;
                }
            }
            g.pump();
            if !progressed {
                wait(1);
            }
        }
        if upload {
            // Done when the server confirms it received everything.
            let mut ack = [0u8; 1];
            loop {
                g.pump();
                if g.tcp(h).can_recv() {
                    g.tcp(h).recv_slice(&mut ack).unwrap();
                    break;
                }
                wait(1);
            }
        }
        let rate = Rate::since(start, cpu0);
        g.tcp(h).close();
        for _ in 0..100 {
            g.pump();
            wait(1);
        }
        rate
    };
    let up = run(&mut g, true);
    let down = run(&mut g, false);
    (up, down)
}

async fn serve(l: TcpListener) {
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        tokio::spawn(async move {
            s.set_nodelay(true).unwrap();
            let mut dir = [0u8; 1];
            s.read_exact(&mut dir).await.unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            if dir[0] == b'U' {
                let mut got = 0;
                while got < TOTAL {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "upload ended early at {got}");
                    got += n;
                }
                s.write_all(b"k").await.unwrap();
            } else {
                let mut sent = 0;
                while sent < TOTAL {
                    let n = buf.len().min(TOTAL - sent);
                    s.write_all(&buf[..n]).await.unwrap();
                    sent += n;
                }
            }
            let _ = s.shutdown().await;
            let _ = s.read(&mut buf).await;
        });
    }
}

/// The anchor: the same transfers over a direct loopback TCP connection.
async fn direct(port: u16) -> (Rate, Rate) {
    let mut res = [Rate {
        mbps: 0.0,
        cpu_per_gb: 0.0,
    }; 2];
    for (i, dir) in [b'U', b'D'].into_iter().enumerate() {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&[dir]).await.unwrap();
        let mut buf = vec![0x5au8; 64 * 1024];
        let (start, cpu0) = (Instant::now(), cpu());
        let mut moved = 0;
        if dir == b'U' {
            while moved < TOTAL {
                let n = buf.len().min(TOTAL - moved);
                s.write_all(&buf[..n]).await.unwrap();
                moved += n;
            }
            s.read_exact(&mut [0u8; 1]).await.unwrap();
        } else {
            while moved < TOTAL {
                moved += s.read(&mut buf).await.unwrap();
            }
        }
        res[i] = Rate::since(start, cpu0);
    }
    (res[0], res[1])
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn tcp_throughput_through_the_stack_vs_direct() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let l = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = l.local_addr().unwrap().port();
    rt.spawn(serve(l));
    let (du, dd) = rt.block_on(direct(port));
    let (su, sd) = through_stack(port, &rt);
    let (du2, dd2) = rt.block_on(direct(port));
    let avg = |a: Rate, b: Rate| Rate {
        mbps: (a.mbps + b.mbps) / 2.0,
        cpu_per_gb: (a.cpu_per_gb + b.cpu_per_gb) / 2.0,
    };
    let (du, dd) = (avg(du, du2), avg(dd, dd2));
    println!("ax-netstack TCP throughput, {} MiB each way:", TOTAL >> 20);
    println!("                    upload MB/s  CPU s/GB   download MB/s  CPU s/GB");
    let row = |name: &str, u: Rate, d: Rate| {
        println!(
            "  {name:<17} {:>11.0} {:>9.2} {:>15.0} {:>9.2}",
            u.mbps, u.cpu_per_gb, d.mbps, d.cpu_per_gb
        )
    };
    row("direct loopback", du, dd);
    row("through the stack", su, sd);
    println!(
        "  ratio stack/direct: throughput upload {:.3} download {:.3}; CPU per GB upload {:.2}x download {:.2}x",
        su.mbps / du.mbps,
        sd.mbps / dd.mbps,
        su.cpu_per_gb / du.cpu_per_gb,
        sd.cpu_per_gb / dd.cpu_per_gb
    );
    std::thread::sleep(Duration::from_millis(10));
}
