//! The ax-fsd jail (docs/jail.md, "ax-fsd"): a running jailed ax-fsd shows seccomp,
//! no_new_privs, the kept capabilities and its own namespaces on every thread; FUSE ops the
//! other suites do not reach (fallocate, lseek SEEK_DATA/SEEK_HOLE, RENAME_NOREPLACE,
//! truncate, chown, utimes, mknod, statfs, fsync, xattrs, ...) give the same replies jailed
//! and unjailed; and a jailed process (a forked child applying `ax_fsd::jail::apply`) can open
//! files in its layers and nothing else, not even through `/proc/self/fd`, and is killed
//! for syscalls outside the allowlist. The other suites (`vhost_user_fs`, `git_lower`) run
//! the jailed binary too: the jail is on by default.

mod common;

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ax_fsd::fuse::abi::{self, opcode, read_struct, ROOT_ID};
use ax_fsd::jail::{Policy, KEPT_CAPS};
use common::{cname, Harness};
use vm_memory::ByteValued;

fn am_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
}

fn hex(status: &str, key: &str) -> u64 {
    u64::from_str_radix(field(status, key), 16).unwrap()
}

/// The pid of the ax-fsd serving `socket` (its command line names the socket path).
fn fsd_pid(socket: &Path) -> u32 {
    let needle = socket.as_os_str().as_bytes();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.windows(needle.len()).any(|w| w == needle)
            && cmd.starts_with(env!("CARGO_BIN_EXE_ax-fsd").as_bytes())
        {
            return pid;
        }
    }
    panic!("no ax-fsd process for {}", socket.display());
}

struct Dirs {
    _t: tempfile::TempDir,
    work: PathBuf,
    lower: PathBuf,
    upper: PathBuf,
    journal: PathBuf,
}

fn dirs() -> Dirs {
    let t = tempfile::tempdir().unwrap();
    let (work, lower, upper) = (t.path().join("w"), t.path().join("l"), t.path().join("u"));
    for d in [&work, &lower.join("d"), &upper] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(lower.join("a.txt"), b"lower a\n").unwrap();
    // Sparse: 4 KiB of data at 0 and at 512 KiB, 1 MiB long.
    let f = std::fs::File::create(lower.join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[b'x'; 4096], 0).unwrap();
    f.write_all_at(&[b'y'; 4096], 512 << 10).unwrap();
    f.set_len(1 << 20).unwrap();
    let journal = t.path().join("journal");
    Dirs {
        work,
        lower,
        upper,
        journal,
        _t: t,
    }
}

fn spawn(d: &Dirs, extra: &[&str]) -> Harness {
    let mut args = vec![OsString::from("--lower"), d.lower.clone().into_os_string()];
    args.extend(extra.iter().map(OsString::from));
    let mut h = Harness::spawn_lower(&d.work, &args, &d.upper, Some(&d.journal));
    h.init();
    h
}

