//! Ethernet frames ↔ smoltcp: ARP, the DNS responder, guest TCP flows bridged to tokio
//! streams (the SYN is answered only once the upstream connect succeeded).
//!
//! Shape: [`Netstack::start`] builds a smoltcp [`Interface`] (medium Ethernet, IPv4, any-IP so
//! that it terminates TCP for every destination the guest routes through the gateway) over an
//! in-memory device, and runs its poll loop as a task on the netstack's own tokio runtime.
//! [`GuestPort`] is the device's other end, used by the vhost-user-net backend: frames from the
//! guest go in with [`GuestPort::send`], frames for the guest come out of
//! [`GuestPort::try_recv`], and [`GuestPort::rx_eventfd`] says when there are some.
//!
//! Every guest frame is classified first ([`frame::classify`]): a new TCP SYN is held and
//! handed, as a [`PendingFlow`], to the [`FlowHandler`] the stack was started with (the
//! netstack's is `crate::flow`, which asks the policy and connects upstream); only when the
//! handler accepts it is the SYN fed to a fresh smoltcp socket (which answers SYN-ACK),
//! otherwise the stack answers RST. Connections to the gateway itself never reach the handler:
//! port 53 is DNS over TCP, any other port is refused. UDP is served only on gateway:53 (DNS,
//! [`dns`]); other UDP (QUIC) and IP protocols are dropped.

mod device;
pub mod dns;
pub mod frame;
mod tcp;

pub use tcp::GuestStream;

use crate::context::Context;
use device::{Outbox, QueueDevice, OUTBOX_CAP};
use frame::{Class, FlowKey, HeldSyn};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp as stcp, udp};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

/// The stack's MAC address on the guest link (locally administered unicast).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x61, 0x78, 0x00, 0x00, 0x01];

/// smoltcp receive and send buffer per guest TCP connection, bytes. 256 KiB gives a window
/// scale of 2 (RFC 7323 §2) and keeps a fast upstream from stalling on ACK round trips.
pub const TCP_BUFFER: usize = 256 * 1024;

/// Guest frames waiting for the poll loop; more are dropped.
const INBOX_CAP: usize = 4096;

/// Held SYNs at once (connects in flight); more are dropped (the guest retransmits).
const PENDING_CAP: usize = 1024;

/// Guest TCP connections at once by default (each holds 2 × [`TCP_BUFFER`]); more are
/// refused (RST). The config's `network.max_connections` sets it per agent; connections to
/// the gateway (DNS over TCP) count too.
pub const MAX_FLOWS: usize = 2048;

/// How long a connection whose stream was dropped may linger in FIN-WAIT/LAST-ACK before the
/// stack aborts it (Linux `tcp_fin_timeout` is 60 s).
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(60);

