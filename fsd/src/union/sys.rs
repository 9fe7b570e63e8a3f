//! Thin, checked wrappers over the *at(2) system calls the union uses. Every path argument is a
//! single component (a name without `/`) resolved relative to a directory fd, always with
//! `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`: the host never follows a symlink on the guest's behalf.
//! Fds that need a path-based call (xattrs, chmod, truncate, reopen) go through
//! `/proc/self/fd/N`, which names exactly the inode already opened (no lookup in the share).

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The `io::Error` for an errno value.
pub(crate) fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_isize(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A C string from a name (names never contain NUL; checked by the caller, re-checked here).
pub fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| err(libc::EINVAL))
}

/// The `/proc/self/fd/N` path of an fd.
pub fn proc_path(fd: RawFd) -> CString {
    // A decimal number never contains NUL.
    CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default()
}

/// openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode).
pub fn openat(dir: &impl AsRawFd, name: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid C string and fd; the returned fd is owned by us.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory by path (the layer roots only; not guest-controlled).
pub fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: valid C string.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reopens an fd (typically `O_PATH`) with new flags through `/proc/self/fd`.
pub fn reopen(fd: &impl AsRawFd, flags: i32) -> io::Result<OwnedFd> {
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: valid C string.
    let nfd = cvt(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(nfd) })
}

/// fstat(2).
pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat64> {
    let mut st = MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: st is a valid out pointer.
    cvt(unsafe { libc::fstat64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the kernel (and zeroed before).
    Ok(unsafe { st.assume_init() })
}

/// fstatat(dir, name, AT_SYMLINK_NOFOLLOW).
pub fn statat(dir: &impl AsRawFd, name: &[u8]) -> io::Result<libc::stat64> {
    let c = cstr(name)?;
    let mut st = MaybeUninit::<libc::stat64>::zeroed();
    // SAFETY: valid pointers.
    cvt(unsafe {
        libc::fstatat64(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: initialised.
    Ok(unsafe { st.assume_init() })
}

/// mkdirat(2).
pub fn mkdirat(dir: &impl AsRawFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) }).map(drop)
}

/// mknodat(2).
pub fn mknodat(dir: &impl AsRawFd, name: &[u8], mode: u32, dev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, dev) }).map(drop)
}

