//! vhost-user backend for the hybrid vsock device (vhost-user spec, "Back-end" role; device
//! type virtio-vsock, virtio 1.2 §5.10), for QEMU's `vhost-user-vsock-device`.
//!
//! Queues: 0 = rx, 1 = tx, 2 = event (§5.10.2). The configuration space is the 8-byte
//! little-endian `guest_cid` (§5.10.4), served through `VHOST_USER_GET_CONFIG`
//! (`VHOST_USER_PROTOCOL_F_CONFIG`): QEMU's vhost-user-vsock device reads the CID from the
//! backend.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use ax_vhost::{config_slice, ExitEvent, Watch};
use log::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::muxer::{MuxerOptions, VsockMuxer};
use crate::HybridConfig;

const NUM_QUEUES: usize = 3;
const QUEUE_SIZE: usize = 1024;
const RX: u16 = 0;
const TX: u16 = 1;
const EVT: u16 = 2;
/// epoll data for the muxer's fd: above the range `[0, NUM_QUEUES]` the daemon reserves.
const MUXER_EVENT: u16 = NUM_QUEUES as u16 + 1;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// The vhost-user backend: a [`VsockMuxer`] plus the guest memory the frontend shared.
pub struct VsockBackend {
    muxer: VsockMuxer,
    mem: Option<Mem>,
    event_idx: bool,
    exit: ExitEvent,
}

impl VsockBackend {
    /// Creates the backend; binds the hybrid listener at once.
    pub fn new(cfg: &HybridConfig, opts: MuxerOptions) -> io::Result<Self> {
        Ok(Self {
            muxer: VsockMuxer::new(cfg, opts)?,
            mem: None,
            event_idx: false,
            exit: ExitEvent::new()?,
        })
    }

    /// The device logic.
    pub fn muxer(&mut self) -> &mut VsockMuxer {
        &mut self.muxer
    }

    fn run_rx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return Ok(());
        };
        if !vring.get_ref().get_queue().ready() || !self.muxer.has_rx_work() {
            return Ok(());
        }
        let used = {
            let mut st = vring.get_mut();
            self.muxer.fill_rx(&*mem, st.get_queue_mut())?
        };
        if used {
            notify(vring)?;
        }
        Ok(())
    }

    fn run_tx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return Ok(());
        };
        if !vring.get_ref().get_queue().ready() {
            return Ok(());
        }
        let used = {
            let mut st = vring.get_mut();
            self.muxer.process_tx(&*mem, st.get_queue_mut())?
        };
        if used {
            notify(vring)?;
        }
        Ok(())
    }
}

/// Signals the used queue unless `VIRTIO_RING_F_EVENT_IDX` says the driver does not want it.
fn notify(vring: &VringRwLock) -> io::Result<()> {
    if vring.needs_notification().map_err(io::Error::other)? {
        vring.signal_used_queue()?;
    }
    Ok(())
}

impl VhostUserBackendMut for VsockBackend {
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
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        debug!("vsock: device reset");
        self.muxer.reset();
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// `struct virtio_vsock_config { le64 guest_cid; }` (virtio 1.2 §5.10.4).
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.muxer.guest_cid().to_le_bytes(), offset, size)
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
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let [rx, tx, ..] = vrings else {
            return Err(io::Error::other("vsock: expected rx and tx vrings"));
        };
        log::trace!("vsock: device event {device_event} {evset:?}");
        match device_event {
            RX => self.run_rx(rx)?,
            TX => {
                self.run_tx(tx)?;
                self.run_rx(rx)?;
            }
            EVT => {}
            MUXER_EVENT => {
                if !evset.contains(EventSet::IN) {
                    warn!("vsock: unexpected muxer event set {evset:?}");
                }
                self.muxer.process_events();
                self.run_rx(rx)?;
            }
            other => warn!("vsock: unknown device event {other}"),
        }
        Ok(())
    }
}

pub use ax_vhost::{listen, VhostUserListener};

/// Serves one vhost-user frontend on `listener` with default [`MuxerOptions`]; see
/// [`serve_with`].
pub fn serve(listener: VhostUserListener, cfg: HybridConfig) -> anyhow::Result<()> {
    serve_with(listener, cfg, MuxerOptions::default())
}

/// Serves one vhost-user frontend (vhost-user spec, back-end side) until it disconnects.
///
/// The hybrid listener at `cfg.uds_path` is bound before waiting for the frontend, so host
/// clients can connect early: their `CONNECT` waits for the guest driver (up to
/// [`MuxerOptions::ready_timeout`]). Blocking; run it on a thread. On return the hybrid socket
/// file is removed and all connections are closed.
pub fn serve_with(
    listener: VhostUserListener,
    cfg: HybridConfig,
    opts: MuxerOptions,
) -> anyhow::Result<()> {
    let backend = VsockBackend::new(&cfg, opts)
        .with_context(|| format!("cannot start hybrid vsock on {}", cfg.uds_path.display()))?;
    let muxer_fd = backend.muxer.as_raw_fd();
    let backend = Arc::new(RwLock::new(backend));
    let watch = Watch {
        fd: muxer_fd,
        event: MUXER_EVENT,
        what: "vsock fd",
    };
    // A frontend going away (QEMU quit, guest powered off) is the normal end (`Ok`).
    let result = ax_vhost::serve("ax-vsock", backend.clone(), listener, &[watch]);
    if let Ok(mut b) = backend.write() {
        b.muxer.reset();
    }
    let _ = std::fs::remove_file(&cfg.uds_path);
    result
}

/// Binds `socket`, then [`serve`]s one frontend on it. Blocking.
pub fn serve_vhost_user(socket: &Path, cfg: HybridConfig) -> anyhow::Result<()> {
    serve(listen(socket)?, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_the_guest_cid_and_bounds_checked() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HybridConfig {
            guest_cid: 0x1234_5678,
            uds_path: dir.path().join("v.sock"),
        };
        let b = VsockBackend::new(&cfg, MuxerOptions::default()).unwrap();
        assert!(
            dir.path().join("v.sock").exists(),
            "hybrid listener bound at creation"
        );
        assert_eq!(b.get_config(0, 8), 0x1234_5678u64.to_le_bytes());
        assert_eq!(b.get_config(4, 4), [0, 0, 0, 0]);
        assert!(b.get_config(4, 8).is_empty());
        assert!(b.get_config(u32::MAX, u32::MAX).is_empty());
        assert_eq!(b.num_queues(), 3);
        assert_ne!(
            b.protocol_features() & VhostUserProtocolFeatures::CONFIG,
            VhostUserProtocolFeatures::empty()
        );
        drop(b);
        assert!(
            !dir.path().join("v.sock").exists(),
            "socket file removed on drop"
        );
    }
}
