//! The jail (docs/jail.md): guests behave the same jailed and unjailed, a running jailed
//! VMM shows seccomp, no_new_privs and no capabilities in /proc on every thread, and the
//! filters really kill a forbidden syscall (checked in forked children, which install a
//! filter and then make the call). Guest tests need /dev/kvm and print a loud SKIP line
//! without it.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ax_vmm::jail::{seccomp, SeccompMode, ThreadKind};
use common::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn serial_hello_is_the_same_jailed_and_unjailed() {
    if skip_without_kvm("serial_hello_is_the_same_jailed_and_unjailed") {
        return;
    }
    let g = guest("serial_hello");
    for cpus in ["1", "2"] {
        let base = ["--memory-mib", "32", "--cpus", cpus];
        let (free_code, free_out, free_err) = boot(&g, &[&base[..], &["--no-jail"]].concat(), T);
        let (code, out, err) = boot(&g, &[&base[..], &["--log-level", "debug"]].concat(), T);
        // A missing syscall kills the process with SIGSYS: no exit code at all.
        assert_eq!(code, Some(0), "jailed: {err}");
        assert_eq!(free_code, Some(0), "unjailed: {free_err}");
        assert_eq!(out, "hello from guest\n");
        assert_eq!(out, free_out);
        assert!(
            err.contains("jail: seccomp per thread (kill on violation)"),
            "{err}"
        );
        assert!(err.contains("clean shutdown"), "{err}");
        assert!(free_err.contains("jail off"), "{free_err}");
    }
}

#[test]
fn serial_to_a_file_works_in_the_jail() {
    if skip_without_kvm("serial_to_a_file_works_in_the_jail") {
        return;
    }
    // The file is opened during setup; Landlock checks at open time, so writes go through.
    let g = guest("serial_hello");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("console.log");
    let serial = format!("file:{}", f.display());
    let (code, _, err) = boot(&g, &["--serial", &serial], T);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "hello from guest\n");
}

#[test]
fn seccomp_log_mode_and_config_switch() {
    if skip_without_kvm("seccomp_log_mode_and_config_switch") {
        return;
    }
    let g = guest("serial_hello");
    let (code, _, err) = boot(&g, &["--seccomp", "log", "--log-level", "debug"], T);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("LOG ONLY on violation"), "{err}");
    let (code, _, err) = boot(&g, &["--seccomp", "trap"], T);
    assert_eq!(code, Some(2), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vm.toml");
    std::fs::write(
        &cfg,
        format!("kernel = {g:?}\njail = false\nseccomp = \"log\"\n"),
    )
    .unwrap();
    let o = run_vmm(&["--config", cfg.to_str().unwrap(), "--print-config"], T);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["jail"], false);
    assert_eq!(json["seccomp"], "log");
    let o = run_vmm(&["--config", cfg.to_str().unwrap()], T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("jail off"), "{}", stderr(&o));
}

/// `Key:\tvalue` from a /proc status file.
fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
}

fn am_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn running_jailed_vmm_shows_seccomp_nnp_and_no_capabilities() {
    if skip_without_kvm("running_jailed_vmm_shows_seccomp_nnp_and_no_capabilities") {
        return;
    }
    // The idle guest prints "idle\n" and then sleeps in HLT forever.
    let g = guest("idle");
    // A disk, so the VM has a virtio device and the jail starts its spawner thread (the
    // idle guest never activates it).
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, [0u8; 4096]).unwrap();
    let mut child = Command::new(VMM)
        .args([
            "--kernel",
            g.to_str().unwrap(),
            "--memory-mib",
            "16",
            "--cpus",
            "2",
            "--block",
            img.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 5];
    child.stdout.take().unwrap().read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"idle\n");
    let pid = child.id();
    // The main thread installs its filter right after starting the vCPUs, the spawner as
    // soon as it is scheduled: wait until every thread shows it.
    let all_filtered = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("status")).ok())
            .all(|s| field(&s, "Seccomp") == "2")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all_filtered() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(field(&status, "Seccomp"), "2", "{status}");
    assert_eq!(field(&status, "NoNewPrivs"), "1", "{status}");
    assert_eq!(field(&status, "CapEff"), "0000000000000000", "{status}");
    assert_eq!(field(&status, "CapPrm"), "0000000000000000", "{status}");
    assert_eq!(field(&status, "CapInh"), "0000000000000000", "{status}");
    assert_eq!(field(&status, "CapAmb"), "0000000000000000", "{status}");
    if am_root() {
        assert_eq!(field(&status, "CapBnd"), "0000000000000000", "{status}");
        // New ipc and uts namespaces (root only).
        for ns in ["ipc", "uts"] {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            assert_ne!(theirs, ours, "{ns} namespace not unshared");
        }
    }
    // Every thread: main, two vCPUs, the spawner; each with its allowlist and the
    // soft-deny filter (KVM's kernel worker, if any, inherits them from its vCPU).
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let s = std::fs::read_to_string(t.join("status")).unwrap();
        let name = field(&s, "Name").to_string();
        assert_eq!(field(&s, "Seccomp"), "2", "thread {name}: {s}");
        assert_eq!(field(&s, "Seccomp_filters"), "2", "thread {name}: {s}");
        assert_eq!(field(&s, "NoNewPrivs"), "1", "thread {name}");
        assert_eq!(field(&s, "CapEff"), "0000000000000000", "thread {name}");
        names.push(name);
    }
    names.sort();
    // KVM may add its own kernel worker to the process (kvm-nx-lpage-recovery, from the
    // first KVM_RUN on newer kernels): it runs kernel code only.
    names.retain(|n| !n.starts_with("kvm-"));
    assert_eq!(names, ["ax-vmm", "jail-spawner", "vcpu0", "vcpu1"]);
    let _ = child.kill();
    let _ = child.wait();
}

