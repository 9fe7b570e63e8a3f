//! The ax-netstack jail (docs/jail.md, "The ax-netstack jail").
//!
//! ax-netstack parses everything the guest sends (Ethernet frames, DNS, TLS, HTTP) and holds
//! the agent's secrets, so a bug in it must reach no file but its ledger, no local service,
//! and nothing it does not need to proxy guest TCP out. `main.rs` does the whole setup first:
//! config read from stdin, the CA generated and written, `[[route]]` CA files read, the
//! ledger opened, [`prepare`] (system trust anchors loaded, the host resolver used once),
//! the frontend socket bound and **connected to** ([`wait_for_frontend`]). Then, while the
//! main thread is the only thread, [`apply`]; the stack's tokio runtime and the vhost-user
//! (or netdev stream) threads start afterwards and inherit everything:
//!
//! 1. new **ipc** and **uts** namespaces (as root);
//! 2. **Landlock**: read and write (no create, remove or rename) of the ledger's files
//!    ([`ledger_files`]: the database, its `-wal`, `-shm` and `-journal` as they exist);
//!    read of the host resolver's configuration ([`RESOLVER_FILES`]); no other file; **no
//!    TCP bind** (ABI ≥ 4; TCP connect stays open to every port: the netstack proxies guest
//!    TCP to the world); no abstract Unix sockets or signals outside the process (ABI ≥ 6);
//! 3. **capabilities**: all dropped (it needs none), ambient set cleared,
//!    **PR_SET_NO_NEW_PRIVS**;
//! 4. **seccomp**: one allowlist ([`rules`]) for every thread — tokio and vhost-user-backend
//!    create their threads themselves, with no hook to install a per-thread filter first —
//!    plus a soft-deny filter ([`soft_deny_rules`]: `clone3` and `socket` for `AF_UNIX` /
//!    `AF_NETLINK` fail with ENOSYS, so glibc's resolver skips nscd and the netlink address
//!    check instead of dying).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use ax_jail::landlock::LandlockOutcome;
use ax_jail::privs::{CapsOutcome, IPC, UTS};
use ax_jail::seccomp::{
    allow, allow_arg_in, allow_arg_without, allow_tgkill_self, cond, rule, thread_creation, Rules,
};
use ax_jail::SeccompMode;
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, RulesetAttr, RulesetCreatedAttr,
    Scope, ABI,
};
use seccompiler::{SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op};

use crate::context::Context;

/// The newest Landlock ABI asked for; older kernels get what they support (best effort).
const TARGET_ABI: ABI = ABI::V9;

/// Files glibc's getaddrinfo(3) reads while resolving (nsswitch.conf(5), hosts(5),
/// resolv.conf(5), host.conf(5), gai.conf(5)); readable in the jail where they exist.
/// `/etc/hosts` is opened on every lookup; the others again when their mtime changes.
pub const RESOLVER_FILES: [&str; 5] = [
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
];

/// What to enforce.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Single files readable and writable (not creatable or removable): the ledger's.
    pub read_write_files: Vec<PathBuf>,
    /// Single files readable: the resolver's configuration.
    pub read_only_files: Vec<PathBuf>,
    /// What a syscall outside the allowlist does.
    pub seccomp: SeccompMode,
}

impl Policy {
    /// The policy for a netstack whose ledger is `ledger` (`[meter] ledger`, if any): the
    /// ledger's existing files read-write, the existing [`RESOLVER_FILES`] read-only.
    pub fn for_ledger(ledger: Option<&Path>, seccomp: SeccompMode) -> Policy {
        Policy {
            read_write_files: ledger.map(ledger_files).unwrap_or_default(),
            read_only_files: RESOLVER_FILES
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.exists())
                .collect(),
            seccomp,
        }
    }
}

/// The SQLite files of the database `db` that exist now: `db`, `db-wal`, `db-shm`,
/// `db-journal` (sqlite.org/tempfiles.html). Opened before the jail in WAL mode, the
/// database keeps its `-wal` and `-shm` for as long as this process holds its connection
/// (the last connection to close removes them), so these are all it touches afterwards.
pub fn ledger_files(db: &Path) -> Vec<PathBuf> {
    let mut out = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        out.push(PathBuf::from(p));
    }
    out.retain(|p| p.is_file());
    out
}

/// Errors setting up the jail (ax-netstack refuses to serve unjailed).
#[derive(Debug)]
pub struct JailError(String);

