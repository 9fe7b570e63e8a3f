//! The vhost-user-net backend driven by a real vhost-user frontend (vhost's `Frontend`), no VM:
//! guest RAM is a memfd shared through `VHOST_USER_SET_MEM_TABLE`, split virtqueues (virtio 1.2
//! §2.7) are laid out by hand in it (`ax_vhost::testing`), buffers are published in the
//! available ring and kicked through the kick eventfds; results are read from the used rings.
//!
//! The frames go to a loopback [`FramePort`] in this process (what the guest sends comes back
//! to it), so these tests check the virtio-net framing (§5.1.6), mergeable receive buffers,
//! frames waiting for receive buffers, and bad guest input, independently of the stack.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ax_netstack::vhost_user::{self, FramePort, NetConfig, Stats, HDR_LEN};
use ax_vhost::testing::{ack_protocol_features, wait_for_socket, GuestRam, Vq, DESC_F_WRITE};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 64;
const RXQ: usize = 0;
const TXQ: usize = 1;
/// Buffers: descriptor i of queue q uses `BUF_BASE + q * 0x10_0000 + i * 0x1000` (at most 4 KiB).
const BUF_BASE: u64 = 0x10_0000;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Echoes every guest frame back (and lets the test inject frames for the guest).
struct Loopback {
    queue: Mutex<VecDeque<Vec<u8>>>,
    sent: Mutex<Vec<Vec<u8>>>,
    event: EventFd,
    echo: bool,
}

impl Loopback {
    fn new(echo: bool) -> Arc<Loopback> {
        Arc::new(Loopback {
            queue: Mutex::new(VecDeque::new()),
            sent: Mutex::new(Vec::new()),
            event: EventFd::new(0).unwrap(),
            echo,
        })
    }
    /// A frame for the guest, as the stack would produce it.
    fn inject(&self, frame: Vec<u8>) {
        self.queue.lock().unwrap().push_back(frame);
        self.event.write(1).unwrap();
    }
    fn queued(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

impl FramePort for Loopback {
    fn send(&self, frame: Vec<u8>) {
        self.sent.lock().unwrap().push(frame.clone());
        if self.echo {
            self.inject(frame);
        }
    }
    fn try_recv(&self) -> Option<Vec<u8>> {
        self.queue.lock().unwrap().pop_front()
    }
    fn rx_eventfd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

struct Harness {
    frontend: Frontend,
    mem: GuestRam,
    vqs: Vec<Vq>,
    server: Option<std::thread::JoinHandle<anyhow::Result<Stats>>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Starts the backend on `port` (protocol features offered) and negotiates; `mrg` acks
    /// VIRTIO_NET_F_MRG_RXBUF.
    fn start(port: Arc<Loopback>, mrg: bool) -> Harness {
        Self::start_with(port, mrg, true)
    }

    /// [`Harness::start`], choosing whether the backend offers the protocol features.
    fn start_with(port: Arc<Loopback>, mrg: bool, protocol_features: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("net.sock");
        let listener = vhost_user::listen(&sock).unwrap();
        let server = std::thread::spawn(move || {
            vhost_user::serve(
                listener,
                port,
                NetConfig {
                    mac: [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
                    mtu: 1500,
                    protocol_features,
                },
            )
        });
        let extra = if mrg { VIRTIO_NET_F_MRG_RXBUF } else { 0 };
        let mut h = Harness::connect(&sock, extra, dir);
        h.server = Some(server);
        h
    }

    /// Connects to a backend listening on `sock` and negotiates; `extra` feature bits
    /// (mergeable buffers, EVENT_IDX) are acked on top of the basic ones.
    fn connect(sock: &Path, extra: u64, dir: tempfile::TempDir) -> Harness {
        let mut frontend = Frontend::connect(sock, 2).expect("connect");
        let mem = GuestRam::new(c"net-guest-ram", MEM_SIZE);

        frontend.set_owner().unwrap();
        let offered = frontend.get_features().unwrap();
        let proto = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let want = (1u64 << 32) // VIRTIO_F_VERSION_1
            | (1 << 5) // MAC
            | (1 << 3) // MTU
            | (1 << 16) // STATUS
            | extra
            | (offered & proto);
        assert_eq!(offered & want, want, "offered {offered:#x}");
        frontend.set_features(want).unwrap();
        if offered & proto != 0 {
            ack_protocol_features(&mut frontend);
        }
        frontend.set_mem_table(&[mem.region()]).unwrap();
        let vqs = (0..2)
            .map(|q| {
                let base = 0x1_0000 * (q as u64 + 1);
                Vq::setup(&mut frontend, &mem, q, base, QSIZE, offered & proto != 0)
            })
            .collect();
        Harness {
            frontend,
            mem,
            vqs,
            server: None,
            _dir: dir,
        }
    }

    fn buf_addr(q: usize, i: u16) -> u64 {
        BUF_BASE + q as u64 * 0x10_0000 + u64::from(i) * 0x1000
    }

    /// Publishes one single-descriptor buffer on queue `q` (descriptor = ring slot); kicks.
    fn post(&mut self, q: usize, data: &[u8], len: u32, writable: bool) -> u16 {
        let vq = &mut self.vqs[q];
        let i = vq.next_avail % QSIZE;
        let addr = Self::buf_addr(q, i);
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        let flags = if writable { DESC_F_WRITE } else { 0 };
        vq.write_desc(&self.mem, i, addr, len, flags, 0);
        vq.publish(&self.mem, i);
        i
    }

    fn kick(&self, q: usize) {
        self.vqs[q].kick();
    }

    /// Posts `n` empty receive buffers of `len` bytes and kicks the receive queue.
    fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            self.post(RXQ, &[], len, true);
        }
        self.kick(RXQ);
    }

    /// Transmits `frame` with the given 12-byte header.
    fn transmit_with(&mut self, hdr: [u8; HDR_LEN], frame: &[u8]) {
        let mut b = hdr.to_vec();
        b.extend_from_slice(frame);
        self.post(TXQ, &b, b.len() as u32, false);
        self.kick(TXQ);
    }

    /// Waits for `n` used elements on `q`; returns (id, len, bytes written for rx).
    fn used(&mut self, q: usize, n: usize) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let t0 = Instant::now();
        while out.len() < n {
            let vq = &mut self.vqs[q];
            let Some((id, len)) = vq.pop_used(&self.mem) else {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "queue {q}: {} of {n} used elements after 10 s",
                    out.len()
                );
                vq.wait_call(50);
                continue;
            };
            let mut data = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(Self::buf_addr(q, id as u16)))
                .unwrap();
            out.push((id, len, data));
        }
        out
    }

    /// No further used element on `q` within `wait`.
    fn assert_no_used(&self, q: usize, wait: Duration) {
        std::thread::sleep(wait);
        let vq = &self.vqs[q];
        assert_eq!(
            vq.used_idx(&self.mem),
            vq.last_used,
            "unexpected used element on queue {q}"
        );
    }

    /// Disconnects; returns the backend's final counters.
    fn stop(mut self) -> Stats {
        let server = self.server.take().unwrap();
        drop(self);
        server
            .join()
            .unwrap()
            .expect("serve ends cleanly on disconnect")
    }
}

