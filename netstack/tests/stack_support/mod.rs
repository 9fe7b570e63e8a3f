//! Test harness for the stack tests: a second smoltcp interface plays the guest (a real TCP/IP
//! implementation on both sides), wired to the netstack's `GuestPort`; plus raw-frame helpers.
#![allow(dead_code)]

use ax_netstack::config::Config;
use ax_netstack::context::Context;
use ax_netstack::stack::{GuestPort, Netstack, GATEWAY_MAC};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::*;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 2);
pub const GW_IP: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 1);

/// Starts a netstack for `toml` (the `agent` line is added).
pub fn start(toml: &str) -> (Netstack, GuestPort) {
    let cfg = Config::parse(&format!("agent = \"t\"\n{toml}"), "test").unwrap();
    let ctx = Context::new(cfg).unwrap();
    Netstack::start(ctx).unwrap()
}

struct Dev {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}
impl phy::Device for Dev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// The guest: a smoltcp interface at 100.96.0.2/30 with its default route via the gateway.
pub struct Guest {
    pub port: GuestPort,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    dev: Dev,
}

impl Guest {
    pub fn new(port: GuestPort) -> Guest {
        let mut dev = Dev {
            rx: VecDeque::new(),
            tx: Vec::new(),
        };
        let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        cfg.random_seed = 7;
        let mut iface = Interface::new(cfg, &mut dev, Instant::now());
        iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 30)).unwrap());
        iface.routes_mut().add_default_ipv4_route(GW_IP).unwrap();
        Guest {
            port,
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
        }
    }

    /// Moves frames both ways and polls the guest's interface once.
    pub fn pump(&mut self) {
        for f in self.dev.tx.drain(..) {
            self.port.send(f);
        }
        while let Some(f) = self.port.try_recv() {
            self.dev.rx.push_back(f);
        }
        self.iface
            .poll(Instant::now(), &mut self.dev, &mut self.sockets);
        for f in self.dev.tx.drain(..) {
            self.port.send(f);
        }
    }

    /// Pumps until `done` holds or `secs` pass; returns whether it held.
    pub async fn until(&mut self, secs: u64, mut done: impl FnMut(&mut Guest) -> bool) -> bool {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            if std::time::Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    pub fn tcp_socket(&mut self, buf: usize) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        self.sockets.add(s)
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Starts a connection from `local_port` to `ip:port`.
    pub fn connect(&mut self, ip: Ipv4Addr, port: u16, local_port: u16) -> SocketHandle {
        let h = self.tcp_socket(256 * 1024);
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, (IpAddress::Ipv4(ip), port), local_port)
            .unwrap();
        h
    }

    /// One DNS query over UDP from `local_port`; the raw response.
    pub async fn dns_udp(&mut self, name: &str, qtype: u16, local_port: u16) -> Vec<u8> {
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        );
        s.bind(local_port).unwrap();
        let h = self.sockets.add(s);
        let q = dns_query(0x4242, name, qtype);
        self.sockets
            .get_mut::<udp::Socket>(h)
            .send_slice(&q, (IpAddress::Ipv4(GW_IP), 53))
            .unwrap();
        let mut out = None;
        let ok = self
            .until(10, |g| {
                if let Ok((d, _)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
                    out = Some(d.to_vec());
                }
                out.is_some()
            })
            .await;
        assert!(ok, "no DNS answer over UDP for {name}");
        self.sockets.remove(h);
        out.unwrap()
    }

    /// Resolves `name` (A over UDP) to the stack's address for it.
    pub async fn resolve(&mut self, name: &str) -> Ipv4Addr {
        let r = self.dns_udp(name, 1, 30000).await;
        let a = answers_a(&r);
        assert_eq!(rcode(&r), 0, "rcode for {name}");
        assert_eq!(a.len(), 1, "one A record for {name}");
        a[0]
    }
}

/// A DNS query message (RFC 1035 §4.1) with RD set.
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

pub fn rcode(resp: &[u8]) -> u8 {
    resp[3] & 0x0f
}

pub fn ancount(resp: &[u8]) -> u16 {
    u16::from_be_bytes([resp[6], resp[7]])
}

/// A records in a response (walks the question and answer sections).
pub fn answers_a(resp: &[u8]) -> Vec<Ipv4Addr> {
    let mut i = 12;
    while resp[i] != 0 {
        i += resp[i] as usize + 1;
    }
    i += 5; // root label + qtype + qclass
    let mut out = Vec::new();
    for _ in 0..ancount(resp) {
        i += if resp[i] & 0xc0 == 0xc0 {
            2
        } else {
            panic!("uncompressed answer name")
        };
        let ty = u16::from_be_bytes([resp[i], resp[i + 1]]);
        let len = u16::from_be_bytes([resp[i + 8], resp[i + 9]]) as usize;
        let data = &resp[i + 10..i + 10 + len];
        if ty == 1 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    out
}

/// An Ethernet frame from the guest carrying `ip_payload` with the given protocol.
pub fn ipv4_frame(dst: Ipv4Addr, proto: IpProtocol, payload: &[u8]) -> Vec<u8> {
    ipv4_frame_from(GUEST_IP, dst, proto, payload)
}

/// Like [`ipv4_frame`] with another source address.
pub fn ipv4_frame_from(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + ip.buffer_len() + payload.len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &ChecksumCapabilities::default());
    p.payload_mut().copy_from_slice(payload);
    buf
}