#[test]
fn running_jailed_fsd_shows_seccomp_nnp_kept_caps_and_namespaces() {
    let d = dirs();
    let mut h = spawn(&d, &[]);
    // Work on the request queue, so the vring worker has run FUSE ops.
    let (e, fh) = h.create(ROOT_ID, b"new.txt", 0o644).unwrap();
    assert_eq!(h.write(e.nodeid, fh, 0, b"hi").unwrap(), 2);
    h.release(e.nodeid, fh);
    let pid = fsd_pid(&h.socket);
    // The socket file is gone once the frontend is connected: nobody else can connect.
    assert!(!h.socket.exists(), "socket file left after the jail");
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let kept = KEPT_CAPS.iter().fold(0u64, |m, c| m | (1 << c));
    let want_eff = hex(&ours, "CapEff") & kept;
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let s = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let name = field(&s, "Name").to_string();
        assert_eq!(field(&s, "Seccomp"), "2", "thread {name}: {s}");
        assert_eq!(field(&s, "Seccomp_filters"), "2", "thread {name}: {s}");
        assert_eq!(field(&s, "NoNewPrivs"), "1", "thread {name}");
        assert_eq!(hex(&s, "CapEff"), want_eff, "thread {name}: {s}");
        assert_eq!(hex(&s, "CapPrm"), want_eff, "thread {name}: {s}");
        assert_eq!(hex(&s, "CapInh"), 0, "thread {name}");
        assert_eq!(hex(&s, "CapAmb"), 0, "thread {name}");
        if am_root() {
            assert_eq!(
                hex(&s, "CapBnd"),
                hex(&ours, "CapBnd") & kept,
                "thread {name}"
            );
        }
        names.push(name);
    }
    names.sort();
    // Main thread, vhost-user-backend's request handler (named after the daemon) and one
    // vring worker (both queues on one thread).
    assert_eq!(names, ["ax-fsd", "ax-fsd", "vring_worker"], "{names:?}");
    if am_root() {
        assert_ne!(want_eff, 0);
        for ns in ["ipc", "uts"] {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            assert_ne!(theirs, ours, "{ns} namespace not unshared");
        }
    } else {
        println!(
            "SKIP (part): capabilities and namespaces need root; checked: seccomp, NoNewPrivs"
        );
    }
    assert!(h.shutdown().success());
    let journal = std::fs::read_to_string(&d.journal).unwrap();
    assert!(journal.contains("\"new.txt\""), "{journal}");

    // --no-jail: none of it (and the socket file stays until exit).
    let d = dirs();
    let h = spawn(&d, &["--no-jail"]);
    let pid = fsd_pid(&h.socket);
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(field(&s, "Seccomp"), "0", "{s}");
    assert!(h.socket.exists());
    assert!(std::fs::read_to_string(&h.stderr)
        .unwrap()
        .contains("WITHOUT the jail"));
    assert!(h.shutdown().success());
}

fn call(h: &mut Harness, op: u32, ino: u64, body: &[u8]) -> Result<Vec<u8>, i32> {
    h.call(op, ino, body)
}

fn setattr(h: &mut Harness, ino: u64, s: abi::SetattrIn) -> Result<abi::Attr, i32> {
    let b = call(h, opcode::SETATTR, ino, s.as_slice())?;
    Ok(read_struct::<abi::AttrOut>(&b).unwrap().0.attr)
}

fn lseek(h: &mut Harness, ino: u64, fh: u64, offset: u64, whence: i32) -> Result<u64, i32> {
    let l = abi::LseekIn {
        fh,
        offset,
        whence: whence as u32,
        padding: 0,
    };
    let b = call(h, opcode::LSEEK, ino, l.as_slice())?;
    Ok(read_struct::<abi::LseekOut>(&b).unwrap().0.offset)
}

fn mknod(h: &mut Harness, name: &[u8], mode: u32, rdev: u32) -> Result<u64, i32> {
    let m = abi::MknodIn {
        mode,
        rdev,
        umask: 0,
        padding: 0,
    };
    let mut body = m.as_slice().to_vec();
    body.extend_from_slice(&cname(name));
    let b = call(h, opcode::MKNOD, ROOT_ID, &body)?;
    Ok(read_struct::<abi::EntryOut>(&b).unwrap().0.nodeid)
}

