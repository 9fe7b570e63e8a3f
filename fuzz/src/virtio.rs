//! Descriptor-chain walking (virtio 1.2 §2.7) with guest-written split virtqueues: the
//! rust-vmm virtio-queue iteration and our request handling on top, for virtio-blk (ax-vmm),
//! virtio-vsock (the muxer shared by ax-vmm and ax-vsock) and virtio-net (ax-netstack's
//! vhost-user backend, transmit and receive).
//!
//! Every target lays out one queue in a small guest RAM from the input ([`Ring`]), runs the
//! device over it, and checks the used ring the device wrote back.

use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use ax_vmm::devices::virtio::block::Block;
use ax_vmm::devices::virtio::{Interrupt, Worker, WorkerIo};
use ax_vsock::{HybridConfig, MuxerOptions, VsockMuxer};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM size.
const RAM: usize = 0x40000;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// A second used ring (the vsock RX queue shares the descriptors and available ring).
const USED2: u64 = 0x3000;
/// Buffers live from here to the end of RAM.
const DATA: u64 = 0x4000;

/// A queue laid out from fuzz input:
/// - byte 0: bits 0..3 queue size `1 << (b % 9)`; bit 4 `VIRTIO_RING_F_EVENT_IDX`;
///   bits 5..7 flags for the device (read-only disk, mergeable buffers, …);
/// - byte 1: `avail.idx` (how many chains the driver claims to have published);
/// - byte 2: number of descriptors written;
/// - descriptors, 6 bytes each: `addr` (u16: `DATA + 4 * addr`, which may run past RAM),
///   `len` (u16), `flags` (bits 0..2: NEXT, WRITE, INDIRECT; bit 6: address far outside RAM;
///   bit 7: length near 4 GiB), `next` (u8, may exceed the size);
/// - `avail.idx` ring entries, one byte each (heads, may exceed the size);
/// - the rest is copied to `DATA` (buffer contents, indirect tables).
pub struct Ring {
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// Queue size.
    pub size: u16,
    /// `avail.idx`.
    pub avail_idx: u16,
    /// Bits 5..7 of byte 0.
    pub flags: u8,
    event_idx: bool,
}

impl Ring {
    /// Lays out the queue (see the type); `None` for input shorter than 3 bytes.
    pub fn new(data: &[u8]) -> Option<Ring> {
        let (&[b0, b1, nd], mut rest) = data.split_first_chunk::<3>()?;
        let size = 1u16 << ((b0 & 0x0f) % 9);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).ok()?;
        for i in 0..usize::from(nd).min(usize::from(size)) {
            let Some((d, r)) = rest.split_first_chunk::<6>() else {
                break;
            };
            rest = r;
            let a = u64::from(u16::from_le_bytes([d[0], d[1]]));
            let mut len = u32::from(u16::from_le_bytes([d[2], d[3]]));
            let f = d[4];
            let addr = if f & 0x40 != 0 {
                0xffff_ffff_0000_0000 | a
            } else {
                DATA + 4 * a
            };
            if f & 0x80 != 0 {
                len |= 0xffff_0000;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&u16::from(f & 7).to_le_bytes());
            raw[14..16].copy_from_slice(&u16::from(d[5]).to_le_bytes());
            mem.write_slice(&raw, GuestAddress(DESC + 16 * i as u64))
                .ok()?;
        }
        let avail_idx = u16::from(b1);
        mem.write_obj(0u16, GuestAddress(AVAIL)).ok()?;
        mem.write_obj(avail_idx, GuestAddress(AVAIL + 2)).ok()?;
        for i in 0..usize::from(avail_idx).min(usize::from(size)) {
            let head = rest.first().copied().unwrap_or(0);
            rest = rest.get(1..).unwrap_or_default();
            mem.write_obj(u16::from(head), GuestAddress(AVAIL + 4 + 2 * i as u64))
                .ok()?;
        }
        let n = rest.len().min(RAM - DATA as usize);
        mem.write_slice(&rest[..n], GuestAddress(DATA)).ok()?;
        Some(Ring {
            mem,
            size,
            avail_idx,
            flags: b0 >> 5,
            event_idx: b0 & 0x10 != 0,
        })
    }

    /// A ready queue over the layout, its used ring at `used`.
    fn queue_at(&self, used: u64) -> Queue {
        let mut q = Queue::new(256).expect("256 is a valid queue size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_event_idx(self.event_idx);
        q.set_ready(true);
        q
    }

    /// The queue (used ring at `USED`).
    pub fn queue(&self) -> Queue {
        self.queue_at(USED)
    }

    /// Checks the used ring at `used` after the device ran: it returned at most what was
    /// made available, and only heads inside the queue.
    fn check_used(&self, used: u64) {
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).expect("in RAM");
        assert!(
            idx <= self.avail_idx,
            "used.idx {idx} > avail.idx {}",
            self.avail_idx
        );
        for i in 0..usize::from(idx).min(usize::from(self.size)) {
            let id: u32 = self
                .mem
                .read_obj(GuestAddress(used + 4 + 8 * i as u64))
                .expect("in RAM");
            assert!(
                id < u32::from(self.size),
                "used head {id} outside the queue"
            );
        }
    }
}