/// Forks a child that installs the soft-deny filter and `kind`'s allowlist in `mode`, then
/// runs `call`; returns the child's wait status. The programs are compiled before the fork,
/// so the child only makes syscalls.
fn in_jailed_child(kind: ThreadKind, mode: SeccompMode, call: impl FnOnce() -> i64) -> i32 {
    let soft = seccomp::soft_deny().unwrap();
    let prog = seccomp::filter(kind, mode).unwrap();
    // SAFETY: the child makes raw syscalls only and leaves through _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if seccomp::install(&soft).is_err() || seccomp::install(&prog).is_err() {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(100) };
        }
        let r = call();
        // SAFETY: as above. 0 = the call returned (allowed or errno), 1 = it failed.
        unsafe { libc::_exit(if r >= 0 { 0 } else { 1 }) };
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    st
}

fn killed_by_sigsys(st: i32) -> bool {
    libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS
}

fn exited(st: i32) -> Option<i32> {
    libc::WIFEXITED(st).then(|| libc::WEXITSTATUS(st))
}

fn openat_etc_passwd() -> i64 {
    // SAFETY: a NUL-terminated path; the returned fd (if any) is left to _exit.
    unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/etc/passwd".as_ptr(),
            libc::O_RDONLY,
        )
    }
}

#[test]
fn every_filter_kills_openat_with_sigsys() {
    for kind in ThreadKind::ALL {
        let st = in_jailed_child(kind, SeccompMode::Kill, openat_etc_passwd);
        assert!(
            killed_by_sigsys(st),
            "{kind:?}: openat was not killed (status {st:#x})"
        );
        // An allowed syscall passes.
        let st = in_jailed_child(kind, SeccompMode::Kill, || {
            // SAFETY: getpid has no preconditions.
            unsafe { libc::syscall(libc::SYS_getpid) }
        });
        assert_eq!(
            exited(st),
            Some(0),
            "{kind:?}: getpid refused (status {st:#x})"
        );
    }
}

#[test]
fn log_mode_lets_the_syscall_through() {
    let st = in_jailed_child(ThreadKind::Vcpu, SeccompMode::Log, openat_etc_passwd);
    assert_eq!(exited(st), Some(0), "status {st:#x}");
}