/// symlinkat(target, dir, name).
pub fn symlinkat(target: &[u8], dir: &impl AsRawFd, name: &[u8]) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// readlinkat(fd, "") on an `O_PATH` symlink fd.
pub fn readlink_fd(fd: &impl AsRawFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is valid for its length.
    let n = cvt_isize(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// unlinkat(2) (`dir = true`: AT_REMOVEDIR).
pub fn unlinkat(dir: &impl AsRawFd, name: &[u8], is_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// renameat2(2).
pub fn renameat2(
    od: &impl AsRawFd,
    on: &[u8],
    nd: &impl AsRawFd,
    nn: &[u8],
    flags: u32,
) -> io::Result<()> {
    let o = cstr(on)?;
    let n = cstr(nn)?;
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::renameat2(
            od.as_raw_fd(),
            o.as_ptr(),
            nd.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// linkat(fd, "", dir, name, AT_EMPTY_PATH) — links an open (`O_PATH`) inode. Needs
/// CAP_DAC_READ_SEARCH for AT_EMPTY_PATH; falls back to the `/proc/self/fd` form.
pub fn link_fd(fd: &impl AsRawFd, dir: &impl AsRawFd, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            p.as_ptr(),
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW).
pub fn chown_fd(fd: &impl AsRawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: empty C string.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// chmod of an open inode (through `/proc/self/fd`; not for symlinks).
pub fn chmod_fd(fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: valid C string.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// utimensat on an open inode; `None` leaves a time alone (UTIME_OMIT).
pub fn utimes_fd(
    fd: &impl AsRawFd,
    atime: Option<libc::timespec>,
    mtime: Option<libc::timespec>,
) -> io::Result<()> {
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let ts = [atime.unwrap_or(omit), mtime.unwrap_or(omit)];
    // AT_EMPTY_PATH on utimensat needs Linux 5.8+; the /proc form works everywhere and does not
    // follow a symlink fd further.
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: valid pointers.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) }).map(drop)
}

/// getxattr on an open inode; `Ok(None)` when the attribute is absent.
pub fn getxattr_fd(fd: &impl AsRawFd, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let p = proc_path(fd.as_raw_fd());
    let n = cstr(name)?;
    loop {
        // SAFETY: size probe with a null buffer.
        let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: buf valid for its length.
        let got =
            unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(e),
            }
        }
        buf.truncate(got as usize);
        return Ok(Some(buf));
    }
}

/// setxattr on an open inode.
pub fn setxattr_fd(fd: &impl AsRawFd, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let p = proc_path(fd.as_raw_fd());
    let n = cstr(name)?;
    // SAFETY: valid pointers and lengths.
    cvt(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// removexattr on an open inode.
pub fn removexattr_fd(fd: &impl AsRawFd, name: &[u8]) -> io::Result<()> {
    let p = proc_path(fd.as_raw_fd());
    let n = cstr(name)?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
}

/// listxattr on an open inode: the names, without NULs.
pub fn listxattr_fd(fd: &impl AsRawFd) -> io::Result<Vec<Vec<u8>>> {
    let p = proc_path(fd.as_raw_fd());
    loop {
        // SAFETY: size probe.
        let len = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            let e = io::Error::last_os_error();
            // Symlinks and some file systems have no xattrs at all.
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: buf valid for its length.
        let got = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        return Ok(buf
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect());
    }
}

/// `pread(2)` of `len` bytes at `offset` into `ptr`, retrying EINTR and short reads; short only
/// at end of file.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
pub unsafe fn pread_raw(fd: RawFd, ptr: *mut u8, len: usize, offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < len {
        // SAFETY: the caller guarantees `ptr..ptr+len` is writable.
        let n = unsafe {
            libc::pread64(
                fd,
                ptr.add(done).cast(),
                len - done,
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
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// pread(2) into `buf`, retrying on EINTR; short only at EOF ([`pread_raw`]).
pub fn pread(fd: &impl AsRawFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    // SAFETY: the slice is valid for writes of its length.
    unsafe { pread_raw(fd.as_raw_fd(), buf.as_mut_ptr(), buf.len(), off) }
}

/// pwrite(2) of the whole buffer.
pub fn pwrite_all(fd: &impl AsRawFd, buf: &[u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the slice is valid.
        let n = unsafe {
            libc::pwrite64(
                fd.as_raw_fd(),
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (off + done as u64) as i64,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// lseek(2); `Ok(None)` for ENXIO (no more data / hole past EOF).
pub fn lseek(fd: &impl AsRawFd, off: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), off as i64, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// Copies `size` bytes of file data, skipping holes (SEEK_DATA / SEEK_HOLE), then sets the size
/// so a trailing hole stays a hole.
pub(crate) fn copy_data(input: &OwnedFd, out: &OwnedFd, size: u64) -> io::Result<()> {
    let mut off = 0u64;
    while off < size {
        let data = match lseek(input, off, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            // File systems without SEEK_DATA: copy everything.
            Err(_) => off,
        };
        let end = match lseek(input, data, libc::SEEK_HOLE) {
            Ok(Some(h)) => h.min(size),
            _ => size,
        };
        copy_range(input, out, data, end)?;
        off = end.max(data + 1);
    }
    // SAFETY: plain syscall on an owned fd.
    if unsafe { libc::ftruncate64(out.as_raw_fd(), size as i64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes `start..end` from `input` to the same offsets in `out`: copy_file_range(2), or
/// pread/pwrite where the kernel or file system cannot.
fn copy_range(input: &OwnedFd, out: &OwnedFd, start: u64, end: u64) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let mut ioff = pos as i64;
        let mut ooff = pos as i64;
        let len = (end - pos).min(1 << 30) as usize;
        // SAFETY: valid fds and offset pointers.
        let n = unsafe {
            libc::copy_file_range(
                input.as_raw_fd(),
                &mut ioff,
                out.as_raw_fd(),
                &mut ooff,
                len,
                0,
            )
        };
        if n > 0 {
            pos += n as u64;
            continue;
        }
        if n == 0 {
            break; // EOF (file shrank)
        }
        // EXDEV/ENOSYS/EINVAL on older kernels or odd file systems: plain copy.
        let mut buf = vec![0u8; (end - pos).min(1 << 20) as usize];
        let got = pread(input, &mut buf, pos)?;
        if got == 0 {
            break;
        }
        pwrite_all(out, &buf[..got], pos)?;
        pos += got as u64;
    }
    Ok(())
}

/// fstatvfs(2).
pub fn fstatvfs(fd: &impl AsRawFd) -> io::Result<libc::statvfs64> {
    let mut st = MaybeUninit::<libc::statvfs64>::zeroed();
    // SAFETY: valid out pointer.
    cvt(unsafe { libc::fstatvfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised.
    Ok(unsafe { st.assume_init() })
}

/// Names in a directory (without "." and ".."), with their `d_type`.
pub fn list_dir(dir: &impl AsRawFd) -> io::Result<Vec<(Vec<u8>, u8)>> {
    let fd = openat(dir, b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = fd.as_raw_fd();
    std::mem::forget(fd);
    // SAFETY: raw is a fresh directory fd; fdopendir takes ownership (closedir closes it).
    let d = unsafe { libc::fdopendir(raw) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so we still own raw.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: d is a valid DIR*.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir64 returns a valid dirent with a NUL-terminated name.
        let (name, ty) = unsafe {
            (
                std::ffi::CStr::from_ptr((*ent).d_name.as_ptr())
                    .to_bytes()
                    .to_vec(),
                (*ent).d_type,
            )
        };
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name, ty));
    }
    // SAFETY: d valid; closes raw.
    unsafe { libc::closedir(d) };
    Ok(out)
}

/// `DT_*` from an `st_mode`.
pub fn dtype(mode: u32) -> u32 {
    (mode & libc::S_IFMT) >> 12
}

/// Is this stat a directory?
pub fn is_dir(st: &libc::stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}
