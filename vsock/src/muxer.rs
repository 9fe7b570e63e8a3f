//! Transport-independent hybrid vsock device logic (virtio 1.2 §5.10).
//!
//! [`VsockMuxer`] owns the connection table, the host-side Unix sockets and the packet state
//! machine. A transport (the vhost-user backend in this crate, or a VMM's own virtio-mmio device)
//! drives it with three calls:
//!
//! * [`VsockMuxer::process_tx`] when the driver kicks the TX virtqueue (§5.10.6.2),
//! * [`VsockMuxer::fill_rx`] when the driver adds RX buffers, and after any other call that
//!   reports pending RX work (§5.10.6.3),
//! * [`VsockMuxer::process_events`] when the muxer's epoll fd ([`VsockMuxer::as_raw_fd`])
//!   becomes readable (host sockets, the hybrid listener and the timeout timer are all behind it).
//!
//! Nothing here blocks: every host socket is non-blocking and buffered data is bounded by the
//! credit the peer advertised (§5.10.6.3.1).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use crate::HybridConfig;

/// CID of the host (virtio 1.2 §5.10.4: "the host CID is 2").
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM` (§5.10.6).
pub const TYPE_STREAM: u16 = 1;
/// `VIRTIO_VSOCK_OP_REQUEST` (§5.10.6).
pub const OP_REQUEST: u16 = 1;
/// `VIRTIO_VSOCK_OP_RESPONSE`.
pub const OP_RESPONSE: u16 = 2;
/// `VIRTIO_VSOCK_OP_RST`.
pub const OP_RST: u16 = 3;
/// `VIRTIO_VSOCK_OP_SHUTDOWN`.
pub const OP_SHUTDOWN: u16 = 4;
/// `VIRTIO_VSOCK_OP_RW`.
pub const OP_RW: u16 = 5;
/// `VIRTIO_VSOCK_OP_CREDIT_UPDATE`.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// `VIRTIO_VSOCK_OP_CREDIT_REQUEST`.
pub const OP_CREDIT_REQUEST: u16 = 7;
/// `VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE`: the sender will receive no more data (§5.10.6.5).
pub const SHUTDOWN_F_RECEIVE: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_F_SEND`: the sender will send no more data.
pub const SHUTDOWN_F_SEND: u32 = 2;
/// First local (host-side) port handed out to host-initiated connections (as Firecracker does:
/// far above the ports guests listen on).
pub const FIRST_HOST_LOCAL_PORT: u32 = 1 << 30;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_SOCKET_TOKEN: u64 = 2;
/// Longest accepted `CONNECT <port>\n` line ("CONNECT 4294967295\n" is 19 bytes).
const MAX_CONNECT_LINE: usize = 32;
const TIMER_TICK: Duration = Duration::from_millis(50);
const EPOLL_BATCH: usize = 64;

/// Tunables of the device; [`Default`] gives the documented values (see docs/vsock.md).
#[derive(Debug, Clone)]
pub struct MuxerOptions {
    /// How long a host-initiated connection waits for the guest's RESPONSE (or RST) once the
    /// REQUEST has been placed in the RX virtqueue.
    pub connect_timeout: Duration,
    /// How long a host-initiated connection waits for the guest driver to post RX buffers so
    /// that the REQUEST can be delivered at all (covers guest boot).
    pub ready_timeout: Duration,
    /// How long a host client may take to send its `CONNECT` line.
    pub handshake_timeout: Duration,
    /// `buf_alloc` this device advertises per connection: the most guest→host bytes it buffers.
    pub conn_buf_size: u32,
    /// Largest host→guest chunk read from a host socket and staged for the RX virtqueue.
    pub max_staging: usize,
    /// Largest payload accepted in one TX packet (`len` above this is rejected).
    pub max_pkt_data: u32,
    /// Most simultaneous connections (established, connecting and handshaking together).
    pub max_conns: usize,
}

impl Default for MuxerOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            conn_buf_size: 256 * 1024,
            max_staging: 64 * 1024,
            max_pkt_data: 64 * 1024,
            max_conns: 1024,
        }
    }
}