/// A running netstack: its tokio runtime and the smoltcp poll loop. Dropping it stops both.
pub struct Netstack {
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

/// The guest side of the in-memory Ethernet link, for the vhost-user-net backend
/// (virtio 1.2 §5.1: frames without the `virtio_net_hdr`).
#[derive(Clone)]
pub struct GuestPort {
    shared: Arc<Shared>,
}

/// What the stack does with each new guest TCP connection to an address other than the
/// gateway's, given at construction ([`Netstack::start_with`]): called from the poll loop with
/// the held SYN; the future it returns runs as a task of its own and answers the SYN
/// ([`PendingFlow::accept`] or [`PendingFlow::refuse`]).
pub type FlowHandler =
    Box<dyn Fn(PendingFlow) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A new guest TCP connection, held at its SYN until the [`FlowHandler`] accepts or refuses it.
pub struct PendingFlow {
    shared: Arc<Shared>,
    syn: HeldSyn,
}

/// State shared by the poll loop, the guest port, flow tasks and guest streams.
pub(crate) struct Shared {
    pub(crate) ctx: Arc<Context>,
    /// Takes every new guest TCP connection that is not for the gateway.
    on_flow: FlowHandler,
    pub(crate) state: Mutex<State>,
    /// Wakes the poll loop (frames arrived, a stream read or wrote, a flow was accepted).
    pub(crate) notify: tokio::sync::Notify,
    inbox: Mutex<VecDeque<Vec<u8>>>,
    outbox: Arc<Outbox>,
    pub(crate) mac: EthernetAddress,
    gateway: Ipv4Addr,
    guest: Ipv4Addr,
    names: dns::Names,
    rt: tokio::runtime::Handle,
    stop: AtomicBool,
}

/// Per-socket bookkeeping next to smoltcp's socket.
pub(crate) struct Slot {
    pub(crate) read_waker: Option<Waker>,
    pub(crate) write_waker: Option<Waker>,
    /// The [`GuestStream`] still exists.
    pub(crate) alive: bool,
    /// We called `close()` (sent or queued our FIN).
    pub(crate) closed_by_us: bool,
    key: FlowKey,
    orphaned_at: Option<Instant>,
}

/// Everything behind the stack lock.
pub(crate) struct State {
    iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    dev: QueueDevice,
    pub(crate) slots: HashMap<SocketHandle, Slot>,
    keys: HashMap<FlowKey, SocketHandle>,
    pending: HashSet<FlowKey>,
    dns_udp: SocketHandle,
}

impl Netstack {
    /// Starts the stack for `ctx.config.network` (gateway address, prefix, MTU) on a new
    /// two-thread tokio runtime, handing new guest TCP connections to `on_flow` (the netstack
    /// itself starts with `crate::flow`'s handler: [`Netstack::start`]). Errors: the runtime or
    /// the eventfd cannot be created.
    pub fn start_with(
        ctx: Arc<Context>,
        on_flow: FlowHandler,
    ) -> std::io::Result<(Netstack, GuestPort)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ax-netstack")
            // Jailed with per-thread filters: each tokio thread installs its own first.
            .on_thread_start(crate::jail::enter_tokio_thread)
            .enable_all()
            .build()?;
        let net = ctx.config.network.clone();
        let outbox = Arc::new(Outbox::new()?);
        let mac = EthernetAddress(GATEWAY_MAC);
        let mut dev = QueueDevice {
            rx: VecDeque::new(),
            outbox: outbox.clone(),
            frame_len: net.mtu as usize + 14,
        };
        let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(mac));
        cfg.random_seed = seed();
        let mut iface = Interface::new(cfg, &mut dev, SInstant::now());
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(net.gateway), net.prefix_len))
                .expect("one address fits");
        });
        iface.set_any_ip(true);
        iface
            .routes_mut()
            .add_default_ipv4_route(net.gateway)
            .expect("one route fits");
        let mut sockets = SocketSet::new(Vec::new());
        let mut dns = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 128], vec![0; 64 * 1024]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 128], vec![0; 64 * 1024]),
        );
        dns.bind(IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(net.gateway)),
            port: 53,
        })
        .expect("bind dns socket");
        let dns_udp = sockets.add(dns);
        let state = State {
            iface,
            sockets,
            dev,
            slots: HashMap::new(),
            keys: HashMap::new(),
            pending: HashSet::new(),
            dns_udp,
        };
        let shared = Arc::new(Shared {
            names: dns::Names::new(),
            ctx,
            on_flow,
            state: Mutex::new(state),
            notify: tokio::sync::Notify::new(),
            inbox: Mutex::new(VecDeque::new()),
            outbox,
            mac,
            gateway: net.gateway,
            guest: net.guest,
            rt: rt.handle().clone(),
            stop: AtomicBool::new(false),
        });
        rt.spawn(run(shared.clone()));
        let port = GuestPort {
            shared: shared.clone(),
        };
        Ok((
            Netstack {
                shared,
                rt: Some(rt),
            },
            port,
        ))
    }

    /// A handle to the netstack's runtime (tests and the binary may run tasks on it).
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.shared.rt.clone()
    }
}

impl Drop for Netstack {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.notify.notify_one();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl GuestPort {
    /// Takes one Ethernet frame the guest sent (virtio-net TX, without `virtio_net_hdr`).
    /// Never blocks on the stack; the poll loop picks it up.
    pub fn send(&self, frame: Vec<u8>) {
        let first = {
            let mut inbox = self.shared.inbox.lock().unwrap();
            if inbox.len() >= INBOX_CAP {
                return; // like a NIC with a full ring: dropped, TCP retransmits
            }
            inbox.push_back(frame);
            inbox.len() == 1
        };
        // A non-empty inbox already has a wake-up pending: the loop drains it whole.
        if first {
            self.shared.notify.notify_one();
        }
    }

