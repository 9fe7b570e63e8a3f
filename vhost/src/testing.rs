//! A vhost-user frontend for the backends' tests (feature `testing`; a dev-dependency only).
//!
//! Guest RAM is a memfd mapped with vm-memory (`GuestMemoryMmap` + `FileOffset`) and shared
//! with the backend through `VHOST_USER_SET_MEM_TABLE` ([`GuestRam`]). Split virtqueues
//! (virtio 1.2 §2.7) are laid out by hand in that memory ([`Vq`]): descriptors written, heads
//! published in the available ring, kicked through the kick eventfd; the test waits on the
//! call eventfd and reads the used ring. The frontend itself is vhost's `Frontend`; what the
//! test acks and which buffers it posts stay in each backend's test.
//!
//! Everything here panics on failure: it is test code.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// `VIRTQ_DESC_F_NEXT`: the chain continues at `next` (virtio 1.2 §2.7.5).
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the buffer is device-writable (virtio 1.2 §2.7.5).
pub const DESC_F_WRITE: u16 = 2;

/// Guest RAM: `size` bytes at guest physical address 0 in a memfd, mapped in this process.
/// Derefs to the `GuestMemoryMmap` the test reads and writes.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    memfd: File,
    size: usize,
}

impl GuestRam {
    /// Creates the memfd (named `name`, for /proc/PID/maps) and maps it.
    pub fn new(name: &CStr, size: usize) -> GuestRam {
        // SAFETY: valid C string; the fd is owned at once.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: fresh fd.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd.set_len(size as u64).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(memfd.try_clone().unwrap(), 0)),
        )])
        .expect("guest memory");
        GuestRam { mem, memfd, size }
    }

    /// The address of guest physical address 0 in this process (the frontend's "userspace
    /// address" space, vhost-user spec: `VHOST_USER_SET_VRING_ADDR`).
    pub fn host_addr(&self) -> u64 {
        self.mem.get_host_address(GuestAddress(0)).unwrap() as u64
    }

    /// The one memory region for `VHOST_USER_SET_MEM_TABLE`: all of the RAM, backed by the
    /// memfd at offset 0.
    pub fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: self.size as u64,
            userspace_addr: self.host_addr(),
            mmap_offset: 0,
            mmap_handle: self.memfd.as_raw_fd(),
        }
    }
}

impl std::ops::Deref for GuestRam {
    type Target = GuestMemoryMmap;
    fn deref(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

/// `VHOST_USER_GET_PROTOCOL_FEATURES`, then `VHOST_USER_SET_PROTOCOL_FEATURES` with what the
/// backend offers of `MQ | CONFIG`. Call it after `SET_FEATURES` acked
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub fn ack_protocol_features(frontend: &mut Frontend) {
    let pf = frontend
        .get_protocol_features()
        .expect("GET_PROTOCOL_FEATURES");
    frontend
        .set_protocol_features(
            pf & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG),
        )
        .expect("SET_PROTOCOL_FEATURES");
}

/// Waits until the spawned backend `child` has bound `socket` (polling every 5 ms). Errors:
/// the child exited first (with its status), or `timeout` passed.
pub fn wait_for_socket(child: &mut Child, socket: &Path, timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    while !socket.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("backend exited ({st}) before creating its socket"));
        }
        if t0.elapsed() >= timeout {
            return Err(format!(
                "the backend did not create its socket within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// One split virtqueue in guest RAM, as the driver sees it (virtio 1.2 §2.7): guest physical
/// addresses of its three parts, the driver's indexes, and its kick and call eventfds.
pub struct Vq {
    /// Descriptor table (§2.7.5): `struct virtq_desc { le64 addr; le32 len; le16 flags;
    /// le16 next; }`.
    pub desc: u64,
    /// Available ring (§2.7.6): `le16 flags; le16 idx; le16 ring[size]; le16 used_event`.
    pub avail: u64,
    /// Used ring (§2.7.8): `le16 flags; le16 idx; struct { le32 id; le32 len; } ring[size];
    /// le16 avail_event`.
    pub used: u64,
    /// Queue size (descriptors).
    pub size: u16,
    /// The next available index the driver publishes.
    pub next_avail: u16,
    /// The used index up to which the driver has read.
    pub last_used: u16,
    /// Kick eventfd (driver → device, `VHOST_USER_SET_VRING_KICK`).
    pub kick: EventFd,
    /// Call eventfd (device → driver, `VHOST_USER_SET_VRING_CALL`), non-blocking.
    pub call: EventFd,
}

impl Vq {
    /// Lays out vring `index` with `size` descriptors in `ram` (descriptor table at `base`,
    /// available ring at `base + 0x1000`, used ring at `base + 0x2000`: `size` ≤ 256) and
    /// sends `VHOST_USER_SET_VRING_NUM`, `_ADDR`, `_BASE` (0), `_CALL`, `_KICK` and, when
    /// `enable`, `SET_VRING_ENABLE` (only with the protocol features acked).
    pub fn setup(
        frontend: &mut Frontend,
        ram: &GuestRam,
        index: usize,
        base: u64,
        size: u16,
        enable: bool,
    ) -> Vq {
        let host = ram.host_addr();
        let vq = Vq {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            size,
            next_avail: 0,
            last_used: 0,
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        frontend.set_vring_num(index, size).expect("SET_VRING_NUM");
        frontend
            .set_vring_addr(
                index,
                &VringConfigData {
                    queue_max_size: size,
                    queue_size: size,
                    flags: 0,
                    desc_table_addr: host + vq.desc,
                    used_ring_addr: host + vq.used,
                    avail_ring_addr: host + vq.avail,
                    log_addr: None,
                },
            )
            .expect("SET_VRING_ADDR");
        frontend.set_vring_base(index, 0).expect("SET_VRING_BASE");
        frontend
            .set_vring_call(index, &vq.call)
            .expect("SET_VRING_CALL");
        frontend
            .set_vring_kick(index, &vq.kick)
            .expect("SET_VRING_KICK");
        if enable {
            frontend
                .set_vring_enable(index, true)
                .expect("SET_VRING_ENABLE");
        }
        vq
    }

    /// Writes descriptor `i` (§2.7.5): buffer at `addr` of `len` bytes, `flags`
    /// ([`DESC_F_NEXT`], [`DESC_F_WRITE`]), `next`.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let d = self.desc + 16 * u64::from(i);
        mem.write_obj(addr, GuestAddress(d)).unwrap();
        mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        mem.write_obj(next, GuestAddress(d + 14)).unwrap();
    }

    /// Publishes the chain starting at descriptor `head` in the next available-ring slot and
    /// advances the available index (§2.7.13), fenced on both sides. Does not kick.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.next_avail % self.size;
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * u64::from(slot)))
            .unwrap();
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
        fence(Ordering::SeqCst);
    }

    /// Notifies the device (writes the kick eventfd).
    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    /// The device's used index (`virtq_used.idx`).
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The next used element `(id, len)` (§2.7.8) if the device added one since the last
    /// call; advances [`Vq::last_used`].
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let e = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }

    /// `avail_event`, the last field of the used ring: with `VIRTIO_F_EVENT_IDX` the driver
    /// kicks only when its available index passes it (§2.7.10).
    pub fn avail_event(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 4 + 8 * u64::from(self.size)))
            .unwrap()
    }

    /// Waits up to `timeout_ms` milliseconds for the device to signal the call eventfd, then
    /// resets it (nothing signalled is fine).
    pub fn wait_call(&self, timeout_ms: i32) {
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        let _ = self.call.read();
    }
}
