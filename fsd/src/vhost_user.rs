//! The vhost-user-fs backend (vhost-user spec, back-end side; device type virtio-fs, virtio 1.2
//! §5.11), for QEMU's `vhost-user-fs-device` and ax-vmm's vhost-user frontend.
//!
//! Queues (§5.11.2): 0 = hiprio (FORGET, BATCH_FORGET, INTERRUPT: no replies), 1..=N = request
//! queues. Every descriptor chain is one FUSE request: the device-readable part is
//! `fuse_in_header` + body, the device-writable part receives `fuse_out_header` + body
//! (§5.11.6). The configuration space (§5.11.4) is `struct virtio_fs_config { u8 tag[36];
//! le32 num_request_queues; }`, served through `VHOST_USER_GET_CONFIG`
//! (`VHOST_USER_PROTOCOL_F_CONFIG`) for frontends that ask the backend (QEMU takes the tag from
//! its own `tag=` property instead).

use std::io;
use std::mem::size_of;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use ax_vhost::{config_slice, ExitEvent};
use log::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

mod chain;

use crate::fuse::abi::{opcode, read_struct, InHeader, OutHeader, WriteIn};
use crate::fuse::filesystem::FileSystem;
use crate::fuse::server::{Server, MAX_REQUEST};
use chain::Bufs;

/// Length of `virtio_fs_config.tag` (virtio 1.2 §5.11.4).
pub const TAG_LEN: usize = 36;
/// Descriptors per queue we accept.
pub const QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Device configuration.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Mount tag the guest uses (`mount -t virtiofs TAG /mnt`), at most 36 bytes.
    pub tag: String,
    /// Number of request queues (1..=63); the hiprio queue comes on top. Each request queue
    /// gets its own worker thread (the first one shares it with the hiprio queue).
    pub num_request_queues: usize,
    /// After a request queue runs dry, keep polling its available ring this long before
    /// sleeping on the kick eventfd (zero: never poll). Back-to-back requests then skip the
    /// wakeup; costs up to this much CPU time per burst.
    pub poll: Duration,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            tag: "workspace".into(),
            num_request_queues: 1,
            poll: Duration::ZERO,
        }
    }
}

/// The vhost-user backend: the FUSE [`Server`] plus the guest memory the frontend shared.
pub struct FsBackend<F: FileSystem> {
    server: Arc<Server<F>>,
    cfg: FsConfig,
    mem: RwLock<Option<Mem>>,
    event_idx: RwLock<bool>,
    exit: ExitEvent,
}

impl<F: FileSystem> FsBackend<F> {
    /// Creates the backend (the tag must fit 36 bytes).
    pub fn new(server: Arc<Server<F>>, cfg: FsConfig) -> anyhow::Result<Self> {
        if cfg.tag.is_empty() || cfg.tag.len() > TAG_LEN {
            return Err(anyhow!(
                "virtio-fs tag {:?} must be 1..=36 bytes, e.g. --tag workspace",
                cfg.tag
            ));
        }
        if !(1..=63).contains(&cfg.num_request_queues) {
            return Err(anyhow!(
                "--queues must be 1..=63 (got {}), e.g. --queues 1",
                cfg.num_request_queues
            ));
        }
        Ok(Self {
            server,
            cfg,
            mem: RwLock::new(None),
            event_idx: RwLock::new(false),
            exit: ExitEvent::new()?,
        })
    }

    /// `struct virtio_fs_config` bytes (virtio 1.2 §5.11.4).
    fn config_bytes(&self) -> [u8; TAG_LEN + 4] {
        let mut c = [0u8; TAG_LEN + 4];
        c[..self.cfg.tag.len()].copy_from_slice(self.cfg.tag.as_bytes());
        c[TAG_LEN..].copy_from_slice(&(self.cfg.num_request_queues as u32).to_le_bytes());
        c
    }

    /// Handles every available chain of one queue, then signals the used ring.
    fn process_queue(&self, vring: &VringRwLock, poll: bool) -> io::Result<()> {
        let Some(atomic) = self.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let event_idx = *self.event_idx.read().unwrap_or_else(|p| p.into_inner());
        ax_vhost::process_available(
            vring,
            &mem,
            event_idx,
            "virtio-fs: bad available ring",
            |chain| self.process_chain(&mem, chain),
            || poll && self.poll_for_work(vring, &mem),
        )
    }