/// An Ethernet frame of `len` bytes with a recognisable payload.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
    f
}

fn header_num_buffers(h: &[u8]) -> u16 {
    assert_eq!(&h[..10], &[0u8; 10], "no offload fields set");
    u16::from_le_bytes([h[10], h[11]])
}

#[test]
fn config_space_over_vhost_user() {
    let mut h = Harness::start(Loopback::new(true), false);
    let (_, c) = h
        .frontend
        .get_config(0, 12, VhostUserConfigFlags::WRITABLE, &[0u8; 12])
        .unwrap();
    assert_eq!(&c[..6], &[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "VIRTIO_NET_S_LINK_UP");
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500);
    h.stop();
}

#[test]
fn frames_round_trip_with_headers() {
    let port = Loopback::new(true);
    let mut h = Harness::start(port.clone(), false);
    h.post_rx(8, 1526);
    let frames: Vec<Vec<u8>> = [60usize, 342, 1514]
        .iter()
        .enumerate()
        .map(|(i, &n)| frame(n, i as u8))
        .collect();
    for f in &frames {
        h.transmit_with([0; HDR_LEN], f);
    }
    let tx = h.used(TXQ, 3);
    assert!(
        tx.iter().all(|(_, len, _)| *len == 0),
        "tx buffers are returned with len 0"
    );
    let rx = h.used(RXQ, 3);
    for ((_, len, data), f) in rx.iter().zip(&frames) {
        assert_eq!(*len as usize, HDR_LEN + f.len());
        assert_eq!(header_num_buffers(&data[..HDR_LEN]), 1);
        assert_eq!(&data[HDR_LEN..], &f[..], "frame delivered unchanged");
    }
    assert_eq!(
        *port.sent.lock().unwrap(),
        frames,
        "the port got the frames without headers"
    );
    let st = h.stop();
    assert_eq!(
        (st.tx_frames, st.rx_frames, st.tx_dropped, st.rx_dropped),
        (3, 3, 0, 0)
    );
}