/// The 44-byte `struct virtio_vsock_hdr` (§5.10.6), in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    /// Decodes a little-endian header.
    pub fn from_bytes(b: &[u8; PKT_HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header little-endian.
    pub fn to_bytes(&self) -> [u8; PKT_HEADER_SIZE] {
        let mut b = [0u8; PKT_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn from_packet<B: vm_memory::bitmap::BitmapSlice>(p: &VsockPacket<'_, B>) -> Self {
        Self {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            len: p.len(),
            type_: p.type_(),
            op: p.op(),
            flags: p.flags(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
        }
    }
}

/// Identifies a connection: the host-side port and the guest-side port (the CIDs are fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Host-side port: the guest's `dst_port` (guest-initiated) or an allocated port
    /// (host-initiated).
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated; REQUEST queued or sent, waiting for RESPONSE.
    Connecting {
        request_sent: bool,
        deadline: Instant,
    },
    Established,
    /// The guest shut down both directions and got its RST; only flushing to the host is left.
    Closing {
        deadline: Instant,
    },
}

const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_CREDIT_UPDATE: u8 = 4;
const P_CREDIT_REQUEST: u8 = 8;

struct Conn {
    stream: UnixStream,
    token: u64,
    state: State,
    // What the guest told us (§5.10.6.3.1).
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    // What we tell the guest.
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes for the host socket: `ok_prefix` bytes of "OK <port>\n" then guest payload.
    to_host: VecDeque<u8>,
    ok_prefix: usize,
    /// Host bytes read but not yet placed in the RX virtqueue (bounded by the guest's credit).
    staging: Vec<u8>,
    host_eof: bool,
    shutdown_sent: bool,
    guest_shut_send: bool,
    guest_shut_recv: bool,
    host_write_shut: bool,
    pending: u8,
    credit_request_sent: bool,
    in_backlog: bool,
    registered: bool,
    interest: u32,
    hup: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u64, state: State) -> Self {
        Self {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            to_host: VecDeque::new(),
            ok_prefix: 0,
            staging: Vec::new(),
            host_eof: false,
            shutdown_sent: false,
            guest_shut_send: false,
            guest_shut_recv: false,
            host_write_shut: false,
            pending: 0,
            credit_request_sent: false,
            in_backlog: false,
            registered: false,
            interest: 0,
            hup: false,
        }
    }

    /// Bytes the guest can still take: `buf_alloc - (tx_cnt - fwd_cnt)` (§5.10.6.3.1).
    fn peer_free(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn established(&self) -> bool {
        self.state == State::Established
    }

    fn update_peer_credit(&mut self, h: &Hdr) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        if self.peer_free() > 0 {
            self.credit_request_sent = false;
        }
    }

    fn wants_read(&self, max_staging: usize) -> bool {
        self.established()
            && !self.host_eof
            && !self.guest_shut_recv
            && self.staging.len() < max_staging
            && (self.peer_free() as usize) > self.staging.len()
    }

    fn wants_shutdown(&self) -> bool {
        self.established() && self.host_eof && self.staging.is_empty() && !self.shutdown_sent
    }

    fn has_rx_work(&self) -> bool {
        if self.pending & (P_REQUEST | P_RESPONSE | P_CREDIT_UPDATE) != 0 {
            return true;
        }
        if !self.established() {
            return false;
        }
        (!self.staging.is_empty() && self.peer_free() > 0)
            || self.wants_shutdown()
            || self.pending & P_CREDIT_REQUEST != 0
    }
}

/// A host client that connected to `uds_path` and has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

/// Counters, for tests and diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MuxerStats {
    /// TX descriptor chains that failed to parse or carried a bad header.
    pub bad_tx: u64,
    /// RX descriptor chains that were unusable.
    pub bad_rx: u64,
    /// RST packets sent to the guest.
    pub rst_sent: u64,
}

/// The hybrid vsock device: guest packets on one side, host Unix sockets on the other.
///
/// Implements the stream-socket part of the virtio socket device (virtio 1.2 §5.10) with
/// Firecracker's hybrid host interface: host clients connect to `uds_path` and send
/// `CONNECT <port>\n`; guest connections to CID 2 port P go to the Unix socket `<uds_path>_P`.
pub struct VsockMuxer {
    cid: u64,
    uds_path: PathBuf,
    opts: MuxerOptions,
    epoll: Epoll,
    listener: UnixListener,
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<ConnKey, Conn>,
    tokens: HashMap<u64, ConnKey>,
    handshakes: HashMap<u64, Handshake>,
    next_token: u64,
    next_local_port: u32,
    /// Packets not tied to a live connection (RST replies), sent before connection traffic.
    ctrl: VecDeque<Hdr>,
    /// Connections with something to put in the RX virtqueue, served round-robin.
    backlog: VecDeque<ConnKey>,
    scratch: Vec<u8>,
    stats: MuxerStats,
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// `send(2)` with `MSG_NOSIGNAL`, so a vanished host peer gives EPIPE instead of SIGPIPE.
fn send_nosig(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid slice for its length; the fd is owned by the caller.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Non-blocking `connect(2)` to a Unix stream socket: never waits on a full backlog.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain old data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is initialised and `len` is within its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Parses `CONNECT <port>\n` (the newline already stripped; a trailing `\r` is tolerated).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"CONNECT ")?;
    if rest.is_empty() || rest.len() > 10 || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

impl VsockMuxer {
    /// Creates the device and binds the hybrid listener at `cfg.uds_path` at once (a stale
    /// socket file there is replaced), so host clients may connect before the guest is up.
    pub fn new(cfg: &HybridConfig, opts: MuxerOptions) -> io::Result<Self> {
        if cfg.guest_cid <= HOST_CID || cfg.guest_cid >= u64::from(u32::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "guest CID {} is reserved; use 3..=4294967294",
                    cfg.guest_cid
                ),
            ));
        }
        match std::fs::remove_file(&cfg.uds_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&cfg.uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        let timer = TimerFd::new()?;
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let fl = libc::fcntl(timer.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_TIMER),
        )?;
        info!(
            "vsock: guest CID {}, hybrid listener {}",
            cfg.guest_cid,
            cfg.uds_path.display()
        );
        Ok(Self {
            cid: cfg.guest_cid,
            uds_path: cfg.uds_path.clone(),
            opts,
            epoll,
            listener,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: FIRST_SOCKET_TOKEN,
            next_local_port: FIRST_HOST_LOCAL_PORT,
            ctrl: VecDeque::new(),
            backlog: VecDeque::new(),
            scratch: Vec::new(),
            stats: MuxerStats::default(),
        })
    }

    /// The guest CID (virtio 1.2 §5.10.4 `guest_cid` config field).
    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    /// Path of the hybrid listener.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Diagnostic counters.
    pub fn stats(&self) -> MuxerStats {
        self.stats
    }

    /// Number of live connections (established, connecting or closing).
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// True when [`Self::fill_rx`] has packets to deliver.
    pub fn has_rx_work(&self) -> bool {
        !self.ctrl.is_empty() || !self.backlog.is_empty()
    }

    /// Device reset (virtio 1.2 §2.4): drops every connection without telling the guest (its
    /// driver state is gone too). Host clients see their socket closed.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.kill(k, false);
        }
        self.ctrl.clear();
        self.backlog.clear();
    }

    // ---- TX (driver → device), §5.10.6.2 -----------------------------------------------------

    /// Consumes every available chain of the TX virtqueue. Returns true if used entries were
    /// added (the caller then notifies the driver, honouring `VIRTIO_RING_F_EVENT_IDX` via
    /// `Queue::needs_notification`). Malformed chains are logged, answered with RST where a
    /// connection can be identified, and returned to the driver; they never panic.
    pub fn process_tx<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> io::Result<bool> {
        let mut used = false;
        loop {
            while let Some(mut chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let raw = chain.clone().next().and_then(|d| {
                    if d.len() as usize >= PKT_HEADER_SIZE && !d.is_write_only() {
                        let mut b = [0u8; PKT_HEADER_SIZE];
                        mem.read_slice(&mut b, d.addr())
                            .ok()
                            .map(|_| Hdr::from_bytes(&b))
                    } else {
                        None
                    }
                });
                match VsockPacket::from_tx_virtq_chain(mem, &mut chain, self.opts.max_pkt_data) {
                    Ok(pkt) => {
                        let h = Hdr::from_packet(&pkt);
                        let data = pkt.data_slice();
                        let mut payload = Vec::new();
                        if h.op == OP_RW && h.len > 0 {
                            if let Some(s) = data {
                                payload.resize(h.len as usize, 0);
                                match s.read(&mut payload, 0) {
                                    Ok(n) if n == payload.len() => {}
                                    _ => {
                                        warn!("vsock: short read of TX payload, dropping packet");
                                        self.stats.bad_tx += 1;
                                        self.reject(&h);
                                        queue.add_used(mem, head, 0).map_err(io::Error::other)?;
                                        used = true;
                                        continue;
                                    }
                                }
                            }
                        }
                        self.handle_guest_packet(&h, &payload);
                    }
                    Err(e) => {
                        warn!("vsock: malformed TX chain {head}: {e:?}");
                        self.stats.bad_tx += 1;
                        if let Some(h) = raw {
                            self.reject(&h);
                        }
                    }
                }
                queue.add_used(mem, head, 0).map_err(io::Error::other)?;
                used = true;
            }
            // No chain popped but the ring may still claim work: an avail.idx more than the
            // queue size ahead (§2.7.13.3) makes enable_notification report work forever.
            if let Err(e) = queue.iter(mem) {
                return Err(io::Error::other(format!("vsock TX queue: {e}")));
            }
            if !queue.enable_notification(mem).map_err(io::Error::other)? {
                break;
            }
        }
        Ok(used)
    }

    /// Answers a bad packet: RST to the connection it names (if it is from our guest).
    fn reject(&mut self, h: &Hdr) {
        if h.src_cid != self.cid || h.op == OP_RST {
            return;
        }
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if self.conns.contains_key(&key) {
            self.kill(key, true);
        } else {
            self.queue_rst_reply(h);
        }
    }

    fn queue_rst_reply(&mut self, h: &Hdr) {
        self.ctrl.push_back(Hdr {
            src_cid: h.dst_cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        });
    }

    /// Handles one well-formed TX packet (§5.10.6.4–§5.10.6.6).
    fn handle_guest_packet(&mut self, h: &Hdr, payload: &[u8]) {
        debug!("vsock: guest → {h:?}");
        if h.src_cid != self.cid {
            warn!(
                "vsock: packet with src_cid {} (guest is {}), dropped",
                h.src_cid, self.cid
            );
            self.stats.bad_tx += 1;
            return;
        }
        if h.dst_cid != HOST_CID {
            warn!(
                "vsock: packet for CID {} (only the host, 2, is reachable)",
                h.dst_cid
            );
            if h.op != OP_RST {
                self.queue_rst_reply(h);
            }
            return;
        }
        if h.type_ != TYPE_STREAM {
            warn!("vsock: socket type {} not supported", h.type_);
            self.stats.bad_tx += 1;
            if h.op != OP_RST {
                self.queue_rst_reply(h);
            }
            return;
        }
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if h.op == OP_REQUEST {
            if self.conns.contains_key(&key) {
                warn!("vsock: REQUEST for existing connection {key:?}");
                self.kill(key, true);
                return;
            }
            self.guest_connect(key, h);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if h.op != OP_RST {
                debug!("vsock: op {} for unknown connection {key:?}, RST", h.op);
                self.queue_rst_reply(h);
            }
            return;
        };
        conn.update_peer_credit(h);
        match h.op {
            OP_RST => {
                debug!("vsock: guest reset {key:?}");
                self.kill(key, false);
                return;
            }
            OP_RESPONSE => {
                if let State::Connecting { .. } = conn.state {
                    conn.state = State::Established;
                    let line = format!("OK {}\n", key.local_port);
                    conn.ok_prefix = line.len();
                    conn.to_host.extend(line.as_bytes());
                    debug!("vsock: {key:?} established (host-initiated)");
                    self.flush_to_host(key);
                } else {
                    warn!("vsock: unexpected RESPONSE on {key:?}");
                    self.kill(key, true);
                    return;
                }
            }
            OP_RW => {
                if !conn.established() || conn.guest_shut_send {
                    warn!("vsock: RW on {key:?} in state {:?}", conn.state);
                    self.kill(key, true);
                    return;
                }
                let in_flight = (conn.rx_cnt - conn.fwd_cnt).0 as u64;
                if in_flight + payload.len() as u64 > u64::from(self.opts.conn_buf_size) {
                    warn!("vsock: guest overran its credit on {key:?}");
                    self.stats.bad_tx += 1;
                    self.kill(key, true);
                    return;
                }
                conn.rx_cnt += Wrapping(payload.len() as u32);
                conn.to_host.extend(payload);
                self.flush_to_host(key);
            }
            OP_SHUTDOWN => {
                if h.flags & SHUTDOWN_F_RECEIVE != 0 {
                    conn.guest_shut_recv = true;
                    conn.staging.clear();
                }
                if h.flags & SHUTDOWN_F_SEND != 0 {
                    conn.guest_shut_send = true;
                }
                if conn.guest_shut_recv && conn.guest_shut_send {
                    // Both directions done: acknowledge with RST (§5.10.6.5) and keep the host
                    // socket only until the buffered guest bytes are written.
                    conn.state = State::Closing {
                        deadline: Instant::now() + self.opts.connect_timeout,
                    };
                    conn.pending = 0;
                    self.queue_rst_reply(h);
                }
                self.flush_to_host(key);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                conn.pending |= P_CREDIT_UPDATE;
            }
            op => {
                warn!("vsock: unknown op {op} on {key:?}");
                self.stats.bad_tx += 1;
                self.kill(key, true);
                return;
            }
        }
        self.refresh(key);
    }

    /// Guest connects to host port P: connect to `<uds_path>_P` (Firecracker's convention).
    fn guest_connect(&mut self, key: ConnKey, h: &Hdr) {
        if self.conns.len() + self.handshakes.len() >= self.opts.max_conns {
            warn!("vsock: connection limit reached, refusing {key:?}");
            self.queue_rst_reply(h);
            return;
        }
        let path = self.port_path(key.local_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                debug!("vsock: guest connect to {} failed: {e}", path.display());
                self.queue_rst_reply(h);
                return;
            }
        };
        let token = self.alloc_token();
        let mut conn = Conn::new(stream, token, State::Established);
        conn.update_peer_credit(h);
        conn.pending |= P_RESPONSE;
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        debug!("vsock: guest connected {key:?} to {}", path.display());
        self.refresh(key);
    }

    /// `<uds_path>_<port>`.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut s = OsString::from(self.uds_path.as_os_str());
        s.push(format!("_{port}"));
        PathBuf::from(s)
    }

    fn alloc_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Removes a connection, closing its host socket; optionally RSTs the guest side.
    fn kill(&mut self, key: ConnKey, rst: bool) {
        if let Some(conn) = self.conns.remove(&key) {
            if conn.registered {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    conn.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
            self.tokens.remove(&conn.token);
            let guest_knows = !matches!(
                conn.state,
                State::Connecting {
                    request_sent: false,
                    ..
                }
            );
            if rst && guest_knows {
                self.ctrl.push_back(Hdr {
                    src_cid: HOST_CID,
                    dst_cid: self.cid,
                    src_port: key.local_port,
                    dst_port: key.peer_port,
                    type_: TYPE_STREAM,
                    op: OP_RST,
                    ..Default::default()
                });
            }
            debug!("vsock: closed {key:?} (rst={rst})");
        }
    }

    // ---- host side ---------------------------------------------------------------------------

    /// Writes buffered guest bytes to the host socket without blocking; half-closes the host
    /// socket once the guest has shut down its send side and everything is written.
    fn flush_to_host(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let fd = conn.stream.as_raw_fd();
        let mut failed = false;
        while !conn.to_host.is_empty() {
            let (a, _) = conn.to_host.as_slices();
            match send_nosig(fd, a) {
                Ok(0) => break,
                Ok(n) => {
                    conn.to_host.drain(..n);
                    let ok = n.min(conn.ok_prefix);
                    conn.ok_prefix -= ok;
                    conn.fwd_cnt += Wrapping((n - ok) as u32);
                }
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    debug!("vsock: write to host socket of {key:?} failed: {e}");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            let closing = matches!(conn.state, State::Closing { .. });
            self.kill(key, !closing);
            return;
        }
        if conn.to_host.is_empty() {
            if let State::Closing { .. } = conn.state {
                self.kill(key, false);
                return;
            }
            if conn.guest_shut_send && !conn.host_write_shut {
                let _ = conn.stream.shutdown(Shutdown::Write);
                conn.host_write_shut = true;
            }
        }
        // Credit update once a quarter of the window was freed since the guest last heard
        // from us; with the window fully drained this always fires, so the guest never stalls.
        let freed = (conn.fwd_cnt - conn.last_fwd_cnt_sent).0;
        if conn.established() && freed > 0 && freed >= self.opts.conn_buf_size / 4 {
            conn.pending |= P_CREDIT_UPDATE;
        }
    }

    /// Reads from the host socket into the staging buffer, within the guest's credit.
    fn read_host(&mut self, key: ConnKey) {
        let max_staging = self.opts.max_staging;
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.wants_read(max_staging) {
            return;
        }
        let room =
            (conn.peer_free() as usize - conn.staging.len()).min(max_staging - conn.staging.len());
        self.scratch.resize(room, 0);
        match conn.stream.read(&mut self.scratch[..room]) {
            Ok(0) => {
                debug!("vsock: host EOF on {key:?}");
                conn.host_eof = true;
            }
            Ok(n) => conn.staging.extend_from_slice(&self.scratch[..n]),
            Err(e) if would_block(&e) => {}
            Err(e) => {
                debug!("vsock: read from host socket of {key:?} failed: {e}");
                self.kill(key, true);
            }
        }
    }

    /// Re-evaluates a connection after any change: epoll interest, RX backlog, timers.
    fn refresh(&mut self, key: ConnKey) {
        let max_staging = self.opts.max_staging;
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        // The guest's window is full and the host may have more to say: ask for credit once
        // per stall (the guest answers with CREDIT_UPDATE, §5.10.6.3.1).
        if conn.established()
            && (!conn.staging.is_empty() || !(conn.host_eof || conn.guest_shut_recv))
            && conn.peer_free() == 0
            && !conn.credit_request_sent
        {
            conn.pending |= P_CREDIT_REQUEST;
            conn.credit_request_sent = true;
        }
        if conn.has_rx_work() && !conn.in_backlog {
            conn.in_backlog = true;
            self.backlog.push_back(key);
        }
        let mut want = 0u32;
        if conn.wants_read(max_staging) {
            want |= libc::EPOLLIN as u32;
        }
        if !conn.to_host.is_empty() {
            want |= libc::EPOLLOUT as u32;
        }
        let fd = conn.stream.as_raw_fd();
        let ev = EpollEvent::new(EventSet::from_bits_truncate(want), conn.token);
        let res = if conn.hup && want & libc::EPOLLIN as u32 == 0 {
            // A hung-up socket reports EPOLLHUP whatever the mask: keep it out of epoll while
            // there is nothing to read, or the loop would spin.
            if conn.registered {
                conn.registered = false;
                self.epoll.ctl(ControlOperation::Delete, fd, ev)
            } else {
                Ok(())
            }
        } else if !conn.registered {
            conn.registered = true;
            conn.interest = want;
            self.epoll.ctl(ControlOperation::Add, fd, ev)
        } else if conn.interest != want {
            conn.interest = want;
            self.epoll.ctl(ControlOperation::Modify, fd, ev)
        } else {
            Ok(())
        };
        if let Err(e) = res {
            warn!("vsock: epoll update for {key:?} failed: {e}");
        }
    }

    /// The fd the transport polls for readability; call [`Self::process_events`] when it is.
    pub fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Handles readiness of host sockets, the hybrid listener and the timeout timer. Never
    /// blocks. Returns true if there is RX work (call [`Self::fill_rx`]).
    pub fn process_events(&mut self) -> bool {
        let mut events = [EpollEvent::default(); EPOLL_BATCH];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if !would_block(&e) {
                    warn!("vsock: epoll_wait: {e}");
                }
                0
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            let set = ev.event_set();
            match token {
                TOKEN_LISTENER => self.accept_host_clients(),
                TOKEN_TIMER => {
                    let _ = self.timer.wait();
                    self.check_deadlines();
                }
                t if self.handshakes.contains_key(&t) => self.read_handshake(t),
                t => {
                    let Some(&key) = self.tokens.get(&t) else {
                        continue;
                    };
                    if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.hup = true;
                            if let State::Connecting { request_sent, .. } = c.state {
                                debug!("vsock: host client of {key:?} left before OK");
                                self.kill(key, request_sent);
                                continue;
                            }
                        }
                    }
                    if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
                        self.flush_to_host(key);
                    }
                    if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                        self.read_host(key);
                    }
                    self.refresh(key);
                }
            }
        }
        self.update_timer();
        self.has_rx_work()
    }

    fn accept_host_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() + self.handshakes.len() >= self.opts.max_conns {
                        warn!("vsock: connection limit reached, closing host client");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!("vsock: set_nonblocking: {e}");
                        continue;
                    }
                    let token = self.alloc_token();
                    if let Err(e) = self.epoll.ctl(
                        ControlOperation::Add,
                        stream.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, token),
                    ) {
                        warn!("vsock: epoll add: {e}");
                        continue;
                    }
                    let deadline = Instant::now() + self.opts.handshake_timeout;
                    self.handshakes.insert(
                        token,
                        Handshake {
                            stream,
                            buf: Vec::new(),
                            deadline,
                        },
                    );
                }
                Err(e) if would_block(&e) => return,
                Err(e) => {
                    warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line of a host client, byte-exact: bytes after the newline
    /// are the first payload for the guest.
    fn read_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 256];
        let outcome = match hs.stream.read(&mut buf) {
            Ok(0) => Err("closed before CONNECT"),
            Ok(n) => {
                hs.buf.extend_from_slice(&buf[..n]);
                match hs.buf.iter().position(|&b| b == b'\n') {
                    Some(i) if i <= MAX_CONNECT_LINE => match parse_connect_line(&hs.buf[..i]) {
                        Some(port) => Ok(Some((port, i))),
                        None => Err("malformed CONNECT line"),
                    },
                    Some(_) => Err("CONNECT line too long"),
                    None if hs.buf.len() > MAX_CONNECT_LINE => Err("CONNECT line too long"),
                    None => Ok(None),
                }
            }
            Err(e) if would_block(&e) => Ok(None),
            Err(_) => Err("read error"),
        };
        match outcome {
            Ok(None) => {}
            Ok(Some((port, nl))) => {
                let Some(hs) = self.handshakes.remove(&token) else {
                    return;
                };
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    hs.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
                let early = hs.buf[nl + 1..].to_vec();
                self.host_connect(hs.stream, port, early);
            }
            Err(why) => {
                debug!("vsock: host client dropped: {why}");
                if let Some(hs) = self.handshakes.remove(&token) {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        hs.stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
            }
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .wrapping_add(1)
                .max(FIRST_HOST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == p) {
                return p;
            }
        }
    }

    /// Host client asked for guest port `port`: queue a REQUEST (§5.10.6.4).
    fn host_connect(&mut self, stream: UnixStream, port: u32, early: Vec<u8>) {
        let local_port = self.alloc_local_port();
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let token = self.alloc_token();
        let deadline = Instant::now() + self.opts.ready_timeout;
        let mut conn = Conn::new(
            stream,
            token,
            State::Connecting {
                request_sent: false,
                deadline,
            },
        );
        conn.pending |= P_REQUEST;
        conn.staging = early;
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        debug!("vsock: host CONNECT {port} as {key:?}");
        self.refresh(key);
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            debug!("vsock: host client sent no CONNECT line in time");
            if let Some(hs) = self.handshakes.remove(&t) {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    hs.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        let expired: Vec<(ConnKey, bool)> = self
            .conns
            .iter()
            .filter_map(|(k, c)| match c.state {
                State::Connecting {
                    request_sent,
                    deadline,
                } if deadline <= now => Some((*k, request_sent)),
                State::Closing { deadline } if deadline <= now => Some((*k, false)),
                _ => None,
            })
            .collect();
        for (k, rst) in expired {
            info!("vsock: {k:?} timed out");
            self.kill(k, rst);
        }
    }

    fn update_timer(&mut self) {
        let need = !self.handshakes.is_empty()
            || self
                .conns
                .values()
                .any(|c| !matches!(c.state, State::Established));
        if need != self.timer_armed {
            let r = if need {
                self.timer.reset(TIMER_TICK, Some(TIMER_TICK))
            } else {
                self.timer.clear()
            };
            match r {
                Ok(()) => self.timer_armed = need,
                Err(e) => warn!("vsock: timerfd: {e}"),
            }
        }
    }

    // ---- RX (device → driver), §5.10.6.3 -----------------------------------------------------

    /// Fills the RX virtqueue with pending packets: RST replies first, then connections
    /// round-robin (REQUEST/RESPONSE, data within the guest's credit, SHUTDOWN, credit
    /// messages). Returns true if used entries were added; the caller then notifies the driver.
    pub fn fill_rx<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> io::Result<bool> {
        let mut used = false;
        while self.has_rx_work() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                // Out of buffers: ask for a kick when the driver adds more (EVENT_IDX aware).
                if queue.enable_notification(mem).map_err(io::Error::other)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let mut pkt =
                match VsockPacket::from_rx_virtq_chain(mem, &mut chain, self.opts.max_pkt_data) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!("vsock: unusable RX chain {head}: {e:?}");
                        self.stats.bad_rx += 1;
                        queue.add_used(mem, head, 0).map_err(io::Error::other)?;
                        used = true;
                        continue;
                    }
                };
            match self.next_rx_packet(&mut pkt) {
                Some(len) => {
                    queue
                        .add_used(mem, head, PKT_HEADER_SIZE as u32 + len)
                        .map_err(io::Error::other)?;
                    used = true;
                }
                None => {
                    queue.go_to_previous_position();
                    break;
                }
            }
        }
        self.update_timer();
        Ok(used)
    }

    /// Writes the next pending packet into `pkt`; returns its payload length.
    fn next_rx_packet<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
    ) -> Option<u32> {
        if let Some(h) = self.ctrl.pop_front() {
            self.stats.rst_sent += u64::from(h.op == OP_RST);
            debug!("vsock: → guest {h:?}");
            return write_header(pkt, &h).then_some(0);
        }
        while let Some(key) = self.backlog.pop_front() {
            let cid = self.cid;
            let conn_buf = self.opts.conn_buf_size;
            let connect_timeout = self.opts.connect_timeout;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_backlog = false;
            let mut h = Hdr {
                src_cid: HOST_CID,
                dst_cid: cid,
                src_port: key.local_port,
                dst_port: key.peer_port,
                type_: TYPE_STREAM,
                buf_alloc: conn_buf,
                fwd_cnt: conn.fwd_cnt.0,
                ..Default::default()
            };
            let mut data_len = 0u32;
            if conn.pending & P_REQUEST != 0 {
                conn.pending &= !P_REQUEST;
                h.op = OP_REQUEST;
                conn.state = State::Connecting {
                    request_sent: true,
                    deadline: Instant::now() + connect_timeout,
                };
            } else if conn.pending & P_RESPONSE != 0 {
                conn.pending &= !P_RESPONSE;
                h.op = OP_RESPONSE;
            } else if conn.established() && !conn.staging.is_empty() && conn.peer_free() > 0 {
                let room = pkt.data_slice().map_or(0, |s| s.len());
                let n = conn.staging.len().min(room).min(conn.peer_free() as usize);
                if n == 0 {
                    warn!("vsock: RX buffer without data space");
                    self.stats.bad_rx += 1;
                    // Still consume the buffer with an empty credit update so it is not lost.
                    h.op = OP_CREDIT_UPDATE;
                } else {
                    let written = match pkt.data_slice() {
                        Some(s) => s.write(&conn.staging[..n], 0).unwrap_or(0),
                        None => 0,
                    };
                    conn.staging.drain(..written);
                    conn.tx_cnt += Wrapping(written as u32);
                    data_len = written as u32;
                    h.op = OP_RW;
                    h.len = data_len;
                }
            } else if conn.wants_shutdown() {
                conn.shutdown_sent = true;
                h.op = OP_SHUTDOWN;
                h.flags = SHUTDOWN_F_SEND;
            } else if conn.pending & P_CREDIT_UPDATE != 0 {
                h.op = OP_CREDIT_UPDATE;
            } else if conn.pending & P_CREDIT_REQUEST != 0 {
                conn.pending &= !P_CREDIT_REQUEST;
                h.op = OP_CREDIT_REQUEST;
            } else {
                continue;
            }
            // Every packet carries our credit, so a separate update is no longer needed.
            conn.pending &= !P_CREDIT_UPDATE;
            conn.last_fwd_cnt_sent = conn.fwd_cnt;
            debug!("vsock: → guest {h:?}");
            let ok = write_header(pkt, &h);
            self.refresh(key);
            return ok.then_some(data_len);
        }
        None
    }
}

fn write_header<B: vm_memory::bitmap::BitmapSlice>(pkt: &mut VsockPacket<'_, B>, h: &Hdr) -> bool {
    match pkt.set_header_from_raw(&h.to_bytes()) {
        Ok(()) => true,
        Err(e) => {
            warn!("vsock: cannot write RX header: {e:?}");
            false
        }
    }
}

impl AsRawFd for VsockMuxer {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
