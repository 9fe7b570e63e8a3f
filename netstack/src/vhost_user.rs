//! The vhost-user-net backend (vhost-user spec, back-end side; device type virtio-net,
//! virtio 1.2 §5.1) between a VMM (QEMU `-netdev vhost-user` + `virtio-net-device`, or
//! ax-vmm's vhost-user frontend) and the userspace stack.
//!
//! Queues (§5.1.2): 0 = receiveq1 (device → driver), 1 = transmitq1 (driver → device); no
//! control queue, no multiqueue. Every buffer starts with `struct virtio_net_hdr` (§5.1.6), 12
//! bytes with `VIRTIO_F_VERSION_1`: `u8 flags, u8 gso_type, le16 hdr_len, le16 gso_size,
//! le16 csum_start, le16 csum_offset, le16 num_buffers`. No checksum or segmentation offload
//! is offered, so transmitted headers must be all zero (`VIRTIO_NET_HDR_GSO_NONE`) and received
//! headers are all zero except `num_buffers`.
//!
//! Features: `VIRTIO_NET_F_MAC`, `VIRTIO_NET_F_MTU`, `VIRTIO_NET_F_STATUS`,
//! `VIRTIO_NET_F_MRG_RXBUF` (a received frame may span several receive buffers,
//! §5.1.6.3.1/§5.1.6.4), `VIRTIO_F_VERSION_1`, `VIRTIO_RING_F_EVENT_IDX`,
//! `VIRTIO_RING_F_INDIRECT_DESC`. The configuration space (§5.1.4, served through
//! `VHOST_USER_GET_CONFIG` when [`NetConfig::protocol_features`] is on) is `u8 mac[6];
//! le16 status; le16 max_virtqueue_pairs; le16 mtu`.
//!
//! The frames themselves come from and go to a [`FramePort`]: the netstack's
//! [`crate::stack::GuestPort`], or anything else speaking the same contract (tests use a
//! loopback). A frame for the guest is taken from the port only when the guest has posted
//! receive buffers for it; until then it stays queued in the port (which bounds its queue).

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::{Arc, RwLock};

use ax_vhost::{config_slice, process_available, ExitEvent, Watch};
use log::{debug, trace, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

/// Length of `struct virtio_net_hdr` with `VIRTIO_F_VERSION_1` (virtio 1.2 §5.1.6).
pub const HDR_LEN: usize = 12;
/// Descriptors per queue offered to the frontend.
pub const QUEUE_SIZE: usize = 1024;
/// Largest frame accepted from the guest (without the header): no GSO is offered, so anything
/// above the largest MTU (9000) plus Ethernet and VLAN headers is a broken driver.
pub const MAX_TX_FRAME: usize = 9000 + 18;
/// Receive queue index (§5.1.2).
pub const RX: u16 = 0;
/// Transmit queue index (§5.1.2).
pub const TX: u16 = 1;
const NUM_QUEUES: usize = 2;
/// epoll data of the port's RX eventfd: above `[0, NUM_QUEUES]`, which the daemon reserves
/// (queues, then its exit event).
const PORT_EVENT: u16 = NUM_QUEUES as u16 + 1;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Where guest frames go and frames for the guest come from (the contract of
/// [`crate::stack::GuestPort`]). Frames are whole Ethernet frames without `virtio_net_hdr`.
pub trait FramePort: Send + Sync + 'static {
    /// Takes one frame the guest transmitted.
    fn send(&self, frame: Vec<u8>);
    /// The next frame for the guest, if any.
    fn try_recv(&self) -> Option<Vec<u8>>;
    /// An eventfd that is readable (counter > 0) when [`FramePort::try_recv`] may yield. The
    /// backend reads it (resetting the counter) before draining `try_recv`.
    fn rx_eventfd(&self) -> RawFd;
}

impl<P: FramePort> FramePort for Arc<P> {
    fn send(&self, frame: Vec<u8>) {
        (**self).send(frame)
    }
    fn try_recv(&self) -> Option<Vec<u8>> {
        (**self).try_recv()
    }
    fn rx_eventfd(&self) -> RawFd {
        (**self).rx_eventfd()
    }
}

/// Device settings (the configuration space, §5.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's MAC address (`VIRTIO_NET_F_MAC`).
    pub mac: [u8; 6],
    /// The link MTU the driver should use (`VIRTIO_NET_F_MTU`), 68..=9000.
    pub mtu: u16,
    /// Offer `VHOST_USER_F_PROTOCOL_FEATURES` (with `CONFIG` and `MQ`), so that the frontend
    /// can read the configuration space (MAC, MTU) from the backend (ax-vmm does). Off for
    /// QEMU: QEMU 7.2's virtio-net sends `SET_VRING_ENABLE` before `SET_FEATURES`, which the
    /// vhost crate refuses when the protocol features are offered but not yet acked; QEMU
    /// fills the configuration space itself (`mac=`), and without the protocol features the
    /// rings start enabled (vhost-user spec, "Ring states").
    pub protocol_features: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            mac: DEFAULT_GUEST_MAC,
            mtu: 1500,
            protocol_features: false,
        }
    }
}