#[test]
fn without_protocol_features_rings_start_enabled() {
    // QEMU's way: no VHOST_USER_F_PROTOCOL_FEATURES, no SET_VRING_ENABLE.
    let port = Loopback::new(true);
    let mut h = Harness::start_with(port.clone(), true, false);
    h.post_rx(2, 2048);
    h.transmit_with([0; HDR_LEN], &frame(100, 5));
    let rx = h.used(RXQ, 1);
    assert_eq!(rx[0].2[HDR_LEN..], frame(100, 5)[..]);
    h.stop();
}

#[test]
fn with_event_idx_the_backend_asks_for_a_kick_when_out_of_buffers() {
    // virtio 1.2 §2.7.10: with VIRTIO_F_EVENT_IDX the driver kicks only when the available
    // index passes `avail_event` (the last field of the used ring), which the device sets.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("net.sock");
    let listener = vhost_user::listen(&sock).unwrap();
    let port = Loopback::new(false);
    let server = {
        let port = port.clone();
        std::thread::spawn(move || {
            vhost_user::serve(
                listener,
                port,
                NetConfig {
                    protocol_features: true,
                    ..NetConfig::default()
                },
            )
        })
    };
    let mut h = Harness::connect(&sock, VIRTIO_RING_F_EVENT_IDX, dir);
    h.server = Some(server);
    let avail_event = |h: &Harness| h.vqs[RXQ].avail_event(&h.mem);
    h.post_rx(1, 2048);
    for i in 0..3 {
        port.inject(frame(80, i));
    }
    let rx = h.used(RXQ, 1);
    assert_eq!(rx[0].2[HDR_LEN..], frame(80, 0)[..]);
    // Out of buffers with frames waiting: "kick me when buffer #1 arrives".
    let t0 = Instant::now();
    while avail_event(&h) != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "avail_event {}",
            avail_event(&h)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    h.post_rx(2, 2048);
    let rx = h.used(RXQ, 2);
    assert_eq!(rx[0].2[HDR_LEN..], frame(80, 1)[..]);
    assert_eq!(rx[1].2[HDR_LEN..], frame(80, 2)[..]);
    assert_eq!(h.stop().rx_frames, 3);
}

#[test]
fn frames_wait_for_receive_buffers() {
    let port = Loopback::new(false);
    let mut h = Harness::start(port.clone(), false);
    // The stack has answers before the driver posted any receive buffer.
    for i in 0..5 {
        port.inject(frame(100 + i, i as u8));
    }
    h.assert_no_used(RXQ, Duration::from_millis(200));
    // Two buffers: two frames; the rest wait (one taken from the port, kept by the backend).
    h.post_rx(2, 1526);
    let rx = h.used(RXQ, 2);
    assert_eq!(rx[0].2[HDR_LEN..], frame(100, 0)[..]);
    assert_eq!(rx[1].2[HDR_LEN..], frame(101, 1)[..]);
    h.assert_no_used(RXQ, Duration::from_millis(200));
    assert!(
        port.queued() >= 2,
        "frames stay queued in the port while the guest has no buffers"
    );
    h.post_rx(8, 1526);
    let rx = h.used(RXQ, 3);
    for (k, (_, _, d)) in rx.iter().enumerate() {
        assert_eq!(
            d[HDR_LEN..],
            frame(102 + k, 2 + k as u8)[..],
            "in order, none lost"
        );
    }
    assert_eq!(port.queued(), 0);
    assert_eq!(h.stop().rx_frames, 5);
}

#[test]
fn mergeable_buffers_span_a_frame() {
    let port = Loopback::new(false);
    let mut h = Harness::start(port.clone(), true);
    h.post_rx(6, 256);
    let f = frame(600, 7);
    port.inject(f.clone());
    // 12 + 600 bytes in 256-byte buffers: three of them, num_buffers = 3 in the first.
    let rx = h.used(RXQ, 3);
    assert_eq!(header_num_buffers(&rx[0].2[..HDR_LEN]), 3);
    assert_eq!(
        rx.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![256, 256, 612 - 512]
    );
    let mut joined: Vec<u8> = rx.iter().flat_map(|r| r.2.clone()).collect();
    joined.drain(..HDR_LEN);
    assert_eq!(joined, f);
    // A frame needing more buffers than posted waits for them instead of being cut.
    port.inject(frame(1000, 9));
    h.assert_no_used(RXQ, Duration::from_millis(200));
    h.post_rx(4, 256);
    let rx = h.used(RXQ, 4);
    assert_eq!(
        header_num_buffers(&rx[0].2[..HDR_LEN]),
        4,
        "3 left + 1 new buffer of 4 posted"
    );
    let mut joined: Vec<u8> = rx.iter().flat_map(|r| r.2.clone()).collect();
    joined.drain(..HDR_LEN);
    assert_eq!(joined, frame(1000, 9));
    h.stop();
}