/// Runs FUSE ops the other suites do not, returning one line per op (the reply, or errno).
fn op_tour(h: &mut Harness) -> Vec<String> {
    let mut out = Vec::new();
    let mut log = |what: &str, r: Result<String, i32>| {
        out.push(match r {
            Ok(v) => format!("{what}: ok {v}"),
            Err(e) => format!("{what}: errno {e}"),
        })
    };
    // Copy-up of a sparse lower file (SEEK_DATA/SEEK_HOLE), then lseek on the copy.
    let sp = h.lookup(ROOT_ID, b"sparse").unwrap().nodeid;
    let fh = h.open(sp, libc::O_RDWR).unwrap();
    log(
        "lseek data",
        lseek(h, sp, fh, 4096, libc::SEEK_DATA).map(|o| o.to_string()),
    );
    log(
        "lseek hole",
        lseek(h, sp, fh, 0, libc::SEEK_HOLE).map(|o| o.to_string()),
    );
    log(
        "read after copy-up",
        h.read(sp, fh, 512 << 10, 8)
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
    );
    let fa = abi::FallocateIn {
        fh,
        offset: 1 << 20,
        length: 64 << 10,
        mode: 0,
        padding: 0,
    };
    log(
        "fallocate",
        call(h, opcode::FALLOCATE, sp, fa.as_slice()).map(|_| String::new()),
    );
    log("size", h.getattr(sp).map(|a| a.size.to_string()));
    let fs = abi::FsyncIn {
        fh,
        fsync_flags: 0,
        padding: 0,
    };
    log(
        "fsync",
        call(h, opcode::FSYNC, sp, fs.as_slice()).map(|_| String::new()),
    );
    let fl = abi::FlushIn {
        fh,
        ..Default::default()
    };
    log(
        "flush",
        call(h, opcode::FLUSH, sp, fl.as_slice()).map(|_| String::new()),
    );
    h.release(sp, fh);
    // SETATTR: truncate, chown, explicit times, chmod.
    let a = h.lookup(ROOT_ID, b"a.txt").unwrap().nodeid;
    let t = abi::SetattrIn {
        valid: abi::fattr::SIZE,
        size: 3,
        ..Default::default()
    };
    log("truncate", setattr(h, a, t).map(|a| a.size.to_string()));
    let c = abi::SetattrIn {
        valid: abi::fattr::UID | abi::fattr::GID,
        uid: 1234,
        gid: 5678,
        ..Default::default()
    };
    log(
        "chown",
        setattr(h, a, c).map(|a| format!("{}:{}", a.uid, a.gid)),
    );
    let u = abi::SetattrIn {
        valid: abi::fattr::ATIME | abi::fattr::MTIME,
        atime: 1_000_000,
        mtime: 2_000_000,
        ..Default::default()
    };
    log(
        "utimes",
        setattr(h, a, u).map(|a| format!("{} {}", a.atime, a.mtime)),
    );
    let m = abi::SetattrIn {
        valid: abi::fattr::MODE,
        mode: 0o2750,
        ..Default::default()
    };
    log("chmod", setattr(h, a, m).map(|a| format!("{:o}", a.mode)));
    let acc = abi::AccessIn {
        mask: libc::R_OK as u32,
        padding: 0,
    };
    log(
        "access",
        call(h, opcode::ACCESS, a, acc.as_slice()).map(|_| String::new()),
    );
    // xattrs on the copied-up file.
    let sx = abi::SetxattrIn { size: 3, flags: 0 };
    let mut body = sx.as_slice().to_vec();
    body.extend_from_slice(&cname(b"user.ax"));
    body.extend_from_slice(b"val");
    log(
        "setxattr",
        call(h, opcode::SETXATTR, a, &body).map(|_| String::new()),
    );
    let gx = abi::GetxattrIn {
        size: 64,
        padding: 0,
    };
    let mut body = gx.as_slice().to_vec();
    body.extend_from_slice(&cname(b"user.ax"));
    log(
        "getxattr",
        call(h, opcode::GETXATTR, a, &body).map(|b| String::from_utf8_lossy(&b).into_owned()),
    );
    log(
        "listxattr",
        call(h, opcode::LISTXATTR, a, gx.as_slice())
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
    );
    log(
        "removexattr",
        call(h, opcode::REMOVEXATTR, a, &cname(b"user.ax")).map(|_| String::new()),
    );
    // RENAME2 with RENAME_NOREPLACE: onto a free name, then onto a taken one.
    let d = h.lookup(ROOT_ID, b"d").unwrap().nodeid;
    let rn = |h: &mut Harness, old: &[u8], new: &[u8]| {
        let r = abi::Rename2In {
            newdir: d,
            flags: libc::RENAME_NOREPLACE,
            padding: 0,
        };
        let mut body = r.as_slice().to_vec();
        body.extend_from_slice(&cname(old));
        body.extend_from_slice(&cname(new));
        call(h, opcode::RENAME2, ROOT_ID, &body).map(|_| String::new())
    };
    log("rename noreplace", rn(h, b"a.txt", b"b.txt"));
    let (e, fh) = h.create(ROOT_ID, b"c.txt", 0o600).unwrap();
    h.release(e.nodeid, fh);
    log("rename noreplace onto existing", rn(h, b"c.txt", b"b.txt"));
    // Hard link, device nodes, a FIFO.
    let l = abi::LinkIn {
        oldnodeid: e.nodeid,
    };
    let mut body = l.as_slice().to_vec();
    body.extend_from_slice(&cname(b"c.link"));
    log(
        "link",
        call(h, opcode::LINK, ROOT_ID, &body).map(|b| {
            read_struct::<abi::EntryOut>(&b)
                .unwrap()
                .0
                .attr
                .nlink
                .to_string()
        }),
    );
    log(
        "mknod fifo",
        mknod(h, b"fifo", libc::S_IFIFO | 0o644, 0).map(|_| String::new()),
    );
    log(
        "mknod chr",
        mknod(h, b"null", libc::S_IFCHR | 0o644, (1 << 8) | 3).map(|_| String::new()),
    );
    // Whiteouts: unlink a lower file, rmdir a lower dir after emptying it.
    log("unlink lower", h.unlink(d, b"b.txt").map(|_| String::new()));
    log("rmdir lower", h.rmdir(ROOT_ID, b"d").map(|_| String::new()));
    log(
        "mkdir over whiteout",
        h.mkdir(ROOT_ID, b"d", 0o755).map(|_| String::new()),
    );
    log(
        "statfs",
        call(h, opcode::STATFS, ROOT_ID, &[]).map(|b| {
            let s = read_struct::<abi::StatfsOut>(&b).unwrap().0.st;
            format!("namelen {}", s.namelen)
        }),
    );
    let b = call(
        h,
        opcode::OPENDIR,
        ROOT_ID,
        abi::OpenIn::default().as_slice(),
    )
    .unwrap();
    let dfh = read_struct::<abi::OpenOut>(&b).unwrap().0.fh;
    let fs = abi::FsyncIn {
        fh: dfh,
        fsync_flags: 0,
        padding: 0,
    };
    log(
        "fsyncdir",
        call(h, opcode::FSYNCDIR, ROOT_ID, fs.as_slice()).map(|_| String::new()),
    );
    log("readdir", Ok(h.names(ROOT_ID).join(",")));
    out
}

