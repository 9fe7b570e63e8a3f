//! What the ax-netstack jail allows (docs/jail.md, "The ax-netstack jail"), checked in
//! forked children of this test process that apply `ax_netstack::jail::apply` and then try
//! things: the whole stack serving a guest TCP connection through a `[[route]]` to a
//! loopback server, DNS through the host's getaddrinfo and the audit rows in the ledger, all
//! inside the jail; files outside the ledger and the resolver's configuration refused; TCP
//! bind refused by Landlock (ABI ≥ 4) and by seccomp; syscalls outside the allowlist kill
//! with SIGSYS; with per-thread filters each thread kind (main, tokio, guest I/O) is refused
//! what only another may do. A kernel without Landlock prints SKIP for the Landlock checks.

#[path = "stack_support/mod.rs"]
mod stack_support;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use ax_jail::SeccompMode;
use ax_netstack::config::Config;
use ax_netstack::context::Context;
use ax_netstack::jail::{self, Policy};
use ax_netstack::stack::Netstack;
use smoltcp::socket::tcp::State;
use stack_support::Guest;

/// Forks a child that runs `body` (which returns 0 when every check passed, else the
/// number of the first failed one) and leaves through _exit; returns the wait status.
/// Waits at most 60 s, then kills the child (a hang is a failure, status SIGKILL).
fn in_child(body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `body` and leaves through _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // A panic must not unwind into the test harness of the child.
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(99);
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    for _ in 0..6000 {
        // SAFETY: our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return st;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: our own child, hung.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    st
}

/// Like [`in_child`], the child jailing itself with `policy` first. 3: no Landlock here,
/// 4: the jail failed.
fn in_jailed_child(policy: &Policy, checks: impl FnOnce() -> i32) -> i32 {
    in_child(|| match jail::apply(policy) {
        Ok(r) if r.landlock.abi.is_none() => 3,
        Ok(_) => checks(),
        Err(e) => {
            eprintln!("{e}");
            4
        }
    })
}

fn exit_code(st: i32) -> Option<i32> {
    libc::WIFEXITED(st).then(|| libc::WEXITSTATUS(st))
}

fn killed_by(st: i32) -> Option<i32> {
    libc::WIFSIGNALED(st).then(|| libc::WTERMSIG(st))
}

/// Passes if the child exited 0; SKIP (printed) for 3.
fn expect_ok(what: &str, st: i32) -> bool {
    match exit_code(st) {
        Some(0) => true,
        Some(3) => {
            eprintln!("SKIP: {what}: this kernel has no Landlock");
            false
        }
        other => panic!(
            "{what}: child status {st:#x} (exit {other:?}, signal {:?})",
            killed_by(st)
        ),
    }
}

/// open(2) of `p`: Ok(fd) or Err(errno).
fn open(p: &Path, flags: i32) -> Result<OwnedFd, i32> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        Err(errno())
    } else {
        // SAFETY: fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A loopback server echoing each connection until EOF, on a thread of this process.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 16384];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn the_jailed_stack_proxies_tcp_resolves_names_and_writes_the_ledger() {
    let port = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let toml = format!(
        "agent = \"t\"\n[[route]]\nhost = \"echo.test\"\naddress = \"127.0.0.1:{port}\"\n\
         [meter]\nledger = {:?}\n",
        ledger.to_str().unwrap()
    );
    let st = in_child(|| {
        let ctx = Context::new(Config::parse(&toml, "test").unwrap()).unwrap();
        jail::prepare(&ctx);
        let policy = Policy::for_ledger(ctx.config.meter.ledger.as_deref(), SeccompMode::Kill);
        match jail::apply(&policy) {
            Ok(r) if r.landlock.abi.is_none() => return 3,
            Ok(_) => {}
            Err(e) => {
                eprintln!("{e}");
                return 4;
            }
        }
        let (_ns, gp) = Netstack::start(ctx).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut g = Guest::new(gp);
            // The host's resolver inside the jail (getaddrinfo on a blocking thread).
            let r = g.dns_udp("localhost", 1, 30001).await;
            if stack_support::rcode(&r) != 0 {
                return 10;
            }
            let ip = g.resolve("echo.test").await;
            let h = g.connect(ip, 80, 40000);
            if !g
                .until(10, |g| g.tcp(h).state() == State::Established)
                .await
            {
                return 11;
            }
            let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
            let (mut sent, mut got) = (0, Vec::new());
            let ok = g
                .until(30, |g| {
                    let s = g.tcp(h);
                    if sent < data.len() && s.can_send() {
                        sent += s.send_slice(&data[sent..]).unwrap();
                    }
                    while s.can_recv() {
                        s.recv(|b| {
                            got.extend_from_slice(b);
                            (b.len(), ())
                        })
                        .unwrap();
                    }
                    got.len() == data.len()
                })
                .await;
            if !ok || got != data {
                return 12;
            }
            g.tcp(h).close();
            g.until(10, |g| {
                matches!(g.tcp(h).state(), State::TimeWait | State::Closed)
            })
            .await;
            // The audit row for the connection, read back through SQLite inside the jail.
            for _ in 0..500 {
                let path = Path::new(&ledger);
                if let Ok(Some(l)) = ax_netstack::meter::ledger::Ledger::open_read(path) {
                    if l.connections("t").map(|r| !r.is_empty()).unwrap_or(false) {
                        return 0;
                    }
                }
                g.until(0, |_| false).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            13
        })
    });
    if !expect_ok("jailed stack", st) {
        return;
    }
    let l = ax_netstack::meter::ledger::Ledger::open_read(&ledger)
        .unwrap()
        .expect("the ledger");
    let rows = l.connections("t").unwrap();
    assert!(
        rows.iter().any(|r| r.host.as_deref() == Some("echo.test")),
        "{rows:?}"
    );
}