/// A fresh 64 KiB disk: an anonymous memfd, opened by ax-vmm's `Block` through `/proc`.
fn disk() -> Option<std::fs::File> {
    // SAFETY: a valid C string; the fd is owned at once.
    let fd = unsafe { libc::memfd_create(c"ax-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd we own.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(64 * 1024).ok()?;
    Some(f)
}

/// virtio-blk (ax-vmm's `BlockWorker`, one request queue). Flag bit 0: read-only disk.
pub fn blk(data: &[u8]) {
    let Some(ring) = Ring::new(data) else { return };
    let Some(f) = disk() else { return };
    let path = format!("/proc/self/fd/{}", f.as_raw_fd());
    let Ok(b) = Block::new(std::path::Path::new(&path), ring.flags & 1 != 0, 0) else {
        return;
    };
    let mut w = b.into_worker().expect("not activated");
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let mut io = WorkerIo {
        mem: ring.mem.clone(),
        queues: vec![ring.queue()],
        interrupt: Arc::new(Interrupt::new(irq)),
    };
    let _ = w.queue_notified(0, &mut io);
    ring.check_used(USED);
}

/// virtio-vsock: the muxer's TX (guest packets) and RX (its replies into the guest's
/// buffers: a second queue over the same descriptors), then its host-side events.
pub fn vsock(data: &[u8]) {
    let Some(ring) = Ring::new(data) else { return };
    let Ok(dir) = tempfile::tempdir() else { return };
    let cfg = HybridConfig {
        guest_cid: 3,
        uds_path: dir.path().join("v.sock"),
    };
    let Ok(mut mux) = VsockMuxer::new(&cfg, MuxerOptions::default()) else {
        return;
    };
    let mut tx = ring.queue();
    let mut rx = ring.queue_at(USED2);
    let _ = mux.process_tx(&ring.mem, &mut tx);
    let _ = mux.fill_rx(&ring.mem, &mut rx);
    mux.process_events();
    let _ = mux.fill_rx(&ring.mem, &mut rx);
    ring.check_used(USED);
}

/// virtio-net transmit ([`ax_netstack::vhost_user::read_tx`]): every frame read is within
/// the Ethernet sizes.
pub fn net_tx(data: &[u8]) {
    let Some(ring) = Ring::new(data) else { return };
    let mut q = ring.queue();
    let chains: Vec<_> = match q.iter(&ring.mem) {
        Ok(it) => it.collect(),
        Err(_) => return,
    };
    for chain in chains {
        let head = chain.head_index();
        if let Ok(frame) = ax_netstack::vhost_user::read_tx(&ring.mem, chain) {
            assert!(frame.len() >= 14, "frame shorter than an Ethernet header");
            assert!(
                frame.len() <= ax_netstack::vhost_user::MAX_TX_FRAME,
                "oversized frame"
            );
        }
        let _ = q.add_used(&ring.mem, head, 0);
    }
    ring.check_used(USED);
}

/// virtio-net receive ([`ax_netstack::vhost_user::deliver`]): frames of sizes from the flags
/// into the guest's receive buffers, with or without mergeable buffers (flag bit 0).
pub fn net_rx(data: &[u8]) {
    let Some(ring) = Ring::new(data) else { return };
    let mut q = ring.queue();
    let mrg = ring.flags & 1 != 0;
    for n in [60usize, 1514, 9018, 14, 65000] {
        let frame = vec![0xa5u8; n];
        if ax_netstack::vhost_user::deliver(&ring.mem, &mut q, &frame, mrg)
            == ax_netstack::vhost_user::Rx::NoBuffers
        {
            break;
        }
    }
    ring.check_used(USED);
}
