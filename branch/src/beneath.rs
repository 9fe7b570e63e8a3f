//! Reading a directory tree that another party writes at the same time (the agent's upper
//! layer and the guest's `.git` in it) without ever following a symlink.
//!
//! A check by path followed by an open by path races: between `lstat("a")` saying "regular
//! file" and `open("a")`, the guest can `renameat2(RENAME_EXCHANGE)` a symlink to a host file
//! (the secrets store) into place, and the host would read that file into the branch. So here
//! every name is resolved once, relative to a directory file descriptor, with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (openat2(2), Linux
//! ≥ 5.6) and `O_PATH | O_NOFOLLOW`; what the name is (file, directory, symlink, device) is
//! decided by `fstat` on that descriptor, and a regular file is then reopened for reading
//! through the descriptor itself (`/proc/self/fd/N`, which names the inode already opened, not
//! a path in the tree). A symlink is read with `readlinkat(fd, "")`, never followed.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// `openat2(dirfd, path, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
/// `O_CLOEXEC` added. A symlink anywhere on the way fails with `ELOOP`; `..` or an absolute
/// path leaving `dirfd` with `EXDEV`. Retries `EAGAIN` (a concurrent rename, openat2(2)).
fn openat2(dirfd: RawFd, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    for _ in 0..64 {
        // SAFETY: a valid C string and an open_how of the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: a new descriptor the kernel just gave us.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
            Some(libc::ENOSYS) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "openat2(2) is missing: ax needs Linux 5.6 or later to read an agent's files safely",
                ))
            }
            _ => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `NotFound`, or a name that a concurrent change turned into something we do not walk
/// through (`ENOTDIR`, `ELOOP` for a symlink on the way): the entry is gone for this reader.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP))
}

/// An open directory of the untrusted tree; every lookup below it goes through `openat2`.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
}

/// One name of the tree, opened with `O_PATH | O_NOFOLLOW` (a symlink is the link itself),
/// and its `fstat`.
pub(crate) struct Node {
    fd: OwnedFd,
    /// `fstat` of the descriptor: what the name was when it was opened.
    pub stat: libc::stat,
}