    /// The next Ethernet frame for the guest (virtio-net RX), if any.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        let (f, was_full) = self.shared.outbox.pop();
        if was_full {
            self.shared.notify.notify_one();
        }
        f
    }

    /// A non-blocking eventfd that is readable (counter > 0) exactly while frames wait for
    /// [`GuestPort::try_recv`]; the stack resets it when the queue drains, so consumers poll
    /// it for readability and need not read it (reading it is harmless).
    pub fn rx_eventfd(&self) -> RawFd {
        self.shared.outbox.fd()
    }
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom(2) writes at most 8 bytes into b.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    u64::from_ne_bytes(b)
}

/// The poll loop: classify guest frames, poll smoltcp, serve DNS datagrams, wake streams,
/// then sleep until notified or until smoltcp's next timer.
async fn run(shared: Arc<Shared>) {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let frames = std::mem::take(&mut *shared.inbox.lock().unwrap());
        let (syns, queries, delay) = {
            let mut st = shared.state.lock().unwrap();
            let mut syns = Vec::new();
            for f in frames {
                let class = frame::classify(&f, shared.guest, shared.gateway, |k| st.is_live(k));
                match class {
                    Class::Pass => st.dev.rx.push_back(f),
                    Class::Syn(syn) => {
                        // A new connection reusing the ports of one in TIME-WAIT (or closed)
                        // whose stream is gone: forget the old one.
                        if let Some(h) = st.keys.remove(&syn.key) {
                            st.slots.remove(&h);
                            st.sockets.remove(h);
                        }
                        if st.pending.len() < PENDING_CAP && st.pending.insert(syn.key) {
                            syns.push(syn);
                        }
                    }
                    Class::Drop(why) => log::trace!("dropped guest frame: {why}"),
                }
            }
            st.step();
            let queries = st.dns_queries();
            let st = &mut *st;
            let mut delay = st
                .iface
                .poll_delay(SInstant::now(), &st.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if shared.outbox.len() >= OUTBOX_CAP {
                // The guest is not taking frames: wait for try_recv to make room.
                delay = delay.max(Duration::from_millis(50));
            }
            (syns, queries, delay)
        };
        for syn in syns {
            if *syn.key.dst.ip() == shared.gateway {
                shared.rt.spawn(serve_gateway(shared.clone(), syn));
            } else {
                let pending = PendingFlow {
                    shared: shared.clone(),
                    syn,
                };
                shared.rt.spawn((shared.on_flow)(pending));
            }
        }
        for (q, from) in queries {
            shared.rt.spawn(dns::serve_udp(shared.clone(), q, from));
        }
        if delay.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = shared.notify.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Serves a guest TCP connection to the gateway itself: port 53 is DNS over TCP, any other
/// port is refused.
async fn serve_gateway(shared: Arc<Shared>, syn: HeldSyn) {
    let limit = shared.ctx.config.network.max_connections;
    if syn.key.dst.port() == 53 && shared.flow_count() >= limit {
        log::info!(
            "dns over tcp from {}: refused: too many open connections ({limit}, network.max_connections)",
            syn.key.guest
        );
        shared.refuse(&syn);
    } else if syn.key.dst.port() == 53 {
        let guest = shared.accept(syn);
        dns::serve_tcp(shared, guest).await;
    } else {
        shared.refuse(&syn);
    }
}

impl PendingFlow {
    /// The guest's end (eth0 address, ephemeral port).
    pub fn guest(&self) -> SocketAddrV4 {
        self.syn.key.guest
    }

    /// The address the guest connects to.
    pub fn dst(&self) -> SocketAddrV4 {
        self.syn.key.dst
    }

    /// The name the DNS responder handed the destination address out for, if it is a
    /// synthetic one ([`dns::in_pool`]) that was handed out.
    pub fn host(&self) -> Option<String> {
        let ip = *self.syn.key.dst.ip();
        if dns::in_pool(ip) {
            self.shared.names.host_for(ip)
        } else {
            None
        }
    }

    /// Guest TCP connections that hold a socket now, DNS over TCP included (at most
    /// `network.max_connections` are served).
    pub fn open_flows(&self) -> usize {
        self.shared.flow_count()
    }

    /// Accepts the connection: the SYN goes to a fresh smoltcp socket, which answers SYN-ACK.
    pub fn accept(self) -> GuestStream {
        self.shared.accept(self.syn)
    }

    /// Refuses the connection with RST|ACK (the guest sees "connection refused").
    pub fn refuse(&self) {
        self.shared.refuse(&self.syn);
    }
}

impl State {
    /// One smoltcp poll, then wake streams that can make progress and drop finished sockets.
    pub(crate) fn step(&mut self) {
        let now = SInstant::now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        let mut gone = Vec::new();
        for (h, slot) in self.slots.iter_mut() {
            let s = self.sockets.get_mut::<stcp::Socket>(*h);
            let opening = tcp::opening(s);
            if slot.read_waker.is_some() && (s.can_recv() || (!s.may_recv() && !opening)) {
                slot.read_waker.take().unwrap().wake();
            }
            if slot.write_waker.is_some() && (s.can_send() || (!s.may_send() && !opening)) {
                slot.write_waker.take().unwrap().wake();
            }
            if !slot.alive {
                let orphan_for = slot.orphaned_at.get_or_insert_with(Instant::now).elapsed();
                if s.state() == stcp::State::Closed {
                    gone.push(*h);
                } else if orphan_for > ORPHAN_TIMEOUT {
                    s.abort();
                }
            }
        }
        for h in gone {
            let slot = self.slots.remove(&h).unwrap();
            self.keys.remove(&slot.key);
            self.sockets.remove(h);
        }
    }

    /// Does `key` have a socket that still carries its connection? (A socket in TIME-WAIT
    /// or closed whose stream was dropped does not: a new SYN replaces it.)
    fn is_live(&self, key: &FlowKey) -> bool {
        let Some(h) = self.keys.get(key) else {
            return false;
        };
        let done = matches!(
            self.sockets.get::<stcp::Socket>(*h).state(),
            stcp::State::TimeWait | stcp::State::Closed
        );
        !done || self.slots.get(h).is_some_and(|s| s.alive)
    }

    fn dns_queries(&mut self) -> Vec<(Vec<u8>, IpEndpoint)> {
        let s = self.sockets.get_mut::<udp::Socket>(self.dns_udp);
        let mut out = Vec::new();
        while let Ok((data, meta)) = s.recv() {
            out.push((data.to_vec(), meta.endpoint));
        }
        out
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Accepts a held SYN: a smoltcp socket listens on the guest's destination, the SYN is fed
    /// to it and it answers SYN-ACK. The poll runs under the lock right away, so no other
    /// listening socket for the same destination can take this SYN.
    fn accept(self: &Arc<Self>, syn: HeldSyn) -> GuestStream {
        let mut st = self.lock();
        let mut sock = stcp::Socket::new(
            stcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
            stcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
        );
        sock.set_nagle_enabled(false);
        sock.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
        sock.listen(IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*syn.key.dst.ip())),
            port: syn.key.dst.port(),
        })
        .expect("listen on a non-zero port");
        let h = st.sockets.add(sock);
        st.slots.insert(
            h,
            Slot {
                read_waker: None,
                write_waker: None,
                alive: true,
                closed_by_us: false,
                key: syn.key,
                orphaned_at: None,
            },
        );
        st.keys.insert(syn.key, h);
        st.pending.remove(&syn.key);
        st.dev.rx.push_back(syn.frame);
        st.step();
        drop(st);
        GuestStream::new(self.clone(), h)
    }

    /// Guest TCP connections that hold a socket now.
    fn flow_count(&self) -> usize {
        self.lock().slots.len()
    }

    /// Refuses a held SYN with RST|ACK (the guest sees "connection refused").
    fn refuse(&self, syn: &HeldSyn) {
        self.lock().pending.remove(&syn.key);
        self.outbox.push(frame::rst_for(syn, self.mac));
    }

    /// Sends a DNS answer datagram from gateway:53 to `to`.
    pub(crate) fn send_dns(&self, data: &[u8], to: IpEndpoint) {
        let mut st = self.lock();
        let h = st.dns_udp;
        if let Err(e) = st.sockets.get_mut::<udp::Socket>(h).send_slice(data, to) {
            log::debug!("dns answer to {to} dropped: {e}");
        }
        drop(st);
        self.notify.notify_one();
    }
}
