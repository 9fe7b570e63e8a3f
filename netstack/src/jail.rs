//! The ax-netstack jail (docs/jail.md, "The ax-netstack jail").
//!
//! ax-netstack parses everything the guest sends (Ethernet frames, DNS, TLS, HTTP) and holds
//! the agent's secrets, so a bug in it must reach no file but its ledger, no local service,
//! and nothing it does not need to proxy guest TCP out. `main.rs` does the whole setup first:
//! config read from stdin, the CA generated and written, `[[route]]` CA files read, the
//! ledger opened, [`prepare`] (system trust anchors loaded, the host resolver used once),
//! the frontend socket bound and **connected to**. Then, while the main thread is the only
//! thread, [`apply`] (the shared sequence of [`ax_jail::Jail::apply`]); the stack's tokio
//! runtime and the vhost-user (or netdev stream) threads start afterwards and inherit
//! everything:
//!
//! 1. new **ipc** and **uts** namespaces (as root);
//! 2. **Landlock**: read and write (no create, remove or rename) of the ledger's files
//!    ([`ledger_files`]: the database, its `-wal`, `-shm` and `-journal` as they exist);
//!    read of the host resolver's configuration ([`RESOLVER_FILES`]); no other file; **no
//!    TCP bind** (ABI ≥ 4; TCP connect stays open to every port: the netstack proxies guest
//!    TCP to the world); no abstract Unix sockets or signals outside the process (ABI ≥ 6);
//! 3. **capabilities**: all dropped (it needs none), ambient set cleared,
//!    **PR_SET_NO_NEW_PRIVS**;
//! 4. **seccomp**, a soft-deny filter ([`soft_deny_rules`]: `clone3` and `socket` for
//!    `AF_UNIX` / `AF_NETLINK` fail with ENOSYS, so glibc's resolver skips nscd and the
//!    netlink address check instead of dying) under an allowlist:
//!    - with [`Policy::per_thread_filters`] (the binary) one allowlist per [`ThreadKind`]
//!      ([`thread_rules`]), each installed by the thread itself: tokio's threads as they
//!      start ([`enter_tokio_thread`], the runtime's `on_thread_start`), the guest I/O
//!      threads (the netdev stream writer as it starts, the vring worker at its first event,
//!      [`enter_guest_io`], [`enter_guest_io_once`]), the main thread once it has started
//!      them ([`enter_main`]; the vhost-user request handler, started after that, inherits
//!      the main thread's);
//!    - otherwise one allowlist for every thread ([`rules`], the union of the kinds'),
//!      installed on the calling thread by [`apply`].

use std::fmt;
use std::path::{Path, PathBuf};

use ax_jail::landlock::LandlockOutcome;
use ax_jail::privs::{IPC, UTS};
use ax_jail::seccomp::{allow, allow_arg_in, cond, rule, Rules};
use ax_jail::{Filters, Jail, SeccompMode, Setup};
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, RulesetAttr, RulesetCreatedAttr,
    Scope, ABI,
};
use seccompiler::{SeccompCmpArgLen as Len, SeccompCmpOp as Op};

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
    /// One allowlist per [`ThreadKind`], each installed by the thread itself; off: one
    /// allowlist ([`rules`]) installed by [`apply`] on the calling thread and inherited by
    /// every thread created afterwards.
    pub per_thread_filters: bool,
}

/// The kinds of ax-netstack thread, each with its own allowlist once jailed with
/// [`Policy::per_thread_filters`] (docs/jail.md, "The ax-netstack jail").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the stack and the guest I/O threads run: accepts the frontend
    /// (vhost-user: starts the request handler, which inherits this filter and handles the
    /// vhost-user messages; netdev stream: reads the guest's frames), waits, drops the stack
    /// (and with it, when it holds the last reference, the ledger's SQLite connection).
    Main,
    /// tokio's threads: the runtime's workers (the poll loop, flows, TLS, HTTP, the ledger)
    /// and its blocking pool (getaddrinfo), which the workers start.
    Tokio,
    /// Moving frames between the guest and the stack: the vring worker (vhost-user) or the
    /// netdev stream's writer.
    GuestIo,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Main, ThreadKind::Tokio, ThreadKind::GuestIo];
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Main => "main",
            ThreadKind::Tokio => "tokio",
            ThreadKind::GuestIo => "guest I/O",
        })
    }
}

static JAIL: Jail<ThreadKind> = Jail::new();

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
            per_thread_filters: false,
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
pub type JailError = ax_jail::Error;

/// What [`apply`] enforced, for the log line.
pub type Report = ax_jail::Report;

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
    if let Err(e) = crate::upstream::host_lookup("localhost") {
        log::debug!("jail: resolving localhost before the jail: {e:?}");
    }
}

