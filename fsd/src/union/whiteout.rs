//! Whiteouts and opaque directories in the upper layer, read and written through directory fds.
//! The format rules themselves (xattr names, values, what counts as a whiteout) are
//! [`crate::overlay`]'s (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque
//! directories" and "User xattr").
//!
//! Two whiteout forms, both read everywhere:
//! - a **character device 0:0** (what overlayfs itself creates; Linux ≥ 5.8 lets anyone
//!   `mknod` one, older kernels want CAP_MKNOD, some sandboxes and file systems refuse it);
//! - an **xattr whiteout** ("xwhiteout", Linux ≥ 6.7): a zero-size regular file with the xattr
//!   `trusted.overlay.whiteout` (or `user.overlay.whiteout` for `userxattr` mounts), whose
//!   parent directory carries `*.overlay.opaque` = `x` ("may contain xwhiteouts; not opaque").
//!
//! ax-fsd writes the first form and falls back to the second for good once `mknod` is refused
//! (EPERM / EOPNOTSUPP), or always with [`super::UnionOptions::xattr_whiteouts`]. The kernel
//! honours xattr whiteouts only in *lower* layers: such an upper layer is mounted read-only as
//! `lowerdir=UPPER:LOWER`, not as `upperdir` (docs/fsd.md).
//! Opaque directories carry `*.overlay.opaque` = `y`. The namespace is `trusted.` when ax-fsd
//! runs as root (a normal overlayfs mount reads it), else `user.` (read by an overlayfs mount
//! with `-o userxattr`); ax-fsd reads opaque marks only in the namespace it writes, as a mount
//! does, and whiteout xattrs in both.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::sys::{self, err};
use crate::overlay;

/// The overlay xattrs in use and the whiteout form; reads and writes the marks in the upper
/// layer.
pub struct Marks {
    /// `trusted.overlay.opaque` or `user.overlay.opaque`.
    pub opaque: &'static [u8],
    /// `trusted.overlay.whiteout` or `user.overlay.whiteout`.
    pub whiteout: &'static [u8],
    /// Write xattr whiteouts (forced, or `mknod` was refused once).
    xattr_form: AtomicBool,
}

impl Marks {
    /// The marks for a process that is root (`trusted.*`) or not (`user.*`); `force_xattr`
    /// makes every whiteout an xattr whiteout.
    pub fn new(root: bool, force_xattr: bool) -> Self {
        let (opaque, whiteout) = if root {
            (overlay::TRUSTED_OPAQUE, overlay::TRUSTED_WHITEOUT)
        } else {
            (overlay::USER_OPAQUE, overlay::USER_WHITEOUT)
        };
        Self {
            opaque: opaque.as_bytes(),
            whiteout: whiteout.as_bytes(),
            xattr_form: AtomicBool::new(force_xattr),
        }
    }

    /// Are new whiteouts xattr whiteouts?
    pub fn xattr_form(&self) -> bool {
        self.xattr_form.load(Ordering::Relaxed)
    }

    /// The value of this upper directory's opaque xattr (`y`, `x`, or none).
    fn opaque_mark(&self, fd: &impl AsRawFd) -> Option<Vec<u8>> {
        sys::getxattr_fd(fd, self.opaque).ok().flatten()
    }

    /// Is this upper directory opaque (`*.overlay.opaque` = `y`)?
    pub fn is_opaque(&self, fd: &impl AsRawFd) -> bool {
        self.opaque_mark(fd).as_deref() == Some(overlay::OPAQUE)
    }

    /// Marks an upper directory opaque. A directory marked `x` first loses its xattr
    /// whiteouts (overlayfs.rst: an opaque directory holds no whiteouts; with `y` instead of `x`
    /// nothing would hide them any more).
    pub fn set_opaque(&self, fd: &OwnedFd) -> io::Result<()> {
        if self.has_xwhiteouts(fd) {
            for (name, dt) in sys::list_dir(fd)? {
                if self.entry_is_whiteout(fd, &name, dt, true)?.is_none() {
                    sys::unlinkat(fd, &name, false)?;
                }
            }
        }
        sys::setxattr_fd(fd, self.opaque, overlay::OPAQUE, 0)
    }

