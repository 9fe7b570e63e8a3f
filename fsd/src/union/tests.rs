//! Union logic driven directly through the [`FileSystem`] trait (no vhost-user): the
//! overlayfs upper format, copy-up, whiteouts, opaque dirs, merging, renames.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

const ROOT: u64 = ROOT_ID;

pub(super) fn ctx() -> Context {
    Context {
        uid: 0,
        gid: 0,
        pid: 1,
    }
}

pub(super) struct Fixture {
    pub(super) _dir: tempfile::TempDir,
    pub(super) lower: std::path::PathBuf,
    pub(super) upper: std::path::PathBuf,
    pub(super) fs: UnionFs,
}

pub(super) fn fixture() -> Fixture {
    fixture_with(UnionOptions::default())
}

/// [`fixture`] with other options.
pub(super) fn fixture_with(opts: UnionOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    let upper = dir.path().join("upper");
    std::fs::create_dir_all(lower.join("dir/sub")).unwrap();
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::write(lower.join("a.txt"), b"lower a\n").unwrap();
    std::fs::write(lower.join("dir/b.txt"), b"lower b\n").unwrap();
    std::fs::write(lower.join("dir/sub/c.txt"), b"lower c\n").unwrap();
    std::fs::write(lower.join("run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(lower.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", lower.join("escape")).unwrap();
    let fs = UnionFs::new(&lower, &upper, Arc::new(Journal::memory()), opts).unwrap();
    Fixture {
        _dir: dir,
        lower,
        upper,
        fs,
    }
}

pub(super) fn is_whiteout(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(p) {
        Ok(m) => m.file_type().is_char_device() && m.rdev() == 0,
        Err(_) => false,
    }
}

pub(super) fn names(fs: &UnionFs, ino: u64) -> Vec<String> {
    let (fh, _) = fs.opendir(ctx(), ino, 0).unwrap();
    let mut v: Vec<String> = fs
        .readdir(ctx(), ino, fh, 0)
        .unwrap()
        .into_iter()
        .map(|d| String::from_utf8(d.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect();
    fs.releasedir(ctx(), ino, fh).unwrap();
    v.sort();
    v
}

pub(super) fn read_all(fs: &UnionFs, ino: u64) -> Vec<u8> {
    let (fh, _) = fs.open(ctx(), ino, libc::O_RDONLY as u32).unwrap();
    let d = fs.read(ctx(), ino, fh, 0, 1 << 20).unwrap();
    fs.release(ctx(), ino, fh).unwrap();
    d
}

#[test]
fn lookup_read_and_stable_inodes() {
    let f = fixture();
    let a = f.fs.lookup(ctx(), ROOT, b"a.txt").unwrap();
    assert_eq!(a.attr.st_size, 8);
    assert_eq!(a.attr.st_ino, a.ino);
    assert_eq!(f.fs.lookup(ctx(), ROOT, b"a.txt").unwrap().ino, a.ino);
    assert_eq!(read_all(&f.fs, a.ino), b"lower a\n");
    let e = f.fs.lookup(ctx(), ROOT, b"missing").err().unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    for bad in [&b".."[..], b".", b"dir/b.txt", b"../etc"] {
        let e = f.fs.lookup(ctx(), ROOT, bad).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{bad:?}");
    }
    // The escaping symlink is a symlink to the guest; the host never follows it.
    let s = f.fs.lookup(ctx(), ROOT, b"escape").unwrap();
    assert_eq!(s.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(f.fs.readlink(ctx(), s.ino).unwrap(), b"/etc/passwd");
    let e =
        f.fs.open(ctx(), s.ino, libc::O_RDONLY as u32)
            .err()
            .unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::ENXIO));
    assert!(f.fs.getxattr(ctx(), s.ino, b"user.x").is_err());
}

#[test]
fn write_copies_up_and_keeps_lower() {
    let f = fixture();
    let a = f.fs.lookup(ctx(), ROOT, b"a.txt").unwrap();
    let (fh, _) = f.fs.open(ctx(), a.ino, libc::O_RDWR as u32).unwrap();
    f.fs.write(ctx(), a.ino, fh, 0, b"UPPER", 0).unwrap();
    f.fs.release(ctx(), a.ino, fh).unwrap();
    assert_eq!(std::fs::read(f.lower.join("a.txt")).unwrap(), b"lower a\n");
    assert_eq!(std::fs::read(f.upper.join("a.txt")).unwrap(), b"UPPER a\n");
    assert_eq!(read_all(&f.fs, a.ino), b"UPPER a\n");
    // Copy-up of a nested file copies the parent chain with its metadata.
    let d = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    let s = f.fs.lookup(ctx(), d.ino, b"sub").unwrap();
    let c = f.fs.lookup(ctx(), s.ino, b"c.txt").unwrap();
    let set = SetAttr {
        mode: Some(0o700),
        ..Default::default()
    };
    let (st, _) = f.fs.setattr(ctx(), c.ino, set).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o700);
    let m = std::fs::metadata(f.upper.join("dir/sub/c.txt")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
    assert_eq!(
        std::fs::read(f.upper.join("dir/sub/c.txt")).unwrap(),
        b"lower c\n"
    );
    assert!(
        !f.upper.join("dir/b.txt").exists(),
        "siblings stay in lower"
    );
    assert_eq!(names(&f.fs, d.ino), ["b.txt", "sub"]);
    assert_eq!(
        f.fs.journal().snapshot(),
        vec![
            (
                b"a.txt".to_vec(),
                crate::journal::Change::Modified,
                Kind::File
            ),
            (
                b"dir/sub/c.txt".to_vec(),
                crate::journal::Change::Modified,
                Kind::File
            ),
        ]
    );
}

#[test]
fn unlink_whiteout_and_recreate() {
    let f = fixture();
    f.fs.unlink(ctx(), ROOT, b"a.txt").unwrap();
    assert!(is_whiteout(&f.upper.join("a.txt")));
    assert!(f.lower.join("a.txt").exists());
    assert!(!names(&f.fs, ROOT).contains(&"a.txt".to_string()));
    assert_eq!(
        f.fs.lookup(ctx(), ROOT, b"a.txt")
            .err()
            .unwrap()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    // Re-create over the whiteout, then unlink again: the whiteout comes back.
    let (e, fh, _) =
        f.fs.create(ctx(), ROOT, b"a.txt", 0o644, libc::O_WRONLY as u32, 0)
            .unwrap();
    f.fs.write(ctx(), e.ino, fh, 0, b"new", 0).unwrap();
    f.fs.release(ctx(), e.ino, fh).unwrap();
    assert_eq!(read_all(&f.fs, e.ino), b"new");
    f.fs.unlink(ctx(), ROOT, b"a.txt").unwrap();
    assert!(is_whiteout(&f.upper.join("a.txt")));
}

#[test]
fn rmdir_and_mkdir_over_whiteout_is_opaque() {
    let f = fixture();
    let d = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    assert_eq!(
        f.fs.rmdir(ctx(), ROOT, b"dir")
            .err()
            .unwrap()
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    let s = f.fs.lookup(ctx(), d.ino, b"sub").unwrap();
    f.fs.unlink(ctx(), s.ino, b"c.txt").unwrap();
    f.fs.rmdir(ctx(), d.ino, b"sub").unwrap();
    f.fs.unlink(ctx(), d.ino, b"b.txt").unwrap();
    f.fs.rmdir(ctx(), ROOT, b"dir").unwrap();
    assert!(is_whiteout(&f.upper.join("dir")));
    let nd = f.fs.mkdir(ctx(), ROOT, b"dir", 0o755, 0).unwrap();
    assert!(
        names(&f.fs, nd.ino).is_empty(),
        "lower content must not reappear"
    );
    let v = xattr_of(&f.upper.join("dir"), f.fs.opaque_xattr());
    assert_eq!(v.as_deref(), Some(&b"y"[..]));
}

fn xattr_of(p: &Path, name: &[u8]) -> Option<Vec<u8>> {
    let fd = sys::open_root(p).ok()?;
    sys::getxattr_fd(&fd, name).ok()?
}

#[test]
fn rename_file_and_directory() {
    let f = fixture();
    f.fs.rename(ctx(), ROOT, b"a.txt", ROOT, b"moved.txt", 0)
        .unwrap();
    assert!(is_whiteout(&f.upper.join("a.txt")));
    assert_eq!(
        std::fs::read(f.upper.join("moved.txt")).unwrap(),
        b"lower a\n"
    );
    let d = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    let sub_before = f.fs.lookup(ctx(), d.ino, b"sub").unwrap().ino;
    f.fs.rename(ctx(), ROOT, b"dir", ROOT, b"dir2", 0).unwrap();
    assert!(is_whiteout(&f.upper.join("dir")));
    assert_eq!(
        std::fs::read(f.upper.join("dir2/sub/c.txt")).unwrap(),
        b"lower c\n"
    );
    assert_eq!(
        names(&f.fs, ROOT),
        ["dir2", "escape", "moved.txt", "run.sh"]
    );
    let d2 = f.fs.lookup(ctx(), ROOT, b"dir2").unwrap();
    assert_eq!(d2.ino, d.ino, "the node id moves with the rename");
    assert_eq!(f.fs.lookup(ctx(), d2.ino, b"sub").unwrap().ino, sub_before);
    assert_eq!(names(&f.fs, d2.ino), ["b.txt", "sub"]);
    // Renaming into its own subtree is refused.
    assert_eq!(
        f.fs.rename(ctx(), ROOT, b"dir2", d2.ino, b"x", 0)
            .err()
            .unwrap()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    // RENAME_NOREPLACE onto an existing name.
    assert_eq!(
        f.fs.rename(
            ctx(),
            ROOT,
            b"moved.txt",
            ROOT,
            b"run.sh",
            libc::RENAME_NOREPLACE
        )
        .err()
        .unwrap()
        .raw_os_error(),
        Some(libc::EEXIST)
    );
}

#[test]
fn symlink_hardlink_xattr_exec_bit() {
    let f = fixture();
    let s = f.fs.symlink(ctx(), b"../outside", ROOT, b"ln").unwrap();
    assert_eq!(f.fs.readlink(ctx(), s.ino).unwrap(), b"../outside");
    let r = f.fs.lookup(ctx(), ROOT, b"run.sh").unwrap();
    assert_eq!(r.attr.st_mode & 0o111, 0o111);
    let l = f.fs.link(ctx(), r.ino, ROOT, b"run2.sh").unwrap();
    assert_eq!(l.attr.st_nlink, 2);
    assert_eq!(l.attr.st_mode & 0o777, 0o755);
    let up = std::fs::metadata(f.upper.join("run.sh")).unwrap();
    let up2 = std::fs::metadata(f.upper.join("run2.sh")).unwrap();
    assert_eq!(up.ino(), up2.ino());
    // xattrs: user namespace works; the union's own are hidden and protected.
    match f.fs.setxattr(ctx(), r.ino, b"user.k", b"v", 0) {
        Ok(()) => {
            assert_eq!(f.fs.getxattr(ctx(), r.ino, b"user.k").unwrap(), b"v");
            let list = f.fs.listxattr(ctx(), r.ino).unwrap();
            assert!(list.windows(7).any(|w| w == b"user.k\0"));
            f.fs.removexattr(ctx(), r.ino, b"user.k").unwrap();
        }
        Err(e) => eprintln!("SKIP xattr part: user xattrs unsupported here: {e}"),
    }
    assert_eq!(
        f.fs.setxattr(ctx(), r.ino, b"trusted.overlay.opaque", b"y", 0)
            .err()
            .unwrap()
            .raw_os_error(),
        Some(libc::EPERM)
    );
}

#[test]
fn sparse_copy_up_keeps_holes() {
    let f = fixture();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(f.lower.join("sparse")).unwrap();
        file.write_at(b"head", 0).unwrap();
        file.write_at(b"tail", 64 << 20).unwrap();
    }
    let lower_blocks = std::fs::metadata(f.lower.join("sparse")).unwrap().blocks();
    let e = f.fs.lookup(ctx(), ROOT, b"sparse").unwrap();
    let (fh, _) = f.fs.open(ctx(), e.ino, libc::O_RDWR as u32).unwrap();
    f.fs.write(ctx(), e.ino, fh, 1, b"E", 0).unwrap();
    let data = f.fs.lseek(ctx(), e.ino, fh, 4096, libc::SEEK_DATA as u32);
    f.fs.release(ctx(), e.ino, fh).unwrap();
    let m = std::fs::metadata(f.upper.join("sparse")).unwrap();
    assert_eq!(m.len(), (64 << 20) + 4);
    assert!(
        m.blocks() <= lower_blocks + 16,
        "holes preserved: {} blocks vs lower {}",
        m.blocks(),
        lower_blocks
    );
    if let Ok(off) = data {
        assert!(off >= 4096, "SEEK_DATA skips the hole: {off}");
    }
    let got = std::fs::read(f.upper.join("sparse")).unwrap();
    assert_eq!(&got[..4], b"hEad");
    assert_eq!(&got[64 << 20..], b"tail");
}
