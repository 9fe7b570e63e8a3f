//! The generic vhost-user frontend: a virtio-mmio device whose data path runs in another
//! process (vhost-user protocol, QEMU docs/interop/vhost-user.rst; docs/virtio.md
//! "vhost-user"). ax-vmm uses it for virtio-fs (virtio 1.2 §5.11, backend: ax-fsd or
//! virtiofsd) and virtio-net (§5.1, backend: ax-netstack).
//!
//! The frontend never touches a descriptor. What it does:
//!
//! * **At start** (main thread, before the jail): connect to the backend's socket, then
//!   `SET_OWNER`, `GET_FEATURES`, `GET_PROTOCOL_FEATURES` / `SET_PROTOCOL_FEATURES`
//!   (`REPLY_ACK`, `MQ`, and `CONFIG` for net), `GET_QUEUE_NUM` (with `MQ`), and for net
//!   `GET_CONFIG` (with `CONFIG`). With `REPLY_ACK` every later request asks for an ack, so a
//!   backend's refusal surfaces as an error.
//! * **At DRIVER_OK** (on the device thread: the vCPU thread's seccomp filter has no socket
//!   calls): `SET_FEATURES` (what the driver accepted, plus `VHOST_USER_F_PROTOCOL_FEATURES`),
//!   `SET_MEM_TABLE` (each guest RAM region as the memfd, its offset in the file and our
//!   mapping's address), then per queue `SET_VRING_NUM`, `SET_VRING_ADDR` (our userspace
//!   addresses of the descriptor table, available and used rings), `SET_VRING_BASE`,
//!   `SET_VRING_CALL`, `SET_VRING_KICK`, and `SET_VRING_ENABLE 1` for all.
//! * **Kicks** go straight from the guest to the backend: the kick fd is the queue's eventfd
//!   that is registered as the KVM ioeventfd on QueueNotify (datamatch = queue index).
//! * **Calls** come to the device thread: the backend signals one eventfd per queue; the
//!   thread sets InterruptStatus bit 0 and signals the irqfd on the device's GSI, so the
//!   guest's interrupt handler reads "used buffer" (virtio 1.2 §4.2.2) as with any device.
//! * **Reset** (Status = 0): the device thread sends `SET_VRING_ENABLE 0` and
//!   `GET_VRING_BASE` (which stops the ring) for each queue, then exits; the connection
//!   stays for the next activation.
//! * **Backend gone** (hang-up on the socket, or any failed request: errors, a 5 s timeout,
//!   a malformed reply): logged once, DEVICE_NEEDS_RESET (§2.1.2) with a configuration
//!   change interrupt; later activations fail the same way. ax-vmm keeps running; there is
//!   no reconnect.
//!
//! Features offered to the driver are the backend's intersected with what this frontend can
//! carry (transport bits plus the device bits listed per type below); the protocol-features
//! bit (30) is vhost-user's own and never reaches the guest.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{device_id, features, read_config_bytes, Activation, Interrupt, VirtioDevice};
use crate::config::{parse_mac, VhostUserConfig, VhostUserType};
use crate::memory::GuestMemoryMmap;

/// How long a request may wait for the backend's reply before the connection counts as
/// broken (SO_RCVTIMEO / SO_SNDTIMEO on the socket).
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30): vhost-user's own, never offered to the guest.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Transport feature bits any vhost-user device may pass to the driver (virtio 1.2 §6):
/// VERSION_1, RING_INDIRECT_DESC, RING_EVENT_IDX. The backend implements them; the
/// frontend only needs them to not change the split-ring layout it describes.
const TRANSPORT_FEATURES: u64 =
    features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX;