/// Jails the process as the module doc says. Must run on the only thread (threads that
/// exist already would keep their privileges and Landlock domain): refused otherwise.
/// Errors: a step failed (one line, ends with "run with --no-jail to debug").
pub fn apply(policy: &Policy) -> Result<Report, JailError> {
    let filters = Filters::select(
        policy.per_thread_filters,
        &ThreadKind::ALL,
        thread_rules,
        rules,
    );
    JAIL.apply(
        Setup {
            label: "seccomp",
            seccomp: policy.seccomp,
            soft_deny: soft_deny_rules(),
            filters,
            single_threaded: true,
            namespaces: &[IPC, UTS],
            keep_caps: &[],
        },
        || restrict(policy),
    )
}

/// The main thread enters its filter ([`ThreadKind::Main`]): call it once the stack's
/// runtime and the guest I/O threads exist, before the frontend's frames or messages are
/// read (the vhost-user request handler, started afterwards, inherits it). Does nothing
/// unless jailed with per-thread filters. Errors: installing the filter failed.
pub fn enter_main() -> Result<(), JailError> {
    JAIL.enter(ThreadKind::Main)
}

/// A tokio thread enters its filter ([`ThreadKind::Tokio`]) as it starts (the runtime's
/// `on_thread_start`): a worker created by the main thread installs it; a blocking-pool
/// thread created by a worker already carries the worker's and keeps it
/// ([`Jail::enter_unless_inherited`]). Does nothing unless jailed with per-thread filters;
/// ends the process if the filter cannot be installed.
pub fn enter_tokio_thread() {
    JAIL.enter_unless_inherited_or_exit(ThreadKind::Tokio);
}

/// A guest I/O thread enters its filter ([`ThreadKind::GuestIo`]) as its first act (the
/// netdev stream's writer). Does nothing unless jailed with per-thread filters; ends the
/// process if the filter cannot be installed.
pub fn enter_guest_io() {
    JAIL.enter_or_exit(ThreadKind::GuestIo);
}

/// [`enter_guest_io`] the first time the calling thread gets here (the vring worker, at the
/// top of the backend's event handler, before it reads a frame).
pub fn enter_guest_io_once() {
    JAIL.enter_once_or_exit(ThreadKind::GuestIo);
}

