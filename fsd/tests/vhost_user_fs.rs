//! ax-fsd driven end to end through a real vhost-user frontend (tests/common): the `ax-fsd`
//! binary, FUSE requests on virtqueues in shared memfd guest RAM, replies read from the used
//! ring. No VM.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ax_fsd::fuse::abi::{opcode, ROOT_ID};
use common::{hash_tree, Harness};

struct Setup {
    dir: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    journal: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    let upper = dir.path().join("upper");
    std::fs::create_dir_all(lower.join("src/nested")).unwrap();
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::write(lower.join("README.md"), b"# repo\n").unwrap();
    std::fs::write(lower.join("src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(lower.join("src/nested/deep.txt"), b"deep\n").unwrap();
    std::fs::write(lower.join("big.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::write(lower.join("tool.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        lower.join("tool.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // A symlink that points outside the share: the host must never follow it.
    std::fs::write(dir.path().join("secret"), b"host secret\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), lower.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../secret", lower.join("src/rel-escape")).unwrap();
    let journal = dir.path().join("journal.jsonl");
    Setup {
        dir,
        lower,
        upper,
        journal,
    }
}

fn start(s: &Setup) -> Harness {
    start_with(s, &[])
}

/// `start` with extra ax-fsd flags.
fn start_with(s: &Setup, extra: &[&str]) -> Harness {
    let mut args = vec![
        std::ffi::OsString::from("--lower"),
        s.lower.clone().into_os_string(),
    ];
    args.extend(extra.iter().map(std::ffi::OsString::from));
    let mut h = Harness::spawn_lower(s.dir.path(), &args, &s.upper, Some(&s.journal));
    let init = h.init();
    assert_eq!((init.major, init.minor), (7, 31));
    assert!(init.max_write >= 128 << 10);
    h
}

fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

#[test]
fn init_config_and_clean_exit() {
    let s = setup();
    let mut h = start(&s);
    let c = h.config();
    assert_eq!(&c[..9], b"workspace");
    assert_eq!(&c[36..40], &1u32.to_le_bytes());
    // Unknown opcode: ENOSYS; a request whose len disagrees with its bytes: EINVAL.
    assert_eq!(h.call(200, ROOT_ID, &[]), Err(libc::ENOSYS));
    let (oh, _) = h.raw(opcode::GETATTR, ROOT_ID, &[0; 3], 4096);
    assert_eq!(oh.error, -libc::EINVAL);
    // A FORGET on the hiprio queue gets a used element without a reply.
    let mut forget = ax_fsd::fuse::abi::InHeader {
        len: 48,
        opcode: opcode::FORGET,
        unique: 999,
        nodeid: ROOT_ID,
        ..Default::default()
    }
    .as_slice_vec();
    forget.extend_from_slice(&1u64.to_le_bytes());
    assert!(h.transact(common::HIPRIO, &forget, 0).is_empty());
    // Still serving after that.
    assert!(h.getattr(ROOT_ID).is_ok());
    let st = h.shutdown();
    assert!(st.success(), "ax-fsd exit status {st:?}");
}

trait AsSliceVec {
    fn as_slice_vec(&self) -> Vec<u8>;
}
impl<T: vm_memory::ByteValued> AsSliceVec for T {
    fn as_slice_vec(&self) -> Vec<u8> {
        self.as_slice().to_vec()
    }
}

#[test]
fn lookup_getattr_read_lower() {
    let s = setup();
    let mut h = start(&s);
    let root = h.getattr(ROOT_ID).unwrap();
    assert_eq!(root.mode & libc::S_IFMT, libc::S_IFDIR);
    let src = h.lookup(ROOT_ID, b"src").unwrap();
    assert_eq!(src.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let m = h.lookup(src.nodeid, b"main.rs").unwrap();
    assert_eq!(m.attr.size, 13);
    assert_eq!(h.lookup(src.nodeid, b"main.rs").unwrap().nodeid, m.nodeid);
    assert_eq!(h.getattr(m.nodeid).unwrap().size, 13);
    assert_eq!(h.lookup(ROOT_ID, b"nope"), Err(libc::ENOENT));
    let fh = h.open(m.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(m.nodeid, fh, 0, 4096).unwrap(), b"fn main() {}\n");
    assert_eq!(h.read(m.nodeid, fh, 3, 4).unwrap(), b"main");
    assert_eq!(h.read(m.nodeid, fh, 100, 4).unwrap(), b"");
    h.release(m.nodeid, fh);
    // A large read across descriptors' worth of data.
    let b = h.lookup(ROOT_ID, b"big.bin").unwrap();
    let fh = h.open(b.nodeid, libc::O_RDONLY).unwrap();
    let data = h.read(b.nodeid, fh, 0, 1 << 20).unwrap();
    assert_eq!(data.len(), 300_000);
    assert!(data.iter().all(|&x| x == 7));
    h.release(b.nodeid, fh);
    // The exec bit is visible.
    let t = h.lookup(ROOT_ID, b"tool.sh").unwrap();
    assert_eq!(t.attr.mode & 0o777, 0o755);
}

#[test]
fn create_write_lands_in_upper_lower_untouched() {
    let s = setup();
    let before = hash_tree(&s.lower);
    let mut h = start(&s);
    let src = h.lookup(ROOT_ID, b"src").unwrap();
    let (e, fh) = h.create(src.nodeid, b"new.rs", 0o644).unwrap();
    assert_eq!(h.write(e.nodeid, fh, 0, b"pub fn x() {}\n").unwrap(), 14);
    h.release(e.nodeid, fh);
    // Modify a lower file in place (copy-up).
    let m = h.lookup(src.nodeid, b"main.rs").unwrap();
    let fh = h.open(m.nodeid, libc::O_RDWR).unwrap();
    h.write(m.nodeid, fh, 3, b"MAIN").unwrap();
    h.release(m.nodeid, fh);
    let fh = h.open(m.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(m.nodeid, fh, 0, 100).unwrap(), b"fn MAIN() {}\n");
    h.release(m.nodeid, fh);
    assert_eq!(
        std::fs::read(s.upper.join("src/new.rs")).unwrap(),
        b"pub fn x() {}\n"
    );
    assert_eq!(
        std::fs::read(s.upper.join("src/main.rs")).unwrap(),
        b"fn MAIN() {}\n"
    );
    assert!(!s.upper.join("README.md").exists());
    assert_eq!(hash_tree(&s.lower), before, "lower layer unchanged");
    assert!(h.names(src.nodeid).contains(&"new.rs".to_string()));
    drop(h);
    let j = ax_fsd::journal::read(&s.journal).unwrap();
    let paths: Vec<(String, ax_fsd::journal::Change)> = j
        .into_iter()
        .map(|(p, c, _)| (String::from_utf8(p).unwrap(), c))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("src/main.rs".into(), ax_fsd::journal::Change::Modified),
            ("src/new.rs".into(), ax_fsd::journal::Change::Created),
        ]
    );
}

#[test]
fn unlink_lower_file_leaves_whiteout() {
    let s = setup();
    let before = hash_tree(&s.lower);
    let mut h = start(&s);
    assert!(h.names(ROOT_ID).contains(&"README.md".to_string()));
    h.unlink(ROOT_ID, b"README.md").unwrap();
    assert!(is_whiteout(&s.upper.join("README.md")));
    assert!(!h.names(ROOT_ID).contains(&"README.md".to_string()));
    assert_eq!(h.lookup(ROOT_ID, b"README.md").err(), Some(libc::ENOENT));
    assert_eq!(h.unlink(ROOT_ID, b"README.md"), Err(libc::ENOENT));
    assert_eq!(hash_tree(&s.lower), before);
}

#[test]
fn mkdir_rmdir() {
    let s = setup();
    let mut h = start(&s);
    let d = h.mkdir(ROOT_ID, b"newdir", 0o750).unwrap();
    assert_eq!(d.attr.mode & 0o777, 0o750);
    assert!(s.upper.join("newdir").is_dir());
    assert_eq!(h.mkdir(ROOT_ID, b"newdir", 0o750).err(), Some(libc::EEXIST));
    let (e, fh) = h.create(d.nodeid, b"f", 0o600).unwrap();
    h.release(e.nodeid, fh);
    assert_eq!(h.rmdir(ROOT_ID, b"newdir"), Err(libc::ENOTEMPTY));
    h.unlink(d.nodeid, b"f").unwrap();
    h.rmdir(ROOT_ID, b"newdir").unwrap();
    assert!(
        !s.upper.join("newdir").exists(),
        "upper-only dir leaves no whiteout"
    );
    // A lower directory: empty it, remove it, it becomes a whiteout.
    let src = h.lookup(ROOT_ID, b"src").unwrap();
    let n = h.lookup(src.nodeid, b"nested").unwrap();
    h.unlink(n.nodeid, b"deep.txt").unwrap();
    h.rmdir(src.nodeid, b"nested").unwrap();
    assert!(is_whiteout(&s.upper.join("src/nested")));
    assert!(!h.names(src.nodeid).contains(&"nested".to_string()));
    assert_eq!(h.rmdir(ROOT_ID, b"README.md"), Err(libc::ENOTDIR));
}

#[test]
fn rename_file_and_directory() {
    let s = setup();
    let before = hash_tree(&s.lower);
    let mut h = start(&s);
    h.rename(ROOT_ID, b"README.md", ROOT_ID, b"READ.md")
        .unwrap();
    assert!(is_whiteout(&s.upper.join("README.md")));
    let r = h.lookup(ROOT_ID, b"READ.md").unwrap();
    let fh = h.open(r.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(r.nodeid, fh, 0, 100).unwrap(), b"# repo\n");
    h.release(r.nodeid, fh);
    // Directory rename: the whole subtree moves; the old name is whited out.
    let src = h.lookup(ROOT_ID, b"src").unwrap();
    h.rename(ROOT_ID, b"src", ROOT_ID, b"lib").unwrap();
    assert!(is_whiteout(&s.upper.join("src")));
    assert_eq!(h.lookup(ROOT_ID, b"src").err(), Some(libc::ENOENT));
    let lib = h.lookup(ROOT_ID, b"lib").unwrap();
    assert_eq!(lib.nodeid, src.nodeid);
    assert_eq!(h.names(lib.nodeid), ["main.rs", "nested", "rel-escape"]);
    let n = h.lookup(lib.nodeid, b"nested").unwrap();
    let d = h.lookup(n.nodeid, b"deep.txt").unwrap();
    let fh = h.open(d.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(d.nodeid, fh, 0, 100).unwrap(), b"deep\n");
    h.release(d.nodeid, fh);
    let names = h.names(ROOT_ID);
    assert!(names.contains(&"lib".to_string()) && !names.contains(&"src".to_string()));
    assert_eq!(hash_tree(&s.lower), before);
}

#[test]
fn chmod_copies_up_with_mode() {
    let s = setup();
    let mut h = start(&s);
    let t = h.lookup(ROOT_ID, b"tool.sh").unwrap();
    let a = h.chmod(t.nodeid, 0o700).unwrap();
    assert_eq!(a.mode & 0o7777, 0o700);
    let m = std::fs::metadata(s.upper.join("tool.sh")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
    assert_eq!(
        std::fs::read(s.upper.join("tool.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    let lm = std::fs::metadata(s.lower.join("tool.sh")).unwrap();
    assert_eq!(lm.permissions().mode() & 0o7777, 0o755, "lower untouched");
    assert_eq!(m.mtime(), lm.mtime(), "copy-up keeps mtime");
}

#[test]
fn symlink_and_readlink() {
    let s = setup();
    let mut h = start(&s);
    let l = h.symlink(ROOT_ID, b"link", b"src/main.rs").unwrap();
    assert_eq!(l.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(h.readlink(l.nodeid).unwrap(), b"src/main.rs");
    assert_eq!(
        std::fs::read_link(s.upper.join("link")).unwrap(),
        Path::new("src/main.rs")
    );
    // READLINK of a regular file: EINVAL.
    let r = h.lookup(ROOT_ID, b"README.md").unwrap();
    assert_eq!(h.readlink(r.nodeid), Err(libc::EINVAL));
}

#[test]
fn path_traversal_refused() {
    let s = setup();
    let mut h = start(&s);
    let src = h.lookup(ROOT_ID, b"src").unwrap();
    for bad in [&b".."[..], b".", b"../secret", b"nested/deep.txt", b"/etc"] {
        assert_eq!(
            h.lookup(src.nodeid, bad).err(),
            Some(libc::EACCES),
            "{bad:?}"
        );
    }
    assert_eq!(h.lookup(ROOT_ID, b"..").err(), Some(libc::EACCES));
    assert_eq!(
        h.create(ROOT_ID, b"../evil", 0o644).err(),
        Some(libc::EACCES)
    );
    assert_eq!(h.mkdir(ROOT_ID, b"a/b", 0o755).err(), Some(libc::EACCES));
    assert_eq!(
        h.rename(ROOT_ID, b"README.md", ROOT_ID, b"../x"),
        Err(libc::EACCES)
    );
    // An unknown node id.
    assert_eq!(h.getattr(123_456).err(), Some(libc::ENOENT));
    assert!(!s.dir.path().join("evil").exists() && !s.dir.path().join("x").exists());
}

#[test]
fn escaping_symlink_is_never_followed_on_the_host() {
    let s = setup();
    let mut h = start(&s);
    let e = h.lookup(ROOT_ID, b"escape").unwrap();
    assert_eq!(
        e.attr.mode & libc::S_IFMT,
        libc::S_IFLNK,
        "a symlink, not the target"
    );
    assert_ne!(e.attr.size, 12, "not the secret's size");
    assert_eq!(
        h.readlink(e.nodeid).unwrap(),
        s.dir.path().join("secret").to_str().unwrap().as_bytes()
    );
    // Opening it, or using it as a directory, never reaches the target.
    assert_eq!(h.open(e.nodeid, libc::O_RDONLY).err(), Some(libc::ENXIO));
    assert_eq!(h.lookup(e.nodeid, b"x").err(), Some(libc::ENOTDIR));
    assert_eq!(h.chmod(e.nodeid, 0o777).map(|_| ()), Ok(()));
    let sm = std::fs::metadata(s.dir.path().join("secret")).unwrap();
    assert_ne!(sm.permissions().mode() & 0o777, 0o777, "target untouched");
    let src = h.lookup(ROOT_ID, b"src").unwrap();
    let r = h.lookup(src.nodeid, b"rel-escape").unwrap();
    assert_eq!(r.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(h.readlink(r.nodeid).unwrap(), b"../../secret");
    assert_eq!(
        std::fs::read(s.dir.path().join("secret")).unwrap(),
        b"host secret\n"
    );
}

/// Every node under `ino` as (path, mode, size for non-dirs), through FUSE.
fn walk_fuse(h: &mut Harness, ino: u64, prefix: &str, out: &mut Vec<(String, u32, u64)>) {
    for name in h.names(ino) {
        let e = h.lookup(ino, name.as_bytes()).unwrap();
        let path = format!("{prefix}{name}");
        let is_dir = e.attr.mode & libc::S_IFMT == libc::S_IFDIR;
        out.push((
            path.clone(),
            e.attr.mode,
            if is_dir { 0 } else { e.attr.size },
        ));
        if is_dir {
            walk_fuse(h, e.nodeid, &format!("{path}/"), out);
        }
    }
}

/// The same through the kernel's overlayfs.
fn walk_host(dir: &Path, prefix: &str, out: &mut Vec<(String, u32, u64)>) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names {
        let p = dir.join(&name);
        let m = std::fs::symlink_metadata(&p)
            .unwrap_or_else(|e| panic!("{}: listed by the kernel, but {e}", p.display()));
        let path = format!("{prefix}{name}");
        out.push((path.clone(), m.mode(), if m.is_dir() { 0 } else { m.len() }));
        if m.is_dir() {
            walk_host(&p, &format!("{path}/"), out);
        }
    }
}

/// The upper layer is in overlayfs's format: the kernel's overlayfs, mounted on the same lower
/// and upper, shows exactly the tree ax-fsd shows (needs root and overlayfs: loud SKIP else).
#[test]
fn kernel_overlayfs_agrees_with_the_union() {
    overlay_agrees(&[]);
}

/// The same with xattr whiteouts (the non-root format, forced here since tests run as root).
/// The kernel (≥ 6.7) honours xattr whiteouts only in *lower* layers (its maintainers: "we do
/// not support xwhiteouts on upper"), so the comparison mounts the upper layer read-only above
/// the lower one (`lowerdir=UPPER:LOWER`), which is how such an upper layer is inspected.
#[test]
fn kernel_overlayfs_agrees_with_xattr_whiteouts() {
    let s = overlay_agrees(&["--xattr-whiteouts"]);
    let Some(s) = s else { return };
    // README.md was deleted: a zero-size file with the whiteout xattr, its directory marked
    // opaque = "x"; no character device. (deep.txt went after the rename: lib/ is opaque and
    // complete in the upper layer, so no whiteout was needed there.)
    let p = s.upper.join("README.md");
    assert!(!is_whiteout(&p), "not a device");
    let m = std::fs::symlink_metadata(&p).unwrap();
    assert!(m.is_file() && m.len() == 0);
    assert!(xattr(&p, "trusted.overlay.whiteout").is_some());
    assert_eq!(
        xattr(&s.upper, "trusted.overlay.opaque").as_deref(),
        Some(&b"x"[..])
    );
    assert!(!s.upper.join("lib/nested/deep.txt").exists());
    // The directory made over the old `src` whiteout is opaque ("y").
    assert_eq!(
        xattr(&s.upper.join("src"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// Runs the scenario with `extra` ax-fsd flags and compares with the kernel's overlayfs;
/// `None` after a loud SKIP.
fn overlay_agrees(extra: &[&str]) -> Option<Setup> {
    let s = setup();
    let mut h = start_with(&s, extra);
    let src = h.lookup(ROOT_ID, b"src").unwrap();
    h.unlink(ROOT_ID, b"README.md").unwrap();
    h.rename(ROOT_ID, b"src", ROOT_ID, b"lib").unwrap();
    h.mkdir(ROOT_ID, b"src", 0o755).unwrap(); // over the whiteout: opaque
    let (e, fh) = h.create(ROOT_ID, b"NEW.md", 0o644).unwrap();
    h.write(e.nodeid, fh, 0, b"new file\n").unwrap();
    h.release(e.nodeid, fh);
    let t = h.lookup(ROOT_ID, b"tool.sh").unwrap();
    h.chmod(t.nodeid, 0o700).unwrap();
    let n = h.lookup(src.nodeid, b"nested").unwrap();
    h.unlink(n.nodeid, b"deep.txt").unwrap();
    h.symlink(src.nodeid, b"ln", b"../NEW.md").unwrap();
    // RENAME_EXCHANGE: an upper file with a lower one, and a directory with a file.
    let x = libc::RENAME_EXCHANGE;
    h.rename2(ROOT_ID, b"NEW.md", ROOT_ID, b"big.bin", x)
        .unwrap();
    h.rename2(src.nodeid, b"nested", src.nodeid, b"main.rs", x)
        .unwrap();
    let mut via_fuse = Vec::new();
    walk_fuse(&mut h, ROOT_ID, "", &mut via_fuse);
    drop(h);

    let work = s.dir.path().join("work");
    let mnt = s.dir.path().join("mnt");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let opts = if extra.contains(&"--xattr-whiteouts") {
        format!("lowerdir={}:{}", s.upper.display(), s.lower.display())
    } else {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            s.lower.display(),
            s.upper.display(),
            work.display()
        )
    };
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        eprintln!(
            "SKIP kernel_overlayfs_agrees_with_the_union {extra:?}: cannot mount overlayfs here \
             (needs root)"
        );
        return None;
    }
    let mut via_kernel = Vec::new();
    walk_host(&mnt, "", &mut via_kernel);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    via_fuse.sort();
    via_kernel.sort();
    assert_eq!(via_fuse, via_kernel);
    // `src`'s node id moved with the rename: the unlink and the symlink happened in lib/.
    let paths: Vec<&str> = via_fuse.iter().map(|(p, _, _)| p.as_str()).collect();
    assert!(paths.contains(&"lib/ln") && paths.contains(&"lib/main.rs"));
    assert!(!paths.contains(&"lib/nested/deep.txt"));
    assert!(paths.contains(&"src") && !paths.iter().any(|p| p.starts_with("src/")));
    assert!(!paths.contains(&"README.md") && paths.contains(&"NEW.md"));
    Some(s)
}

#[test]
fn readdirplus_link_xattr_and_large_write() {
    use ax_fsd::fuse::abi::{self, read_struct};
    use vm_memory::ByteValued;
    let s = setup();
    let mut h = start(&s);
    // READDIRPLUS: entry_out + dirent per name; "." and ".." carry a zero node id.
    let b = h
        .call(opcode::OPENDIR, ROOT_ID, abi::OpenIn::default().as_slice())
        .unwrap();
    let fh = read_struct::<abi::OpenOut>(&b).unwrap().0.fh;
    let r = abi::ReadIn {
        fh,
        size: 64 << 10,
        ..Default::default()
    };
    let b = h.call(opcode::READDIRPLUS, ROOT_ID, r.as_slice()).unwrap();
    let mut rest = &b[..];
    let mut seen = Vec::new();
    while let Some((e, tail)) = read_struct::<abi::EntryOut>(rest) {
        let (d, tail) = read_struct::<abi::Dirent>(tail).unwrap();
        let name = String::from_utf8(tail[..d.namelen as usize].to_vec()).unwrap();
        if name == "." || name == ".." {
            assert_eq!(e.nodeid, 0);
        } else {
            assert_eq!(e.nodeid, d.ino);
            assert_eq!(h.lookup(ROOT_ID, name.as_bytes()).unwrap().nodeid, e.nodeid);
        }
        seen.push(name);
        let used = std::mem::size_of::<abi::EntryOut>() + abi::dirent_size(d.namelen as usize);
        rest = &rest[used.min(rest.len())..];
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ".",
            "..",
            "README.md",
            "big.bin",
            "escape",
            "src",
            "tool.sh"
        ]
    );
    // LINK a lower file: copied up, then hard-linked inside upper.
    let t = h.lookup(ROOT_ID, b"tool.sh").unwrap();
    let mut body = abi::LinkIn {
        oldnodeid: t.nodeid,
    }
    .as_slice()
    .to_vec();
    body.extend_from_slice(&common::cname(b"tool2.sh"));
    let b = h.call(opcode::LINK, ROOT_ID, &body).unwrap();
    let e = read_struct::<abi::EntryOut>(&b).unwrap().0;
    assert_eq!(e.attr.nlink, 2);
    assert_eq!(
        std::fs::metadata(s.upper.join("tool.sh")).unwrap().ino(),
        std::fs::metadata(s.upper.join("tool2.sh")).unwrap().ino()
    );
    // xattrs: a user xattr round-trips; the union's own names are refused.
    let mut body = abi::SetxattrIn { size: 3, flags: 0 }.as_slice().to_vec();
    body.extend_from_slice(b"user.ax\0abc");
    match h.call(opcode::SETXATTR, t.nodeid, &body) {
        Ok(_) => {
            let mut g = abi::GetxattrIn {
                size: 0,
                padding: 0,
            }
            .as_slice()
            .to_vec();
            g.extend_from_slice(b"user.ax\0");
            let b = h.call(opcode::GETXATTR, t.nodeid, &g).unwrap();
            assert_eq!(read_struct::<abi::GetxattrOut>(&b).unwrap().0.size, 3);
            g[0] = 64;
            assert_eq!(h.call(opcode::GETXATTR, t.nodeid, &g).unwrap(), b"abc");
            g[0] = 1;
            assert_eq!(h.call(opcode::GETXATTR, t.nodeid, &g), Err(libc::ERANGE));
        }
        Err(e) => eprintln!("SKIP user xattrs: errno {e} on this file system"),
    }
    let mut body = abi::SetxattrIn { size: 1, flags: 0 }.as_slice().to_vec();
    body.extend_from_slice(b"trusted.overlay.opaque\0y");
    assert_eq!(h.call(opcode::SETXATTR, ROOT_ID, &body), Err(libc::EPERM));
    // A 1 MiB WRITE (max_write) lands whole.
    let (e, fh) = h.create(ROOT_ID, b"large", 0o644).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    assert_eq!(h.write(e.nodeid, fh, 0, &data).unwrap(), 1 << 20);
    h.release(e.nodeid, fh);
    assert_eq!(std::fs::read(s.upper.join("large")).unwrap(), data);
}

/// `--queues 2`: the config space says 2, both request queues answer (a file created through
/// one is read through the other), and each is served by its own worker thread.
#[test]
fn two_request_queues_each_with_a_worker_thread() {
    let s = setup();
    let mut h = Harness::spawn_queues(s.dir.path(), &s.lower, &s.upper, 2);
    h.init();
    assert_eq!(&h.config()[36..40], &2u32.to_le_bytes());
    let (e, fh) = h.create(ROOT_ID, b"q1.txt", 0o644).unwrap();
    h.write(e.nodeid, fh, 0, b"via queue 1").unwrap();
    h.release(e.nodeid, fh);
    h.use_queue(2);
    let l = h.lookup(ROOT_ID, b"q1.txt").unwrap();
    assert_eq!(l.nodeid, e.nodeid);
    let fh = h.open(l.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(l.nodeid, fh, 0, 100).unwrap(), b"via queue 1");
    // The zero-copy READ path on the second queue too.
    let big = h.lookup(ROOT_ID, b"big.bin").unwrap().nodeid;
    let bfh = h.open(big, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(big, bfh, 0, 4096).unwrap(), vec![7u8; 4096]);
    let workers = std::fs::read_dir(format!("/proc/{}/task", h.pid()))
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap_or_default().trim() == "vring_worker"
        })
        .count();
    assert_eq!(workers, 2, "one worker thread per request queue");
}
