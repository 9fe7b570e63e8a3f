//! The union over a [`GitLower`], compared with a real checkout of the same tree
//! (`git archive | tar -x`): names, modes, sizes, contents, symlink targets; then copy-up from
//! git blobs, whiteouts, and objects found in a private objects directory.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{GitLower, GitOptions};
use crate::union::lower::Lower;
use crate::union::*;

const ROOT: u64 = ROOT_ID;
const COMMIT_TIME: i64 = 1_700_000_000;

fn ctx() -> Context {
    Context {
        uid: 0,
        gid: 0,
        pid: 1,
    }
}

/// Runs git in `dir` with a fixed identity and dates, no user/system config.
fn git(dir: &Path, args: &[&str]) -> String {
    git_env(dir, args, &[])
}

fn git_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", format!("@{COMMIT_TIME} +0000"))
        .env("GIT_COMMITTER_DATE", format!("@{COMMIT_TIME} +0000"));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Deterministic pseudo-random bytes (xorshift), so the pack cannot compress them away.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A repository with files, nested dirs, an executable, symlinks, an empty file, a 5 MiB file
/// and a submodule gitlink, committed. Returns (repo dir, tree id).
pub(crate) fn build_repo(dir: &Path) -> (PathBuf, String) {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("src/nested")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), b"# repo\n").unwrap();
    std::fs::write(repo.join("src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(repo.join("src/nested/deep.txt"), b"deep\n").unwrap();
    std::fs::write(repo.join("empty"), b"").unwrap();
    std::fs::write(repo.join("big.bin"), noise(5 << 20, 42)).unwrap();
    std::fs::write(repo.join("tool.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(repo.join("tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/main.rs", repo.join("link")).unwrap();
    std::os::unix::fs::symlink("../../../etc/passwd", repo.join("src/escape")).unwrap();
    git(&repo, &["add", "-A"]);
    // A submodule gitlink (the commit need not exist here).
    git(
        &repo,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            "160000,0123456789abcdef0123456789abcdef01234567,sub",
        ],
    );
    git(&repo, &["commit", "-q", "-m", "base"]);
    // An unpopulated submodule is an empty directory in the work tree.
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    // Pack part of it: lookups must work across packs and loose objects.
    git(&repo, &["gc", "-q"]);
    std::fs::write(repo.join("src/late.txt"), b"loose object\n").unwrap();
    git(&repo, &["add", "src/late.txt"]);
    git(&repo, &["commit", "-q", "-m", "second"]);
    let tree = git(&repo, &["rev-parse", "HEAD^{tree}"]);
    (repo, tree)
}

struct Fixture {
    dir: tempfile::TempDir,
    repo: PathBuf,
    upper: PathBuf,
    fs: UnionFs,
}

fn fixture_with(opts: GitOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (repo, tree) = build_repo(dir.path());
    let upper = dir.path().join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    let g = GitLower::open(&repo.join(".git"), None, &tree, opts).unwrap();
    let fs = UnionFs::with_lower(
        Lower::Git(g),
        &upper,
        Arc::new(Journal::memory()),
        UnionOptions::default(),
    )
    .unwrap();
    Fixture {
        dir,
        repo,
        upper,
        fs,
    }
}

fn fixture() -> Fixture {
    fixture_with(GitOptions::default())
}

fn read_all(fs: &UnionFs, ino: u64) -> Vec<u8> {
    let (fh, flags) = fs.open(ctx(), ino, libc::O_RDONLY as u32).unwrap();
    let mut out = Vec::new();
    loop {
        let d = fs.read(ctx(), ino, fh, out.len() as u64, 1 << 20).unwrap();
        if d.is_empty() {
            break;
        }
        out.extend_from_slice(&d);
    }
    fs.release(ctx(), ino, fh).unwrap();
    let _ = flags;
    out
}

/// What a tree looks like: path → (type+perm bits, size, content or link target).
type Listing = BTreeMap<String, (u32, i64, Vec<u8>)>;

fn walk_host(root: &Path, rel: &str, out: &mut Listing) {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for n in names {
        let p = if rel.is_empty() {
            n.clone()
        } else {
            format!("{rel}/{n}")
        };
        let m = std::fs::symlink_metadata(root.join(&p)).unwrap();
        let ft = m.file_type();
        let data = if ft.is_symlink() {
            std::fs::read_link(root.join(&p))
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if ft.is_file() {
            std::fs::read(root.join(&p)).unwrap()
        } else {
            Vec::new()
        };
        let size = if ft.is_dir() { 0 } else { m.size() as i64 };
        out.insert(p.clone(), (m.mode() & (libc::S_IFMT | 0o777), size, data));
        if ft.is_dir() {
            walk_host(root, &p, out);
        }
    }
}

fn walk_union(fs: &UnionFs, ino: u64, rel: &str, out: &mut Listing) {
    let (fh, _) = fs.opendir(ctx(), ino, 0).unwrap();
    let list = fs.readdir(ctx(), ino, fh, 0).unwrap();
    fs.releasedir(ctx(), ino, fh).unwrap();
    for d in list {
        let n = String::from_utf8(d.name).unwrap();
        if n == "." || n == ".." {
            continue;
        }
        let p = if rel.is_empty() {
            n.clone()
        } else {
            format!("{rel}/{n}")
        };
        let e = fs.lookup(ctx(), ino, n.as_bytes()).unwrap();
        assert_eq!(e.ino, d.ino, "readdir and lookup agree on {p}");
        assert_eq!(d.type_, (e.attr.st_mode & libc::S_IFMT) >> 12, "{p}");
        let (st, _) = fs.getattr(ctx(), e.ino, None).unwrap();
        assert_eq!(st.st_mode, e.attr.st_mode);
        assert_eq!(st.st_mtime, COMMIT_TIME, "{p}: mtime = commit time");
        let kind = st.st_mode & libc::S_IFMT;
        let data = match kind {
            libc::S_IFLNK => fs.readlink(ctx(), e.ino).unwrap(),
            libc::S_IFREG => read_all(fs, e.ino),
            _ => Vec::new(),
        };
        let size = if kind == libc::S_IFDIR { 0 } else { st.st_size };
        out.insert(p.clone(), (st.st_mode & (libc::S_IFMT | 0o777), size, data));
        if kind == libc::S_IFDIR {
            walk_union(fs, e.ino, &p, out);
        }
    }
}

#[test]
fn git_lower_matches_a_checkout() {
    let f = fixture();
    // The reference: git's own checkout of the tree.
    let co = f.dir.path().join("checkout");
    std::fs::create_dir_all(&co).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C {} -c tar.umask=022 archive HEAD | tar -x -C {}",
            f.repo.display(),
            co.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let mut want = Listing::new();
    walk_host(&co, "", &mut want);
    let mut got = Listing::new();
    walk_union(&f.fs, ROOT, "", &mut got);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (p, w) in &want {
        let g = &got[p];
        assert_eq!(g.0, w.0, "{p}: mode {:o} vs {:o}", g.0, w.0);
        assert_eq!(g.1, w.1, "{p}: size");
        assert!(g.2 == w.2, "{p}: content / target differs");
    }
    // The things the fixture promised are really there.
    assert_eq!(got["tool.sh"].0, libc::S_IFREG | 0o755);
    assert_eq!(got["README.md"].0, libc::S_IFREG | 0o644);
    assert_eq!(got["link"].2, b"src/main.rs");
    assert_eq!(got["big.bin"].1, 5 << 20);
    assert_eq!(got["sub"].0, libc::S_IFDIR | 0o755, "gitlink = empty dir");
    assert_eq!(got["src/escape"].2, b"../../../etc/passwd");
    assert_eq!(got["src/late.txt"].2, b"loose object\n");
    // Nothing was written to the upper layer by reading.
    assert_eq!(std::fs::read_dir(&f.upper).unwrap().count(), 0);
}

#[test]
fn git_lower_attributes_ranges_and_errors() {
    let f = fixture_with(GitOptions {
        uid: 1234,
        gid: 4321,
        mtime: Some(5),
        // A small blob cache: big.bin goes through a temporary file.
        blob_cache_bytes: 1 << 20,
        ..GitOptions::default()
    });
    let big = f.fs.lookup(ctx(), ROOT, b"big.bin").unwrap();
    assert_eq!((big.attr.st_uid, big.attr.st_gid), (1234, 4321));
    assert_eq!(big.attr.st_mtime, 5);
    assert_eq!(big.attr.st_ino, big.ino);
    assert!(
        big.entry_timeout >= Duration::from_secs(3600),
        "immutable lower: long entry timeout"
    );
    let want = noise(5 << 20, 42);
    let (fh, flags) = f.fs.open(ctx(), big.ino, libc::O_RDONLY as u32).unwrap();
    assert_ne!(
        flags & fopen::KEEP_CACHE,
        0,
        "lower-only files keep their cache"
    );
    for (off, len) in [(0u64, 4096u32), (1 << 20, 1 << 20), ((5 << 20) - 10, 4096)] {
        let d = f.fs.read(ctx(), big.ino, fh, off, len).unwrap();
        let end = (off as usize + len as usize).min(want.len());
        assert_eq!(d, want[off as usize..end], "range {off}+{len}");
    }
    assert!(f
        .fs
        .read(ctx(), big.ino, fh, 6 << 20, 10)
        .unwrap()
        .is_empty());
    f.fs.release(ctx(), big.ino, fh).unwrap();
    // Small blobs come from memory; ranges past the end are empty, not errors.
    let r = f.fs.lookup(ctx(), ROOT, b"README.md").unwrap();
    let (fh, _) = f.fs.open(ctx(), r.ino, libc::O_RDONLY as u32).unwrap();
    assert_eq!(f.fs.read(ctx(), r.ino, fh, 2, 4).unwrap(), b"repo");
    assert!(f
        .fs
        .read(ctx(), r.ino, fh, u64::MAX, 4096)
        .unwrap()
        .is_empty());
    assert!(f.fs.write(ctx(), r.ino, fh, 0, b"x", 0).is_err());
    assert_eq!(
        f.fs.lseek(ctx(), r.ino, fh, 0, libc::SEEK_HOLE as u32)
            .unwrap(),
        7
    );
    f.fs.release(ctx(), r.ino, fh).unwrap();
    // Errors: a missing name, a file used as a directory, a directory opened, a link opened.
    let e = f.fs.lookup(ctx(), ROOT, b"missing").err().unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = f.fs.lookup(ctx(), r.ino, b"x").err().unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    let e = f.fs.lookup(ctx(), ROOT, b"..").err().unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    let src = f.fs.lookup(ctx(), ROOT, b"src").unwrap();
    let e =
        f.fs.open(ctx(), src.ino, libc::O_RDONLY as u32)
            .err()
            .unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::EISDIR));
    let l = f.fs.lookup(ctx(), ROOT, b"link").unwrap();
    let e =
        f.fs.open(ctx(), l.ino, libc::O_RDONLY as u32)
            .err()
            .unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::ENXIO));
    assert_eq!(l.attr.st_size, 11);
    let e = f.fs.readlink(ctx(), r.ino).err().unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let sub = f.fs.lookup(ctx(), ROOT, b"sub").unwrap();
    let e = f.fs.lookup(ctx(), sub.ino, b"anything").err().unwrap();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    assert!(f.fs.getxattr(ctx(), r.ino, b"user.x").is_err());
    assert!(f.fs.listxattr(ctx(), r.ino).unwrap().is_empty());
}

