//! overlayfs's on-disk format for whiteouts and opaque directories, as the kernel reads it
//! (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque directories" and
//! "User xattr"). The one place these rules live: ax-fsd writes and reads its upper layer with
//! them through file descriptors ([`crate::union`]); a reader of an upper layer by path (the
//! branch crate) uses [`opaque_value`] and [`is_whiteout`].
//!
//! - A **whiteout** hides the lower name: a character device 0:0, or an **xattr whiteout**
//!   ("xwhiteout", Linux ≥ 6.7): an empty regular file with the xattr `*.overlay.whiteout`,
//!   which overlayfs looks for only in a directory whose `*.overlay.opaque` is `x`
//!   ([`XWHITEOUTS`]: "may hold xwhiteouts; not opaque").
//! - An **opaque directory** (`*.overlay.opaque` = `y`, [`OPAQUE`]) hides the whole lower
//!   directory of the same name.
//! - The xattrs are in the `trusted.` namespace, or in `user.` for a mount with `-o userxattr`
//!   (what an unprivileged writer can set). A mount reads one namespace; a reader that does not
//!   know which one the writer used tries `trusted.` first, then `user.`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `trusted.overlay.opaque`: marks a directory opaque (`y`) or holding xwhiteouts (`x`).
pub const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
/// `user.overlay.opaque`: [`TRUSTED_OPAQUE`] for `userxattr` mounts.
pub const USER_OPAQUE: &str = "user.overlay.opaque";
/// `trusted.overlay.whiteout`: marks an empty regular file as an xattr whiteout.
pub const TRUSTED_WHITEOUT: &str = "trusted.overlay.whiteout";
/// `user.overlay.whiteout`: [`TRUSTED_WHITEOUT`] for `userxattr` mounts.
pub const USER_WHITEOUT: &str = "user.overlay.whiteout";

/// Both namespaces' opaque xattr, in the order a reader tries them.
pub const OPAQUE_XATTRS: [&str; 2] = [TRUSTED_OPAQUE, USER_OPAQUE];
/// Both namespaces' whiteout xattr, in the order a reader tries them.
pub const WHITEOUT_XATTRS: [&str; 2] = [TRUSTED_WHITEOUT, USER_WHITEOUT];
/// The prefixes of every overlay xattr (`trusted.overlay.*`, `user.overlay.*`).
pub const XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// The opaque xattr's value for an opaque directory.
pub const OPAQUE: &[u8] = b"y";
/// The opaque xattr's value for a directory that is not opaque but may hold xattr whiteouts.
pub const XWHITEOUTS: &[u8] = b"x";

/// Is `name` an overlay xattr (one of [`XATTR_PREFIXES`])?
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    XATTR_PREFIXES
        .iter()
        .any(|p| name.starts_with(p.as_bytes()))
}

/// Is a node with this `st_mode` and `st_rdev` a whiteout device (a character device 0:0)?
pub fn is_whiteout_device(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0
}

/// Has a node with this `st_mode` and `st_size` the shape of an xattr whiteout (an empty
/// regular file)? It is one when it also has one of [`WHITEOUT_XATTRS`].
pub fn is_xwhiteout_shape(mode: u32, size: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFREG && size == 0
}

/// The whole whiteout rule for a node with this `st_mode`, `st_rdev` and `st_size`: a whiteout
/// device, or — when `xwhiteouts` (its directory is marked [`XWHITEOUTS`], or the caller accepts
/// xattr whiteouts anywhere) — an empty regular file for which `has_xattr` says one of
/// [`WHITEOUT_XATTRS`] is present. `has_xattr` is asked only for such a file.
pub fn is_whiteout_with(
    mode: u32,
    rdev: u64,
    size: u64,
    xwhiteouts: bool,
    mut has_xattr: impl FnMut(&str) -> bool,
) -> bool {
    is_whiteout_device(mode, rdev)
        || (xwhiteouts
            && is_xwhiteout_shape(mode, size)
            && WHITEOUT_XATTRS.iter().any(|x| has_xattr(x)))
}

/// lgetxattr(2) of `path` itself (a symlink is not followed): `Some(value)` when present,
/// `None` when absent or unreadable.
fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
    let cname = CString::new(name).ok()?;
    loop {
        // SAFETY: valid NUL-terminated strings; a size probe with a null buffer.
        let len =
            unsafe { libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: valid strings and a buffer of the length given.
        let got = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if got < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) {
                continue; // it grew between the calls
            }
            return None;
        }
        buf.truncate(got as usize);
        return Some(buf);
    }
}

/// Does `path` itself (no symlink follow) have the xattr `name`?
fn has_lxattr(path: &Path, name: &str) -> bool {
    let (Ok(cpath), Ok(cname)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings; a size probe with a null buffer.
    unsafe { libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// The value of `trusted.overlay.opaque`, else of `user.overlay.opaque`, of `path` itself
/// (lgetxattr(2): a symlink is not followed); `None` when neither is present or readable.
/// [`OPAQUE`] (`y`) marks an opaque directory, [`XWHITEOUTS`] (`x`) one that may hold xattr
/// whiteouts (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque directories").
pub fn opaque_value(path: &Path) -> Option<Vec<u8>> {
    OPAQUE_XATTRS.iter().find_map(|x| lgetxattr(path, x))
}

/// Is `path` (with `meta`, its `symlink_metadata`) a whiteout? A character device 0:0, or —
/// only when `parent_has_xwhiteouts` (the parent's [`opaque_value`] is [`XWHITEOUTS`]) — an
/// empty regular file with `trusted.overlay.whiteout` or `user.overlay.whiteout`
/// (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque directories").
pub fn is_whiteout(path: &Path, meta: &std::fs::Metadata, parent_has_xwhiteouts: bool) -> bool {
    is_whiteout_with(
        meta.mode(),
        meta.rdev(),
        meta.len(),
        parent_has_xwhiteouts,
        |x| has_lxattr(path, x),
    )
}

#[cfg(test)]
mod tests;