impl fmt::Display for JailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "jail: {}; run with --no-jail to debug", self.0)
    }
}

impl std::error::Error for JailError {}

impl From<ax_jail::Error> for JailError {
    fn from(e: ax_jail::Error) -> Self {
        JailError(e.to_string())
    }
}

/// What [`apply`] enforced, for the log line.
#[derive(Debug)]
pub struct Report {
    /// Landlock outcome.
    pub landlock: LandlockOutcome,
    /// Namespaces entered.
    pub namespaces: Vec<&'static str>,
    /// Capabilities outcome.
    pub caps: CapsOutcome,
    /// Seccomp mode.
    pub seccomp: SeccompMode,
    /// Time [`apply`] took.
    pub took: std::time::Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "jail: seccomp ({}), {}, namespaces: {}, capabilities: none (bounding set {}), \
             no_new_privs ({} µs)",
            match self.seccomp {
                SeccompMode::Kill => "kill on violation",
                SeccompMode::Log => "LOG ONLY on violation",
            },
            self.landlock,
            if self.namespaces.is_empty() {
                "none (needs CAP_SYS_ADMIN)".to_string()
            } else {
                self.namespaces.join(",")
            },
            if self.caps.bounding_dropped > 0 {
                "emptied"
            } else {
                "kept: no CAP_SETPCAP"
            },
            self.took.as_micros(),
        )
    }
}

/// Does, before the jail, what would otherwise first happen inside it and need files the
/// jail does not allow: loads the system trust anchors for upstream TLS (rustls-native-certs
/// reads `/etc/ssl/certs`, `SSL_CERT_FILE`, `SSL_CERT_DIR` once per process), and resolves
/// `localhost` once through getaddrinfo(3), which reads nsswitch.conf and loads the NSS
/// modules of the `hosts` services it reaches (a module first needed inside the jail cannot
/// be loaded there: its open is refused, and glibc goes on with the next service).
pub fn prepare(ctx: &Context) {
    if let Err(e) = crate::tls::client::config(ctx, "localhost", &[]) {
        log::warn!("jail: upstream TLS config: {e:#}");
    }
    if let Err(e) = crate::stack::dns::host_lookup("localhost") {
        log::debug!("jail: resolving localhost before the jail: {e:?}");
    }
}

