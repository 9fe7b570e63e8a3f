//! 8250/16550A UART on COM1 (I/O ports 0x3f8..0x3ff, IRQ 4), emulated by vm-superio.
//!
//! Register semantics follow the National Semiconductor PC16550D data sheet (THR/RBR at
//! offset 0, IER 1, IIR/FCR 2, LCR 3, MCR 4, LSR 5, MSR 6, SCR 7; DLAB in LCR bit 7).
//! Output goes to a file or stdout, unbuffered, so the first guest byte reaches the host
//! as soon as the guest writes it. The interrupt is delivered through an irqfd on GSI 4.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::IrqTrigger;
use crate::bus::BusDevice;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 GSI (ISA IRQ 4).
pub const COM1_GSI: u32 = 4;
/// Width of the register window.
pub const SERIAL_PORT_LEN: u64 = 8;

/// The serial device on the PIO bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
    write_failed: bool,
}

impl SerialDevice {
    /// A UART writing guest output to `out` and raising its interrupt through `irq`.
    pub fn new(irq: IrqTrigger, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
            write_failed: false,
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers; wider accesses read the addressed register
        // in the low byte (like a real ISA bus with an 8-bit device).
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.uart.write(off, b) {
            if !self.write_failed {
                log::warn!("serial output failed: {e:?}; further guest output may be lost");
                self.write_failed = true;
            }
        }
    }
}
