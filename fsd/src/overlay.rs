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
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn set(path: &Path, name: &str, value: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: valid strings and buffer.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(
            r,
            0,
            "lsetxattr {name}: {}",
            std::io::Error::last_os_error()
        );
    }

    fn meta(p: &Path) -> std::fs::Metadata {
        std::fs::symlink_metadata(p).unwrap()
    }

    #[test]
    fn rules() {
        assert!(is_whiteout_device(libc::S_IFCHR | 0o600, 0));
        assert!(!is_whiteout_device(libc::S_IFCHR, libc::makedev(1, 3)));
        assert!(!is_whiteout_device(libc::S_IFBLK, 0));
        assert!(!is_whiteout_device(libc::S_IFREG, 0));
        assert!(is_xwhiteout_shape(libc::S_IFREG | 0o644, 0));
        assert!(!is_xwhiteout_shape(libc::S_IFREG, 1));
        assert!(!is_xwhiteout_shape(libc::S_IFDIR, 0));
        // The xattr is asked for only when it can matter.
        let never = |_: &str| -> bool { panic!("xattr read") };
        assert!(is_whiteout_with(libc::S_IFCHR, 0, 0, true, never));
        assert!(!is_whiteout_with(libc::S_IFREG, 0, 0, false, never));
        assert!(!is_whiteout_with(libc::S_IFREG, 0, 5, true, never));
        assert!(is_whiteout_with(libc::S_IFREG, 0, 0, true, |x| x == USER_WHITEOUT));
        assert!(!is_whiteout_with(libc::S_IFREG, 0, 0, true, |_| false));
        for (name, ours) in [
            (&b"trusted.overlay.opaque"[..], true),
            (b"user.overlay.whiteout", true),
            (b"user.overlay.", true),
            (b"user.overlayx", false),
            (b"user.mime_type", false),
            (b"security.selinux", false),
        ] {
            assert_eq!(
                is_overlay_xattr(name),
                ours,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn whiteouts_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A 0:0 character device (we run as root; skipped where mknod is refused).
        let dev = d.join("dev");
        let c = CString::new(dev.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) } == 0 {
            assert!(is_whiteout(&dev, &meta(&dev), false));
            assert!(is_whiteout(&dev, &meta(&dev), true));
        } else {
            eprintln!(
                "mknod refused ({}): skipped",
                std::io::Error::last_os_error()
            );
        }
        // Xattr whiteouts count only in a directory marked `x`.
        for x in WHITEOUT_XATTRS {
            let f = d.join(x);
            std::fs::write(&f, b"").unwrap();
            set(&f, x, b"");
            assert!(is_whiteout(&f, &meta(&f), true), "{x}");
            assert!(!is_whiteout(&f, &meta(&f), false), "{x}");
        }
        // Not whiteouts: a non-empty file, an empty file without the xattr, a directory, a
        // symlink to a whiteout (not followed).
        let full = d.join("full");
        std::fs::write(&full, b"data").unwrap();
        set(&full, USER_WHITEOUT, b"");
        let plain = d.join("plain");
        std::fs::write(&plain, b"").unwrap();
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        set(&sub, USER_WHITEOUT, b"");
        let link = d.join("link");
        symlink(d.join(USER_WHITEOUT), &link).unwrap();
        for p in [&full, &plain, &sub, &link] {
            assert!(!is_whiteout(p, &meta(p), true), "{}", p.display());
        }
    }

    #[test]
    fn opaque_values_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let none = d.join("none");
        let user = d.join("user");
        let both = d.join("both");
        for p in [&none, &user, &both] {
            std::fs::create_dir(p).unwrap();
        }
        set(&user, USER_OPAQUE, OPAQUE);
        assert_eq!(opaque_value(&none), None);
        assert_eq!(opaque_value(&user).as_deref(), Some(OPAQUE));
        // trusted.* first (setting it needs CAP_SYS_ADMIN: the tests run as root).
        set(&both, USER_OPAQUE, OPAQUE);
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } == 0 {
            set(&both, TRUSTED_OPAQUE, XWHITEOUTS);
            assert_eq!(opaque_value(&both).as_deref(), Some(XWHITEOUTS));
        }
        // A symlink to an opaque directory is not opaque itself.
        let link = d.join("link");
        symlink(&user, &link).unwrap();
        assert_eq!(opaque_value(&link), None);
    }
}
