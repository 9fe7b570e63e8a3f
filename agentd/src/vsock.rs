//! `AF_VSOCK` stream sockets (vsock(7)): the guest side of the control channel.

use agentd::server::Stream;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A connected vsock stream socket.
pub struct VsockStream(OwnedFd);

fn cvt(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read(2) into a valid buffer.
        cvt(unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: send(2) from a valid buffer; MSG_NOSIGNAL so a closed peer is EPIPE.
        cvt(unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for VsockStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(VsockStream(self.0.try_clone()?))
    }
    fn shutdown(&self) {
        // SAFETY: shutdown(2) on our socket.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// A listening vsock socket bound to (`VMADDR_CID_ANY`, `port`).
pub struct VsockListener(OwnedFd);

impl VsockListener {
    /// socket(AF_VSOCK, SOCK_STREAM), bind, listen. Fails with `EAFNOSUPPORT` until the
    /// vsock transport module is loaded.
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        // SAFETY: socket(2); the fd is owned immediately.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is plain data.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: bind/listen with a correctly sized address.
        unsafe {
            if libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                len,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::listen(fd.as_raw_fd(), 64) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(VsockListener(fd))
    }

    /// Accepts one connection (accept4(2), close-on-exec).
    pub fn accept(&self) -> io::Result<VsockStream> {
        // SAFETY: accept4 without an address buffer.
        let fd = unsafe {
            libc::accept4(
                self.0.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(VsockStream(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}