/// virtio-net feature bits (virtio 1.2 §5.1.3) whose whole meaning lives in the data path
/// or the backend's configuration space. Not carried: CTRL_VQ and everything that needs it
/// (CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR), and anything newer.
pub mod net_features {
    /// `VIRTIO_NET_F_CSUM`.
    pub const CSUM: u64 = 1 << 0;
    /// `VIRTIO_NET_F_GUEST_CSUM`.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `VIRTIO_NET_F_MTU` (needs `mtu` in the configuration space).
    pub const MTU: u64 = 1 << 3;
    /// `VIRTIO_NET_F_MAC`.
    pub const MAC: u64 = 1 << 5;
    /// `VIRTIO_NET_F_GUEST_TSO4`, `_TSO6`, `_ECN`, `_UFO` (bits 7..=10).
    pub const GUEST_OFFLOADS: u64 = 0xf << 7;
    /// `VIRTIO_NET_F_HOST_TSO4`, `_TSO6`, `_ECN`, `_UFO` (bits 11..=14).
    pub const HOST_OFFLOADS: u64 = 0xf << 11;
    /// `VIRTIO_NET_F_MRG_RXBUF`.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// `VIRTIO_NET_F_STATUS`.
    pub const STATUS: u64 = 1 << 16;
    /// Everything above.
    pub const CARRIED: u64 =
        CSUM | GUEST_CSUM | MTU | MAC | GUEST_OFFLOADS | HOST_OFFLOADS | MRG_RXBUF | STATUS;
}

/// `VIRTIO_NET_S_LINK_UP`.
const NET_S_LINK_UP: u16 = 1;
/// The virtio-net configuration the frontend asks the backend for: `mac[6]`, `le16 status`,
/// `le16 max_virtqueue_pairs`, `le16 mtu` (§5.1.4).
const NET_CONFIG_SIZE: usize = 12;
/// MAC address used when neither the backend nor the config gives one (locally administered).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn err(name: &str, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{name}: {what}: {e}"))
}

/// The connection to the backend, owned by the device while idle and by the device thread
/// while active.
struct Backend {
    fe: Frontend,
    /// Features the backend offers (GET_FEATURES).
    features: u64,
}

impl Backend {
    fn has_protocol_features(&self) -> bool {
        self.features & PROTOCOL_FEATURES != 0
    }
}

/// A vhost-user device (virtio-fs or virtio-net) behind the virtio-mmio transport.
pub struct VhostUser {
    name: String,
    device_type: u32,
    queue_sizes: Vec<u16>,
    offered: u64,
    config: Vec<u8>,
    state: State,
    /// Set once the connection is unusable (hang-up, failed request).
    broken: Arc<AtomicBool>,
}

enum State {
    Idle(Backend),
    Running(Runner),
    /// The device thread panicked (never expected): the connection is gone with it.
    Gone,
}

struct Runner {
    kill: EventFd,
    /// On kill: stop the rings with GET_VRING_BASE (a guest reset) or just leave (ax-vmm
    /// exits; the backend sees the socket close).
    teardown: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<Backend>>>,
}

impl Runner {
    fn stop(&mut self, teardown: bool) -> Option<Backend> {
        self.teardown.store(teardown, Ordering::SeqCst);
        let _ = self.kill.write(1);
        self.thread.take().and_then(|t| t.join().ok().flatten())
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop(false);
    }
}