#[test]
#[allow(clippy::bool_assert_comparison)] // the mtime assertion reads as written
fn git_lower_copy_up() {
    let f = fixture();
    let want = noise(5 << 20, 42);
    // A write in the middle of the 5 MiB blob: upper gets the whole original plus the write.
    let big = f.fs.lookup(ctx(), ROOT, b"big.bin").unwrap();
    let (fh, _) = f.fs.open(ctx(), big.ino, libc::O_RDWR as u32).unwrap();
    f.fs.write(ctx(), big.ino, fh, 3 << 20, b"PATCH", 0)
        .unwrap();
    f.fs.release(ctx(), big.ino, fh).unwrap();
    let mut expect = want.clone();
    expect[3 << 20..(3 << 20) + 5].copy_from_slice(b"PATCH");
    let up = std::fs::read(f.upper.join("big.bin")).unwrap();
    assert!(up == expect, "upper = original + write");
    assert!(read_all(&f.fs, big.ino) == expect);
    assert_eq!(
        std::fs::metadata(f.upper.join("big.bin")).unwrap().mtime() >= COMMIT_TIME,
        true
    );
    // Copy-up keeps the exec bit; a nested copy-up brings its parents.
    let t = f.fs.lookup(ctx(), ROOT, b"tool.sh").unwrap();
    let (fh, _) = f.fs.open(ctx(), t.ino, libc::O_WRONLY as u32).unwrap();
    f.fs.write(ctx(), t.ino, fh, 0, b"#!/bin/bash", 0).unwrap();
    f.fs.release(ctx(), t.ino, fh).unwrap();
    let m = std::fs::metadata(f.upper.join("tool.sh")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read(f.upper.join("tool.sh")).unwrap(),
        b"#!/bin/bashcho hi\n"
    );
    // chmod: metadata change, full content copied; times are the commit time.
    let src = f.fs.lookup(ctx(), ROOT, b"src").unwrap();
    let n = f.fs.lookup(ctx(), src.ino, b"nested").unwrap();
    let d = f.fs.lookup(ctx(), n.ino, b"deep.txt").unwrap();
    let (st, _) =
        f.fs.setattr(
            ctx(),
            d.ino,
            SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o600);
    assert_eq!(st.st_ino, d.ino, "node id survives copy-up");
    let p = f.upper.join("src/nested/deep.txt");
    assert_eq!(std::fs::read(&p).unwrap(), b"deep\n");
    assert_eq!(std::fs::metadata(&p).unwrap().mtime(), COMMIT_TIME);
    assert_eq!(
        std::fs::metadata(f.upper.join("src")).unwrap().mode() & 0o7777,
        0o755
    );
    assert!(
        !f.upper.join("src/main.rs").exists(),
        "siblings stay in git"
    );
    // After copy-up the node is no longer "immutable lower": short timeouts.
    let (_, t2) = f.fs.getattr(ctx(), d.ino, None).unwrap();
    assert_eq!(t2, UnionOptions::default().cache_timeout);
    // unlink → whiteout; rmdir of a git dir → whiteout; readdir merges.
    f.fs.unlink(ctx(), ROOT, b"README.md").unwrap();
    let wh = std::fs::symlink_metadata(f.upper.join("README.md")).unwrap();
    assert_eq!(wh.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(wh.rdev(), 0);
    f.fs.rmdir(ctx(), ROOT, b"sub").unwrap();
    let (e, fh, _) =
        f.fs.create(ctx(), ROOT, b"new.txt", 0o644, libc::O_RDWR as u32, 0)
            .unwrap();
    f.fs.write(ctx(), e.ino, fh, 0, b"new", 0).unwrap();
    f.fs.release(ctx(), e.ino, fh).unwrap();
    let (fh, _) = f.fs.opendir(ctx(), ROOT, 0).unwrap();
    let mut names: Vec<String> =
        f.fs.readdir(ctx(), ROOT, fh, 0)
            .unwrap()
            .into_iter()
            .map(|d| String::from_utf8(d.name).unwrap())
            .filter(|n| n != "." && n != "..")
            .collect();
    names.sort();
    assert_eq!(
        names,
        ["big.bin", "empty", "link", "new.txt", "src", "tool.sh"]
    );
    // A renamed symlink is copied up as a symlink with the blob's target.
    f.fs.rename(ctx(), ROOT, b"link", ROOT, b"link2", 0)
        .unwrap();
    assert_eq!(
        std::fs::read_link(f.upper.join("link2")).unwrap(),
        Path::new("src/main.rs")
    );
    // A directory rename copies the whole git subtree up.
    f.fs.rename(ctx(), ROOT, b"src", ROOT, b"code", 0).unwrap();
    assert_eq!(
        std::fs::read(f.upper.join("code/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    assert_eq!(
        std::fs::read_link(f.upper.join("code/escape")).unwrap(),
        Path::new("../../../etc/passwd")
    );
    // The repository itself was never touched.
    assert_eq!(git(&f.repo, &["status", "--porcelain"]), "");
}

#[test]
fn private_objects_dir_and_commit_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, tree) = build_repo(dir.path());
    let gitdir = repo.join(".git");
    // A snapshot tree with a new blob, both written only into a private objects directory
    // whose alternate is the repository's object database.
    let private = dir.path().join("private-objects");
    std::fs::create_dir_all(private.join("info")).unwrap();
    std::fs::write(
        private.join("info/alternates"),
        format!("{}\n", gitdir.join("objects").display()),
    )
    .unwrap();
    std::fs::write(dir.path().join("dirty.txt"), b"uncommitted change\n").unwrap();
    let env = [("GIT_OBJECT_DIRECTORY", private.as_path())];
    let blob = git_env(
        &repo,
        &[
            "hash-object",
            "-w",
            dir.path().join("dirty.txt").to_str().unwrap(),
        ],
        &env,
    );
    let listing = git(&repo, &["ls-tree", &tree]);
    let input = format!("{listing}\n100644 blob {blob}\tdirty.txt\n");
    let mut c = Command::new("git");
    c.current_dir(&repo)
        .args(["mktree"])
        .env("GIT_OBJECT_DIRECTORY", &private)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let snap = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!gitdir
        .join("objects")
        .join(&blob[..2])
        .join(&blob[2..])
        .exists());

    // Without --objects the snapshot is unknown.
    let e = GitLower::open(&gitdir, None, &snap, GitOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("not in the object database"), "{e}");
    // A private dir without the alternates file works too: both databases are searched.
    std::fs::remove_file(private.join("info/alternates")).unwrap();
    let g = GitLower::open(&gitdir, Some(&private), &snap, GitOptions::default()).unwrap();
    let upper = dir.path().join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    let fs = UnionFs::with_lower(
        Lower::Git(g),
        &upper,
        Arc::new(Journal::memory()),
        UnionOptions::default(),
    )
    .unwrap();
    let d = fs.lookup(ctx(), ROOT, b"dirty.txt").unwrap();
    assert_eq!(read_all(&fs, d.ino), b"uncommitted change\n");
    let r = fs.lookup(ctx(), ROOT, b"README.md").unwrap();
    assert_eq!(read_all(&fs, r.ino), b"# repo\n");
    assert_eq!(
        r.attr.st_mtime, COMMIT_TIME,
        "tree id: HEAD's committer time"
    );

    // A commit id serves its tree; bad ids are refused with a clear error.
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let g = GitLower::open(&gitdir, None, &head, GitOptions::default()).unwrap();
    assert_eq!(g.root_tree().to_string(), tree);
    let blob_id = git(&repo, &["rev-parse", "HEAD:README.md"]);
    for bad in ["HEAD", "1234", blob_id.as_str()] {
        assert!(
            GitLower::open(&gitdir, None, bad, GitOptions::default()).is_err(),
            "{bad}"
        );
    }
    assert!(GitLower::open(dir.path(), None, &tree, GitOptions::default()).is_err());
}