fn ll_err(e: impl fmt::Display) -> JailError {
    JailError::Landlock(e.to_string())
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

/// The allowlist of every ax-netstack thread when one filter serves the whole process: the
/// union of the kinds' tables (docs/jail.md has the why of each group). Never allowed:
/// `execve`/`execveat`, `fork`/`vfork` (clone without CLONE_THREAD), `bind`, `listen`,
/// sockets other than TCP/UDP over IPv4/IPv6, `ptrace`, `mount`/`umount2`/`pivot_root`,
/// `unshare`/`setns`, `bpf`, `kill`, `setuid`/`capset`, executable memory, `ioctl` beyond
/// FIONBIO/FIOCLEX/FIONCLEX/FIONREAD.
pub fn rules() -> Rules {
    let mut r = Rules::new();
    for k in ThreadKind::ALL {
        ax_jail::seccomp::merge(&mut r, &kind_rules(k));
    }
    r
}

/// The allowlist of `kind` with per-thread filters: its table and, for tokio's threads, the
/// check whether a new thread inherited its creator's filter
/// ([`ax_jail::seccomp::inheritance_check`]), which one filter for the process never needs.
pub fn thread_rules(kind: ThreadKind) -> Rules {
    let mut r = kind_rules(kind);
    if kind == ThreadKind::Tokio {
        ax_jail::seccomp::inheritance_check(&mut r);
    }
    r
}

/// The table of `kind`: the base group ([`ax_jail::seccomp::base`]) and
///
/// - [`ThreadKind::Main`]: thread creation (the request handler) and glibc's thread signal
///   handlers, the process's ids, the vhost-user control group
///   ([`ax_jail::seccomp::vhost_user_control`]: accept4, messages with SCM_RIGHTS fds, epoll
///   sets, eventfds; also the netdev stream's reads), and the ledger's files (dropping the
///   stack can close the SQLite connection: a checkpoint);
/// - [`ThreadKind::Tokio`]: everything the network side needs: thread creation (the
///   blocking pool), ids, `uname sysinfo`, event loops, sockets (TCP/UDP over IPv4/IPv6),
///   `ioctl` FIONREAD, the ledger's files and locks, the resolver's files; not `accept4`;
/// - [`ThreadKind::GuestIo`]: waiting on eventfds and the frontend socket (`epoll_wait
///   epoll_pwait poll ppoll`) and writing frames to the netdev stream (`sendto`).
fn kind_rules(kind: ThreadKind) -> Rules {
    use libc::*;
    let mut r = ax_jail::seccomp::with_base();
    match kind {
        ThreadKind::Main => {
            ax_jail::seccomp::thread_creation(&mut r);
            ax_jail::seccomp::glibc_thread_signals(&mut r);
            ax_jail::seccomp::ids(&mut r);
            ax_jail::seccomp::vhost_user_control(&mut r);
            files(&mut r);
        }
        ThreadKind::Tokio => {
            // The blocking pool (getaddrinfo) grows from the workers.
            ax_jail::seccomp::thread_creation(&mut r);
            ax_jail::seccomp::glibc_thread_signals(&mut r);
            ax_jail::seccomp::ids(&mut r);
            allow(&mut r, &[SYS_uname, SYS_sysinfo]);
            // Event loops, eventfds, socket I/O.
            allow(
                &mut r,
                &[
                    SYS_epoll_create1,
                    SYS_epoll_ctl,
                    SYS_epoll_wait,
                    SYS_epoll_pwait,
                    SYS_epoll_pwait2,
                    SYS_eventfd2,
                    SYS_poll,
                    SYS_ppoll,
                    SYS_dup,
                    SYS_readv,
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
            // connected datagram sockets getaddrinfo uses to pick source addresses, RFC
            // 6724) over IPv4 and IPv6; the type's low bits without
            // SOCK_NONBLOCK/SOCK_CLOEXEC. AF_UNIX and AF_NETLINK are listed for the
            // soft-deny filter (they fail with ENOSYS).
            for domain in [AF_INET, AF_INET6] {
                for ty in [SOCK_STREAM, SOCK_DGRAM] {
                    r.entry(SYS_socket).or_default().push(rule(vec![
                        cond(0, Len::Dword, Op::Eq, domain as u64),
                        cond(1, Len::Dword, Op::MaskedEq(0xf), ty as u64),
                    ]));
                }
            }
            allow_arg_in(&mut r, SYS_socket, 0, &[AF_UNIX as u64, AF_NETLINK as u64]);
            // FIONREAD: glibc's resolver sizes each UDP answer before reading it (res_send).
            allow_arg_in(
                &mut r,
                SYS_ioctl,
                1,
                &[FIONBIO, FIOCLEX, FIONCLEX, FIONREAD],
            );
            files(&mut r);
        }
        ThreadKind::GuestIo => {
            allow(
                &mut r,
                &[
                    SYS_epoll_wait,
                    SYS_epoll_pwait,
                    SYS_poll,
                    SYS_ppoll,
                    SYS_sendto,
                ],
            );
        }
    }
    r
}

/// Files, confined by Landlock: the ledger (SQLite: pread/pwrite, fsync/fdatasync, the -shm
/// mapping, truncating the WAL, existence checks, its POSIX advisory locks on the database
/// and the -shm, unlinking the WAL when the last connection closes — refused by Landlock,
/// SQLite goes on), the resolver's files (getaddrinfo opens /etc/hosts on every lookup,
/// stats the others for changes).
fn files(r: &mut Rules) {
    use libc::*;
    allow_arg_in(
        r,
        SYS_fcntl,
        1,
        &[
            F_GETLK as u64,
            F_SETLK as u64,
            F_SETLKW as u64,
            F_OFD_GETLK as u64,
            F_OFD_SETLK as u64,
            F_OFD_SETLKW as u64,
        ],
    );
    allow(
        r,
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
    fn thread_kinds_split_the_process_allowlist() {
        let all = rules();
        let base = ax_jail::seccomp::with_base();
        for k in ThreadKind::ALL {
            let r = kind_rules(k);
            for nr in base.keys() {
                assert!(r.contains_key(nr), "{k}: base {nr} missing");
            }
            for nr in r.keys() {
                assert!(all.contains_key(nr), "{k}: {nr} not in the process table");
            }
            assert!(
                !ax_jail::seccomp::allowlist(thread_rules(k), SeccompMode::Kill)
                    .unwrap()
                    .is_empty()
            );
        }
        let (main, tokio, guest) = (
            thread_rules(ThreadKind::Main),
            thread_rules(ThreadKind::Tokio),
            thread_rules(ThreadKind::GuestIo),
        );
        // Only tokio's threads make sockets and connect; only the main thread accepts.
        for nr in [libc::SYS_socket, libc::SYS_connect, libc::SYS_setsockopt] {
            assert!(tokio.contains_key(&nr) && !main.contains_key(&nr) && !guest.contains_key(&nr));
        }
        assert!(main.contains_key(&libc::SYS_accept4) && !tokio.contains_key(&libc::SYS_accept4));
        // Guest I/O threads: no files, no threads, no messages with fds.
        for nr in [
            libc::SYS_openat,
            libc::SYS_clone,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_ioctl,
            libc::SYS_unlink,
            libc::SYS_prctl,
        ] {
            assert!(!guest.contains_key(&nr), "guest I/O allows {nr}");
        }
        // The one entry beyond the process table: tokio's PR_GET_SECCOMP check.
        assert_eq!(
            tokio[&libc::SYS_prctl].len(),
            all[&libc::SYS_prctl].len() + 1
        );
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
