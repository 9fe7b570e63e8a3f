//! I/O-port (PIO) and MMIO buses: address ranges mapped to devices.
//!
//! A vCPU exit `KVM_EXIT_IO` or `KVM_EXIT_MMIO` (KVM API doc §5 "The kvm_run structure")
//! carries an address and a data buffer; the bus finds the device whose range holds the
//! address and calls it with the offset inside that range. Devices sit behind a `Mutex`
//! because every vCPU thread shares the bus. A virtio-mmio transport plugs in as one more
//! [`BusDevice`] on the MMIO bus (virtio 1.2 §4.2.2), with an irqfd from
//! [`crate::vm::Vm::irqfd`] for its GSI.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. Offsets are relative to the base of the range it was inserted at.
/// Implementations must treat `offset` and `data` as guest-controlled: never panic on them.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors inserting devices.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps one already inserted.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// Zero length or overflowing range.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    Invalid {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// An address space of devices (one for PIO, one for MMIO).
#[derive(Default, Clone)]
pub struct Bus {
    // base -> (len, device)
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `dev`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::Invalid { base, len })?;
        if let Some((&b, &(l, _))) = self.devices.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, dev));
        Ok(())
    }

    /// The device holding `addr` and the offset of `addr` inside its range.
    pub fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let off = addr - base;
        (off < *len).then_some((dev, off))
    }

    /// Dispatches a read; returns false (and leaves `data` untouched) when nothing is mapped.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, off)) => {
                lock(dev).read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when nothing is mapped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, off)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock (a panicking vCPU thread must not take
/// the others down with it).
pub fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn ranges_resolve_and_overlaps_are_refused() {
        let mut bus = Bus::new();
        let d: SharedDevice = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(d.clone(), 0x3f8, 8).unwrap();
        bus.insert(d.clone(), 0x400, 1).unwrap();
        assert!(bus.insert(d.clone(), 0x3f0, 9).is_err());
        assert!(bus.insert(d.clone(), 0x3ff, 1).is_err());
        assert!(bus.insert(d.clone(), 0x3f7, 1).is_ok());
        assert!(bus.insert(d.clone(), u64::MAX, 2).is_err());
        assert!(bus.insert(d, 0x10, 0).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(!bus.read(0x3f6, &mut b));
        assert!(!bus.read(0x401, &mut b));
        assert!(bus.write(0x400, &[7]));
        assert!(!bus.write(u64::MAX, &[7]));
    }
}