/// Threads of this process (from `/proc/self/task`; 0 if unreadable).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Jails the process as the module doc says. Must run on the only thread (threads that
/// exist already would keep their privileges and Landlock domain): refused otherwise.
/// Errors: a step failed (one line, ends with "run with --no-jail to debug").
pub fn apply(policy: &Policy) -> Result<Report, JailError> {
    let t0 = std::time::Instant::now();
    let threads = thread_count();
    if threads > 1 {
        return Err(JailError(format!(
            "{threads} threads exist before the jail; it must be applied while single-threaded"
        )));
    }
    let soft = ax_jail::seccomp::compile(
        soft_deny_rules(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    let allowlist = ax_jail::seccomp::allowlist(rules(), policy.seccomp)?;
    let namespaces = ax_jail::privs::unshare_namespaces(&[IPC, UTS]);
    let landlock = restrict(policy)?;
    let caps = ax_jail::privs::drop_capabilities(&[])?;
    ax_jail::privs::no_new_privs()?;
    // The soft-deny filter first: it is only a narrowing, but installing it after the
    // allowlist would need seccomp(2) to pass the allowlist.
    ax_jail::seccomp::install(&soft)?;
    ax_jail::seccomp::install(&allowlist)?;
    Ok(Report {
        landlock,
        namespaces,
        caps,
        seccomp: policy.seccomp,
        took: t0.elapsed(),
    })
}

fn ll_err(e: impl fmt::Display) -> JailError {
    JailError(format!("landlock: {e}"))
}

/// The Landlock layer of [`apply`] alone (for tests of what each layer refuses): every
/// file-system right handled, rules for the policy's files only; TCP bind handled with no
/// rule (so refused), TCP connect not handled (so allowed to any port); scopes (abstract
/// Unix sockets, signals) restricted to the process. Enforced on the calling thread and the
/// threads it starts later.
pub fn restrict(policy: &Policy) -> Result<LandlockOutcome, JailError> {
    let read: BitFlags<AccessFs> = AccessFs::ReadFile.into();
    let read_write = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let mut created = landlock::Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(ll_err)?
        .handle_access(AccessNet::BindTcp)
        .map_err(ll_err)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(ll_err)?
        .create()
        .map_err(ll_err)?;
    let rules = policy
        .read_write_files
        .iter()
        .map(|p| (p, read_write))
        .chain(policy.read_only_files.iter().map(|p| (p, read)));
    for (p, access) in rules {
        let fd = PathFd::new(p).map_err(|e| ll_err(format!("{}: {e}", p.display())))?;
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(ll_err)?;
    }
    Ok(created.restrict_self().map_err(ll_err)?.into())
}

/// Calls the soft-deny filter turns into ENOSYS (they are in the allowlist too, which is
/// what lets the gentler verdict win): `clone3` (glibc falls back to clone(2), whose flags
/// the allowlist checks), `socket(AF_UNIX)` (glibc's nscd probe in getaddrinfo; the frontend
/// socket is connected before the jail) and `socket(AF_NETLINK)` (getaddrinfo's interface
/// address check, RFC 6724 sorting: without it glibc assumes both families are there).
pub fn soft_deny_rules() -> Rules {
    let mut r = Rules::new();
    allow(&mut r, &[libc::SYS_clone3]);
    allow_arg_in(
        &mut r,
        libc::SYS_socket,
        0,
        &[libc::AF_UNIX as u64, libc::AF_NETLINK as u64],
    );
    r
}

/// The seccomp allowlist of every ax-netstack thread once jailed (docs/jail.md has the why
/// of each group). Never allowed: `execve`/`execveat`, `fork`/`vfork` (clone without
/// CLONE_THREAD), `bind`, `listen`, sockets other than TCP/UDP over IPv4/IPv6, `ptrace`,
/// `mount`/`umount2`/`pivot_root`, `unshare`/`setns`, `bpf`, `kill`, `setuid`/`capset`,
/// executable memory, `ioctl` beyond FIONBIO/FIOCLEX/FIONCLEX/FIONREAD.
pub fn rules() -> Rules {
    use libc::*;
    let mut r = Rules::new();
    // Memory (never executable: no new code after setup), futexes, signals, time, ids.
    allow(
        &mut r,
        &[
            SYS_brk,
            SYS_munmap,
            SYS_mremap,
            SYS_madvise,
            SYS_futex,
            SYS_sched_yield,
            SYS_rt_sigreturn,
            SYS_rt_sigprocmask,
            SYS_sigaltstack,
            SYS_restart_syscall,
            SYS_clock_gettime,
            SYS_clock_nanosleep,
            SYS_nanosleep,
            SYS_getpid,
            SYS_gettid,
            SYS_getrandom,
            SYS_getuid,
            SYS_geteuid,
            SYS_getgid,
            SYS_getegid,
            SYS_uname,
            SYS_sysinfo,
            SYS_exit,
            SYS_exit_group,
        ],
    );
    allow_arg_without(&mut r, SYS_mmap, 2, PROT_EXEC as u64);
    allow_arg_without(&mut r, SYS_mprotect, 2, PROT_EXEC as u64);
    allow_tgkill_self(&mut r);
    // Threads: the tokio runtime (workers, the blocking pool for getaddrinfo), the
    // vhost-user daemon's threads or the netdev stream's writer, all started after the
    // jail. glibc installs its SIGCANCEL/SIGSETXID handlers (32, 33) at the first
    // pthread_create.
    thread_creation(&mut r);
    allow_arg_in(&mut r, SYS_rt_sigaction, 0, &[32, 33]);
    // Event loops, eventfds, the frontend connection (accept4 on the listener bound before
    // the jail; vhost-user messages carry the guest RAM memfd and eventfds as SCM_RIGHTS),
    // socket I/O.
    allow(
        &mut r,
        &[
            SYS_accept4,
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_epoll_pwait2,
            SYS_eventfd2,
            SYS_poll,
            SYS_ppoll,
            SYS_dup,
            SYS_read,
            SYS_readv,
            SYS_write,
            SYS_writev,
            SYS_close,
            SYS_recvfrom,
            SYS_recvmsg,
            SYS_recvmmsg,
            SYS_sendto,
            SYS_sendmsg,
            SYS_sendmmsg,
            SYS_shutdown,
            SYS_connect,
            SYS_getsockopt,
            SYS_setsockopt,
            SYS_getsockname,
            SYS_getpeername,
        ],
    );
    // New sockets: TCP (upstream connections) and UDP (glibc's DNS queries, and the
    // connected datagram sockets getaddrinfo uses to pick source addresses, RFC 6724) over
    // IPv4 and IPv6; the type's low bits without SOCK_NONBLOCK/SOCK_CLOEXEC. AF_UNIX and
    // AF_NETLINK are listed for the soft-deny filter (they fail with ENOSYS).
    for domain in [AF_INET, AF_INET6] {
        for ty in [SOCK_STREAM, SOCK_DGRAM] {
            r.entry(SYS_socket).or_default().push(rule(vec![
                cond(0, Len::Dword, Op::Eq, domain as u64),
                cond(1, Len::Dword, Op::MaskedEq(0xf), ty as u64),
            ]));
        }
    }
    allow_arg_in(&mut r, SYS_socket, 0, &[AF_UNIX as u64, AF_NETLINK as u64]);
    allow_arg_in(
        &mut r,
        SYS_fcntl,
        1,
        &[
            F_GETFD as u64,
            F_SETFD as u64,
            F_GETFL as u64,
            F_SETFL as u64,
            F_DUPFD_CLOEXEC as u64,
            // SQLite's POSIX advisory locks on the database and its -shm.
            F_GETLK as u64,
            F_SETLK as u64,
            F_SETLKW as u64,
            F_OFD_GETLK as u64,
            F_OFD_SETLK as u64,
            F_OFD_SETLKW as u64,
        ],
    );
    // FIONREAD: glibc's resolver sizes each UDP answer before reading it (res_send).
    allow_arg_in(&mut r, SYS_ioctl, 1, &[FIONBIO, FIOCLEX, FIONCLEX, FIONREAD]);
    // Files, confined by Landlock: the ledger (SQLite: pread/pwrite, fsync/fdatasync, the
    // -shm mapping, truncating the WAL, existence checks, unlinking the WAL when the last
    // connection closes — refused by Landlock, SQLite goes on), the resolver's files
    // (getaddrinfo opens /etc/hosts on every lookup, stats the others for changes).
    allow(
        &mut r,
        &[
            SYS_open,
            SYS_openat,
            SYS_fstat,
            SYS_newfstatat,
            SYS_statx,
            SYS_lseek,
            SYS_access,
            SYS_faccessat,
            SYS_faccessat2,
            SYS_readlink,
            SYS_pread64,
            SYS_pwrite64,
            SYS_fsync,
            SYS_fdatasync,
            SYS_ftruncate,
            SYS_unlink,
            SYS_unlinkat,
            SYS_getcwd,
            // SQLite running as root hands a WAL or -shm file it opens to the database's
            // owner (robustFchown); with every capability gone only a no-op change passes.
            SYS_fchown,
        ],
    );
    r
}

/// Blocks until a frontend is waiting on the listening socket `fd` (a pending connection:
/// POLLIN), so the jail goes on after it connected and before anything is served. Retries
/// on EINTR.
pub fn wait_for_frontend(fd: std::os::fd::RawFd) -> io::Result<()> {
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n > 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_compiles_and_keeps_out_what_a_jail_must() {
        let r = rules();
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_kill,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_openat2,
            libc::SYS_setuid,
            libc::SYS_capset,
            libc::SYS_socketpair,
        ] {
            assert!(!r.contains_key(&nr), "syscall {nr} allowed");
        }
        assert_eq!(r[&libc::SYS_ioctl].len(), 4);
        // 2 families × 2 types, + AF_UNIX/AF_NETLINK for the soft-deny filter.
        assert_eq!(r[&libc::SYS_socket].len(), 6);
        for mode in [SeccompMode::Kill, SeccompMode::Log] {
            assert!(!ax_jail::seccomp::allowlist(rules(), mode)
                .unwrap()
                .is_empty());
        }
        for nr in soft_deny_rules().keys() {
            assert!(
                r.contains_key(nr),
                "soft-denied {nr} must be in the allowlist"
            );
        }
    }

    #[test]
    fn ledger_files_lists_what_exists() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("ledger.sqlite");
        assert!(ledger_files(&db).is_empty());
        std::fs::write(&db, b"").unwrap();
        std::fs::write(t.path().join("ledger.sqlite-wal"), b"").unwrap();
        assert_eq!(
            ledger_files(&db),
            vec![db.clone(), t.path().join("ledger.sqlite-wal")]
        );
    }
}
