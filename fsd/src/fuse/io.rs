//! READ and WRITE data paths without intermediate buffers. A READ reply's data goes straight
//! from the host file into the guest's device-writable descriptor buffers (`preadv(2)`), and a
//! WRITE's payload straight from the device-readable buffers into the host file
//! (`pwritev(2)`); the transport ([`crate::vhost_user`]) implements [`ReadSink`] and
//! [`WriteSource`] over guest memory. [`VecSink`] and `&[u8]` implement them over plain memory
//! (the transport-independent [`Server::handle`](super::server::Server::handle), tests).

use std::io;
use std::os::fd::RawFd;

/// Where the data of a READ reply goes (after the `fuse_out_header`).
pub trait ReadSink {
    /// Bytes that still fit.
    fn room(&self) -> usize;
    /// Reads at most `len` (≤ [`Self::room`]) bytes of the file `fd` at `offset` straight into
    /// the sink; returns the bytes read (short only at end of file). EINTR is retried.
    fn read_from(&mut self, fd: RawFd, offset: u64, len: usize) -> io::Result<usize>;
    /// Copies `data` (at most [`Self::room`] bytes are taken); returns the bytes taken.
    fn put(&mut self, data: &[u8]) -> io::Result<usize>;
}

/// Where the payload of a WRITE comes from (after `fuse_in_header` + `fuse_write_in`).
pub trait WriteSource {
    /// Payload bytes.
    fn len(&self) -> usize;
    /// Is the payload empty?
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes the whole payload to the file `fd` at `offset` (short writes and EINTR retried);
    /// returns the bytes written.
    fn write_to(&mut self, fd: RawFd, offset: u64) -> io::Result<usize>;
    /// The payload as bytes (for file systems without a host fd).
    fn to_vec(&mut self) -> io::Result<Vec<u8>>;
}

/// A [`ReadSink`] into a `Vec`, holding at most `max` bytes.
pub struct VecSink {
    /// The data so far.
    pub buf: Vec<u8>,
    /// Capacity in bytes.
    pub max: usize,
}

impl VecSink {
    /// An empty sink for at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }
}

impl ReadSink for VecSink {
    fn room(&self) -> usize {
        self.max.saturating_sub(self.buf.len())
    }

    fn read_from(&mut self, fd: RawFd, offset: u64, len: usize) -> io::Result<usize> {
        let len = len.min(self.room());
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        // SAFETY: the range was just allocated.
        let r = unsafe {
            crate::union::sys::pread_raw(fd, self.buf[start..].as_mut_ptr(), len, offset)
        };
        let n = *r.as_ref().unwrap_or(&0);
        self.buf.truncate(start + n);
        r
    }

    fn put(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.room());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }
}

impl WriteSource for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn write_to(&mut self, fd: RawFd, offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < self.len() {
            // SAFETY: the slice is valid.
            let n = unsafe {
                libc::pwrite64(
                    fd,
                    self[done..].as_ptr().cast(),
                    self.len() - done,
                    (offset + done as u64) as i64,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            done += n as usize;
        }
        Ok(done)
    }

    fn to_vec(&mut self) -> io::Result<Vec<u8>> {
        Ok(<[u8]>::to_vec(self))
    }
}
