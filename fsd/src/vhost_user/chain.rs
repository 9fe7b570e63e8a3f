//! The guest buffers of one descriptor chain as a scatter list (virtio 1.2 §2.7.4: readable
//! descriptors first, then writable ones), so file data moves between the host file and guest
//! memory in one `preadv(2)` / `pwritev(2)` without a buffer in between (FUSE READ replies and
//! WRITE payloads, [`crate::fuse::io`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use vm_memory::{GuestMemory, GuestMemoryMmap, Permissions, VolatileSlice};

use crate::fuse::io::{ReadSink, WriteSource};

/// At most this many iovecs per `preadv`/`pwritev` (Linux `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

/// A run of guest memory, consumed from the front.
pub struct Bufs<'a> {
    bufs: VecDeque<VolatileSlice<'a>>,
}

impl<'a> Bufs<'a> {
    /// The device-readable (`writable == false`) or device-writable part of `chain`. Errors
    /// when a descriptor is outside guest memory or the lengths overflow.
    pub fn from_chain<T>(
        mem: &'a GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<T>,
        writable: bool,
    ) -> io::Result<Self>
    where
        T: std::ops::Deref + Clone,
        T::Target: GuestMemory + Sized,
    {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let descs = if writable {
            chain.writable()
        } else {
            chain.readable()
        };
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let mut total = 0usize;
        let mut bufs = VecDeque::new();
        for d in descs {
            total = total
                .checked_add(d.len() as usize)
                .ok_or_else(|| bad("descriptor chain length overflows"))?;
            let slices = mem
                .get_slices(d.addr(), d.len() as usize, access)
                .map_err(|e| bad(&format!("descriptor outside guest memory: {e}")))?;
            for s in slices {
                let s = s.map_err(|e| bad(&format!("descriptor outside guest memory: {e}")))?;
                if !s.is_empty() {
                    bufs.push_back(s);
                }
            }
        }
        Ok(Self { bufs })
    }

    /// Bytes left.
    pub fn len(&self) -> usize {
        self.bufs.iter().map(|b| b.len()).sum()
    }

    /// Is nothing left?
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Drops `n` bytes from the front.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.bufs.pop_front() else {
                return;
            };
            if n < front.len() {
                // In bounds: n < len.
                if let Ok(rest) = front.offset(n) {
                    self.bufs.push_front(rest);
                }
                return;
            }
            n -= front.len();
        }
    }

    /// Splits off everything after the first `at` bytes (this keeps the first `at`).
    pub fn split_off(&mut self, at: usize) -> Bufs<'a> {
        let mut rem = at;
        let mut head = VecDeque::new();
        while rem > 0 {
            let Some(front) = self.bufs.pop_front() else {
                break;
            };
            if rem < front.len() {
                match front.split_at(rem) {
                    Ok((a, b)) => {
                        head.push_back(a);
                        self.bufs.push_front(b);
                    }
                    Err(_) => head.push_back(front),
                }
                rem = 0;
            } else {
                rem -= front.len();
                head.push_back(front);
            }
        }
        let tail = std::mem::replace(&mut self.bufs, head);
        Bufs { bufs: tail }
    }

    /// Copies `out.len()` bytes from the front (UnexpectedEof when there are fewer).
    pub fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        if self.len() < out.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut done = 0;
        while done < out.len() {
            let Some(front) = self.bufs.front() else {
                break;
            };
            let n = front.len().min(out.len() - done);
            front
                .subslice(0, n)
                .map_err(io::Error::other)?
                .copy_to(&mut out[done..done + n]);
            done += n;
            self.consume(n);
        }
        Ok(())
    }

    /// Copies `data` to the front (WriteZero when it does not fit).
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        if self.len() < data.len() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut done = 0;
        while done < data.len() {
            let Some(front) = self.bufs.front() else {
                break;
            };
            let n = front.len().min(data.len() - done);
            front
                .subslice(0, n)
                .map_err(io::Error::other)?
                .copy_from(&data[done..done + n]);
            done += n;
            self.consume(n);
        }
        Ok(())
    }

    /// iovecs for the first `len` bytes.
    fn iovecs(&self, len: usize) -> Vec<libc::iovec> {
        let mut v = Vec::with_capacity(self.bufs.len().min(MAX_IOV));
        let mut left = len;
        for b in &self.bufs {
            if left == 0 || v.len() == MAX_IOV {
                break;
            }
            let n = b.len().min(left);
            v.push(libc::iovec {
                iov_base: b.ptr_guard_mut().as_ptr().cast(),
                iov_len: n,
            });
            left -= n;
        }
        v
    }
}

