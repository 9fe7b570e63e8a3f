//! What the ax-fsd jail allows (docs/jail.md, "The ax-fsd jail"), checked in forked children
//! of this test process that apply `ax_fsd::jail::apply` and then try things: files in the
//! layers open as their rules say, nothing else opens (not even through `/proc/self/fd`), a
//! git lower exposes its object directories only, and syscalls outside the allowlist kill the
//! process with SIGSYS. A kernel without Landlock prints SKIP for the file checks.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ax_fsd::jail::Policy;

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
    for d in [&work, &lower, &upper] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(lower.join("a.txt"), b"lower a\n").unwrap();
    let journal = t.path().join("journal");
    Dirs {
        work,
        lower,
        upper,
        journal,
        _t: t,
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
