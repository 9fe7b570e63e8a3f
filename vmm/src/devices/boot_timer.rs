//! Boot-timer port: the guest writes [`BOOT_TIMER_MAGIC`] to I/O port [`BOOT_TIMER_PORT`]
//! when it considers itself booted, and the VMM logs the time since the VMM process
//! started. Same port and value as Firecracker's original boot-timer device
//! (`MAGIC_IOPORT_SIGNAL_GUEST_BOOT_COMPLETE` = 0x3f0, value 123), so guest-side tooling
//! written for it works unchanged.

use std::time::Instant;

use crate::bus::BusDevice;

/// The I/O port (0x3f0; the floppy controller's, unused in a microVM).
pub const BOOT_TIMER_PORT: u16 = 0x3f0;
/// The byte the guest writes.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// Logs "guest boot complete" with the elapsed time on the first magic write.
pub struct BootTimer {
    start: Instant,
    fired: Option<std::time::Duration>,
}

impl BootTimer {
    /// A timer measuring from `start` (the moment the VMM process began).
    pub fn new(start: Instant) -> Self {
        BootTimer { start, fired: None }
    }

    /// Elapsed time at the first magic write, if it happened.
    pub fn boot_time(&self) -> Option<std::time::Duration> {
        self.fired
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) {
            let d = self.start.elapsed();
            if self.fired.is_none() {
                self.fired = Some(d);
            }
            log::info!(
                "guest boot complete: {}.{:03} ms since ax-vmm started",
                d.as_micros() / 1000,
                d.as_micros() % 1000
            );
        }
    }
}