impl VhostUser {
    /// Connects to the backend of `cfg` and negotiates everything that does not depend on
    /// the driver. `name` is used in logs ("vhost-user-fs0").
    pub fn new(cfg: &VhostUserConfig, name: String) -> io::Result<Self> {
        let sock = UnixStream::connect(&cfg.socket).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{name}: cannot connect to the vhost-user backend at {}: {e}; start the backend first (virtiofsd/ax-fsd for fs, ax-netstack for net) or fix [[vhost_user]] socket",
                    cfg.socket.display()
                ),
            )
        })?;
        sock.set_read_timeout(Some(BACKEND_TIMEOUT))?;
        sock.set_write_timeout(Some(BACKEND_TIMEOUT))?;
        let num_queues = usize::from(cfg.num_queues);
        let mut fe = Frontend::from_stream(sock, num_queues as u64);
        fe.set_owner().map_err(|e| err(&name, "SET_OWNER", e))?;
        let backend_features = fe
            .get_features()
            .map_err(|e| err(&name, "GET_FEATURES", e))?;
        if backend_features & features::VERSION_1 == 0 {
            return Err(err(
                &name,
                "backend",
                format!("it does not offer VIRTIO_F_VERSION_1 (features {backend_features:#x}); ax-vmm has no legacy virtio"),
            ));
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if backend_features & PROTOCOL_FEATURES != 0 {
            let offered = fe
                .get_protocol_features()
                .map_err(|e| err(&name, "GET_PROTOCOL_FEATURES", e))?;
            let mut want = VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ;
            if cfg.device_type == VhostUserType::Net {
                want |= VhostUserProtocolFeatures::CONFIG;
            }
            protocol = offered & want;
            fe.set_protocol_features(protocol)
                .map_err(|e| err(&name, "SET_PROTOCOL_FEATURES", e))?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = fe
                .get_queue_num()
                .map_err(|e| err(&name, "GET_QUEUE_NUM", e))?;
            if n < num_queues as u64 {
                return Err(err(
                    &name,
                    "backend",
                    format!("it supports {n} queues, num_queues = {num_queues} asks for more; lower num_queues or configure the backend for more queues"),
                ));
            }
        }

        let mut offered = backend_features & TRANSPORT_FEATURES;
        let (device_type, config) = match cfg.device_type {
            VhostUserType::Fs => {
                // struct virtio_fs_config (§5.11.4): u8 tag[36]; le32 num_request_queues.
                let mut c = vec![0u8; 40];
                let tag = cfg.tag.as_deref().unwrap_or_default().as_bytes();
                let n = tag.len().min(crate::config::FS_TAG_MAX);
                c[..n].copy_from_slice(&tag[..n]);
                let req = u32::from(cfg.num_queues.saturating_sub(1));
                c[36..40].copy_from_slice(&req.to_le_bytes());
                (device_id::FS, c)
            }
            VhostUserType::Net => {
                let from_backend = if protocol.contains(VhostUserProtocolFeatures::CONFIG) {
                    match fe.get_config(
                        0,
                        NET_CONFIG_SIZE as u32,
                        VhostUserConfigFlags::empty(),
                        &[0u8; NET_CONFIG_SIZE],
                    ) {
                        Ok((_, payload)) if payload.len() == NET_CONFIG_SIZE => Some(payload),
                        Ok(_) => None,
                        Err(e) => {
                            log::warn!("{name}: GET_CONFIG failed ({e}); the frontend fills the configuration space");
                            None
                        }
                    }
                } else {
                    None
                };
                match from_backend {
                    Some(c) => {
                        offered |= backend_features & net_features::CARRIED;
                        (device_id::NET, c)
                    }
                    None => {
                        // The frontend provides mac and status itself (they are
                        // configuration-space only); no mtu, so no VIRTIO_NET_F_MTU.
                        let mac = cfg
                            .mac
                            .as_deref()
                            .and_then(parse_mac)
                            .unwrap_or(DEFAULT_MAC);
                        let mut c = vec![0u8; NET_CONFIG_SIZE];
                        c[..6].copy_from_slice(&mac);
                        c[6..8].copy_from_slice(&NET_S_LINK_UP.to_le_bytes());
                        c[8..10].copy_from_slice(&1u16.to_le_bytes());
                        offered |= backend_features & net_features::CARRIED & !net_features::MTU;
                        offered |= net_features::MAC | net_features::STATUS;
                        (device_id::NET, c)
                    }
                }
            }
        };
        log::debug!(
            "{name}: backend features {backend_features:#x}, protocol features {:#x}, offering {offered:#x}",
            protocol.bits()
        );
        Ok(VhostUser {
            name,
            device_type,
            queue_sizes: vec![cfg.queue_size; num_queues],
            offered,
            config,
            state: State::Idle(Backend {
                fe,
                features: backend_features,
            }),
            broken: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// What the device thread sends at DRIVER_OK (addresses already translated).
struct Setup {
    /// Features for SET_FEATURES.
    features: u64,
    vrings: Vec<(u16, VringConfigData, u16)>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
}

/// Our userspace address of `len` bytes of guest memory at `addr`, which must lie in one
/// region (vhost-user rings are described by one address each).
fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<u64, String> {
    let (region, off) = mem
        .to_region_addr(GuestAddress(addr))
        .ok_or_else(|| format!("{addr:#x} is outside guest memory"))?;
    let end = off.0.checked_add(len).filter(|&e| e <= region.len());
    if end.is_none() {
        return Err(format!("{addr:#x}+{len:#x} crosses the end of guest RAM"));
    }
    region
        .get_host_address(off)
        .map(|p| p as u64)
        .map_err(|e| format!("{addr:#x}: {e}"))
}

/// The vring description of one queue (split ring sizes, virtio 1.2 §2.7).
fn vring(mem: &GuestMemoryMmap, q: &Queue) -> Result<VringConfigData, String> {
    let n = u64::from(q.size());
    Ok(VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: host_range(mem, q.desc_table(), 16 * n)?,
        // flags, idx, ring[n], used_event
        avail_ring_addr: host_range(mem, q.avail_ring(), 6 + 2 * n)?,
        // flags, idx, ring[n] of {id, len}, avail_event
        used_ring_addr: host_range(mem, q.used_ring(), 6 + 8 * n)?,
        log_addr: None,
    })
}

impl VirtioDevice for VhostUser {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, act: Activation) -> Result<(), String> {
        if self.broken.load(Ordering::SeqCst) {
            return Err("the vhost-user backend is gone (see the earlier message); restart the VM with the backend running".into());
        }
        let backend = match std::mem::replace(&mut self.state, State::Gone) {
            State::Idle(b) => b,
            State::Running(r) => {
                self.state = State::Running(r);
                return Err("device already active".into());
            }
            State::Gone => return Err("the device thread was lost; the device is unusable".into()),
        };
        let prepared = (|| {
            let mut vrings = Vec::with_capacity(act.queues.len());
            for (i, q) in act.queues.iter().enumerate() {
                let v = vring(&act.mem, q).map_err(|e| format!("queue {i}: {e}"))?;
                vrings.push((q.size(), v, q.next_avail()));
            }
            let calls = (0..act.queues.len())
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<io::Result<Vec<_>>>()
                .map_err(|e| format!("call eventfd: {e}"))?;
            let kill = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
            let kill2 = kill.try_clone().map_err(|e| format!("eventfd: {e}"))?;
            Ok::<_, String>((vrings, calls, kill, kill2))
        })();
        let (vrings, calls, kill, kill_thread) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.state = State::Idle(backend);
                return Err(e);
            }
        };
        // What the driver accepted, as far as the backend offers it (the frontend's own
        // net config bits may be absent there), plus vhost-user's protocol-features bit.
        let setup = Setup {
            features: (act.acked_features & backend.features)
                | (backend.features & PROTOCOL_FEATURES),
            vrings,
            kicks: act.queue_evts,
            calls,
        };
        let teardown = Arc::new(AtomicBool::new(false));
        let ctx = ThreadCtx {
            name: self.name.clone(),
            mem: act.mem,
            interrupt: act.interrupt,
            broken: self.broken.clone(),
            teardown: teardown.clone(),
            kill: kill_thread,
        };
        // Shared with the thread: if spawning fails, the backend comes back through here.
        let slot = Arc::new(std::sync::Mutex::new(Some(backend)));
        let slot_thread = slot.clone();
        let builder = std::thread::Builder::new()
            .name(thread_name(&self.name))
            .stack_size(256 << 10);
        let spawned = crate::jail::spawn(builder, crate::jail::ThreadKind::Device, move || {
            let b = slot_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
            b.map(|b| run(b, setup, ctx))
        });
        match spawned {
            Ok(t) => {
                self.state = State::Running(Runner {
                    kill,
                    teardown,
                    thread: Some(t),
                });
                Ok(())
            }
            Err(e) => {
                if let Some(b) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    self.state = State::Idle(b);
                }
                Err(format!("cannot start the device thread: {e}"))
            }
        }
    }

    fn reset(&mut self) {
        match std::mem::replace(&mut self.state, State::Gone) {
            State::Running(mut r) => {
                if let Some(b) = r.stop(true) {
                    self.state = State::Idle(b);
                } else {
                    log::error!(
                        "{}: the device thread died; the device is unusable",
                        self.name
                    );
                }
            }
            other => self.state = other,
        }
    }
}

