//! virtio devices over the virtio-mmio transport (virtio 1.2 §4.2), documented in
//! `docs/virtio.md`.
//!
//! * [`mmio::MmioTransport`]: the register file (§4.2.2), the device-status state machine
//!   (§2.1, §3.1.1), queue setup, feature negotiation (§2.2). It is a [`crate::bus::BusDevice`]
//!   on the MMIO bus; vCPU threads call it.
//! * A device ([`VirtioDevice`]): its type, features, configuration space, and what it does
//!   once the driver sets DRIVER_OK: [`block::Block`] (§5.2), [`vsock::Vsock`] (§5.10).
//! * The data path runs on one event thread per device ([`spawn_worker`]): an epoll over the
//!   queues' ioeventfds (KVM_IOEVENTFD on QueueNotify, datamatch = queue index), a kill
//!   eventfd and any fds of the device's own; interrupts go out through an irqfd on the
//!   device's GSI ([`Interrupt`]). So a queue notification costs the vCPU no exit to
//!   userspace, and the vCPU never waits on device I/O.
//!
//! Everything the guest controls (register offsets and widths, queue sizes and addresses,
//! descriptor chains) is validated; bad input is logged and rejected — the device drops the
//! chain, answers an error status, or sets DEVICE_NEEDS_RESET (§2.1.2) — and never panics.

pub mod block;
pub mod mmio;
pub mod vhost_user;
pub mod vsock;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::GuestMemoryMmap;

/// Device IDs (virtio 1.2 §5 "Device Types").
pub mod device_id {
    /// Block device (§5.2).
    pub const BLOCK: u32 = 2;
    /// Socket device (§5.10).
    pub const VSOCK: u32 = 19;
    /// Network device (§5.1), through the vhost-user frontend.
    pub const NET: u32 = 1;
    /// File system device (§5.11), through the vhost-user frontend.
    pub const FS: u32 = 26;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest OS has found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Reserved feature bits (virtio 1.2 §6).
pub mod features {
    /// `VIRTIO_F_RING_INDIRECT_DESC` (§2.7.5.3).
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `VIRTIO_F_RING_EVENT_IDX` (§2.7.7, §2.7.10).
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// `VIRTIO_F_VERSION_1`: a virtio 1.x device; required by this transport.
    pub const VERSION_1: u64 = 1 << 32;
}

/// InterruptStatus bits (virtio 1.2 §4.2.2).
pub mod int_status {
    /// "Used Buffer Notification": the device used a buffer in at least one virtqueue.
    pub const USED_RING: u32 = 1;
    /// "Configuration Change Notification" (also raised with DEVICE_NEEDS_RESET, §2.1.2).
    pub const CONFIG: u32 = 2;
}

/// A device behind the virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID ([`device_id`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each virtqueue (powers of two); the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (must include [`features::VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads the device configuration space (offset relative to its start, 0x100 in the MMIO
    /// window). Bytes beyond the configuration read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; the default ignores writes (read-only configs).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio: ignored {}-byte write to read-only config offset {offset:#x}",
            data.len()
        );
    }
    /// Starts the data path: the driver set DRIVER_OK with these validated queues.
    fn activate(&mut self, act: Activation) -> Result<(), String>;
    /// Device reset (§2.4): stops the data path and forgets driver state; the device may be
    /// activated again afterwards.
    fn reset(&mut self);
}

/// What a device gets at DRIVER_OK.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues, configured and validated by the transport.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled on QueueNotify (ioeventfd or the transport).
    pub queue_evts: Vec<EventFd>,
    /// Interrupt and status signalling towards the transport and the guest.
    pub interrupt: Arc<Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// The device's side of InterruptStatus and its irqfd (virtio 1.2 §4.2.2, §2.3).
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irqfd: EventFd,
}

impl Interrupt {
    /// Wraps the irqfd registered on the device's GSI (KVM_IRQFD).
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irqfd,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            log::warn!("virtio: cannot signal the irqfd: {e}");
        }
    }

    /// A used buffer notification (§2.7.10): sets InterruptStatus bit 0 and raises the GSI.
    pub fn signal_used(&self) {
        self.raise(int_status::USED_RING);
    }

    /// A configuration change notification (§2.5.1).
    pub fn signal_config(&self) {
        self.raise(int_status::CONFIG);
    }

    /// Sets DEVICE_NEEDS_RESET and notifies the driver (§2.1.2: "the device MUST send a
    /// device configuration change notification").
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config();
    }

    /// True once the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: clears InterruptStatus and DEVICE_NEEDS_RESET.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// A device error that stops its data path until the driver resets it (the worker sets