/// A name that misses /etc/hosts and goes on to the `dns` service (RFC 6761 `.invalid`).
const NO_SUCH_NAME: &str = "ax-netstack-jail-test.invalid";

/// getaddrinfo's outcome as a number: 0 found, 1 no such name, 2 other failure.
fn lookup_kind(name: &str) -> i32 {
    match ax_netstack::stack::dns::host_lookup(name) {
        Ok(_) => 0,
        Err(ax_netstack::stack::dns::Lookup::NoName) => 1,
        Err(_) => 2,
    }
}

#[test]
fn files_outside_the_ledger_and_resolver_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite");
    std::fs::write(&db, b"").unwrap();
    std::fs::write(dir.path().join("ledger.sqlite-wal"), b"").unwrap();
    let policy = Policy::for_ledger(Some(&db), SeccompMode::Kill);
    assert_eq!(policy.read_write_files.len(), 2, "{policy:?}");
    let d = dir.path().to_path_buf();
    let outside = lookup_kind(NO_SUCH_NAME);
    let st = in_jailed_child(&policy, || {
        if open(&db, libc::O_RDWR).is_err() {
            return 10;
        }
        if open(&d.join("ledger.sqlite-wal"), libc::O_RDWR).is_err() {
            return 11;
        }
        // No new file next to the ledger, no removing it.
        if open(
            &d.join("ledger.sqlite-journal"),
            libc::O_RDWR | libc::O_CREAT,
        )
        .err()
            != Some(libc::EACCES)
        {
            return 12;
        }
        let c = CString::new(db.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::unlink(c.as_ptr()) } == 0 || errno() != libc::EACCES {
            return 13;
        }
        if open(Path::new("/etc/passwd"), libc::O_RDONLY).err() != Some(libc::EACCES) {
            return 14;
        }
        if open(Path::new("/etc/hosts"), libc::O_RDONLY).is_err() {
            return 15;
        }
        if open(Path::new("/etc/hosts"), libc::O_WRONLY).err() != Some(libc::EACCES) {
            return 16;
        }
        if open(&d, libc::O_RDONLY | libc::O_DIRECTORY).err() != Some(libc::EACCES) {
            return 17;
        }
        // Randomness (leaf serial numbers, placeholders) comes from getrandom(2), not a
        // file: /dev/urandom is out of reach.
        if ax_netstack::secrets::random_bytes::<16>() == [0; 16] {
            return 20;
        }
        // The host resolver works (files: /etc/hosts) ...
        if ax_netstack::stack::dns::host_lookup("localhost").is_err() {
            return 18;
        }
        // ... also through the `dns` service (resolv.conf, a UDP query to its nameserver):
        // the same outcome as outside the jail for a name no one has.
        if lookup_kind(NO_SUCH_NAME) != outside {
            return 21;
        }
        // ... and a shared library first needed inside the jail (an NSS module of a
        // service reached later) cannot be loaded: refused quietly, no SIGSYS.
        let lib = CString::new("libnss_compat.so.2").unwrap();
        // SAFETY: dlopen of a system library by name.
        if !unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW) }.is_null() {
            return 19;
        }
        0
    });
    expect_ok("file rules", st);
}

