//! virtio-blk (virtio 1.2 §5.2) backed by a host file; read-only for the rootfs.
//!
//! One request queue. Features offered: `VIRTIO_BLK_F_SIZE_MAX`, `VIRTIO_BLK_F_SEG_MAX`,
//! `VIRTIO_BLK_F_FLUSH`, `VIRTIO_BLK_F_RO` (read-only disks), plus `VIRTIO_F_VERSION_1`,
//! `VIRTIO_F_RING_INDIRECT_DESC` and `VIRTIO_F_RING_EVENT_IDX`. Requests (§5.2.6): IN, OUT,
//! FLUSH, GET_ID; anything else gets `VIRTIO_BLK_S_UNSUPP`.
//!
//! A request is the device-readable header (`le32 type, le32 reserved, le64 sector`), then
//! data, then one device-writable status byte (the last byte of the chain, §5.2.6). With
//! VERSION_1 the layout is free (§2.7.4): the header is the first 16 readable bytes, OUT data
//! the readable bytes after it, IN data the writable bytes before the status byte. Chains
//! that are unusable (no room for header or status, readable after writable descriptors,
//! addresses outside guest memory, more than 4 GiB in total) are returned to the driver
//! with used length 0 and, when the status byte is reachable, `VIRTIO_BLK_S_IOERR`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::{
    device_id, features, read_config_bytes, Activation, DeviceError, VirtioDevice, WarnLimiter,
    Worker, WorkerIo, WorkerSlot,
};
use crate::memory::GuestMemoryMmap;

/// Sector size of the protocol (§5.2.6: "sector ... 512-byte").
pub const SECTOR_SIZE: u64 = 512;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// `VIRTIO_BLK_F_SIZE_MAX`: `size_max` in config is the largest segment.
pub const F_SIZE_MAX: u64 = 1 << 1;
/// `VIRTIO_BLK_F_SEG_MAX`: `seg_max` in config is the most segments per request.
pub const F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_RO`: the device is read-only.
pub const F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`: cache flush command support.
pub const F_FLUSH: u64 = 1 << 9;
/// Largest segment advertised (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments per request advertised (`seg_max`): the queue size minus header and
/// status descriptors (Linux uses it to size its scatterlists).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// `VIRTIO_BLK_ID_BYTES`.
pub const ID_BYTES: usize = 20;

/// Request types (§5.2.6).
pub mod req {
    /// `VIRTIO_BLK_T_IN`: read.
    pub const IN: u32 = 0;
    /// `VIRTIO_BLK_T_OUT`: write.
    pub const OUT: u32 = 1;
    /// `VIRTIO_BLK_T_FLUSH`.
    pub const FLUSH: u32 = 4;
    /// `VIRTIO_BLK_T_GET_ID`.
    pub const GET_ID: u32 = 8;
}

/// Status values (§5.2.6).
pub mod blk_status {
    /// `VIRTIO_BLK_S_OK`.
    pub const OK: u8 = 0;
    /// `VIRTIO_BLK_S_IOERR`.
    pub const IOERR: u8 = 1;
    /// `VIRTIO_BLK_S_UNSUPP`.
    pub const UNSUPP: u8 = 2;
}

/// Bounce-buffer chunk for file I/O: bounds host memory per request whatever the guest asks.
const CHUNK: usize = 64 << 10;

/// A virtio-blk device.
pub struct Block {
    features: u64,
    config: [u8; 24],
    worker: WorkerSlot<BlockWorker>,
}