/// DEVICE_NEEDS_RESET).
#[derive(Debug)]
pub struct DeviceError(pub String);

impl<E: std::fmt::Display> From<E> for DeviceError {
    fn from(e: E) -> Self {
        DeviceError(e.to_string())
    }
}

/// The data path of one device, run on its event thread.
pub trait Worker: Send + 'static {
    /// Thread name, e.g. "virtio-blk0".
    fn name(&self) -> String;
    /// The driver notified queue `q` (or the thread just started). Process what is available
    /// and signal used buffers through `io.interrupt`.
    fn queue_notified(&mut self, q: usize, io: &mut WorkerIo) -> Result<(), DeviceError>;
    /// Extra fds to poll for readability (level-triggered), besides the queue eventfds.
    fn extra_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Extra fd `i` (index into [`Self::extra_fds`]) is readable.
    fn fd_ready(&mut self, _i: usize, _io: &mut WorkerIo) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// What a worker operates on.
pub struct WorkerIo {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's queues.
    pub queues: Vec<Queue>,
    /// Interrupt signalling.
    pub interrupt: Arc<Interrupt>,
}

impl WorkerIo {
    /// After used entries were added to queue `q`: raise the interrupt unless the driver
    /// suppressed it (`VIRTIO_F_EVENT_IDX`, §2.7.10).
    pub fn notify_used(&mut self, q: usize) -> Result<(), DeviceError> {
        let Some(queue) = self.queues.get_mut(q) else {
            return Ok(());
        };
        if queue.needs_notification(&self.mem)? {
            self.interrupt.signal_used();
        }
        Ok(())
    }
}

/// A running worker thread; [`WorkerHandle::stop`] gives the worker back.
pub struct WorkerHandle<W> {
    kill: EventFd,
    thread: Option<JoinHandle<W>>,
}

const KILL_TOKEN: u64 = u64::MAX;
const EXTRA_TOKEN_BASE: u64 = 1 << 32;

impl<W: Worker> WorkerHandle<W> {
    /// Stops the thread and returns the worker (None if the thread panicked).
    pub fn stop(mut self) -> Option<W> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Option<W> {
        let _ = self.kill.write(1);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl<W> Drop for WorkerHandle<W> {
    fn drop(&mut self) {
        let _ = self.kill.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts `worker` on its own thread over the activation's queues.
pub fn spawn_worker<W: Worker>(mut worker: W, act: Activation) -> io::Result<WorkerHandle<W>> {
    let kill = EventFd::new(EFD_NONBLOCK)?;
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        kill.as_raw_fd(),
        EpollEvent::new(EventSet::IN, KILL_TOKEN),
    )?;
    for (i, e) in act.queue_evts.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            e.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    for (i, fd) in worker.extra_fds().into_iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, EXTRA_TOKEN_BASE + i as u64),
        )?;
    }
    let kill_thread = kill.try_clone()?;
    let name = worker.name();
    let builder = std::thread::Builder::new()
        .name(name.clone())
        .stack_size(512 << 10);
    // A device thread of the jail (docs/jail.md): created by its spawner thread, seccomp
    // filter installed first; a plain thread with the jail off.
    let thread = crate::jail::spawn(builder, crate::jail::ThreadKind::Device, move || {
        let Activation {
            mem,
            queues,
            queue_evts,
            interrupt,
            ..
        } = act;
        let mut io = WorkerIo {
            mem,
            queues,
            interrupt,
        };
        run_worker(&name, &mut worker, &mut io, &epoll, &queue_evts);
        drop(kill_thread);
        worker
    })?;
    Ok(WorkerHandle {
        kill,
        thread: Some(thread),
    })
}

