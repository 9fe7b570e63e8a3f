//! The jailed ax-netstack binary (docs/jail.md, "The ax-netstack jail"): once QEMU's netdev
//! stream (here: this test) has connected, every thread carries the seccomp filters,
//! NoNewPrivs and no capability, the socket file is gone, and the jailed process still
//! answers ARP and DNS — the DNS answers for `localhost` (/etc/hosts) and for a `.invalid`
//! name (glibc's `dns` service) go through the host's getaddrinfo inside the jail.
//! `--no-jail` shows none of it; `--seccomp log` is accepted, `trap` is a usage error.

#[path = "stack_support/mod.rs"]
mod stack_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, UdpPacket};
use stack_support::{arp_request, dns_query, rcode, udp_frame, GW_IP};

fn am_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim_start_matches(':').trim())
        })
        .unwrap_or_else(|| panic!("{key} missing in status"))
}

struct Running {
    child: Child,
    conn: UnixStream,
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
}

/// Starts ax-netstack on a netdev stream socket with `extra` flags and connects to it.
fn start(extra: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("net.sock");
    let ledger = dir.path().join("ledger.sqlite");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ax-netstack"))
        .arg("--stream")
        .arg(&sock)
        .args(["--config", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cfg = format!(
        "agent = \"jail-test\"\n[meter]\nledger = {:?}\n",
        ledger.to_str().unwrap()
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cfg.as_bytes())
        .unwrap();
    let t0 = Instant::now();
    while !sock.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("ax-netstack exited early ({st}): {err}");
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let conn = UnixStream::connect(&sock).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    Running {
        child,
        conn,
        _dir: dir,
        sock,
    }
}

impl Running {
    fn send(&mut self, frame: &[u8]) {
        let mut m = (frame.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(frame);
        self.conn.write_all(&m).unwrap();
    }

    fn recv(&mut self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.conn.read_exact(&mut len).unwrap();
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        self.conn.read_exact(&mut f).unwrap();
        f
    }

    /// The next UDP payload from the gateway's port 53, skipping other frames.
    fn dns_reply(&mut self) -> Vec<u8> {
        for _ in 0..50 {
            let f = self.recv();
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            if eth.ethertype() != EthernetProtocol::Ipv4 {
                continue;
            }
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            if ip.next_header() != IpProtocol::Udp {
                continue;
            }
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            if udp.src_port() == 53 {
                return udp.payload().to_vec();
            }
        }
        panic!("no DNS reply");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the connection; returns the exit status and stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        drop(self.conn);
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (self.child.wait().unwrap(), err)
    }
}

/// `Name`, `Seccomp`, `Seccomp_filters`, `NoNewPrivs`, `CapEff`, `CapBnd` of every thread.
fn threads(pid: u32) -> Vec<[String; 6]> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(st) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        out.push(
            [
                "Name",
                "Seccomp",
                "Seccomp_filters",
                "NoNewPrivs",
                "CapEff",
                "CapBnd",
            ]
            .map(|k| field(&st, k).to_string()),
        );
    }
    out
}

/// ARP for the gateway and a DNS query for `localhost` (answered only if the host's
/// getaddrinfo resolves it: inside the jail for the jailed binary).
fn arp_and_dns(r: &mut Running) {
    r.send(&arp_request(GW_IP));
    let reply = r.recv();
    assert_eq!(&reply[12..14], &[0x08, 0x06], "an ARP frame");
    r.send(&udp_frame(GW_IP, 40000, 53, &dns_query(7, "localhost", 1)));
    let resp = r.dns_reply();
    assert_eq!(&resp[..2], &7u16.to_be_bytes(), "the reply to our query");
    assert_eq!(
        rcode(&resp),
        0,
        "localhost resolves through the host's resolver (NOERROR)"
    );
    // A name that misses /etc/hosts goes on to glibc's `dns` service (resolv.conf, a UDP
    // query): NXDOMAIN, or SERVFAIL where the host has no working resolver; never a kill
    // (`finish` checks the exit status).
    r.send(&udp_frame(
        GW_IP,
        40001,
        53,
        &dns_query(8, "ax-netstack-jail-test.invalid", 1),
    ));
    let resp = r.dns_reply();
    assert_eq!(&resp[..2], &8u16.to_be_bytes(), "the reply to our query");
    assert!(
        [2, 3].contains(&rcode(&resp)),
        "NXDOMAIN or SERVFAIL, got rcode {}",
        rcode(&resp)
    );
}

#[test]
fn jailed_netstack_threads_have_filters_nnp_no_caps_and_it_still_serves() {
    let mut r = start(&[]);
    // The jail follows the connection: the socket file disappears right before it.
    let t0 = Instant::now();
    while r.sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "socket file stays");
        std::thread::sleep(Duration::from_millis(5));
    }
    arp_and_dns(&mut r);
    let pid = r.pid();
    let ts = threads(pid);
    // main, two tokio workers, the stream writer, the getaddrinfo blocking thread.
    assert!(ts.len() >= 4, "{ts:?}");
    for [name, mode, filters, nnp, eff, bnd] in &ts {
        assert_eq!(mode, "2", "{name}: seccomp filter mode");
        assert_eq!(filters, "2", "{name}: allowlist + soft-deny filter");
        assert_eq!(nnp, "1", "{name}: no_new_privs");
        assert_eq!(eff, "0000000000000000", "{name}: no effective capability");
        if am_root() {
            assert_eq!(bnd, "0000000000000000", "{name}: bounding set emptied");
        }
    }
    if am_root() {
        for ns in ["ipc", "uts"] {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            assert_ne!(theirs, ours, "a new {ns} namespace");
        }
    } else {
        eprintln!("SKIP: namespace and bounding-set checks need root");
    }
    let (st, err) = r.finish();
    assert!(st.success(), "exit {st:?}: {err}");
    assert!(err.contains("jail: seccomp (kill on violation)"), "{err}");
    assert!(err.contains("frontend disconnected"), "{err}");
}

#[test]
fn no_jail_leaves_the_process_as_it_was() {
    let mut r = start(&["--no-jail"]);
    arp_and_dns(&mut r);
    for [name, mode, ..] in threads(r.pid()) {
        assert_eq!(mode, "0", "{name}: no seccomp with --no-jail");
    }
    assert!(
        r.sock.exists(),
        "--no-jail keeps the socket file until the end"
    );
    let (st, err) = r.finish();
    assert!(st.success(), "exit {st:?}: {err}");
    assert!(err.contains("WITHOUT the jail"), "{err}");
}

#[test]
fn seccomp_log_is_accepted_and_trap_is_a_usage_error() {
    let mut r = start(&["--seccomp", "log"]);
    arp_and_dns(&mut r);
    let (st, err) = r.finish();
    assert!(st.success(), "exit {st:?}: {err}");
    assert!(err.contains("LOG ONLY on violation"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ax-netstack"))
        .args([
            "--stream",
            "/nonexistent/x",
            "--config",
            "-",
            "--seccomp",
            "trap",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kill"), "{err}");
}