#[test]
fn fuse_ops_reply_the_same_jailed_and_unjailed() {
    let free = {
        let d = dirs();
        let mut h = spawn(&d, &["--no-jail"]);
        let r = op_tour(&mut h);
        assert!(h.shutdown().success());
        r
    };
    let d = dirs();
    let mut h = spawn(&d, &[]);
    let jailed = op_tour(&mut h);
    let st = h.shutdown();
    assert!(st.success(), "jailed ax-fsd: {st}");
    assert_eq!(jailed, free);
    // And the replies are the expected ones (root: chown and device nodes work).
    let ok = |what: &str| {
        jailed
            .iter()
            .find(|l| l.starts_with(&format!("{what}: ")))
            .unwrap_or_else(|| panic!("{what} missing: {jailed:#?}"))
            .clone()
    };
    assert_eq!(ok("size"), "size: ok 1114112");
    assert_eq!(ok("read after copy-up"), "read after copy-up: ok yyyyyyyy");
    assert_eq!(ok("truncate"), "truncate: ok 3");
    assert_eq!(ok("utimes"), "utimes: ok 1000000 2000000");
    assert_eq!(ok("getxattr"), "getxattr: ok val");
    assert_eq!(ok("rename noreplace"), "rename noreplace: ok ");
    assert_eq!(
        ok("rename noreplace onto existing"),
        format!("rename noreplace onto existing: errno {}", libc::EEXIST)
    );
    assert_eq!(ok("link"), "link: ok 2");
    if am_root() {
        assert_eq!(ok("chown"), "chown: ok 1234:5678");
        assert_eq!(ok("chmod"), "chmod: ok 102750");
        assert_eq!(ok("mknod chr"), "mknod chr: ok ");
        assert_eq!(ok("mkdir over whiteout"), "mkdir over whiteout: ok ");
    }
    for l in &jailed {
        assert!(
            !l.contains("errno") || l.starts_with("rename noreplace onto existing") || !am_root(),
            "{l}"
        );
    }
}