#[test]
fn argument_filters_ioctl_socket_clone3() {
    use ax_vmm::jail::seccomp::kvm_ioctl::KVM_RUN;
    // vCPU: KVM_RUN on a bad fd is allowed (EBADF); KVM_CREATE_VM (0xae01) is not.
    let st = in_jailed_child(ThreadKind::Vcpu, SeccompMode::Kill, || {
        // SAFETY: ioctl on an invalid fd only fails.
        let r = unsafe { libc::syscall(libc::SYS_ioctl, -1, KVM_RUN, 0) };
        i64::from(r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF))
            - 1
    });
    assert_eq!(exited(st), Some(0), "KVM_RUN: status {st:#x}");
    let st = in_jailed_child(ThreadKind::Vcpu, SeccompMode::Kill, || {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_ioctl, -1, 0xae01u64, 0) }
    });
    assert!(killed_by_sigsys(st), "KVM_CREATE_VM: status {st:#x}");
    // Device: AF_UNIX sockets only.
    let st = in_jailed_child(ThreadKind::Device, SeccompMode::Kill, || {
        // SAFETY: socket(2) with constant arguments.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) }
    });
    assert_eq!(exited(st), Some(0), "AF_UNIX: status {st:#x}");
    let st = in_jailed_child(ThreadKind::Device, SeccompMode::Kill, || {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) }
    });
    assert!(killed_by_sigsys(st), "AF_INET: status {st:#x}");
    // vCPU: no sockets at all.
    let st = in_jailed_child(ThreadKind::Vcpu, SeccompMode::Kill, || {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) }
    });
    assert!(killed_by_sigsys(st), "vCPU socket: status {st:#x}");
    // Spawner: clone3 fails softly with ENOSYS (glibc then uses clone(2)); executable
    // mappings are refused.
    let st = in_jailed_child(ThreadKind::Spawner, SeccompMode::Kill, || {
        // SAFETY: clone3 with a NULL args pointer; refused before it is read.
        let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
        i64::from(r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
            - 1
    });
    assert_eq!(exited(st), Some(0), "clone3: status {st:#x}");
    let st = in_jailed_child(ThreadKind::Device, SeccompMode::Kill, || {
        // SAFETY: an anonymous mapping; refused by the filter.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        i64::from(p != libc::MAP_FAILED)
    });
    assert!(killed_by_sigsys(st), "PROT_EXEC mmap: status {st:#x}");
}

#[test]
fn landlock_denies_opening_files_but_not_open_fds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let open = std::fs::File::open(&path).unwrap();
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    use std::os::fd::AsRawFd;
    let fd = open.as_raw_fd();
    // SAFETY: the child restricts itself, makes raw syscalls and leaves through _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = match ax_vmm::jail::landlock::restrict(&[]) {
            Ok(o) if o.abi.is_none() => 3,
            Err(_) => 4,
            Ok(_) => {
                let mut b = [0u8; 1];
                // SAFETY: reading one byte from an fd opened before the restriction.
                let r = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), 1, 0) };
                // SAFETY: a NUL-terminated path.
                let o = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY) };
                let errno = std::io::Error::last_os_error().raw_os_error();
                match (r, o, errno) {
                    (1, -1, Some(libc::EACCES)) => 0,
                    (1, _, _) => 1,
                    _ => 2,
                }
            }
        };
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    match exited(st) {
        Some(0) => {}
        Some(3) => println!(
            "SKIP: landlock_denies_opening_files_but_not_open_fds: no Landlock in this kernel"
        ),
        other => panic!(
            "landlock child: {other:?} (1 = open allowed, 2 = open fd unreadable, 4 = error)"
        ),
    }
}

#[test]
fn pathname_unix_sockets_work_from_a_new_network_namespace() {
    if !am_root() {
        println!("SKIP: pathname_unix_sockets_work_from_a_new_network_namespace: needs root (unshare CLONE_NEWNET)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s_1024");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.to_str().unwrap().bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: the child makes raw syscalls only and leaves through _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: raw syscalls on plain data.
        let code = unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                10
            } else {
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let r = libc::connect(
                    s,
                    (&addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as u32,
                );
                let w = libc::write(s, b"hi".as_ptr().cast(), 2);
                if r == 0 && w == 2 {
                    0
                } else {
                    11
                }
            }
        };
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    assert_eq!(
        exited(st),
        Some(0),
        "child status {st:#x} (10 = unshare, 11 = connect)"
    );
    // The connection waits in the backlog with its bytes.
    let (mut conn, _) = listener.accept().unwrap();
    let mut b = [0u8; 2];
    conn.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hi");
}

#[test]
fn virtio_guests_are_the_same_jailed_and_unjailed() {
    if skip_without_kvm("virtio_guests_are_the_same_jailed_and_unjailed") {
        return;
    }
    // Device threads (virtio-blk, started by the jail's spawner on DRIVER_OK) serve the
    // guest under their own filter; the malformed guest drives the error paths too.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data: Vec<u8> = (0..64 * 512u32).map(|i| (i * 7 + i / 512) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    for name in [
        "virtio_probe",
        "virtio_blk",
        "virtio_irq",
        "virtio_malformed",
    ] {
        let g = guest(name);
        let base = ["--memory-mib", "32", "--block", img.to_str().unwrap()];
        let (free_code, free_out, free_err) = boot(&g, &[&base[..], &["--no-jail"]].concat(), T);
        let (code, out, err) = boot(&g, &base, T);
        assert_eq!(
            code, free_code,
            "{name}: jailed stderr:\n{err}\nunjailed stderr:\n{free_err}"
        );
        assert_eq!(code, Some(0), "{name}: {err}");
        assert_eq!(out, free_out, "{name}");
        assert!(!out.is_empty(), "{name}");
    }
}