#[test]
fn bad_guest_input_is_dropped_not_fatal() {
    let port = Loopback::new(true);
    let mut h = Harness::start(port.clone(), false);
    h.post_rx(4, 128);
    // A GSO header although no GSO feature was offered: dropped.
    let mut gso = [0u8; HDR_LEN];
    gso[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    h.transmit_with(gso, &frame(200, 1));
    // Shorter than an Ethernet header: dropped.
    h.transmit_with([0; HDR_LEN], &[1, 2, 3]);
    // A frame larger than the 128-byte receive buffer without mergeable buffers: echoed by
    // the loopback, then dropped on the way in (the buffer is returned empty).
    h.transmit_with([0; HDR_LEN], &frame(400, 2));
    // A good one still gets through.
    h.transmit_with([0; HDR_LEN], &frame(64, 3));
    h.used(TXQ, 4);
    let rx = h.used(RXQ, 2);
    assert_eq!(rx[0].1, 0, "too-small buffer returned with len 0");
    assert_eq!(rx[1].2[HDR_LEN..], frame(64, 3)[..]);
    assert_eq!(port.sent.lock().unwrap().len(), 2);
    let st = h.stop();
    assert_eq!(
        (st.tx_frames, st.tx_dropped, st.rx_frames, st.rx_dropped),
        (2, 2, 1, 1)
    );
}

#[test]
fn listen_fails_clearly_on_a_missing_directory() {
    let e = vhost_user::listen(Path::new("/nonexistent/dir/net.sock"))
        .err()
        .expect("error")
        .to_string();
    assert!(e.contains("/nonexistent/dir/net.sock"), "{e}");
}

/// An ARP request (RFC 826) from the guest for `target`.
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc, 100, 96, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

#[test]
fn the_binary_serves_the_stack_and_exits_on_disconnect() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("net.sock");
    let ca = dir.path().join("ca.pem");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ax-netstack"))
        .arg("--socket")
        .arg(&sock)
        .args(["--config", "-", "--ca-out"])
        .arg(&ca)
        .args(["--mac", "52:54:00:aa:bb:cc", "--config-space"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"agent = \"vhost-test\"\n")
        .unwrap();
    wait_for_socket(&mut child, &sock, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("ax-netstack: {e}"));
    let pem = std::fs::read_to_string(&ca).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let mut h = Harness::connect(&sock, VIRTIO_NET_F_MRG_RXBUF, tempfile::tempdir().unwrap());
    let (_, c) = h
        .frontend
        .get_config(0, 12, VhostUserConfigFlags::WRITABLE, &[0u8; 12])
        .unwrap();
    assert_eq!(
        &c[..6],
        &[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
        "--mac is the config MAC"
    );
    h.post_rx(8, 2048);
    // Who has 100.96.0.1 (the gateway)? The stack answers with its MAC.
    h.transmit_with([0; HDR_LEN], &arp_request([100, 96, 0, 1]));
    let rx = h.used(RXQ, 1);
    let reply = &rx[0].2[HDR_LEN..];
    assert_eq!(&reply[12..14], &[0x08, 0x06], "ARP");
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&reply[28..32], &[100, 96, 0, 1], "for the gateway");
    assert_eq!(
        &reply[0..6],
        &[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
        "to the guest"
    );
    drop(h);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
    assert!(
        err.contains("frontend disconnected: 1 frames from the guest"),
        "{err}"
    );
}

#[test]
fn the_binary_refuses_a_bad_config_with_one_line() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ax-netstack"))
        .args(["--socket", "/tmp/never.sock", "--config", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"agent = \"a\"\n[network]\nmtu = 20\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ax-netstack: stdin: ") && err.contains("mtu"),
        "{err}"
    );
}

#[test]
fn qemu_stream_transport_round_trips_length_prefixed_frames() {
    use ax_netstack::stream;
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.sock");
    let listener = stream::listen(&path).unwrap();
    let port = Loopback::new(true);
    let server = {
        let port = port.clone();
        std::thread::spawn(move || stream::serve(listener, port))
    };
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frames = [frame(60, 1), frame(1514, 2), frame(300, 3)];
    for f in &frames {
        c.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
        c.write_all(f).unwrap();
    }
    // Too short for Ethernet: counted as dropped, not echoed.
    c.write_all(&3u32.to_be_bytes()).unwrap();
    c.write_all(&[1, 2, 3]).unwrap();
    for f in &frames {
        let mut len = [0u8; 4];
        c.read_exact(&mut len).unwrap();
        assert_eq!(u32::from_be_bytes(len) as usize, f.len());
        let mut got = vec![0u8; f.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, f);
    }
    drop(c);
    let st = server.join().unwrap().unwrap();
    assert_eq!((st.tx_frames, st.tx_dropped, st.rx_frames), (3, 1, 3));
    assert_eq!(port.sent.lock().unwrap().len(), 3);
}