/// A thread name within Linux's 15 bytes: "vhost-user-fs0" → "vu-fs0".
fn thread_name(name: &str) -> String {
    name.replace("vhost-user-", "vu-")
        .chars()
        .take(15)
        .collect()
}

struct ThreadCtx {
    name: String,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    broken: Arc<AtomicBool>,
    teardown: Arc<AtomicBool>,
    kill: EventFd,
}

impl ThreadCtx {
    /// The connection failed: log once, DEVICE_NEEDS_RESET.
    fn fail(&self, what: &str) {
        if !self.broken.swap(true, Ordering::SeqCst) {
            log::warn!(
                "{}: {what}; the vhost-user connection is unusable: device needs reset (DEVICE_NEEDS_RESET), no reconnect",
                self.name
            );
        }
        self.interrupt.set_needs_reset();
    }
}

const KILL: u64 = u64::MAX;
const SOCKET: u64 = u64::MAX - 1;

/// Sends the DRIVER_OK sequence (module docs).
fn start(b: &mut Backend, s: &Setup, mem: &GuestMemoryMmap) -> Result<(), String> {
    let fe = &mut b.fe;
    fe.set_features(s.features)
        .map_err(|e| format!("SET_FEATURES {:#x}: {e}", s.features))?;
    let regions = mem
        .iter()
        .map(VhostUserMemoryRegionInfo::from_guest_region)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("guest RAM is not file-backed: {e}"))?;
    fe.set_mem_table(&regions)
        .map_err(|e| format!("SET_MEM_TABLE: {e}"))?;
    for (i, (size, v, base)) in s.vrings.iter().enumerate() {
        fe.set_vring_num(i, *size)
            .map_err(|e| format!("SET_VRING_NUM {i}: {e}"))?;
        fe.set_vring_addr(i, v)
            .map_err(|e| format!("SET_VRING_ADDR {i}: {e}"))?;
        fe.set_vring_base(i, *base)
            .map_err(|e| format!("SET_VRING_BASE {i}: {e}"))?;
        fe.set_vring_call(i, &s.calls[i])
            .map_err(|e| format!("SET_VRING_CALL {i}: {e}"))?;
        fe.set_vring_kick(i, &s.kicks[i])
            .map_err(|e| format!("SET_VRING_KICK {i}: {e}"))?;
    }
    if b.features & s.features & PROTOCOL_FEATURES != 0 {
        for i in 0..s.vrings.len() {
            b.fe.set_vring_enable(i, true)
                .map_err(|e| format!("SET_VRING_ENABLE {i}: {e}"))?;
        }
    }
    Ok(())
}