/// A UDP datagram frame from the guest.
pub fn udp_frame(dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    let mut b = vec![0u8; 8 + data.len()];
    let mut p = UdpPacket::new_unchecked(&mut b[..]);
    udp.emit(
        &mut p,
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(dst),
        data.len(),
        |buf| buf.copy_from_slice(data),
        &ChecksumCapabilities::default(),
    );
    ipv4_frame(dst, IpProtocol::Udp, &b)
}

/// An ARP request from the guest for `target`.
pub fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut buf = vec![0u8; 14 + arp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut f);
    arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
    buf
}

/// Frames the stack sends within `ms` milliseconds.
pub async fn collect(port: &GuestPort, ms: u64) -> Vec<Vec<u8>> {
    let end = std::time::Instant::now() + Duration::from_millis(ms);
    let mut out = Vec::new();
    while std::time::Instant::now() < end {
        while let Some(f) = port.try_recv() {
            out.push(f);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

/// Starts a netstack whose audit records go to a ledger in a temporary directory.
pub fn start_audited(toml: &str) -> (Netstack, GuestPort, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let (ns, port) = start(&format!(
        "{toml}\n[meter]\nledger = {:?}\n",
        ledger.to_str().unwrap()
    ));
    (ns, port, dir)
}

/// The audit's connection records once there are at least `n` (waits up to 10 s).
pub async fn connections(
    dir: &tempfile::TempDir,
    n: usize,
) -> Vec<ax_netstack::meter::ledger::ConnRow> {
    let path = dir.path().join("ledger.sqlite");
    for _ in 0..1000 {
        if let Some(l) = ax_netstack::meter::ledger::Ledger::open_read(&path).unwrap() {
            let rows = l.connections("t").unwrap();
            if rows.len() >= n {
                return rows;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} audit records");
}

/// Pumps until the connection `h` is established (true) or was refused/reset (false).
pub async fn established(g: &mut Guest, h: SocketHandle) -> bool {
    assert!(
        g.until(20, |g| matches!(
            g.tcp(h).state(),
            tcp::State::Established | tcp::State::Closed
        ))
        .await,
        "connection neither established nor refused"
    );
    g.tcp(h).state() == tcp::State::Established
}

/// Starts a netstack for `toml` and returns its context too.
pub fn start_ctx(toml: &str) -> (std::sync::Arc<Context>, Netstack, GuestPort) {
    let cfg = Config::parse(&format!("agent = \"t\"\n{toml}"), "test").unwrap();
    let ctx = Context::new(cfg).unwrap();
    let (ns, port) = Netstack::start(ctx.clone()).unwrap();
    (ctx, ns, port)
}

/// The guest pumped by a background task, so that its connections can be tokio streams
/// (for a TLS client in the guest).
#[derive(Clone)]
pub struct GuestNet {
    inner: std::sync::Arc<std::sync::Mutex<(Guest, Vec<std::task::Waker>)>>,
}

impl GuestNet {
    pub fn spawn(guest: Guest) -> GuestNet {
        let net = GuestNet {
            inner: std::sync::Arc::new(std::sync::Mutex::new((guest, Vec::new()))),
        };
        let weak = std::sync::Arc::downgrade(&net.inner);
        tokio::spawn(async move {
            while let Some(inner) = weak.upgrade() {
                {
                    let mut g = inner.lock().unwrap();
                    g.0.pump();
                    for w in g.1.drain(..) {
                        w.wake();
                    }
                }
                drop(inner);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        net
    }

    /// Connects and waits for the handshake; None if refused.
    pub async fn connect(&self, ip: Ipv4Addr, port: u16, local_port: u16) -> Option<GuestConn> {
        let h = self.inner.lock().unwrap().0.connect(ip, port, local_port);
        for _ in 0..20000 {
            match self.inner.lock().unwrap().0.tcp(h).state() {
                tcp::State::Established => {
                    return Some(GuestConn {
                        net: self.clone(),
                        h,
                    })
                }
                tcp::State::Closed => return None,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("connection neither established nor refused");
    }
}

/// One guest connection as a tokio stream.
pub struct GuestConn {
    net: GuestNet,
    h: SocketHandle,
}

impl tokio::io::AsyncRead for GuestConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut g = self.net.inner.lock().unwrap();
        let s = g.0.tcp(self.h);
        if s.can_recv() {
            let n = s.recv_slice(buf.initialize_unfilled()).unwrap();
            buf.advance(n);
            return std::task::Poll::Ready(Ok(()));
        }
        if !s.may_recv() {
            return std::task::Poll::Ready(Ok(()));
        }
        g.1.push(cx.waker().clone());
        std::task::Poll::Pending
    }
}

impl tokio::io::AsyncWrite for GuestConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut g = self.net.inner.lock().unwrap();
        let s = g.0.tcp(self.h);
        if !s.may_send() {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        if s.can_send() {
            return std::task::Poll::Ready(Ok(s.send_slice(data).unwrap()));
        }
        g.1.push(cx.waker().clone());
        std::task::Poll::Pending
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.net.inner.lock().unwrap().0.tcp(self.h).close();
        std::task::Poll::Ready(Ok(()))
    }
}

impl Drop for GuestConn {
    fn drop(&mut self) {
        if let Ok(mut g) = self.net.inner.lock() {
            g.0.tcp(self.h).close();
        }
    }
}