fn tcp_bind() -> Result<(), i32> {
    // SAFETY: plain socket calls on a fresh fd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(errno());
        }
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as u16;
        a.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let rc = libc::bind(
            fd,
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        let e = errno();
        libc::close(fd);
        if rc == 0 {
            Ok(())
        } else {
            Err(e)
        }
    }
}

#[test]
fn landlock_refuses_tcp_bind_and_allows_tcp_connect() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let st = in_child(|| {
        let out = match jail::restrict(&Policy::default()) {
            Ok(o) => o,
            Err(_) => return 4,
        };
        if TcpStream::connect(("127.0.0.1", port)).is_err() {
            return 10;
        }
        match out.abi {
            None => 3,
            Some(abi) if abi < 4 => 5,
            Some(_) => {
                if tcp_bind().err() != Some(libc::EACCES) {
                    return 11;
                }
                0
            }
        }
    });
    if exit_code(st) == Some(5) {
        eprintln!("SKIP: Landlock ABI < 4 here: no TCP rules (seccomp still refuses bind)");
        return;
    }
    expect_ok("landlock net", st);
}

/// A named syscall attempt: its result (-2: a setup call failed).
type Probe = (&'static str, fn() -> i64);

/// One syscall in a jailed child; the child's wait status.
fn try_in_jail(f: fn() -> i64) -> i32 {
    in_jailed_child(&Policy::default(), || {
        let r = f();
        if r == -2 {
            return 22;
        }
        if r < 0 && errno() == libc::ENOSYS {
            20
        } else {
            21
        }
    })
}

#[test]
fn syscalls_outside_the_allowlist_kill_and_soft_denied_ones_fail() {
    let kill: [Probe; 9] = [
        ("bind", || tcp_bind().map(|_| 0).unwrap_or(-1)),
        ("execve", || {
            let p = CString::new("/bin/true").unwrap();
            let argv = [p.as_ptr(), std::ptr::null()];
            // SAFETY: valid path and NULL-terminated argv/envp.
            unsafe { libc::execve(p.as_ptr(), argv.as_ptr(), argv[1..].as_ptr()) as i64 }
        }),
        // SAFETY (all below): the calls take integer or NULL arguments only.
        ("ptrace", || unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0)
        }),
        ("mount", || unsafe {
            libc::mount(
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null(),
                0,
                std::ptr::null(),
            ) as i64
        }),
        ("unshare", || unsafe {
            libc::unshare(libc::CLONE_NEWNS) as i64
        }),
        ("fork", || unsafe { libc::syscall(libc::SYS_fork) }),
        ("listen", || unsafe { libc::listen(0, 1) as i64 }),
        ("socket(AF_PACKET)", || unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) as i64
        }),
        ("mmap(PROT_EXEC)", || unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as i64
        }),
    ];
    for (what, f) in kill {
        let st = try_in_jail(f);
        if exit_code(st) == Some(3) {
            eprintln!("SKIP: {what}: no Landlock, the jail is not applied in full");
            continue;
        }
        assert_eq!(killed_by(st), Some(libc::SIGSYS), "{what}: status {st:#x}");
    }
    let soft: [Probe; 3] = [
        // SAFETY (all): integer arguments / a zeroed clone_args.
        ("socket(AF_UNIX)", || unsafe {
            libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64
        }),
        ("socket(AF_NETLINK)", || unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) as i64
        }),
        ("clone3", || unsafe {
            let args = [0u64; 11];
            libc::syscall(libc::SYS_clone3, args.as_ptr(), 88)
        }),
    ];
    for (what, f) in soft {
        let st = try_in_jail(f);
        if exit_code(st) == Some(3) {
            continue;
        }
        assert_eq!(
            exit_code(st),
            Some(20),
            "{what}: ENOSYS expected, status {st:#x}"
        );
    }
    // Allowed: a TCP and a UDP socket, getpid.
    let st = try_in_jail(|| unsafe {
        // SAFETY: integer arguments.
        let a = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let b = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0);
        if a < 0 || b < 0 {
            -2
        } else {
            libc::getpid() as i64
        }
    });
    if exit_code(st) != Some(3) {
        assert_eq!(exit_code(st), Some(21), "allowed calls: status {st:#x}");
    }
}

