//! The in-memory Ethernet device smoltcp polls: frames from the guest wait in `rx` (filled by
//! the stack's loop after classification), frames for the guest go to the shared [`Outbox`]
//! the vhost-user side drains through `GuestPort::try_recv`.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

/// Frames queued for the guest before the stack stops producing (backpressure: smoltcp keeps
/// unsent TCP data in its socket buffers until the guest's RX ring has room again).
pub const OUTBOX_CAP: usize = 1024;

/// Frames for the guest, with an eventfd that is readable exactly while the queue is non-empty.
pub struct Outbox {
    queue: Mutex<VecDeque<Vec<u8>>>,
    eventfd: OwnedFd,
}

impl Outbox {
    /// An empty queue and its eventfd. Errors: eventfd(2) failed (descriptor limit).
    pub fn new() -> std::io::Result<Outbox> {
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Outbox {
            queue: Mutex::new(VecDeque::new()),
            // SAFETY: fd is a fresh descriptor we own.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The eventfd (non-blocking; readable while frames wait).
    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    /// Queues a frame and makes the eventfd readable.
    pub fn push(&self, frame: Vec<u8>) {
        let mut q = self.queue.lock().unwrap();
        q.push_back(frame);
        if q.len() == 1 {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Takes the next frame; `was_full` tells the caller the stack may be waiting for room.
    pub fn pop(&self) -> (Option<Vec<u8>>, bool) {
        let mut q = self.queue.lock().unwrap();
        let was_full = q.len() >= OUTBOX_CAP;
        let f = q.pop_front();
        if f.is_some() && q.is_empty() {
            let mut v: u64 = 0;
            // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd (resets it).
            unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        }
        (f, was_full)
    }
}

/// The smoltcp device: `rx` holds classified guest frames, transmits go to the outbox.
pub struct QueueDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub outbox: Arc<Outbox>,
    /// Maximum Ethernet frame size (MTU + 14).
    pub frame_len: usize,
}

/// One received frame for smoltcp.
pub struct RxToken(Vec<u8>);
/// Room for one frame to the guest.
pub struct TxToken<'a>(&'a Outbox);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&self.outbox)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.outbox.len() >= OUTBOX_CAP {
            return None;
        }
        Some(TxToken(&self.outbox))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_len;
        caps.max_burst_size = None;
        caps
    }
}