fn run_worker<W: Worker>(
    name: &str,
    worker: &mut W,
    io: &mut WorkerIo,
    epoll: &Epoll,
    queue_evts: &[EventFd],
) {
    let mut broken = false;
    let fail = |e: DeviceError, io: &WorkerIo| {
        log::warn!("{name}: {}; device needs reset (DEVICE_NEEDS_RESET)", e.0);
        io.interrupt.set_needs_reset();
    };
    // Notifications may have arrived before DRIVER_OK: look at every queue once.
    for q in 0..io.queues.len() {
        if let Err(e) = worker.queue_notified(q, io) {
            fail(e, io);
            broken = true;
            break;
        }
    }
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{name}: epoll_wait failed: {e}; stopping the device thread");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == KILL_TOKEN {
                return;
            }
            if token >= EXTRA_TOKEN_BASE {
                if broken {
                    // Stop polling it: level-triggered fds would spin.
                    let fds = worker.extra_fds();
                    if let Some(&fd) = fds.get((token - EXTRA_TOKEN_BASE) as usize) {
                        let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    }
                    continue;
                }
                if let Err(e) = worker.fd_ready((token - EXTRA_TOKEN_BASE) as usize, io) {
                    fail(e, io);
                    broken = true;
                }
                continue;
            }
            let q = token as usize;
            if let Some(evt) = queue_evts.get(q) {
                let _ = evt.read();
            }
            if broken {
                continue;
            }
            if let Err(e) = worker.queue_notified(q, io) {
                fail(e, io);
                broken = true;
            }
        }
    }
}

/// Holds a device's worker: idle (before DRIVER_OK and after reset) or running.
pub enum WorkerSlot<W> {
    /// Not activated; the worker waits here.
    Idle(W),
    /// Running on its thread.
    Running(WorkerHandle<W>),
    /// Lost (its thread panicked); the device cannot be activated again.
    Gone,
}

impl<W: Worker> WorkerSlot<W> {
    /// Starts the idle worker; `prepare` adjusts it to the activation first.
    pub fn activate(
        &mut self,
        act: Activation,
        prepare: impl FnOnce(&mut W, &Activation),
    ) -> Result<(), String> {
        match std::mem::replace(self, WorkerSlot::Gone) {
            WorkerSlot::Idle(mut w) => {
                prepare(&mut w, &act);
                let name = w.name();
                match spawn_worker(w, act) {
                    Ok(h) => {
                        *self = WorkerSlot::Running(h);
                        Ok(())
                    }
                    Err(e) => Err(format!("{name}: cannot start the device thread: {e}")),
                }
            }
            WorkerSlot::Running(h) => {
                *self = WorkerSlot::Running(h);
                Err("device already active".into())
            }
            WorkerSlot::Gone => Err("device thread was lost; the device is unusable".into()),
        }
    }

    /// Stops a running worker and keeps it idle; `reset` clears its driver state.
    pub fn reset(&mut self, reset: impl FnOnce(&mut W)) {
        let w = match std::mem::replace(self, WorkerSlot::Gone) {
            WorkerSlot::Running(h) => h.stop(),
            WorkerSlot::Idle(w) => Some(w),
            WorkerSlot::Gone => None,
        };
        if let Some(mut w) = w {
            reset(&mut w);
            *self = WorkerSlot::Idle(w);
        }
    }
}

/// Copies the little-endian bytes of a config structure into `data` from `offset`; bytes
/// past the end read as 0 (virtio 1.2 §4.2.2: config space is device-specific, any width).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off < config.len() {
        let n = data.len().min(config.len() - off);
        data[..n].copy_from_slice(&config[off..off + n]);
    }
}

/// Rate-limited warnings: guest-triggered messages are logged at `warn` the first
/// [`WARN_LIMIT`] times, then at `debug`, so a hostile guest cannot flood the log.
pub struct WarnLimiter(u32);

/// How many guest-triggered warnings a device logs at `warn` level.
pub const WARN_LIMIT: u32 = 32;

impl WarnLimiter {
    /// A fresh limiter.
    pub const fn new() -> Self {
        WarnLimiter(0)
    }

    /// Logs `msg` at warn (or debug once over the limit).
    pub fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.0 < WARN_LIMIT {
            self.0 += 1;
            log::warn!("{msg}");
            if self.0 == WARN_LIMIT {
                log::warn!("(further warnings from this device are logged at debug level)");
            }
        } else {
            log::debug!("{msg}");
        }
    }
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// One virtio-mmio device placed in the machine.
pub struct MmioSlot {
    /// The transport, for the MMIO bus.
    pub transport: crate::bus::SharedDevice,
    /// Its window and GSI, for the ACPI DSDT or the kernel command line.
    pub desc: crate::acpi::MmioDeviceDesc,
    /// "virtio-blk0", "virtio-vsock".
    pub name: String,
}