impl Dir {
    /// Opens the root of an untrusted tree. `path`'s parents are the host's own directories
    /// (the agent's state directory); its last component must be a directory, not a symlink.
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Dir { fd: f.into() })
    }

    /// The directory `rel` below this one; `None` when it is missing, not a directory, or a
    /// symlink (at its end or on the way).
    pub(crate) fn dir(&self, rel: &Path) -> io::Result<Option<Dir>> {
        match openat2(
            self.fd.as_raw_fd(),
            rel,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        ) {
            Ok(fd) => Ok(Some(Dir { fd })),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The name `rel` below this directory, not followed if it is a symlink; `None` when it is
    /// missing (or a symlink is on the way).
    pub(crate) fn node(&self, rel: &Path) -> io::Result<Option<Node>> {
        match openat2(self.fd.as_raw_fd(), rel, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(fd) => {
                let stat = fstat(fd.as_raw_fd())?;
                Ok(Some(Node { fd, stat }))
            }
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The regular file `rel` opened for reading, with its `fstat`; `None` when it is missing
    /// or anything but a regular file.
    pub(crate) fn file(&self, rel: &Path) -> io::Result<Option<(File, libc::stat)>> {
        match self.node(rel)? {
            Some(n) if n.is_file() => n.open_read().map(Some),
            _ => Ok(None),
        }
    }

    /// Reads the regular file `rel`, at most `max` bytes; `None` when it is not one.
    pub(crate) fn read(&self, rel: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let Some((f, _)) = self.file(rel)? else {
            return Ok(None);
        };
        let mut v = Vec::new();
        f.take(max).read_to_end(&mut v)?;
        Ok(Some(v))
    }

    /// The names in this directory (without `.` and `..`), sorted by bytes.
    pub(crate) fn names(&self) -> io::Result<Vec<OsString>> {
        // A fresh descriptor: readdir's position is per open file, and closedir closes it.
        let fd = openat2(
            self.fd.as_raw_fd(),
            Path::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        let raw = std::mem::ManuallyDrop::new(fd).as_raw_fd();
        // SAFETY: fdopendir takes ownership of a valid directory descriptor.
        let dp = unsafe { libc::fdopendir(raw) };
        if dp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so the descriptor is still ours to close.
            unsafe { libc::close(raw) };
            return Err(e);
        }
        let mut names = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; readdir reports errors only through it.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: dp is an open DIR stream.
            let ent = unsafe { libc::readdir64(dp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: d_name is NUL-terminated within the entry readdir returned.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        };
        // SAFETY: dp is open; closedir closes it and its descriptor.
        unsafe { libc::closedir(dp) };
        result?;
        names.sort();
        Ok(names)
    }

    /// fgetxattr(2) of this directory: `Some(value)` when present.
    pub(crate) fn xattr(&self, name: &str) -> Option<Vec<u8>> {
        fgetxattr(self.fd.as_raw_fd(), name)
    }
}

impl Node {
    fn kind(&self) -> u32 {
        self.stat.st_mode & libc::S_IFMT
    }
    /// A regular file.
    pub(crate) fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
    /// A directory.
    pub(crate) fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    /// A symlink (the link itself: it was not followed).
    pub(crate) fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }

    /// Reopens this regular file for reading through its own descriptor (`/proc/self/fd/N`:
    /// the inode already opened, whatever the name points at now), and checks that the same
    /// inode was opened. `O_NONBLOCK | O_NOCTTY`: opening never waits or grabs a terminal.
    pub(crate) fn open_read(&self) -> io::Result<(File, libc::stat)> {
        if !self.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))?;
        let st = fstat(f.as_raw_fd())?;
        if st.st_dev != self.stat.st_dev
            || st.st_ino != self.stat.st_ino
            || st.st_mode & libc::S_IFMT != libc::S_IFREG
        {
            return Err(io::Error::other(
                "the file changed identity while being opened (is /proc mounted?)",
            ));
        }
        Ok((f, st))
    }

    /// The target of this symlink, read from the link itself (`readlinkat(fd, "")`).
    pub(crate) fn read_link(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: a valid descriptor, an empty C string and a buffer of the length given.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Does this regular file or directory have the xattr `name`? (Read through its own
    /// descriptor; `false` for anything else.)
    pub(crate) fn has_xattr(&self, name: &str) -> bool {
        if self.is_file() {
            match self.open_read() {
                Ok((f, _)) => fgetxattr(f.as_raw_fd(), name).is_some(),
                Err(_) => false,
            }
        } else {
            false
        }
    }
}

/// fgetxattr(2): `Some(value)` when present and readable.
fn fgetxattr(fd: RawFd, name: &str) -> Option<Vec<u8>> {
    let cname = CString::new(name).ok()?;
    loop {
        // SAFETY: a valid descriptor and C string; a size probe with a null buffer.
        let len = unsafe { libc::fgetxattr(fd, cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: a buffer of the length given.
        let got =
            unsafe { libc::fgetxattr(fd, cname.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return None;
        }
        buf.truncate(got as usize);
        return Some(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(t.path().join("secret"), "s3cret").unwrap();
        std::fs::write(root.join("d/f"), "hello").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("dirlink")).unwrap();
        let d = Dir::open(&root).unwrap();
        assert_eq!(d.read(Path::new("d/f"), 100).unwrap().unwrap(), b"hello");
        assert!(d.read(Path::new("link"), 100).unwrap().is_none());
        let n = d.node(Path::new("link")).unwrap().unwrap();
        assert!(n.is_symlink());
        assert_eq!(
            n.read_link().unwrap(),
            t.path().join("secret").as_os_str().as_bytes()
        );
        assert!(d.node(Path::new("dirlink/secret")).unwrap().is_none());
        assert!(d.dir(Path::new("dirlink")).unwrap().is_none());
        assert!(d.node(Path::new("../secret")).is_err());
        assert_eq!(d.names().unwrap(), ["d", "dirlink", "link"]);
        assert!(Dir::open(&root.join("dirlink")).is_err());
    }
}
