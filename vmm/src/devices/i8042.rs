//! Minimal i8042 keyboard controller: only the CPU reset line.
//!
//! Data port 0x60, status/command port 0x64 (IBM PC/AT technical reference). Writing
//! command 0xfe ("pulse output line 0", wired to CPU reset) to 0x64 is how Linux reboots
//! with `reboot=k` and how our test guests stop; ax-vmm treats it as a clean shutdown.
//! Reads return 0 (output buffer empty, no keyboard), which makes Linux's i8042 probe give
//! up quietly.

use crate::bus::BusDevice;
use crate::exit::{ExitHandle, GuestExit};

/// First port of the controller (data).
pub const I8042_PORT: u16 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;
/// Offset of the command/status port (0x64).
const COMMAND_OFFSET: u64 = 4;
/// "Pulse output line 0 low": CPU reset.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 on the PIO bus.
pub struct I8042 {
    exit: ExitHandle,
}

impl I8042 {
    /// A controller that records [`GuestExit::Reset`] on `exit` when the guest resets.
    pub fn new(exit: ExitHandle) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(GuestExit::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_a_clean_exit() {
        let exit = ExitHandle::new().unwrap();
        let mut d = I8042::new(exit.clone());
        d.write(0, &[CMD_RESET_CPU]);
        d.write(4, &[0xaa]);
        d.write(4, &[]);
        assert!(!exit.requested());
        d.write(4, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(GuestExit::Reset));
    }
}