/// Window of virtio-mmio slot `i` and its GSI (docs/virtio.md "Addresses and GSIs").
pub fn slot_desc(i: usize) -> crate::acpi::MmioDeviceDesc {
    use crate::memory::layout;
    crate::acpi::MmioDeviceDesc {
        base: layout::VIRTIO_MMIO_START + i as u64 * layout::VIRTIO_MMIO_SIZE,
        size: layout::VIRTIO_MMIO_SIZE,
        gsi: layout::VIRTIO_MMIO_FIRST_GSI + i as u32,
    }
}

/// Creates the configured virtio devices, in order: `[[block]]` disks, `[vsock]`, then
/// `[[vhost_user]]` devices. Slot i
/// gets window [`slot_desc`]`(i)`; each queue's eventfd is registered as an ioeventfd on its
/// QueueNotify with datamatch = queue index (KVM API doc §4.59 KVM_IOEVENTFD), and the
/// device's interrupt is an irqfd on its GSI (§4.75 KVM_IRQFD).
pub fn create_devices(
    cfg: &crate::config::VmConfig,
    vm: &crate::vm::Vm,
    mem: &GuestMemoryMmap,
) -> io::Result<Vec<MmioSlot>> {
    let mut devs: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (i, b) in cfg.block.iter().enumerate() {
        devs.push((
            format!("virtio-blk{i}"),
            Box::new(block::Block::new(&b.path, b.read_only, i)?),
        ));
    }
    if let Some(v) = &cfg.vsock {
        let hc = ax_vsock::HybridConfig {
            guest_cid: v.guest_cid,
            uds_path: v.uds_path.clone(),
        };
        let dev = vsock::Vsock::new(&hc).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("vsock: cannot listen on {}: {e}", v.uds_path.display()),
            )
        })?;
        devs.push(("virtio-vsock".into(), Box::new(dev)));
    }
    // vhost-user devices: connected and negotiated now, before the jail (docs/virtio.md).
    let mut counts = [0usize; 2];
    for v in &cfg.vhost_user {
        let k = v.device_type as usize;
        let name = format!("vhost-user-{}{}", v.device_type, counts[k]);
        counts[k] += 1;
        let dev = vhost_user::VhostUser::new(v, name.clone())?;
        devs.push((name, Box::new(dev)));
    }
    let mut out = Vec::with_capacity(devs.len());
    for (i, (name, dev)) in devs.into_iter().enumerate() {
        let desc = slot_desc(i);
        let irqfd = vm.irqfd(desc.gsi).map_err(io::Error::other)?;
        let label = format!("{name}@{:#x}", desc.base);
        let t = mmio::MmioTransport::new(label, dev, mem.clone(), irqfd)?;
        for (q, evt) in t.queue_evts().iter().enumerate() {
            let addr = kvm_ioctls::IoEventAddress::Mmio(desc.base + mmio::QUEUE_NOTIFY_OFFSET);
            if let Err(e) = vm.fd.register_ioevent(evt, &addr, q as u32) {
                // The transport still forwards QueueNotify writes itself (slower: a vCPU exit).
                log::warn!("{name}: KVM_IOEVENTFD for queue {q} failed: {e}; notifications go through the vCPU");
            }
        }
        log::debug!(
            "{name}: virtio-mmio at {:#x} (size {:#x}), GSI {}",
            desc.base,
            desc.size,
            desc.gsi
        );
        out.push(MmioSlot {
            transport: Arc::new(std::sync::Mutex::new(t)),
            desc,
            name,
        });
    }
    Ok(out)
}

/// `virtio_mmio.device=<size>@<base>:<gsi>` for each device, for kernels booted without
/// ACPI (Linux drivers/virtio/virtio_mmio.c, "virtio_mmio.device" parameter).
pub fn cmdline_devices(slots: &[MmioSlot]) -> String {
    slots
        .iter()
        .map(|s| {
            format!(
                " virtio_mmio.device={}K@{:#x}:{}",
                s.desc.size >> 10,
                s.desc.base,
                s.desc.gsi
            )
        })
        .collect()
}

/// Adds [`cmdline_devices`] to `cmdline`, before a `--` that starts init's arguments.
pub fn cmdline_with_devices(cmdline: &str, slots: &[MmioSlot]) -> String {
    let devs = cmdline_devices(slots);
    if devs.is_empty() {
        return cmdline.to_string();
    }
    match cmdline.find(" -- ") {
        Some(i) => format!("{}{devs}{}", &cmdline[..i], &cmdline[i..]),
        None if cmdline.starts_with("-- ") => format!("{} {cmdline}", devs.trim_start()),
        None => format!("{cmdline}{devs}"),
    }
}