/// Retries EINTR.
fn retry(mut f: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = f();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl ReadSink for Bufs<'_> {
    fn room(&self) -> usize {
        self.len()
    }

    fn read_from(&mut self, fd: RawFd, offset: u64, len: usize) -> io::Result<usize> {
        let mut done = 0;
        let len = len.min(self.len());
        while done < len {
            let iov = self.iovecs(len - done);
            // SAFETY: the iovecs point into guest memory mapped for the backend's lifetime
            // (the slices borrow the GuestMemoryMmap), each within its slice's bounds.
            let n = retry(|| unsafe {
                libc::preadv64(
                    fd,
                    iov.as_ptr(),
                    iov.len() as i32,
                    (offset + done as u64) as i64,
                )
            })?;
            if n == 0 {
                break;
            }
            self.consume(n);
            done += n;
        }
        Ok(done)
    }

    fn put(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.len());
        self.write_all(&data[..n])?;
        Ok(n)
    }
}

impl WriteSource for Bufs<'_> {
    fn len(&self) -> usize {
        Bufs::len(self)
    }

    fn write_to(&mut self, fd: RawFd, offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while !self.is_empty() {
            let iov = self.iovecs(usize::MAX);
            // SAFETY: as in read_from; pwritev only reads the buffers.
            let n = retry(|| unsafe {
                libc::pwritev64(
                    fd,
                    iov.as_ptr(),
                    iov.len() as i32,
                    (offset + done as u64) as i64,
                )
            })?;
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.consume(n);
            done += n;
        }
        Ok(done)
    }

    fn to_vec(&mut self) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; Bufs::len(self)];
        self.read_exact(&mut v)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    /// A scatter list of odd-sized pieces (as a guest might hand over).
    fn pieces<'a>(mem: &'a GuestMemoryMmap, spans: &[(u64, usize)]) -> Bufs<'a> {
        let mut bufs = VecDeque::new();
        for &(a, l) in spans {
            bufs.push_back(mem.get_slice(GuestAddress(a), l).unwrap());
        }
        Bufs { bufs }
    }

    #[test]
    fn scatter_read_write_and_split() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let spans = [(0x1000, 7), (0x3000, 4093), (0x9000, 1), (0x20000, 8000)];
        let mut w = pieces(&mem, &spans);
        assert_eq!(w.len(), 12_101);
        // Header part (16 bytes across two pieces), then the data part.
        let mut data_part = w.split_off(16);
        assert_eq!((w.len(), data_part.len()), (16, 12_085));
        let n = data_part.read_from(f.as_raw_fd(), 5, 20_000).unwrap();
        assert_eq!(n, 9_995, "short only at end of file");
        w.write_all(&[0xAA; 16]).unwrap();
        assert!(w.write_all(&[1]).is_err(), "the header part is full");
        // Read everything back through a fresh list over the same pieces.
        let mut r = pieces(&mem, &spans);
        let mut got = vec![0u8; 16 + 9_995];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got[..16], &[0xAA; 16]);
        assert_eq!(&got[16..], &data[5..]);
        // pwritev from a scatter list, at an offset.
        let mut r = pieces(&mem, &spans);
        r.split_off(16 + 300);
        let out = tempfile::tempfile().unwrap();
        assert_eq!(
            WriteSource::write_to(&mut r, out.as_raw_fd(), 100).unwrap(),
            316
        );
        let mut back = vec![0u8; 416];
        let n = crate::union::sys::pread(&out, &mut back, 0).unwrap();
        assert_eq!(n, 416);
        assert_eq!(&back[100..116], &[0xAA; 16]);
        assert_eq!(&back[116..], &data[5..305]);
        let mut m = vec![0u8; 3];
        mem.read_slice(&mut m, GuestAddress(0x9000)).unwrap();
        assert_eq!(m[0], got[16 + 4093 + 7 - 16]);
    }
}
