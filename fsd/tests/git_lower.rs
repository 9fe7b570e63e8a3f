//! `ax-fsd --lower-git` end to end through the vhost-user frontend harness (tests/common): the
//! lower layer is a git tree read from the object database (plus a private objects directory
//! holding the snapshot's own objects), the upper a directory.

mod common;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ax_fsd::fuse::abi::{self, fopen, opcode, read_struct, ROOT_ID};
use common::Harness;
use vm_memory::ByteValued;

fn git(dir: &Path, args: &[&str], objects: Option<&Path>, stdin: Option<&str>) -> String {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", "@1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "@1700000000 +0000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(o) = objects {
        c.env("GIT_OBJECT_DIRECTORY", o);
        c.env("GIT_ALTERNATE_OBJECT_DIRECTORIES", dir.join(".git/objects"));
    }
    let mut child = c.spawn().expect("git");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Setup {
    dir: tempfile::TempDir,
    repo: PathBuf,
    private: PathBuf,
    snapshot: String,
    upper: PathBuf,
}

/// A committed repository, plus a snapshot tree (HEAD's tree + one "uncommitted" file) whose
/// new objects live only in a private objects directory.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("src/nested")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"], None, None);
    std::fs::write(repo.join("README.md"), b"# repo\n").unwrap();
    std::fs::write(repo.join("src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(repo.join("src/nested/deep.txt"), b"deep\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(repo.join("big.bin"), big).unwrap();
    std::fs::write(repo.join("tool.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(repo.join("tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/main.rs", repo.join("link")).unwrap();
    git(&repo, &["add", "-A"], None, None);
    git(&repo, &["commit", "-q", "-m", "base"], None, None);
    let private = dir.path().join("snapshot-objects");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::write(dir.path().join("dirty.txt"), b"not committed yet\n").unwrap();
    let blob = git(
        &repo,
        &[
            "hash-object",
            "-w",
            dir.path().join("dirty.txt").to_str().unwrap(),
        ],
        Some(&private),
        None,
    );
    let listing = git(&repo, &["ls-tree", "HEAD"], None, None);
    let snapshot = git(
        &repo,
        &["mktree"],
        Some(&private),
        Some(&format!("{listing}\n100644 blob {blob}\tdirty.txt\n")),
    );
    let upper = dir.path().join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    Setup {
        dir,
        repo,
        private,
        snapshot,
        upper,
    }
}

fn lower_args(s: &Setup) -> Vec<OsString> {
    vec![
        "--lower-git".into(),
        s.repo.join(".git").into(),
        "--tree".into(),
        s.snapshot.clone().into(),
        "--objects".into(),
        s.private.clone().into(),
        "--mtime".into(),
        "12345".into(),
    ]
}

fn open_flags(h: &mut Harness, ino: u64, flags: i32) -> (u64, u32) {
    let o = abi::OpenIn {
        flags: flags as u32,
        open_flags: 0,
    };
    let b = h.call(opcode::OPEN, ino, o.as_slice()).expect("OPEN");
    let o = read_struct::<abi::OpenOut>(&b).unwrap().0;
    (o.fh, o.open_flags)
}

#[test]
fn git_lower_end_to_end() {
    let s = setup();
    let journal = s.dir.path().join("journal.jsonl");
    let mut h = Harness::spawn_lower(s.dir.path(), &lower_args(&s), &s.upper, Some(&journal));
    let init = h.init();
    assert_eq!((init.major, init.minor), (7, 31));

    // LOOKUP: attributes from the tree entry and the blob header; long timeouts.
    let r = h.lookup(ROOT_ID, b"README.md").unwrap();
    assert_eq!(r.attr.mode, libc::S_IFREG | 0o644);
    assert_eq!(r.attr.size, 7);
    assert_eq!((r.attr.mtime, r.attr.ctime), (12345, 12345));
    assert_eq!(r.attr.ino, r.nodeid);
    assert!(r.entry_valid >= 3600 && r.attr_valid >= 3600);
    let t = h.lookup(ROOT_ID, b"tool.sh").unwrap();
    assert_eq!(t.attr.mode, libc::S_IFREG | 0o755);
    let src = h.lookup(ROOT_ID, b"src").unwrap();
    assert_eq!(src.attr.mode, libc::S_IFDIR | 0o755);
    let ga = h.getattr(src.nodeid).unwrap();
    assert_eq!(ga.mode, libc::S_IFDIR | 0o755);
    let n = h.lookup(src.nodeid, b"nested").unwrap();
    let d = h.lookup(n.nodeid, b"deep.txt").unwrap();
    assert_eq!(d.attr.size, 5);
    assert_eq!(h.lookup(ROOT_ID, b"nope").err(), Some(libc::ENOENT));
    assert_eq!(h.lookup(ROOT_ID, b"..").err(), Some(libc::EACCES));
    assert_eq!(h.lookup(r.nodeid, b"x").err(), Some(libc::ENOTDIR));

    // READ: a small blob, ranges of a 300 KB blob, the snapshot-only blob; KEEP_CACHE.
    let (fh, fl) = open_flags(&mut h, r.nodeid, libc::O_RDONLY);
    assert_ne!(fl & fopen::KEEP_CACHE, 0);
    assert_eq!(h.read(r.nodeid, fh, 0, 4096).unwrap(), b"# repo\n");
    h.release(r.nodeid, fh);
    let big = h.lookup(ROOT_ID, b"big.bin").unwrap();
    assert_eq!(big.attr.size, 300_000);
    let want = std::fs::read(s.repo.join("big.bin")).unwrap();
    let fh = h.open(big.nodeid, libc::O_RDONLY).unwrap();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let b = h.read(big.nodeid, fh, got.len() as u64, 128 << 10).unwrap();
        assert!(!b.is_empty());
        got.extend_from_slice(&b);
    }
    assert!(got == want);
    h.release(big.nodeid, fh);
    let dirty = h.lookup(ROOT_ID, b"dirty.txt").unwrap();
    let fh = h.open(dirty.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(
        h.read(dirty.nodeid, fh, 0, 4096).unwrap(),
        b"not committed yet\n"
    );
    h.release(dirty.nodeid, fh);

    // READLINK from the symlink blob.
    let l = h.lookup(ROOT_ID, b"link").unwrap();
    assert_eq!(l.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(h.readlink(l.nodeid).unwrap(), b"src/main.rs");

    // CREATE + WRITE land in upper; a write to a git file copies it up first.
    let (e, fh) = h.create(ROOT_ID, b"new.txt", 0o644).unwrap();
    assert_eq!(h.write(e.nodeid, fh, 0, b"fresh\n").unwrap(), 6);
    h.release(e.nodeid, fh);
    assert_eq!(std::fs::read(s.upper.join("new.txt")).unwrap(), b"fresh\n");
    let fh = h.open(d.nodeid, libc::O_WRONLY).unwrap();
    h.write(d.nodeid, fh, 0, b"DE").unwrap();
    h.release(d.nodeid, fh);
    assert_eq!(
        std::fs::read(s.upper.join("src/nested/deep.txt")).unwrap(),
        b"DEep\n"
    );
    let a = h.chmod(t.nodeid, 0o700).unwrap();
    assert_eq!(a.mode, libc::S_IFREG | 0o700);
    assert_eq!(
        std::fs::read(s.upper.join("tool.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    // Unlink of a git file: a whiteout; READDIR merges upper and lower.
    h.unlink(ROOT_ID, b"README.md").unwrap();
    let m = std::fs::symlink_metadata(s.upper.join("README.md")).unwrap();
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
    assert_eq!(
        h.names(ROOT_ID),
        ["big.bin", "dirty.txt", "link", "new.txt", "src", "tool.sh"]
    );
    assert_eq!(h.names(src.nodeid), ["main.rs", "nested"]);
    let list = h.readdir(ROOT_ID).unwrap();
    let (_, ino, ty) = list.iter().find(|(n, _, _)| n == "link").unwrap();
    assert_eq!((*ino, *ty), (l.nodeid, libc::DT_LNK as u32));

    // The repository is untouched: clean status, the snapshot objects stayed private.
    assert_eq!(git(&s.repo, &["status", "--porcelain"], None, None), "");
    let st = h.shutdown();
    assert!(st.success(), "{st}");
    let j = std::fs::read_to_string(&journal).unwrap();
    let line = |p: &str| {
        j.lines()
            .rfind(|l| l.contains(&format!(r#""path":"{p}""#)))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("new.txt").contains(r#""change":"created""#), "{j}");
    assert!(line("README.md").contains(r#""change":"deleted""#), "{j}");
    assert!(
        line("src/nested/deep.txt").contains(r#""change":"modified""#),
        "{j}"
    );
}

#[test]
fn git_lower_usage_errors() {
    let s = setup();
    let run = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ax-fsd"));
        c.arg("--socket")
            .arg(s.dir.path().join("x.sock"))
            .arg("--upper")
            .arg(&s.upper)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let t0 = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > std::time::Duration::from_secs(10) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let o = child.wait_with_output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let git_dir = s.repo.join(".git");
    let git_dir = git_dir.to_str().unwrap();
    let lower = s.repo.to_str().unwrap();
    // Neither, both, a tree without --lower-git, an unknown tree, a snapshot tree without its
    // private objects: usage errors (exit 2) that say what to do.
    for (args, needle) in [
        (vec![], "--lower"),
        (
            vec![
                "--lower",
                lower,
                "--lower-git",
                git_dir,
                "--tree",
                &s.snapshot,
            ],
            "cannot be used with",
        ),
        (vec!["--lower", lower, "--tree", &s.snapshot], "--lower-git"),
        (
            vec![
                "--lower-git",
                git_dir,
                "--tree",
                "0123456789abcdef0123456789abcdef01234567",
            ],
            "not in the object database",
        ),
        (
            vec!["--lower-git", git_dir, "--tree", &s.snapshot],
            "not in the object database",
        ),
        (vec!["--lower-git", git_dir, "--tree", "HEAD"], "full"),
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!s.dir.path().join("x.sock").exists());
}