/// The MAC address ax gives guests unless told otherwise (QEMU's OUI 52:54:00, as ax-vmm's
/// default in docs/vmm-config.md).
pub const DEFAULT_GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Parses `aa:bb:cc:dd:ee:ff`. Errors: anything else.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!(
            "MAC {s:?} is not six hex bytes like 52:54:00:12:34:56"
        ));
    }
    for (m, p) in mac.iter_mut().zip(&parts) {
        *m = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| format!("MAC {s:?} is not six hex bytes like 52:54:00:12:34:56"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!(
            "MAC {s:?} is a multicast address; use a unicast one"
        ));
    }
    Ok(mac)
}

/// Counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Frames taken from the guest and handed to the port.
    pub tx_frames: u64,
    /// Frames written into guest receive buffers.
    pub rx_frames: u64,
    /// Guest frames dropped (bad header, too large, malformed chain).
    pub tx_dropped: u64,
    /// Frames for the guest dropped (receive buffer too small without mergeable buffers,
    /// malformed chain).
    pub rx_dropped: u64,
}

/// What happened to one frame for the guest ([`deliver`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rx {
    /// Written into the guest's receive buffers.
    Delivered,
    /// No (or not enough) receive buffers: the frame waits.
    NoBuffers,
    /// Not deliverable (too large for the buffers, or a malformed chain): dropped.
    Dropped,
}

/// The vhost-user-net backend over a [`FramePort`].
pub struct NetBackend<P: FramePort> {
    port: P,
    cfg: NetConfig,
    mem: Option<Mem>,
    event_idx: bool,
    mrg_rxbuf: bool,
    /// A frame taken from the port that did not fit the receive buffers posted so far.
    pending: Option<Vec<u8>>,
    stats: Stats,
    exit: ExitEvent,
}

impl<P: FramePort> NetBackend<P> {
    /// Creates the backend. Errors: eventfd creation.
    pub fn new(port: P, cfg: NetConfig) -> io::Result<Self> {
        set_nonblocking(port.rx_eventfd())?;
        Ok(NetBackend {
            port,
            cfg,
            mem: None,
            event_idx: false,
            mrg_rxbuf: false,
            pending: None,
            stats: Stats::default(),
            exit: ExitEvent::new()?,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// `struct virtio_net_config` up to `mtu` (§5.1.4).
    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.cfg.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.cfg.mtu.to_le_bytes());
        c
    }

    /// Moves every available guest frame to the port; returns the used buffers to the driver.
    fn process_tx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = self.mem.clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        process_available(
            vring,
            &mem,
            self.event_idx,
            "virtio-net: bad transmit ring",
            |chain| {
                match read_tx(&mem, chain) {
                    Ok(frame) => {
                        trace!("virtio-net: tx {} bytes", frame.len());
                        self.stats.tx_frames += 1;
                        self.port.send(frame);
                    }
                    Err(why) => {
                        self.stats.tx_dropped += 1;
                        debug!("virtio-net: dropping a guest frame: {why}");
                    }
                }
                0
            },
            || false,
        )
    }