    /// Is this upper node (`fd`, `st` its attributes) a whiteout of either form? An xattr
    /// whiteout counts here whatever its parent's mark ([`overlay::is_whiteout_with`]).
    pub fn is_whiteout(&self, fd: &impl AsRawFd, st: &libc::stat64) -> bool {
        overlay::is_whiteout_with(st.st_mode, st.st_rdev, st.st_size as u64, true, |x| {
            matches!(sys::getxattr_fd(fd, x.as_bytes()), Ok(Some(_)))
        })
    }

    /// Is `name` in the upper directory `dir` a whiteout? `None` when absent.
    pub fn whiteout_at(&self, dir: &impl AsRawFd, name: &[u8]) -> io::Result<Option<bool>> {
        let fd = match sys::openat(dir, name, libc::O_PATH, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = sys::fstat(&fd)?;
        Ok(Some(self.is_whiteout(&fd, &st)))
    }

    /// One upper directory entry (`dt` from getdents): `None` when it is a whiteout, else its
    /// `DT_*` type. Regular files are checked for the xattr form only when `xwhiteouts` (the
    /// directory is marked `x`), as overlayfs does.
    pub(super) fn entry_is_whiteout(
        &self,
        dir: &impl AsRawFd,
        name: &[u8],
        dt: u8,
        xwhiteouts: bool,
    ) -> io::Result<Option<u32>> {
        let check =
            dt == libc::DT_CHR || dt == libc::DT_UNKNOWN || (xwhiteouts && dt == libc::DT_REG);
        if !check {
            return Ok(Some(u32::from(dt)));
        }
        let fd = sys::openat(dir, name, libc::O_PATH, 0)?;
        let st = sys::fstat(&fd)?;
        if self.is_whiteout(&fd, &st) {
            Ok(None)
        } else {
            Ok(Some(sys::dtype(st.st_mode)))
        }
    }

    /// Does this upper directory hold xattr whiteouts (marked `x`)?
    pub(super) fn has_xwhiteouts(&self, dir: &impl AsRawFd) -> bool {
        self.opaque_mark(dir).as_deref() == Some(overlay::XWHITEOUTS)
    }

    /// Creates a whiteout at `name` in the upper directory `pdir`: a 0:0 character device, or
    /// when that is refused (or forced) an xattr whiteout, marking `pdir` with `x` unless it is
    /// already opaque.
    pub fn whiteout(&self, pdir: &OwnedFd, name: &[u8]) -> io::Result<()> {
        if !self.xattr_form() {
            match sys::mknodat(pdir, name, libc::S_IFCHR, 0) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {
                    log::info!(
                        "mknod of a 0:0 whiteout refused ({e}): using xattr whiteouts ({})",
                        String::from_utf8_lossy(self.whiteout)
                    );
                    self.xattr_form.store(true, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        if self.opaque_mark(pdir).is_none() {
            sys::setxattr_fd(pdir, self.opaque, overlay::XWHITEOUTS, 0)?;
        }
        let f = sys::openat(
            pdir,
            name,
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o600,
        )?;
        if let Err(e) = sys::setxattr_fd(&f, self.whiteout, b"", 0) {
            let _ = sys::unlinkat(pdir, name, false);
            return Err(e);
        }
        Ok(())
    }

    /// Removes the whiteouts left in an upper directory that is empty in the merged view
    /// (ENOTEMPTY when something else is there).
    pub fn clear_whiteouts(&self, dir: &OwnedFd) -> io::Result<()> {
        for (name, _) in sys::list_dir(dir)? {
            if self.whiteout_at(dir, &name)? == Some(false) {
                return Err(err(libc::ENOTEMPTY));
            }
            sys::unlinkat(dir, &name, false)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