/// Stops every ring (device reset): SET_VRING_ENABLE 0, then GET_VRING_BASE, which the
/// spec defines as stopping the ring.
fn stop(b: &mut Backend, n: usize, ctx: &ThreadCtx) {
    for i in 0..n {
        if b.has_protocol_features() {
            if let Err(e) = b.fe.set_vring_enable(i, false) {
                ctx.fail(&format!("SET_VRING_ENABLE {i} 0 failed at reset: {e}"));
                return;
            }
        }
        match b.fe.get_vring_base(i) {
            Ok(base) => log::debug!("{}: queue {i} stopped at available index {base}", ctx.name),
            Err(e) => {
                ctx.fail(&format!("GET_VRING_BASE {i} failed at reset: {e}"));
                return;
            }
        }
    }
}

/// True if the backend closed the connection (or it failed); false if data is waiting
/// (a message we did not ask for) or nothing is.
fn peer_closed(fd: RawFd) -> Option<bool> {
    let mut b = [0u8; 1];
    // SAFETY: b is a valid 1-byte buffer; MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Some(true),
        n if n > 0 => Some(false),
        _ => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                _ => Some(true),
            }
        }
    }
}

/// The device thread: set up the rings, then forward calls to the guest and watch the
/// connection until killed.
fn run(mut b: Backend, s: Setup, ctx: ThreadCtx) -> Backend {
    let n = s.vrings.len();
    let sock = b.fe.as_raw_fd();
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            log::error!("{}: epoll_create: {e}; device needs reset", ctx.name);
            ctx.interrupt.set_needs_reset();
            return b;
        }
    };
    let add = |fd: RawFd, token: u64, ev: EventSet| {
        epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token))
    };
    if let Err(e) = add(ctx.kill.as_raw_fd(), KILL, EventSet::IN) {
        log::error!("{}: epoll_ctl: {e}; device needs reset", ctx.name);
        ctx.interrupt.set_needs_reset();
        return b;
    }
    let mut active = match start(&mut b, &s, &ctx.mem) {
        Ok(()) => {
            log::debug!(
                "{}: backend rings started ({n} queues, features {:#x})",
                ctx.name,
                s.features
            );
            true
        }
        Err(e) => {
            ctx.fail(&format!("activation failed: {e}"));
            false
        }
    };
    if active {
        let mut ok = add(sock, SOCKET, EventSet::IN | EventSet::READ_HANG_UP).is_ok();
        for (i, c) in s.calls.iter().enumerate() {
            ok &= add(c.as_raw_fd(), i as u64, EventSet::IN).is_ok();
        }
        if !ok {
            ctx.fail("epoll_ctl failed");
            active = false;
        }
    }
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        let got = match epoll.wait(-1, &mut events) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!(
                    "{}: epoll_wait failed: {e}; stopping the device thread",
                    ctx.name
                );
                ctx.interrupt.set_needs_reset();
                return b;
            }
        };
        for ev in &events[..got] {
            match ev.data() {
                KILL => {
                    if active
                        && ctx.teardown.load(Ordering::SeqCst)
                        && !ctx.broken.load(Ordering::SeqCst)
                    {
                        stop(&mut b, n, &ctx);
                    }
                    return b;
                }
                SOCKET => match peer_closed(sock) {
                    None => {}
                    Some(closed) => {
                        let _ = epoll.ctl(ControlOperation::Delete, sock, EpollEvent::default());
                        ctx.fail(if closed {
                            "the backend closed the connection"
                        } else {
                            "the backend sent a message nobody asked for"
                        });
                    }
                },
                q => {
                    // A call: the backend used buffers in queue q (it already applied
                    // VIRTIO_F_EVENT_IDX suppression). InterruptStatus bit 0, then the irqfd.
                    if let Some(c) = s.calls.get(q as usize) {
                        let _ = c.read();
                        ctx.interrupt.signal_used();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    #[test]
    fn host_ranges_stay_inside_one_region() {
        let ram = GuestRam::new(4 << 20).unwrap();
        let base = ram.regions()[0].2;
        assert_eq!(host_range(&ram.mem, 0x1000, 0x100).unwrap(), base + 0x1000);
        assert!(host_range(&ram.mem, (4 << 20) - 8, 8).is_ok());
        assert!(host_range(&ram.mem, (4 << 20) - 8, 9).is_err());
        assert!(host_range(&ram.mem, 4 << 20, 1).is_err());
        assert!(host_range(&ram.mem, u64::MAX, 2).is_err());
    }

    #[test]
    fn thread_names_fit_linux() {
        assert_eq!(thread_name("vhost-user-fs0"), "vu-fs0");
        assert!(thread_name("vhost-user-net12345678901234").len() <= 15);
    }

    /// A minimal vhost-user backend: answers GET_FEATURES (1) with `features` and records
    /// every request code; offers no protocol features.
    fn fake_backend(path: &std::path::Path, features: u64) -> JoinHandle<Vec<u32>> {
        use std::io::{Read, Write};
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut seen = Vec::new();
            let mut hdr = [0u8; 12];
            while s.read_exact(&mut hdr).is_ok() {
                let req = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
                let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap());
                let mut body = vec![0u8; size as usize];
                s.read_exact(&mut body).unwrap();
                seen.push(req);
                if req == 1 {
                    // version 1 | REPLY, 8 bytes of u64
                    let mut r = Vec::new();
                    r.extend(1u32.to_le_bytes());
                    r.extend(5u32.to_le_bytes());
                    r.extend(8u32.to_le_bytes());
                    r.extend(features.to_le_bytes());
                    s.write_all(&r).unwrap();
                }
            }
            seen
        })
    }

    fn net_cfg(socket: std::path::PathBuf) -> VhostUserConfig {
        VhostUserConfig {
            mac: Some("02:00:00:00:00:07".into()),
            ..VhostUserConfig::net_flag(socket)
        }
    }

    #[test]
    fn net_without_backend_config_gets_mac_and_link_from_the_frontend() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("net.sock");
        let ctrl_vq = 1 << 17;
        let mq = 1 << 22;
        let log_all = 1 << 26;
        let b = fake_backend(
            &sock,
            features::VERSION_1
                | features::RING_EVENT_IDX
                | net_features::CSUM
                | net_features::MTU
                | ctrl_vq
                | mq
                | log_all,
        );
        let dev = VhostUser::new(&net_cfg(sock), "vhost-user-net0".into()).unwrap();
        assert_eq!(dev.device_type(), device_id::NET);
        assert_eq!(dev.queue_max_sizes(), &[1024, 1024]);
        // Carried: transport bits and CSUM; MAC/STATUS come from the frontend; MTU (no mtu
        // in our config), CTRL_VQ, MQ and vhost's LOG_ALL are not offered.
        assert_eq!(
            dev.features(),
            features::VERSION_1
                | features::RING_EVENT_IDX
                | net_features::CSUM
                | net_features::MAC
                | net_features::STATUS
        );
        let mut c = [0u8; 12];
        dev.read_config(0, &mut c);
        assert_eq!(c, [2, 0, 0, 0, 0, 7, 1, 0, 1, 0, 0, 0]);
        drop(dev);
        // SET_OWNER (3), GET_FEATURES (1); nothing else without DRIVER_OK.
        assert_eq!(b.join().unwrap(), vec![3, 1]);
    }

    #[test]
    fn a_backend_without_version_1_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("old.sock");
        let _b = fake_backend(&sock, features::RING_EVENT_IDX);
        let e = VhostUser::new(&net_cfg(sock), "vhost-user-net0".into())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("VIRTIO_F_VERSION_1"), "{e}");
    }

    #[test]
    fn missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = VhostUserConfig {
            socket: dir.path().join("nope.sock"),
            device_type: VhostUserType::Fs,
            num_queues: 2,
            queue_size: 1024,
            tag: Some("t".into()),
            mac: None,
        };
        let e = VhostUser::new(&cfg, "vhost-user-fs0".into())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("cannot connect") && e.contains("nope.sock"),
            "{e}"
        );
    }
}
