//! Xattr whiteouts (overlayfs.rst "whiteouts and opaque directories"): forced with
//! [`UnionOptions::xattr_whiteouts`], and the automatic fallback when `mknod` is refused (a
//! seccomp filter on the test's own thread).

use std::path::Path;

use crate::union::tests::{ctx, fixture_with, is_whiteout, names, read_all, Fixture};
use crate::union::*;

const ROOT: u64 = ROOT_ID;

fn forced() -> Fixture {
    fixture_with(UnionOptions {
        xattr_whiteouts: true,
        ..UnionOptions::default()
    })
}

/// A zero-size regular file with the whiteout xattr, in a directory marked `x`.
fn is_xwhiteout(f: &Fixture, p: &Path) -> bool {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return false;
    };
    let parent_x = xattr_of(p.parent().unwrap(), f.fs.opaque_xattr()).as_deref() == Some(b"x");
    m.is_file() && m.len() == 0 && xattr_of(p, f.fs.whiteout_xattr()).is_some() && parent_x
}

/// An xattr of any node (not following a symlink).
fn xattr_of(p: &Path, name: &[u8]) -> Option<Vec<u8>> {
    let fd = sys::openat(
        &sys::open_root(p.parent()?).ok()?,
        p.file_name()?.as_encoded_bytes(),
        libc::O_PATH,
        0,
    )
    .ok()?;
    sys::getxattr_fd(&fd, name).ok()?
}

fn enoent<T>(r: io::Result<T>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::ENOENT))
}

#[test]
fn xattr_whiteout_hides_and_is_replaced() {
    let f = forced();
    f.fs.unlink(ctx(), ROOT, b"a.txt").unwrap();
    assert!(is_xwhiteout(&f, &f.upper.join("a.txt")));
    assert!(!is_whiteout(&f.upper.join("a.txt")), "no device node");
    assert!(enoent(f.fs.lookup(ctx(), ROOT, b"a.txt")));
    assert!(!names(&f.fs, ROOT).contains(&"a.txt".to_string()));
    // Create over it: the whiteout goes, the new file is seen.
    let (e, fh, _) =
        f.fs.create(ctx(), ROOT, b"a.txt", 0o644, libc::O_WRONLY as u32, 0)
            .unwrap();
    f.fs.write(ctx(), e.ino, fh, 0, b"new", 0).unwrap();
    f.fs.release(ctx(), e.ino, fh).unwrap();
    assert!(xattr_of(&f.upper.join("a.txt"), f.fs.whiteout_xattr()).is_none());
    assert_eq!(read_all(&f.fs, e.ino), b"new");
    assert!(names(&f.fs, ROOT).contains(&"a.txt".to_string()));
    // An empty upper file without the xattr is an ordinary file.
    let (e2, fh2, _) =
        f.fs.create(ctx(), ROOT, b"empty", 0o644, libc::O_WRONLY as u32, 0)
            .unwrap();
    f.fs.release(ctx(), e2.ino, fh2).unwrap();
    assert_eq!(f.fs.lookup(ctx(), ROOT, b"empty").unwrap().attr.st_size, 0);
    assert!(names(&f.fs, ROOT).contains(&"empty".to_string()));
    // The guest cannot forge one.
    let e = f.fs.setxattr(ctx(), e2.ino, f.fs.whiteout_xattr(), b"", 0);
    assert_eq!(e.err().unwrap().raw_os_error(), Some(libc::EPERM));
}

#[test]
fn nested_xattr_whiteouts_rmdir_mkdir_and_rename() {
    let f = forced();
    let d = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    f.fs.unlink(ctx(), d.ino, b"b.txt").unwrap();
    assert!(is_xwhiteout(&f, &f.upper.join("dir/b.txt")));
    assert_eq!(names(&f.fs, d.ino), ["sub"]);
    // Rename the directory: the moved copy is opaque ("y" replaces "x") and its xattr
    // whiteouts are gone (nothing below an opaque directory needs hiding).
    f.fs.rename(ctx(), ROOT, b"dir", ROOT, b"dir2", 0).unwrap();
    assert_eq!(
        xattr_of(&f.upper.join("dir2"), f.fs.opaque_xattr()).as_deref(),
        Some(&b"y"[..])
    );
    assert!(!f.upper.join("dir2/b.txt").exists());
    assert_eq!(names(&f.fs, d.ino), ["sub"]);
    assert!(is_xwhiteout(&f, &f.upper.join("dir")));
    assert!(enoent(f.fs.lookup(ctx(), ROOT, b"dir")));
    // mkdir over the xattr whiteout: an opaque, empty directory.
    let nd = f.fs.mkdir(ctx(), ROOT, b"dir", 0o755, 0).unwrap();
    assert!(names(&f.fs, nd.ino).is_empty());
    assert!(std::fs::symlink_metadata(f.upper.join("dir"))
        .unwrap()
        .is_dir());
    assert_eq!(
        names(&f.fs, ROOT),
        ["a.txt", "dir", "dir2", "escape", "run.sh"]
    );
}

#[test]
fn rmdir_clears_xattr_whiteouts() {
    let f = forced();
    let d = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    let s = f.fs.lookup(ctx(), d.ino, b"sub").unwrap();
    f.fs.unlink(ctx(), s.ino, b"c.txt").unwrap();
    assert!(is_xwhiteout(&f, &f.upper.join("dir/sub/c.txt")));
    // dir/sub is empty in the merged view: rmdir removes the upper copy with its whiteout and
    // leaves a whiteout for the lower directory.
    f.fs.rmdir(ctx(), d.ino, b"sub").unwrap();
    assert!(is_xwhiteout(&f, &f.upper.join("dir/sub")));
    assert_eq!(names(&f.fs, d.ino), ["b.txt"]);
    f.fs.unlink(ctx(), d.ino, b"b.txt").unwrap();
    f.fs.rmdir(ctx(), ROOT, b"dir").unwrap();
    assert!(is_xwhiteout(&f, &f.upper.join("dir")));
    assert!(enoent(f.fs.lookup(ctx(), ROOT, b"dir")));
}

/// Makes `mknodat` fail with EPERM in this thread only (a seccomp filter without TSYNC), as
/// it does where device nodes are refused (Linux ≥ 5.8 lets anyone make a 0:0 whiteout, so
/// dropping CAP_MKNOD would not do).
fn refuse_mknod_in_this_thread() {
    let f = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let prog = [
        // A = seccomp_data.nr
        f(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        f(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            libc::SYS_mknodat as u32,
        ),
        f(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        f(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl calls with a valid filter program; they affect this thread only.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog),
            0
        );
    }
}

#[test]
fn falls_back_to_xattr_whiteouts_when_mknod_is_refused() {
    let f = fixture_with(UnionOptions::default());
    refuse_mknod_in_this_thread();
    f.fs.unlink(ctx(), ROOT, b"a.txt").unwrap();
    assert!(
        is_xwhiteout(&f, &f.upper.join("a.txt")),
        "fell back to the xattr form"
    );
    assert!(enoent(f.fs.lookup(ctx(), ROOT, b"a.txt")));
    f.fs.unlink(ctx(), ROOT, b"run.sh").unwrap();
    assert!(is_xwhiteout(&f, &f.upper.join("run.sh")), "and stays there");
    assert_eq!(names(&f.fs, ROOT), ["dir", "escape"]);
}
