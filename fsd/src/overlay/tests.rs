//! The pure rules, then the path-based functions against real files in a temporary directory:
//! a 0:0 device (mknod, as root), xattr whiteouts and opaque marks (`trusted.*` needs root).

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
    // Xattr whiteouts count only in a directory marked `x` (trusted.* needs root).
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    for x in WHITEOUT_XATTRS {
        if x == TRUSTED_WHITEOUT && !root {
            continue;
        }
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