    /// Writes frames from the port (and the pending one) into the guest's receive buffers
    /// until either runs out.
    fn process_rx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = self.mem.clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        if !vring.get_ref().get_queue().ready() {
            return Ok(());
        }
        let mut used = false;
        while let Some(frame) = self.pending.take().or_else(|| self.port.try_recv()) {
            let outcome = {
                let mut st = vring.get_mut();
                deliver(&mem, st.get_queue_mut(), &frame, self.mrg_rxbuf)
            };
            match outcome {
                Rx::Delivered => {
                    self.stats.rx_frames += 1;
                    used = true;
                }
                Rx::Dropped => {
                    self.stats.rx_dropped += 1;
                    used = true;
                }
                Rx::NoBuffers => {
                    self.pending = Some(frame);
                    // Ask for a kick when buffers arrive; if some arrived meanwhile, go on.
                    if self.event_idx && vring.enable_notification().map_err(io::Error::other)? {
                        continue;
                    }
                    break;
                }
            }
        }
        if used && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

/// Reads one transmitted chain: header + frame. Errors: malformed chain, non-zero GSO type,
/// short or oversized frame. Public for the fuzz targets (fuzz/, docs/fuzzing.md).
pub fn read_tx<M>(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<M>,
) -> Result<Vec<u8>, String>
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemory + Sized,
{
    let mut r = Reader::<()>::new(mem, chain).map_err(|e| format!("malformed chain: {e}"))?;
    let n = r.available_bytes();
    if n < HDR_LEN + 14 {
        return Err(format!(
            "{n} bytes is shorter than header + Ethernet header"
        ));
    }
    if n > HDR_LEN + MAX_TX_FRAME {
        return Err(format!(
            "{n} bytes is above the largest frame (no GSO offered)"
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)
        .map_err(|e| format!("reading guest memory: {e}"))?;
    let (flags, gso_type) = (buf[0], buf[1]);
    if gso_type != 0 {
        return Err(format!(
            "gso_type {gso_type} without a negotiated GSO feature"
        ));
    }
    if flags != 0 {
        // VIRTIO_NET_HDR_F_NEEDS_CSUM without VIRTIO_NET_F_CSUM: the driver must not, but the
        // checksum is then simply not filled in. Keep the frame; the stack validates it.
        debug!("virtio-net: tx header flags {flags:#x} without checksum offload");
    }
    buf.drain(..HDR_LEN);
    Ok(buf)
}

/// Writes `frame` (with its header) into one receive chain, or with mergeable buffers into as
/// many as it needs (§5.1.6.4: `num_buffers` in the first header). Public for the fuzz
/// targets (fuzz/, docs/fuzzing.md).
pub fn deliver(mem: &GuestMemoryMmap, q: &mut virtio_queue::Queue, frame: &[u8], mrg: bool) -> Rx {
    let need = HDR_LEN + frame.len();
    let mut chains: Vec<(u16, Writer<'_>)> = Vec::new();
    let mut cap = 0usize;
    while cap < need {
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            // Not enough buffers yet: give the popped ones back, unused.
            for _ in &chains {
                q.go_to_previous_position();
            }
            return Rx::NoBuffers;
        };
        let head = chain.head_index();
        match Writer::<()>::new(mem, chain) {
            Ok(w) => {
                cap += w.available_bytes();
                chains.push((head, w));
            }
            Err(e) => {
                warn!("virtio-net: malformed receive chain: {e}; dropping a frame");
                let heads: Vec<u16> = chains.iter().map(|(h, _)| *h).chain([head]).collect();
                for h in heads {
                    let _ = q.add_used(mem, h, 0);
                }
                return Rx::Dropped;
            }
        }
        if !mrg || chains.len() >= usize::from(q.size()) {
            break;
        }
    }
    if cap < need {
        debug!(
            "virtio-net: a {}-byte frame does not fit a {cap}-byte receive buffer; dropped",
            frame.len()
        );
        for (h, _) in &chains {
            let _ = q.add_used(mem, *h, 0);
        }
        return Rx::Dropped;
    }
    let mut hdr = [0u8; HDR_LEN];
    hdr[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
    let mut first = true;
    let mut src = frame;
    for (head, w) in chains.iter_mut() {
        let mut written = 0;
        if first {
            if w.write_all(&hdr).is_err() {
                let _ = q.add_used(mem, *head, 0);
                return Rx::Dropped;
            }
            written += HDR_LEN;
            first = false;
        }
        let n = w.available_bytes().min(src.len());
        if w.write_all(&src[..n]).is_err() {
            let _ = q.add_used(mem, *head, 0);
            return Rx::Dropped;
        }
        written += n;
        src = &src[n..];
        let _ = q.add_used(mem, *head, written as u32);
    }
    debug_assert!(src.is_empty());
    Rx::Delivered
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; only flags change.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Resets an eventfd's counter (a non-blocking read; nothing to read is fine).
fn drain_eventfd(fd: RawFd) {
    let mut v = [0u8; 8];
    // SAFETY: reading 8 bytes into a local buffer.
    unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) };
}

impl<P: FramePort> VhostUserBackendMut for NetBackend<P> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_MTU)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | if self.cfg.protocol_features {
                VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            } else {
                0
            }
    }