/// A TCP socket, closed again: 0 when it was made.
fn tcp_socket() -> i32 {
    // SAFETY: integer arguments; the fd is closed again.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return 1;
        }
        libc::close(fd);
    }
    0
}

/// accept4(2) on no socket: EBADF where allowed.
fn accept4_nothing() -> i32 {
    // SAFETY: an invalid fd and NULL address: fails with EBADF if the filter lets it through.
    let r = unsafe { libc::accept4(-1, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
    i32::from(r >= 0)
}

/// Where a probe runs in [`probe_in_thread_kind`].
#[derive(Clone, Copy, Debug)]
enum Where {
    /// The main thread after `jail::enter_main`.
    Main,
    /// A task on the stack's runtime (a tokio worker, entered by `on_thread_start`).
    TokioWorker,
    /// `spawn_blocking` from such a task (a blocking-pool thread started by a worker: it
    /// keeps the worker's filter).
    TokioBlocking,
    /// A thread that entered the guest I/O filter (the netdev stream's writer, the vring
    /// worker).
    GuestIo,
}

/// In a forked child jailed with per-thread filters, with the stack running: `probe` on a
/// thread of the kind `at`; the child exits with its value (99: it panicked). Returns the
/// wait status.
fn probe_in_thread_kind(at: Where, probe: fn() -> i32) -> i32 {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "agent = \"t\"\n[meter]\nledger = {:?}\n",
        dir.path().join("ledger.sqlite").to_str().unwrap()
    );
    in_child(|| {
        let ctx = Context::new(Config::parse(&toml, "test").unwrap()).unwrap();
        jail::prepare(&ctx);
        let mut policy = Policy::for_ledger(ctx.config.meter.ledger.as_deref(), SeccompMode::Kill);
        policy.per_thread_filters = true;
        match jail::apply(&policy) {
            Ok(r) if r.landlock.abi.is_none() => return 3,
            Ok(_) => {}
            Err(e) => {
                eprintln!("{e}");
                return 4;
            }
        }
        // The binary's order: the stack's threads, the guest I/O thread, then the main
        // thread's own filter.
        let (ns, _gp) = Netstack::start(ctx).unwrap();
        let guest = std::thread::spawn(move || {
            jail::enter_guest_io();
            if matches!(at, Where::GuestIo) {
                probe()
            } else {
                0
            }
        });
        if jail::enter_main().is_err() {
            return 6;
        }
        let rt = ns.runtime();
        let (tx, rx) = std::sync::mpsc::channel();
        match at {
            Where::Main => return probe(),
            Where::GuestIo => return guest.join().unwrap_or(99),
            Where::TokioWorker => {
                rt.spawn(async move { tx.send(probe()) });
            }
            Where::TokioBlocking => {
                rt.spawn(async move {
                    let r = tokio::task::spawn_blocking(probe).await.unwrap_or(99);
                    tx.send(r)
                });
            }
        }
        rx.recv_timeout(Duration::from_secs(20)).unwrap_or(98)
    })
}

#[test]
fn per_thread_filters_refuse_each_kind_what_only_another_may_do() {
    use Where::*;
    let sigsys = |st: i32| killed_by(st) == Some(libc::SIGSYS);
    // TCP sockets: tokio's threads only.
    for at in [TokioWorker, TokioBlocking] {
        let st = probe_in_thread_kind(at, tcp_socket);
        if exit_code(st) == Some(3) {
            eprintln!("SKIP: no Landlock here, the jail is not applied in full");
            return;
        }
        assert_eq!(exit_code(st), Some(0), "socket on {at:?}: status {st:#x}");
    }
    for at in [Main, GuestIo] {
        let st = probe_in_thread_kind(at, tcp_socket);
        assert!(sigsys(st), "socket on {at:?}: status {st:#x}");
    }
    // accept4 (the frontend's connection): the main thread only.
    let st = probe_in_thread_kind(Main, accept4_nothing);
    assert_eq!(
        exit_code(st),
        Some(0),
        "accept4 on the main thread: status {st:#x}"
    );
    for at in [TokioWorker, TokioBlocking, GuestIo] {
        let st = probe_in_thread_kind(at, accept4_nothing);
        assert!(sigsys(st), "accept4 on {at:?}: status {st:#x}");
    }
}

/// In a forked child: the stack for `toml` (jailed first if `jailed`), one guest connection
/// to the echo route, `total` bytes sent and echoed back, pumped as fast as frames come
/// (waiting on the RX eventfd when idle). Writes MB/s (bytes each way / s) as 8 bytes to
/// `out`; exit 0, or the number of the failed step.
fn echo_throughput(toml: &str, jailed: bool, total: usize, out: i32) -> i32 {
    let ctx = Context::new(Config::parse(toml, "test").unwrap()).unwrap();
    if jailed {
        jail::prepare(&ctx);
        let policy = Policy::for_ledger(ctx.config.meter.ledger.as_deref(), SeccompMode::Kill);
        if jail::apply(&policy).is_err() {
            return 4;
        }
    }
    let (_ns, gp) = Netstack::start(ctx).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = Guest::new(gp.clone());
    let ip = rt.block_on(g.resolve("echo.test"));
    let fd = gp.rx_eventfd();
    let wait = || {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 1) };
    };
    let h = g.connect(ip, 80, 41000);
    while g.tcp(h).state() != State::Established {
        g.pump();
        wait();
    }
    let chunk: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let t0 = std::time::Instant::now();
    let (mut sent, mut got) = (0usize, 0usize);
    while got < total {
        let s = g.tcp(h);
        let mut progressed = false;
        while sent < total && s.can_send() {
            let off = sent % chunk.len();
            let n = s
                .send_slice(&chunk[off..chunk.len().min(off + total - sent)])
                .unwrap();
            sent += n;
            progressed |= n > 0;
        }
        while s.can_recv() {
            let ok = s
                .recv(|b| {
                    let good = b
                        .iter()
                        .enumerate()
                        .all(|(i, &x)| x == ((got + i) % chunk.len() % 251) as u8);
                    (b.len(), (b.len(), good))
                })
                .unwrap();
            if !ok.1 {
                return 12;
            }
            got += ok.0;
            progressed = true;
        }
        g.pump();
        if !progressed {
            wait();
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return 11;
        }
    }
    let mbps = total as f64 / t0.elapsed().as_secs_f64() / 1e6;
    // SAFETY: 8 bytes to the pipe the parent reads.
    unsafe { libc::write(out, mbps.to_ne_bytes().as_ptr().cast(), 8) };
    0
}