/// Forks a child that jails itself with `policy` (seccomp in kill mode) and runs `checks`,
/// which returns 0 when every check passed or the number of the first that failed; returns
/// the child's wait status. 3 = no Landlock in this kernel.
fn in_jailed_child(policy: &Policy, checks: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child jails itself, makes syscalls and leaves through _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = match ax_fsd::jail::apply(policy) {
            Ok(r) if r.landlock.abi.is_none() => 3,
            Ok(_) => checks(),
            Err(e) => {
                eprintln!("jail: {e}");
                4
            }
        };
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    st
}

/// open(2) of `p`: Ok(fd) or Err(errno).
fn open(p: &Path, flags: i32) -> Result<OwnedFd, i32> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        // SAFETY: fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// renameat(2) (glibc's rename(3) would use rename(2), which the allowlist lacks).
fn rename(from: &Path, to: &Path) -> Result<(), i32> {
    let (f, t) = (
        CString::new(from.as_os_str().as_bytes()).unwrap(),
        CString::new(to.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: NUL-terminated paths.
    let r = unsafe { libc::renameat(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr()) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

fn proc_fd(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn expect_status(st: i32, what: &str) {
    if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 3 {
        println!("SKIP: {what}: no Landlock in this kernel");
        return;
    }
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "{what}: child status {st:#x} (exit {} = number of the failed check; 4 = jail error)",
        libc::WEXITSTATUS(st)
    );
}

#[test]
fn jailed_process_opens_its_layers_and_nothing_else() {
    let d = dirs();
    let outside = d.work.join("secret");
    std::fs::write(&outside, b"secret").unwrap();
    std::fs::write(&d.journal, b"").unwrap();
    std::fs::write(d.upper.join("up.txt"), b"up").unwrap();
    // O_PATH fds opened before the jail, as the union holds them.
    let outside_path = open(&outside, libc::O_PATH).unwrap();
    let upper_path = open(&d.upper.join("up.txt"), libc::O_PATH).unwrap();
    let lower_path = open(&d.lower.join("a.txt"), libc::O_PATH).unwrap();
    let policy = Policy {
        read_only: vec![d.lower.clone()],
        read_write: vec![d.upper.clone()],
        files: vec![d.journal.clone()],
        ..Policy::default()
    };
    let eacces = Err(libc::EACCES);
    let st = in_jailed_child(&policy, || {
        let checks: Vec<Box<dyn Fn() -> bool>> = vec![
            // 1: read a lower file
            Box::new(|| open(&d.lower.join("a.txt"), libc::O_RDONLY).is_ok()),
            // 2: never write one
            Box::new(|| open(&d.lower.join("a.txt"), libc::O_WRONLY).map(drop) == eacces),
            // 3: nor create in lower
            Box::new(|| {
                open(&d.lower.join("new"), libc::O_WRONLY | libc::O_CREAT).map(drop) == eacces
            }),
            // 4: create, write, rename in upper
            Box::new(|| {
                open(&d.upper.join("n"), libc::O_WRONLY | libc::O_CREAT).is_ok()
                    && rename(&d.upper.join("n"), &d.upper.join("m")) == Ok(())
                    && rename(&d.upper.join("m"), &d.lower.join("m")).is_err()
            }),
            // 5: the journal is writable
            Box::new(|| open(&d.journal, libc::O_WRONLY | libc::O_APPEND).is_ok()),
            // 6: nothing outside: a file next to the layers, /etc/passwd, a directory listing
            Box::new(|| {
                open(&outside, libc::O_RDONLY).map(drop) == eacces
                    && open(Path::new("/etc/passwd"), libc::O_RDONLY).map(drop) == eacces
                    && open(&d.work, libc::O_RDONLY | libc::O_DIRECTORY).map(drop) == eacces
            }),
            // 7: /proc/self/fd/N reopens the inode behind N, and Landlock checks that inode:
            //    in upper read-write, in lower read-only, outside nothing.
            Box::new(|| {
                open(&proc_fd(&upper_path), libc::O_RDWR).is_ok()
                    && open(&proc_fd(&lower_path), libc::O_RDONLY).is_ok()
                    && open(&proc_fd(&lower_path), libc::O_RDWR).map(drop) == eacces
                    && open(&proc_fd(&outside_path), libc::O_RDONLY).map(drop) == eacces
            }),
        ];
        for (i, c) in checks.iter().enumerate() {
            if !c() {
                return i as i32 + 10;
            }
        }
        0
    });
    expect_status(st, "jailed_process_opens_its_layers_and_nothing_else");
    assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
    assert!(
        d.upper.join("m").exists(),
        "the child's upper rename happened"
    );
}

#[test]
fn git_lower_jail_reads_object_dirs_only() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(&repo)
            .args(args)
            .output()
            .expect("git");
        assert!(o.status.success(), "git {args:?}: {o:?}");
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("f"), b"x").unwrap();
    git(&["add", "f"]);
    git(&["commit", "-qm", "c"]);
    let gitdir = repo.join(".git");
    let upper = t.path().join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    let objects = ax_fsd::jail::git_object_dirs(&gitdir, None);
    assert_eq!(objects, [gitdir.join("objects").canonicalize().unwrap()]);
    let policy = Policy {
        read_only: objects,
        read_write: vec![upper],
        ..Policy::default()
    };
    let st = in_jailed_child(&policy, || {
        let eacces = Err(libc::EACCES);
        if open(&gitdir.join("objects"), libc::O_RDONLY | libc::O_DIRECTORY).is_err() {
            return 10;
        }
        // The repository's config (remote URLs, maybe credentials), refs, hooks: not readable.
        for p in ["config", "HEAD", "hooks"] {
            if open(&gitdir.join(p), libc::O_RDONLY).map(drop) != eacces {
                return 11;
            }
        }
        if open(&repo.join("f"), libc::O_RDONLY).map(drop) != eacces {
            return 12;
        }
        0
    });
    expect_status(st, "git_lower_jail_reads_object_dirs_only");
}

/// Exit status of a jailed child that makes one raw syscall.
fn syscall_in_jail(nr: i64, a: [usize; 3]) -> i32 {
    let d = dirs();
    let policy = Policy {
        read_only: vec![d.lower.clone()],
        read_write: vec![d.upper.clone()],
        ..Policy::default()
    };
    in_jailed_child(&policy, || {
        // SAFETY: raw syscalls with integer arguments (NULL pointers); refused or failing.
        let r = unsafe { libc::syscall(nr, a[0], a[1], a[2]) };
        i32::from(r < 0) // reached only if the filter let it through
    })
}

#[test]
fn syscalls_outside_the_allowlist_kill_the_process() {
    let killed = |st: i32| libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS;
    for (name, nr, args) in [
        ("socket", libc::SYS_socket, [libc::AF_UNIX as usize, 1, 0]),
        ("execve", libc::SYS_execve, [0, 0, 0]),
        ("ptrace", libc::SYS_ptrace, [0, 0, 0]),
        ("mount", libc::SYS_mount, [0, 0, 0]),
        (
            "unshare",
            libc::SYS_unshare,
            [libc::CLONE_NEWNS as usize, 0, 0],
        ),
        (
            "ioctl TCGETS",
            libc::SYS_ioctl,
            [0, libc::TCGETS as usize, 0],
        ),
        ("kill", libc::SYS_kill, [1, 0, 0]),
        (
            "clone without CLONE_THREAD (fork)",
            libc::SYS_clone,
            [libc::SIGCHLD as usize, 0, 0],
        ),
    ] {
        let st = syscall_in_jail(nr, args);
        assert!(killed(st), "{name}: not killed (status {st:#x})");
    }
    // Allowed calls pass (getpid), clone3 fails softly with ENOSYS.
    let st = syscall_in_jail(libc::SYS_getpid, [0, 0, 0]);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "getpid: {st:#x}"
    );
    let st = syscall_in_jail(libc::SYS_clone3, [0, 0, 0]);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 1,
        "clone3: {st:#x}"
    );
}

#[test]
fn seccomp_mode_flag() {
    // --seccomp log is accepted, a bad mode is a usage error (exit 2).
    let d = dirs();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ax-fsd"))
        .args(["--socket"])
        .arg(d.work.join("s.sock"))
        .arg("--lower")
        .arg(&d.lower)
        .arg("--upper")
        .arg(&d.upper)
        .args(["--seccomp", "trap"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let mut h = spawn(&d, &["--seccomp", "log"]);
    assert!(h.lookup(ROOT_ID, b"a.txt").is_ok());
    assert!(h.shutdown().success());
}