    fn acked_features(&mut self, features: u64) {
        self.mrg_rxbuf = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        debug!(
            "virtio-net: features {features:#x} (mergeable rx buffers: {})",
            self.mrg_rxbuf
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        debug!("virtio-net: device reset");
        self.pending = None;
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.config_bytes(), offset, size)
    }

    fn update_memory(&mut self, mem: Mem) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.pair()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // The vring worker's own seccomp filter, before it reads a frame (docs/jail.md).
        crate::jail::enter_guest_io_once();
        let [rx, tx, ..] = vrings else {
            return Err(io::Error::other("virtio-net: expected rx and tx vrings"));
        };
        match device_event {
            RX => self.process_rx(rx)?,
            TX => {
                self.process_tx(tx)?;
                // Answers the stack produced at once (ARP, DNS) go out in the same wakeup.
                self.process_rx(rx)?;
            }
            PORT_EVENT => {
                drain_eventfd(self.port.rx_eventfd());
                self.process_rx(rx)?;
            }
            other => warn!("virtio-net: unknown device event {other}"),
        }
        Ok(())
    }
}

pub use ax_vhost::{listen, VhostUserListener};

/// Serves one vhost-user frontend until it disconnects (vhost-user spec, back-end side);
/// returns the final [`Stats`]. Blocking: run it on a thread. A frontend going away (the VM
/// powered off) is `Ok`.
pub fn serve<P: FramePort>(
    listener: VhostUserListener,
    port: P,
    cfg: NetConfig,
) -> anyhow::Result<Stats> {
    let rx_fd = port.rx_eventfd();
    let backend = Arc::new(RwLock::new(NetBackend::new(port, cfg)?));
    let watch = Watch {
        fd: rx_fd,
        event: PORT_EVENT,
        what: "the stack's eventfd",
    };
    // The main thread's seccomp filter once the vring worker exists; the request handler,
    // started next, inherits it (docs/jail.md).
    let result =
        ax_vhost::serve_with_hook("ax-netstack", backend.clone(), listener, &[watch], || {
            Ok(crate::jail::enter_main()?)
        });
    let stats = backend.read().map(|b| b.stats()).unwrap_or_default();
    result.map(|()| stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing(vmm_sys_util::eventfd::EventFd);
    impl FramePort for Nothing {
        fn send(&self, _: Vec<u8>) {}
        fn try_recv(&self) -> Option<Vec<u8>> {
            None
        }
        fn rx_eventfd(&self) -> RawFd {
            use std::os::fd::AsRawFd;
            self.0.as_raw_fd()
        }
    }

    #[test]
    fn config_space_and_features() {
        let b = NetBackend::new(
            Nothing(vmm_sys_util::eventfd::EventFd::new(0).unwrap()),
            NetConfig {
                mac: [0x52, 0x54, 0, 1, 2, 3],
                mtu: 1400,
                protocol_features: true,
            },
        )
        .unwrap();
        let c = b.get_config(0, 12);
        assert_eq!(&c[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1, "one queue pair");
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1400);
        assert_eq!(b.get_config(6, 2), vec![1, 0]);
        assert!(b.get_config(10, 4).is_empty());
        assert!(b.get_config(u32::MAX, u32::MAX).is_empty());
        let f = b.features();
        for bit in [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_STATUS,
            VIRTIO_F_VERSION_1,
        ] {
            assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
        }
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        let plain = NetBackend::new(
            Nothing(vmm_sys_util::eventfd::EventFd::new(0).unwrap()),
            NetConfig::default(),
        )
        .unwrap();
        assert_eq!(
            plain.features() & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0,
            "no protocol features by default (QEMU)"
        );
        // No offloads: CSUM (0), GUEST_CSUM (1), GUEST_TSO4 (7), HOST_TSO4 (11).
        for bit in [0, 1, 7, 11] {
            assert_eq!(f & (1 << bit), 0, "offload bit {bit} offered");
        }
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:0f").unwrap(),
            [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "01:00:5e:00:00:01",
            "5:54:00:ab:cd:ef",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