/// Jail overhead on TCP throughput through the stack (docs/jail.md, "The ax-netstack
/// jail"): the same echo transfer in forked children, jailed and not, interleaved, 5 rounds.
/// ```sh
/// cargo test --release -p ax-netstack --test jail_policy -- --ignored --nocapture
/// ```
#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn jail_overhead_on_tcp_throughput() {
    let port = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "agent = \"t\"\n[[route]]\nhost = \"echo.test\"\naddress = \"127.0.0.1:{port}\"\n\
         [meter]\nledger = {:?}\n",
        dir.path().join("ledger.sqlite").to_str().unwrap()
    );
    let total = 128 * 1024 * 1024;
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _round in 0..5 {
        for jailed in [false, true] {
            let mut fds = [0i32; 2];
            // SAFETY: a fresh pipe.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            let st = in_child(|| echo_throughput(&toml, jailed, total, fds[1]));
            let mut b = [0u8; 8];
            // SAFETY: our write end closed first (a child that wrote nothing gives EOF),
            // then the 8 bytes the child wrote read.
            unsafe {
                libc::close(fds[1]);
                libc::read(fds[0], b.as_mut_ptr().cast(), 8);
                libc::close(fds[0]);
            }
            assert_eq!(exit_code(st), Some(0), "jailed={jailed}: status {st:#x}");
            rates[jailed as usize].push(f64::from_ne_bytes(b));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (free, jailed) = (median(&mut rates[0]), median(&mut rates[1]));
    // Sorted by `median`: the last is the best run.
    let (free_best, jailed_best) = (rates[0][4], rates[1][4]);
    println!(
        "echo {} MiB each way through the stack: median of 5: --no-jail {free:.0} MB/s, \
         jailed {jailed:.0} MB/s, ratio {:.3}; best of 5: --no-jail {free_best:.0} MB/s, \
         jailed {jailed_best:.0} MB/s, ratio {:.3}",
        total >> 20,
        jailed / free,
        jailed_best / free_best
    );
    println!("all runs: no jail {:?}, jailed {:?}", rates[0], rates[1]);
}
