//! virtio-vsock (virtio 1.2 §5.10) with Firecracker's hybrid Unix-socket host side, driving
//! [`ax_vsock::VsockMuxer`] (the same device logic as ax-vsock's vhost-user backend; the
//! protocol is in `docs/vsock.md`).
//!
//! Queues (§5.10.2): 0 rx (device → driver), 1 tx (driver → device), 2 event. The event queue
//! is accepted but never used (no transport-reset events are sent). Configuration space
//! (§5.10.4): `le64 guest_cid`. Features: `VIRTIO_F_VERSION_1`, `VIRTIO_F_RING_EVENT_IDX`.
//!
//! The device thread polls the muxer's epoll fd besides the queue eventfds: host sockets,
//! the hybrid listener and the muxer's timers all surface through it.

use std::io;
use std::os::fd::RawFd;

use ax_vsock::{HybridConfig, MuxerOptions, VsockMuxer};

use super::{
    device_id, features, read_config_bytes, Activation, DeviceError, VirtioDevice, Worker,
    WorkerIo, WorkerSlot,
};

/// Queue size offered for each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

/// The virtio-vsock device.
pub struct Vsock {
    config: [u8; 8],
    worker: WorkerSlot<VsockWorker>,
}

impl Vsock {
    /// Creates the device and binds the hybrid listener at `cfg.uds_path` at once, so host
    /// clients may connect before the guest driver is up.
    pub fn new(cfg: &HybridConfig) -> io::Result<Self> {
        let mux = VsockMuxer::new(cfg, MuxerOptions::default())?;
        Ok(Vsock {
            config: cfg.guest_cid.to_le_bytes(),
            worker: WorkerSlot::Idle(VsockWorker { mux }),
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_id::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, act: Activation) -> Result<(), String> {
        self.worker.activate(act, |_, _| {})
    }

    fn reset(&mut self) {
        // §2.4: connections die with the driver state; host clients see their sockets close.
        self.worker.reset(|w| w.mux.reset());
    }
}

/// The vsock data path (runs on the device thread).
pub struct VsockWorker {
    mux: VsockMuxer,
}

impl VsockWorker {
    fn fill_rx(&mut self, io: &mut WorkerIo) -> Result<(), DeviceError> {
        let mem = io.mem.clone();
        if let Some(q) = io.queues.get_mut(RXQ) {
            if self.mux.fill_rx(&mem, q)? {
                io.notify_used(RXQ)?;
            }
        }
        Ok(())
    }
}

impl Worker for VsockWorker {
    fn name(&self) -> String {
        "virtio-vsock".into()
    }

    fn queue_notified(&mut self, q: usize, io: &mut WorkerIo) -> Result<(), DeviceError> {
        match q {
            TXQ => {
                let mem = io.mem.clone();
                if let Some(txq) = io.queues.get_mut(TXQ) {
                    if self.mux.process_tx(&mem, txq)? {
                        io.notify_used(TXQ)?;
                    }
                }
                self.fill_rx(io)
            }
            RXQ => self.fill_rx(io),
            EVQ => Ok(()),
            _ => Ok(()),
        }
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.mux.as_raw_fd()]
    }

    fn fd_ready(&mut self, _i: usize, io: &mut WorkerIo) -> Result<(), DeviceError> {
        if self.mux.process_events() {
            self.fill_rx(io)?;
        }
        Ok(())
    }
}
