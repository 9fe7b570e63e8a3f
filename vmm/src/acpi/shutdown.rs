//! The hardware-reduced ACPI power-management registers the FADT points at (ACPI 6.5 §4.8.3.6
//! reset register, §4.8.3.7 sleep control and status registers), as one PIO bus device of
//! [`ACPI_PM_PORT_LEN`](super::ACPI_PM_PORT_LEN) ports at
//! [`ACPI_PM_PORT_BASE`](super::ACPI_PM_PORT_BASE):
//!
//! | offset | port  | register             | guest writes                         | we do            |
//! | ------ | ----- | -------------------- | ------------------------------------ | ---------------- |
//! | 0      | 0x600 | `SLEEP_CONTROL_REG`  | `SLP_TYP << 2 \| SLP_EN` (S5: 0x34)   | power off        |
//! | 1      | 0x601 | `SLEEP_STATUS_REG`   | `WAK_STS` (0x80, write-1-to-clear)   | nothing          |
//! | 2      | 0x602 | `RESET_REG`          | `RESET_VALUE` (0x01)                 | reset            |
//!
//! Reads return 0 (no wake status: a powered-off guest never wakes).

use super::{ACPI_RESET_VALUE, S5_SLEEP_TYPE};

/// Offsets within the port block.
const SLEEP_CONTROL: u64 = 0;
// Offset 1 is SLEEP_STATUS_REG: reads 0, writes ignored.
const RESET: u64 = 2;

/// `SLP_EN`, bit 5 of the sleep control register (§4.8.3.7).
const SLP_EN: u8 = 1 << 5;
/// `SLP_TYPx`, bits 2–4 of the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;

/// What the guest asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    /// S5 (soft off) through the sleep control register: exit cleanly.
    PowerOff,
    /// The reset register was written: a microVM treats it as an exit too (the supervisor decides
    /// whether to start a new VM).
    Reset,
}

/// The ACPI sleep/reset register block; register it on the PIO bus at
/// [`ACPI_PM_PORT_BASE`](super::ACPI_PM_PORT_BASE), length
/// [`ACPI_PM_PORT_LEN`](super::ACPI_PM_PORT_LEN).
#[derive(Debug, Default)]
pub struct AcpiShutdown {
    requested: Option<PowerEvent>,
}

impl AcpiShutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A PIO read at `offset` from the block's base: all registers read as 0.
    pub fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// A PIO write at `offset` from the block's base. Returns true when the guest requested power
    /// off (S5) or reset: the vCPU should stop and the VMM exit; [`requested`](Self::requested)
    /// tells which. Anything else (other sleep states, which the DSDT does not offer; clearing
    /// `WAK_STS`; wrong widths; other values) is ignored and returns false.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let [value] = data else {
            return false;
        };
        let event = match offset {
            SLEEP_CONTROL
                if value & SLP_EN != 0
                    && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLEEP_TYPE =>
            {
                PowerEvent::PowerOff
            }
            RESET if *value == ACPI_RESET_VALUE => PowerEvent::Reset,
            _ => return false,
        };
        self.requested.get_or_insert(event);
        true
    }

    /// The first power event the guest requested, if any.
    pub fn requested(&self) -> Option<PowerEvent> {
        self.requested
    }
}
