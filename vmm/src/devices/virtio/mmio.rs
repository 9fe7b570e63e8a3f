//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2); no legacy (version 1) interface.
//!
//! Register map (offsets in the device's window; control registers are 32 bits wide and must
//! be accessed with aligned 32-bit loads and stores, §4.2.2.2):
//!
//! | off | name | dir |
//! | --- | --- | --- |
//! | 0x000 | MagicValue 0x74726976 ("virt") | R |
//! | 0x004 | Version (2) | R |
//! | 0x008 | DeviceID | R |
//! | 0x00c | VendorID | R |
//! | 0x010 | DeviceFeatures (32 bits selected by DeviceFeaturesSel) | R |
//! | 0x014 | DeviceFeaturesSel | W |
//! | 0x020 | DriverFeatures | W |
//! | 0x024 | DriverFeaturesSel | W |
//! | 0x030 | QueueSel | W |
//! | 0x034 | QueueNumMax | R |
//! | 0x038 | QueueNum | W |
//! | 0x044 | QueueReady | RW |
//! | 0x050 | QueueNotify | W |
//! | 0x060 | InterruptStatus | R |
//! | 0x064 | InterruptACK | W |
//! | 0x070 | Status | RW |
//! | 0x080/0x084 | QueueDescLow/High | W |
//! | 0x090/0x094 | QueueDriverLow/High (avail ring) | W |
//! | 0x0a0/0x0a4 | QueueDeviceLow/High (used ring) | W |
//! | 0x0ac/0x0b0 | SHMLenLow/High (no regions: reads -1) | R |
//! | 0x0b4/0x0b8 | SHMBaseLow/High (reads -1) | R |
//! | 0x0fc | ConfigGeneration | R |
//! | 0x100+ | device configuration space | RW |
//!
//! Anything else (unknown offsets, wrong widths, writes to read-only registers, queue setup
//! after DRIVER_OK) is logged and ignored; such reads return 0.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{features, status, Activation, Interrupt, VirtioDevice, WarnLimiter};
use crate::bus::BusDevice;
use crate::memory::GuestMemoryMmap;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The non-legacy virtio-mmio version.
pub const MMIO_VERSION: u32 = 2;
/// VendorID ax reports: "AX" (0x5841); drivers ignore it.
pub const VENDOR_ID: u32 = 0x5841;
/// Start of the device configuration space in the window.
pub const CONFIG_OFFSET: u64 = 0x100;
/// Offset of QueueNotify (where the ioeventfds are registered).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x050;

/// Register offsets (virtio 1.2 §4.2.2).
#[allow(missing_docs)]
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const QUEUE_RESET: u64 = 0x0c0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    name: String,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    /// False when the driver wrote a QueueNum that is not a power of two in 1..=QueueNumMax
    /// (virtio-queue keeps the old size; we refuse the queue at DRIVER_OK instead).
    size_ok: Vec<bool>,
    queue_evts: Vec<EventFd>,
    status: u32,
    activated: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    warn: WarnLimiter,
}