    /// Spins up to `cfg.poll` watching the available ring; `true` as soon as the driver added a
    /// chain we have not taken yet.
    fn poll_for_work(&self, vring: &VringRwLock, mem: &GuestMemoryMmap) -> bool {
        if self.cfg.poll.is_zero() {
            return false;
        }
        let deadline = Instant::now() + self.cfg.poll;
        let mut spins = 0u32;
        loop {
            {
                let st = vring.get_ref();
                let q = st.get_queue();
                if !q.ready() {
                    return false;
                }
                match q.avail_idx(mem, AtomicOrdering::Acquire) {
                    Ok(idx) if idx.0 != q.next_avail() => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            spins = spins.wrapping_add(1);
            if spins % 4 == 0 && Instant::now() >= deadline {
                return false;
            }
            // Give the core away between looks: the driver's thread may be waiting for it
            // (the scheduler tends to wake us on the waker's core).
            std::thread::yield_now();
        }
    }

    /// One FUSE request: returns the number of bytes written to the writable part. READ data
    /// is read from the file straight into the writable buffers and a WRITE payload written
    /// straight from the readable ones ([`chain::Bufs`]); other requests are copied out whole.
    fn process_chain<T>(
        &self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<T>,
    ) -> u32
    where
        T: std::ops::Deref + Clone,
        T::Target: vm_memory::GuestMemory + Sized,
    {
        let (mut reader, mut writer) = match (
            Bufs::from_chain(mem, chain.clone(), false),
            Bufs::from_chain(mem, chain, true),
        ) {
            (Ok(r), Ok(w)) => (r, w),
            (Err(e), _) | (_, Err(e)) => {
                debug!("virtio-fs: malformed descriptor chain: {e}");
                return 0;
            }
        };
        let cap = writer.len();
        let hl = size_of::<OutHeader>();
        // The header and, for WRITE, fuse_write_in: enough to route the request.
        let mut head = [0u8; size_of::<InHeader>() + size_of::<WriteIn>()];
        let n = reader.len().min(head.len());
        if reader.read_exact(&mut head[..n]).is_err() {
            return 0;
        }
        let op = read_struct::<InHeader>(&head[..n]).map(|(h, _)| h.opcode);
        if op == Some(opcode::WRITE) && n == head.len() {
            return match self.server.handle_write(&head, &mut reader, cap) {
                Some(reply) => self.reply(&mut writer, &reply),
                None => 0,
            };
        }
        // A request longer than MAX_REQUEST is cut: its header then disagrees with the bytes
        // and the server answers EINVAL.
        let mut buf = vec![0u8; (n + reader.len()).min(MAX_REQUEST)];
        buf[..n].copy_from_slice(&head[..n]);
        if reader.read_exact(&mut buf[n..]).is_err() {
            return 0;
        }
        if op == Some(opcode::READ) && cap >= hl {
            let mut data = writer.split_off(hl);
            let Some(h) = self.server.handle_read(&buf, &mut data) else {
                return 0;
            };
            return match writer.write_all(h.as_slice()) {
                Ok(()) => h.len,
                Err(e) => {
                    debug!("virtio-fs: cannot write reply header: {e}");
                    0
                }
            };
        }
        match self.server.handle(&buf, cap) {
            Some(reply) => self.reply(&mut writer, &reply),
            None => 0,
        }
    }

    /// Writes a whole reply into the writable part; returns its length (0 when it does not
    /// fit: the server never makes one longer than the part, so only a header can miss).
    fn reply(&self, writer: &mut Bufs<'_>, reply: &[u8]) -> u32 {
        match writer.write_all(reply) {
            Ok(()) => reply.len() as u32,
            Err(e) => {
                debug!(
                    "virtio-fs: writable part ({} bytes) too small for the reply: {e}",
                    writer.len()
                );
                0
            }
        }
    }
}

impl<F: FileSystem + 'static> VhostUserBackend for FsBackend<F> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1 + self.cfg.num_request_queues
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    /// Worker threads: the first serves the hiprio queue and request queue 1, each further
    /// request queue has its own (bit masks of queue indexes).
    fn queues_per_thread(&self) -> Vec<u64> {
        let mut v = vec![0b11u64];
        v.extend((2..=self.cfg.num_request_queues).map(|q| 1u64 << q));
        v
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, enabled: bool) {
        *self.event_idx.write().unwrap_or_else(|p| p.into_inner()) = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.config_bytes(), offset, size)
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.pair()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        // The worker's own seccomp filter, before it reads a request (docs/jail.md).
        crate::jail::enter_worker();
        if evset != EventSet::IN {
            warn!("virtio-fs: unexpected event set {evset:?}");
        }
        match vrings.get(device_event as usize) {
            // `device_event` indexes this thread's queues: thread 0's first is hiprio (no
            // polling for FORGETs).
            Some(v) => self.process_queue(v, thread_id != 0 || device_event != 0),
            None => {
                warn!("virtio-fs: event for unknown queue {device_event}");
                Ok(())
            }
        }
    }
}

pub use ax_vhost::{listen, VhostUserListener};

/// Serves one vhost-user frontend until it disconnects (the VM powering off is `Ok`).
/// Blocking. Errors: a bad [`FsConfig`], the jail's main-thread filter, or a vhost-user
/// failure ([`ax_vhost::serve`]).
pub fn serve<F: FileSystem + 'static>(
    listener: VhostUserListener,
    server: Arc<Server<F>>,
    cfg: FsConfig,
) -> anyhow::Result<()> {
    let backend = Arc::new(FsBackend::new(server, cfg)?);
    // The main thread's seccomp filter once the vring workers exist; the request handler,
    // started next, inherits it (docs/jail.md).
    ax_vhost::serve_with_hook("ax-fsd", backend, listener, &[], || {
        Ok(crate::jail::enter_main()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl FileSystem for Nothing {}

    #[test]
    fn config_space_is_tag_and_queue_count() {
        let b = FsBackend::new(
            Arc::new(Server::new(Nothing)),
            FsConfig {
                tag: "workspace".into(),
                num_request_queues: 2,
                poll: Duration::ZERO,
            },
        )
        .unwrap();
        let c = b.get_config(0, 40);
        assert_eq!(&c[..9], b"workspace");
        assert!(c[9..36].iter().all(|&x| x == 0));
        assert_eq!(&c[36..], &2u32.to_le_bytes());
        assert_eq!(b.num_queues(), 3);
        assert_eq!(
            b.queues_per_thread(),
            [0b011, 0b100],
            "hiprio + q1, then q2 alone"
        );
        assert!(b.get_config(38, 4).is_empty());
        assert!(b.get_config(u32::MAX, u32::MAX).is_empty());
        assert!(FsBackend::new(
            Arc::new(Server::new(Nothing)),
            FsConfig {
                tag: "x".repeat(37),
                num_request_queues: 1,
                poll: Duration::ZERO,
            }
        )
        .is_err());
    }
}