impl Block {
    /// Opens `path` (read-only if `read_only`) as disk number `index`.
    pub fn new(path: &Path, read_only: bool, index: usize) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        let len = file.metadata()?.len();
        let capacity = len / SECTOR_SIZE;
        if len % SECTOR_SIZE != 0 {
            log::warn!(
                "virtio-blk{index}: {} is {len} bytes, not a multiple of 512; the last {} bytes are not visible",
                path.display(),
                len % SECTOR_SIZE
            );
        }
        let mut features = features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | F_SIZE_MAX
            | F_SEG_MAX
            | F_FLUSH;
        if read_only {
            features |= F_RO;
        }
        // struct virtio_blk_config (§5.2.4): capacity, size_max, seg_max, geometry (unused).
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let mut id = [0u8; ID_BYTES];
        let s = format!("ax-blk{index}");
        id[..s.len().min(ID_BYTES)].copy_from_slice(&s.as_bytes()[..s.len().min(ID_BYTES)]);
        Ok(Block {
            features,
            config,
            worker: WorkerSlot::Idle(BlockWorker {
                name: format!("virtio-blk{index}"),
                path: path.to_path_buf(),
                file,
                capacity,
                read_only,
                id,
                warn: WarnLimiter::new(),
                buf: Vec::new(),
            }),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        u64::from_le_bytes(self.config[0..8].try_into().unwrap_or_default())
    }

    /// The data path of a device not yet activated, to drive it without a device thread
    /// ([`Worker::queue_notified`] on queue 0); `None` once activated. For the fuzz targets
    /// (fuzz/, docs/fuzzing.md).
    pub fn into_worker(self) -> Option<BlockWorker> {
        match self.worker {
            WorkerSlot::Idle(w) => Some(w),
            _ => None,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_id::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, act: Activation) -> Result<(), String> {
        self.worker.activate(act, |_, _| {})
    }

    fn reset(&mut self) {
        self.worker.reset(|_| {});
    }
}

/// The block data path (runs on the device thread).
pub struct BlockWorker {
    name: String,
    path: PathBuf,
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    warn: WarnLimiter,
    buf: Vec<u8>,
}

/// A contiguous guest range of a chain.
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: GuestAddress,
    len: u64,
}

/// A parsed request: readable and writable parts in order.
struct Parsed {
    readable: Vec<Seg>,
    writable: Vec<Seg>,
}

fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

/// Copies `len` bytes starting at byte `skip` of `segs` (a scatter list) into/out of `f`.
fn for_each_range(
    segs: &[Seg],
    mut skip: u64,
    mut len: u64,
    mut f: impl FnMut(GuestAddress, u64) -> Result<(), String>,
) -> Result<(), String> {
    for s in segs {
        if len == 0 {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = (s.len - skip).min(len);
        f(GuestAddress(s.addr.0 + skip), n)?;
        skip = 0;
        len -= n;
    }
    Ok(())
}

impl BlockWorker {
    /// Splits a chain into readable and writable segments, checking order (§2.7.4.2: readable
    /// descriptors first), that every range lies in guest memory, and the 4 GiB total.
    fn parse(
        &mut self,
        mem: &GuestMemoryMmap,
        descs: &[(u64, u32, bool)],
    ) -> Result<Parsed, String> {
        let mut p = Parsed {
            readable: Vec::new(),
            writable: Vec::new(),
        };
        let mut sum = 0u64;
        for &(addr, len, write) in descs {
            if !write && !p.writable.is_empty() {
                return Err("device-readable descriptor after a device-writable one".into());
            }
            sum += u64::from(len);
            if sum > u64::from(u32::MAX) {
                return Err("chain longer than 4 GiB".into());
            }
            let perm = if write {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if len > 0 && !mem.check_range(GuestAddress(addr), len as usize, perm) {
                return Err(format!(
                    "descriptor {addr:#x}+{len:#x} is outside guest memory"
                ));
            }
            let seg = Seg {
                addr: GuestAddress(addr),
                len: u64::from(len),
            };
            if write {
                p.writable.push(seg);
            } else {
                p.readable.push(seg);
            }
        }
        Ok(p)
    }

    /// Executes one request; returns (status, bytes written into the data area).
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        p: &Parsed,
        hdr: &[u8; 16],
        data_in: u64,
    ) -> (u8, u64) {
        let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let name = self.name.clone();
        match ty {
            req::IN | req::OUT => {
                let (len, write) = if ty == req::IN {
                    (data_in, false)
                } else {
                    (total(&p.readable) - 16, true)
                };
                if write && self.read_only {
                    self.warn.warn(format_args!(
                        "{name}: write to read-only disk (sector {sector}); VIRTIO_BLK_S_IOERR"
                    ));
                    return (blk_status::IOERR, 0);
                }
                if len % SECTOR_SIZE != 0 {
                    self.warn.warn(format_args!(
                        "{name}: data length {len} is not a multiple of 512; VIRTIO_BLK_S_IOERR"
                    ));
                    return (blk_status::IOERR, 0);
                }
                let end = sector
                    .checked_add(len / SECTOR_SIZE)
                    .filter(|&e| e <= self.capacity);
                if end.is_none() {
                    self.warn.warn(format_args!(
                        "{name}: sector {sector} + {} sectors is beyond the capacity {}; VIRTIO_BLK_S_IOERR",
                        len / SECTOR_SIZE,
                        self.capacity
                    ));
                    return (blk_status::IOERR, 0);
                }
                let off = sector * SECTOR_SIZE;
                let segs = if write { &p.readable } else { &p.writable };
                let r = self.transfer(mem, segs, off, len, write);
                match r {
                    Ok(()) => (blk_status::OK, if write { 0 } else { len }),
                    Err(e) => {
                        self.warn.warn(format_args!(
                            "{name}: I/O on {} at byte {off}: {e}; VIRTIO_BLK_S_IOERR",
                            self.path.display()
                        ));
                        (blk_status::IOERR, 0)
                    }
                }
            }
            req::FLUSH => {
                if self.read_only {
                    return (blk_status::OK, 0);
                }
                match self.file.sync_data() {
                    Ok(()) => (blk_status::OK, 0),
                    Err(e) => {
                        self.warn.warn(format_args!(
                            "{name}: flush failed: {e}; VIRTIO_BLK_S_IOERR"
                        ));
                        (blk_status::IOERR, 0)
                    }
                }
            }
            req::GET_ID => {
                let n = data_in.min(ID_BYTES as u64);
                let id = self.id;
                let mut done = 0usize;
                let r = for_each_range(&p.writable, 0, n, |a, l| {
                    mem.write_slice(&id[done..done + l as usize], a)
                        .map_err(|e| e.to_string())?;
                    done += l as usize;
                    Ok(())
                });
                match r {
                    Ok(()) => (blk_status::OK, n),
                    Err(_) => (blk_status::IOERR, 0),
                }
            }
            other => {
                self.warn.warn(format_args!(
                    "{name}: unsupported request type {other}; VIRTIO_BLK_S_UNSUPP"
                ));
                (blk_status::UNSUPP, 0)
            }
        }
    }

    /// Copies `len` bytes between the disk at byte `off` and the guest segments, in
    /// CHUNK-sized pieces through the reused buffer. A write (`write`) reads the guest's
    /// readable segments after the 16-byte request header and writes the file; a read reads
    /// the file and fills the writable segments from their start.
    fn transfer(
        &mut self,
        mem: &GuestMemoryMmap,
        segs: &[Seg],
        off: u64,
        len: u64,
        write: bool,
    ) -> Result<(), String> {
        let mut buf = std::mem::take(&mut self.buf);
        let file = &self.file;
        let mut pos = off;
        let skip = if write { 16 } else { 0 };
        let r = for_each_range(segs, skip, len, |addr, n| {
            let mut done = 0u64;
            while done < n {
                let c = (n - done).min(CHUNK as u64) as usize;
                buf.resize(c, 0);
                let guest = GuestAddress(addr.0 + done);
                if write {
                    mem.read_slice(&mut buf[..c], guest)
                        .map_err(|e| e.to_string())?;
                    file.write_all_at(&buf[..c], pos)
                        .map_err(|e| e.to_string())?;
                } else {
                    file.read_exact_at(&mut buf[..c], pos)
                        .map_err(|e| e.to_string())?;
                    mem.write_slice(&buf[..c], guest)
                        .map_err(|e| e.to_string())?;
                }
                pos += c as u64;
                done += c as u64;
            }
            Ok(())
        });
        self.buf = buf;
        r
    }

    /// Handles one chain; returns the used length (bytes written to the chain).
    fn handle_chain(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) -> u32 {
        let name = self.name.clone();
        let p = match self.parse(mem, descs) {
            Ok(p) => p,
            Err(e) => {
                self.warn
                    .warn(format_args!("{name}: malformed request dropped: {e}"));
                return 0;
            }
        };
        let writable = total(&p.writable);
        if writable == 0 {
            self.warn.warn(format_args!(
                "{name}: malformed request dropped: no device-writable status byte"
            ));
            return 0;
        }
        // The status byte: the last writable byte.
        let mut status_addr = None;
        let _ = for_each_range(&p.writable, writable - 1, 1, |a, _| {
            status_addr = Some(a);
            Ok(())
        });
        let Some(status_addr) = status_addr else {
            return 0;
        };
        let data_in = writable - 1;
        let (status, written) = if total(&p.readable) < 16 {
            self.warn.warn(format_args!(
                "{name}: request header shorter than 16 bytes; VIRTIO_BLK_S_IOERR"
            ));
            (blk_status::IOERR, 0)
        } else {
            let mut hdr = [0u8; 16];
            let mut done = 0usize;
            let ok = for_each_range(&p.readable, 0, 16, |a, l| {
                mem.read_slice(&mut hdr[done..done + l as usize], a)
                    .map_err(|e| e.to_string())?;
                done += l as usize;
                Ok(())
            });
            if ok.is_err() {
                (blk_status::IOERR, 0)
            } else {
                self.execute(mem, &p, &hdr, data_in)
            }
        };
        if mem.write_obj(status, status_addr).is_err() {
            return 0;
        }
        // Bytes written: data + status, at most the 4 GiB the parse allowed.
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    fn process(&mut self, io: &mut WorkerIo) -> Result<(), DeviceError> {
        let mem = io.mem.clone();
        let Some(queue) = io.queues.get_mut(0) else {
            return Ok(());
        };
        let mut used = false;
        loop {
            // A driver that advanced avail.idx by more than the queue size is broken (§2.7.13.3).
            let chains: Vec<_> = {
                let iter = queue
                    .iter(&mem)
                    .map_err(|e| DeviceError(format!("request queue: {e}")))?;
                iter.map(|c| {
                    let head = c.head_index();
                    let descs: Vec<(u64, u32, bool)> = c
                        .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                        .collect();
                    (head, descs)
                })
                .collect()
            };
            for (head, descs) in chains {
                let len = self.handle_chain(&mem, &descs);
                queue.add_used(&mem, head, len).map_err(|e| {
                    DeviceError(format!("request queue: cannot return chain {head}: {e}"))
                })?;
                used = true;
            }
            if !queue.enable_notification(&mem)? {
                break;
            }
        }
        if used {
            io.notify_used(0)?;
        }
        Ok(())
    }
}

impl Worker for BlockWorker {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn queue_notified(&mut self, q: usize, io: &mut WorkerIo) -> Result<(), DeviceError> {
        if q == 0 {
            self.process(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;

    fn worker(ro: bool) -> (BlockWorker, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, data).unwrap();
        let b = Block::new(&p, ro, 0).unwrap();
        assert_eq!(b.capacity(), 16);
        assert_ne!(b.features() & F_RO, u64::from(!ro) * F_RO);
        match b.worker {
            WorkerSlot::Idle(w) => (w, dir),
            _ => unreachable!(),
        }
    }

    fn hdr(mem: &GuestMemoryMmap, at: u64, ty: u32, sector: u64) {
        mem.write_obj(ty, GuestAddress(at)).unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    #[test]
    fn read_write_bounds_and_malformed_chains() {
        let ram = GuestRam::new(4 << 20).unwrap();
        let mem = &ram.mem;
        let (mut w, _d) = worker(true);
        // Read sector 1 split over two data descriptors.
        hdr(mem, 0x1000, req::IN, 1);
        let len = w.handle_chain(
            mem,
            &[
                (0x1000, 16, false),
                (0x2000, 100, true),
                (0x3000, 412, true),
                (0x4000, 1, true),
            ],
        );
        assert_eq!(len, 513);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 0);
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got[..100], GuestAddress(0x2000))
            .unwrap();
        mem.read_slice(&mut got[100..], GuestAddress(0x3000))
            .unwrap();
        let want: Vec<u8> = (512..1024u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(got, want);
        // Write on a read-only disk: IOERR.
        hdr(mem, 0x1000, req::OUT, 0);
        let len = w.handle_chain(
            mem,
            &[(0x1000, 16, false), (0x2000, 512, false), (0x4000, 1, true)],
        );
        assert_eq!(
            (len, mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap()),
            (1, 1)
        );
        // Beyond capacity, sector overflow, odd length: IOERR.
        for (s, l) in [(16u64, 512u32), (u64::MAX, 512), (0, 100)] {
            hdr(mem, 0x1000, req::IN, s);
            w.handle_chain(
                mem,
                &[(0x1000, 16, false), (0x2000, l, true), (0x4000, 1, true)],
            );
            assert_eq!(
                mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(),
                1,
                "{s} {l}"
            );
        }
        // Data outside guest memory, or a huge length: dropped (used length 0).
        hdr(mem, 0x1000, req::IN, 0);
        mem.write_obj(0xeeu8, GuestAddress(0x4000)).unwrap();
        assert_eq!(
            w.handle_chain(
                mem,
                &[
                    (0x1000, 16, false),
                    (0x7000_0000, 512, true),
                    (0x4000, 1, true)
                ]
            ),
            0
        );
        assert_eq!(
            w.handle_chain(
                mem,
                &[
                    (0x1000, 16, false),
                    (0x2000, u32::MAX, true),
                    (0x4000, 1, true)
                ]
            ),
            0
        );
        assert_eq!(
            w.handle_chain(
                mem,
                &[
                    (0x1000, 16, false),
                    (u64::MAX - 10, 512, true),
                    (0x4000, 1, true)
                ]
            ),
            0
        );
        // Readable after writable; no status byte.
        assert_eq!(
            w.handle_chain(mem, &[(0x2000, 512, true), (0x1000, 16, false)]),
            0
        );
        assert_eq!(w.handle_chain(mem, &[(0x1000, 16, false)]), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 0xee);
        // Short header: IOERR. Unknown type: UNSUPP. GET_ID. FLUSH.
        assert_eq!(
            w.handle_chain(mem, &[(0x1000, 8, false), (0x4000, 1, true)]),
            1
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 1);
        hdr(mem, 0x1000, 77, 0);
        w.handle_chain(mem, &[(0x1000, 16, false), (0x4000, 1, true)]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 2);
        hdr(mem, 0x1000, req::GET_ID, 0);
        assert_eq!(
            w.handle_chain(
                mem,
                &[(0x1000, 16, false), (0x2000, 20, true), (0x4000, 1, true)]
            ),
            21
        );
        let mut id = [0u8; 7];
        mem.read_slice(&mut id, GuestAddress(0x2000)).unwrap();
        assert_eq!(&id, b"ax-blk0");
        hdr(mem, 0x1000, req::FLUSH, 0);
        assert_eq!(
            w.handle_chain(mem, &[(0x1000, 16, false), (0x4000, 1, true)]),
            1
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 0);
    }

    #[test]
    fn writable_disk_writes() {
        let ram = GuestRam::new(4 << 20).unwrap();
        let mem = &ram.mem;
        let (mut w, d) = worker(false);
        // Header and data in one readable descriptor (any layout, §2.7.4).
        hdr(mem, 0x1000, req::OUT, 2);
        mem.write_slice(&[0xabu8; 512], GuestAddress(0x1010))
            .unwrap();
        assert_eq!(
            w.handle_chain(mem, &[(0x1000, 528, false), (0x4000, 1, true)]),
            1
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 0);
        let f = std::fs::read(d.path().join("disk.img")).unwrap();
        assert!(f[1024..1536].iter().all(|&b| b == 0xab));
        assert_eq!(f[1536], (1536u32 * 7 % 251) as u8);
    }
}