impl MmioTransport {
    /// A transport for `device`, raising interrupts through `irqfd`. `name` is used in logs
    /// (e.g. "virtio-blk0@0xd0000000").
    pub fn new(
        name: String,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            let q = Queue::new(max).map_err(|e| {
                std::io::Error::other(format!("{name}: invalid queue max size {max}: {e}"))
            })?;
            queues.push(q);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            name,
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            size_ok: vec![true; queues.len()],
            queues,
            queue_evts,
            status: 0,
            activated: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            warn: WarnLimiter::new(),
        })
    }

    /// The per-queue notification eventfds, to register as ioeventfds on
    /// base + [`QUEUE_NOTIFY_OFFSET`] with datamatch = queue index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        let nr = if self.interrupt.needs_reset() {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | nr
    }

    /// The interrupt state shared with the device thread.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    fn selected(&mut self) -> Option<usize> {
        let i = self.queue_sel as usize;
        (i < self.queues.len()).then_some(i)
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .selected()
                .map_or(0, |i| u32::from(self.queues[i].max_size())),
            reg::QUEUE_READY => self
                .selected()
                .map_or(0, |i| u32::from(self.queues[i].ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                // No shared memory regions: "a length of -1" (§4.2.2).
                u32::MAX
            }
            reg::QUEUE_RESET => 0,
            reg::CONFIG_GENERATION => 0,
            _ => {
                let name = &self.name;
                self.warn.warn(format_args!(
                    "{name}: read of unknown or write-only register {offset:#x}; returning 0"
                ));
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                let st = self.status;
                if st & status::DRIVER == 0 || st & status::FEATURES_OK != 0 {
                    self.bad(format_args!(
                        "DriverFeatures written in status {st:#x}; ignored (§3.1.1)"
                    ));
                    return;
                }
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    s => {
                        self.bad(format_args!(
                            "DriverFeaturesSel {s} has no features; ignored"
                        ));
                        return;
                    }
                };
                self.acked_features =
                    (self.acked_features & !(0xffff_ffffu64 << shift)) | (u64::from(v) << shift);
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            reg::QUEUE_NOTIFY => {
                // Reached only when the ioeventfd did not match (bad index) or is absent.
                match self.queue_evts.get(v as usize) {
                    Some(e) => {
                        let _ = e.write(1);
                    }
                    None => self.bad(format_args!(
                        "QueueNotify for queue {v}, which does not exist"
                    )),
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            reg::SHM_SEL => {}
            reg::QUEUE_RESET => self.bad(format_args!(
                "QueueReset without VIRTIO_F_RING_RESET; ignored"
            )),
            _ => self.bad(format_args!(
                "write of {v:#x} to unknown or read-only register {offset:#x}; ignored"
            )),
        }
    }

    fn bad(&mut self, msg: std::fmt::Arguments<'_>) {
        let name = &self.name;
        self.warn.warn(format_args!("{name}: {msg}"));
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        let st = self.status;
        if st & status::DRIVER_OK != 0 || st & status::FEATURES_OK == 0 {
            self.bad(format_args!(
                "queue register {offset:#x} written in status {st:#x} (needs FEATURES_OK, not DRIVER_OK); ignored"
            ));
            return;
        }
        let Some(i) = self.selected() else {
            let sel = self.queue_sel;
            self.bad(format_args!(
                "queue register {offset:#x} written with QueueSel {sel} out of range; ignored"
            ));
            return;
        };
        if offset != reg::QUEUE_READY && self.queues[i].ready() {
            self.bad(format_args!(
                "queue {i} register {offset:#x} written while QueueReady is 1; ignored"
            ));
            return;
        }
        let q = &mut self.queues[i];
        match offset {
            reg::QUEUE_NUM => {
                let ok = u16::try_from(v).is_ok_and(|s| q.try_set_size(s).is_ok());
                self.size_ok[i] = ok;
                if !ok {
                    self.bad(format_args!(
                        "queue {i}: QueueNum {v} is not a power of two in 1..={} (§2.7); the queue will be refused",
                        self.queues[i].max_size()
                    ));
                }
            }
            reg::QUEUE_READY => q.set_ready(v == 1),
            reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
            reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
            reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(v), None),
            reg::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(v)),
            reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(v), None),
            reg::QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }

    /// The device-status state machine (§2.1, §3.1.1): 0 resets; otherwise the driver may
    /// only add bits, in the order ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK; FAILED at
    /// any time.
    fn set_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if v & old != old {
            self.bad(format_args!(
                "status {v:#x} clears bits of {old:#x}; only a write of 0 resets; ignored"
            ));
            return;
        }
        if v & !(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED) != 0 {
            self.bad(format_args!("status {v:#x} sets unknown bits; ignored"));
            return;
        }
        let new = v & !old;
        if new & FAILED != 0 {
            log::info!("{}: the driver set FAILED", self.name);
            self.status |= FAILED;
        }
        let order = [
            (ACKNOWLEDGE, 0),
            (DRIVER, ACKNOWLEDGE),
            (FEATURES_OK, ACKNOWLEDGE | DRIVER),
            (DRIVER_OK, ACKNOWLEDGE | DRIVER | FEATURES_OK),
        ];
        for (bit, needs) in order {
            if new & bit == 0 {
                continue;
            }
            let st = self.status;
            if st & needs != needs {
                self.bad(format_args!(
                    "status bit {bit:#x} set before {needs:#x} (status {st:#x}); ignored"
                ));
                return;
            }
            match bit {
                FEATURES_OK => {
                    let offered = self.device.features();
                    let acked = self.acked_features;
                    if acked & features::VERSION_1 == 0 {
                        self.bad(format_args!(
                            "driver did not accept VIRTIO_F_VERSION_1 (features {acked:#x}); FEATURES_OK refused"
                        ));
                        return;
                    }
                    if acked & !offered != 0 {
                        self.bad(format_args!(
                            "driver accepted features {:#x} the device does not offer; FEATURES_OK refused",
                            acked & !offered
                        ));
                        return;
                    }
                }
                DRIVER_OK => {
                    self.status |= DRIVER_OK;
                    self.activate();
                    return;
                }
                _ => {}
            }
            self.status |= bit;
        }
    }

    fn activate(&mut self) {
        if self.activated || self.status & status::FAILED != 0 {
            return;
        }
        for (i, q) in self.queues.iter().enumerate() {
            let problem = if !self.size_ok[i] {
                Some("its size is invalid")
            } else if !q.ready() {
                Some("it is not ready")
            } else if !q.is_valid(&self.mem) {
                Some("its rings are misaligned or outside guest memory")
            } else {
                None
            };
            if let Some(p) = problem {
                let name = self.name.clone();
                self.warn.warn(format_args!(
                    "{name}: DRIVER_OK but queue {i} is unusable: {p}; setting DEVICE_NEEDS_RESET"
                ));
                self.interrupt.set_needs_reset();
                return;
            }
        }
        let mut queue_evts = Vec::with_capacity(self.queue_evts.len());
        for e in &self.queue_evts {
            match e.try_clone() {
                Ok(c) => queue_evts.push(c),
                Err(err) => {
                    log::error!("{}: cannot clone a queue eventfd: {err}", self.name);
                    self.interrupt.set_needs_reset();
                    return;
                }
            }
        }
        let event_idx = self.acked_features & features::RING_EVENT_IDX != 0;
        // The device gets its own copies; the transport keeps the configuration (reset).
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            match Queue::try_from(q.state()) {
                Ok(mut q) => {
                    q.set_event_idx(event_idx);
                    queues.push(q);
                }
                Err(e) => {
                    log::warn!(
                        "{}: queue copy failed: {e}; setting DEVICE_NEEDS_RESET",
                        self.name
                    );
                    self.interrupt.set_needs_reset();
                    return;
                }
            }
        }
        let act = Activation {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        match self.device.activate(act) {
            Ok(()) => {
                self.activated = true;
                log::debug!(
                    "{}: activated (features {:#x})",
                    self.name,
                    self.acked_features
                );
            }
            Err(e) => {
                log::warn!(
                    "{}: activation failed: {e}; setting DEVICE_NEEDS_RESET",
                    self.name
                );
                self.interrupt.set_needs_reset();
            }
        }
    }

    /// Device reset (§2.4, written as Status = 0).
    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.size_ok.fill(true);
        for e in &self.queue_evts {
            let _ = e.read();
        }
        self.interrupt.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            self.bad(format_args!(
                "{}-byte read at {offset:#x}: control registers need aligned 32-bit access (§4.2.2.2); returning 0",
                data.len()
            ));
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(b) = <[u8; 4]>::try_from(data) else {
            self.bad(format_args!(
                "{}-byte write at {offset:#x}: control registers need aligned 32-bit access (§4.2.2.2); ignored",
                data.len()
            ));
            return;
        };
        if offset % 4 != 0 {
            self.bad(format_args!("misaligned write at {offset:#x}; ignored"));
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    struct Dummy {
        activations: Arc<std::sync::atomic::AtomicU32>,
    }
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            features::VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn activate(&mut self, act: Activation) -> Result<(), String> {
            assert_eq!(act.queues.len(), 2);
            self.activations
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn reset(&mut self) {}
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn transport() -> (MmioTransport, Arc<std::sync::atomic::AtomicU32>, GuestRam) {
        let ram = GuestRam::new(4 << 20).unwrap();
        let n = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let t = MmioTransport::new(
            "test".into(),
            Box::new(Dummy {
                activations: n.clone(),
            }),
            ram.mem.clone(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        (t, n, ram)
    }

    fn setup_queues(t: &mut MmioTransport, sizes: [u32; 2]) {
        for (i, s) in sizes.into_iter().enumerate() {
            let base = 0x10000 * (i as u32 + 1);
            w(t, reg::QUEUE_SEL, i as u32);
            w(t, reg::QUEUE_NUM, s);
            w(t, reg::QUEUE_DESC_LOW, base);
            w(t, reg::QUEUE_DRIVER_LOW, base + 0x1000);
            w(t, reg::QUEUE_DEVICE_LOW, base + 0x2000);
            w(t, reg::QUEUE_READY, 1);
        }
    }

    #[test]
    fn identification_and_bad_accesses() {
        let (mut t, _, _ram) = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MMIO_MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        // Unknown offset, misaligned and narrow reads return 0.
        assert_eq!(r(&mut t, 0x0f0), 0);
        let mut b = [0xffu8; 2];
        t.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        t.read(2, &mut b);
        assert_eq!(b, [0; 4]);
        let mut b = [0xffu8; 8];
        t.read(0, &mut b);
        assert_eq!(b, [0; 8]);
        // Writes to read-only registers are ignored.
        w(&mut t, reg::MAGIC, 0);
        assert_eq!(r(&mut t, reg::MAGIC), MMIO_MAGIC);
        // Config space: any width, zeros past the end.
        let mut c = [0u8; 8];
        t.read(CONFIG_OFFSET + 2, &mut c);
        assert_eq!(c, [3, 4, 0, 0, 0, 0, 0, 0]);
        t.read(u64::MAX - 3, &mut c);
        assert_eq!(c, [0; 8]);
        // Queue selection out of range.
        w(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        w(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 8);
        w(&mut t, reg::QUEUE_NOTIFY, 99);
    }

    #[test]
    fn negotiation_and_activation() {
        let (mut t, n, _ram) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        // DRIVER_OK before FEATURES_OK is refused.
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER_OK);
        assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        // Without VERSION_1, FEATURES_OK does not stick.
        w(&mut t, reg::STATUS, 0xb);
        assert_eq!(r(&mut t, reg::STATUS), 3);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        // Features not offered are refused too.
        w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut t, reg::DRIVER_FEATURES, 0x4);
        w(&mut t, reg::STATUS, 0xb);
        assert_eq!(r(&mut t, reg::STATUS), 3);
        w(&mut t, reg::DRIVER_FEATURES, 0x1);
        w(&mut t, reg::STATUS, 0xb);
        assert_eq!(r(&mut t, reg::STATUS), 0xb);
        setup_queues(&mut t, [16, 8]);
        w(&mut t, reg::STATUS, 0xf);
        assert_eq!(r(&mut t, reg::STATUS), 0xf);
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Queue setup after DRIVER_OK is ignored; clearing bits is ignored; reset works.
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
        w(&mut t, reg::STATUS, 0x3);
        assert_eq!(r(&mut t, reg::STATUS), 0xf);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn bad_queue_size_needs_reset() {
        let (mut t, n, _ram) = transport();
        w(&mut t, reg::STATUS, 3);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(&mut t, reg::STATUS, 0xb);
        setup_queues(&mut t, [6, 8]);
        w(&mut t, reg::STATUS, 0xf);
        assert_eq!(r(&mut t, reg::STATUS), 0xf | status::DEVICE_NEEDS_RESET);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS) & 2, 2);
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 0);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn rings_outside_memory_need_reset() {
        let (mut t, n, _ram) = transport();
        w(&mut t, reg::STATUS, 3);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(&mut t, reg::STATUS, 0xb);
        setup_queues(&mut t, [16, 8]);
        w(&mut t, reg::QUEUE_SEL, 1);
        w(&mut t, reg::QUEUE_READY, 0);
        w(&mut t, reg::QUEUE_DEVICE_HIGH, 0x10);
        w(&mut t, reg::QUEUE_READY, 1);
        w(&mut t, reg::STATUS, 0xf);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
