//! The ax-fsd jail (docs/jail.md, "ax-fsd").
//!
//! ax-fsd parses FUSE requests from the guest, so a bug in it must not reach more of the host
//! than the agent's share. Once the layers and the journal are open and the frontend has
//! connected to the vhost-user socket, `main.rs` calls [`apply`] on the main thread while it
//! is the only thread (the shared sequence of [`ax_jail::Jail::apply`]); every thread started
//! afterwards (vhost-user-backend's request handler and vring workers, which serve the
//! guest) inherits all of it:
//!
//! 1. new **ipc** and **uts** namespaces (as root);
//! 2. **Landlock**: read (files, directory listings) beneath the lower layer only — the
//!    directory, or for a git lower the object directories (the repository's, `--objects`,
//!    and their `info/alternates`, [`git_object_dirs`]); read, write, create, remove,
//!    rename, link and truncate beneath the upper directory; read and write of the journal
//!    file; nothing else (no execute anywhere, no device ioctls, no TCP, no abstract Unix
//!    sockets or signals outside the process);
//! 3. **capabilities**: all dropped except those the union needs to keep the guest's view
//!    ([`KEPT_CAPS`]); the ambient set cleared; **PR_SET_NO_NEW_PRIVS**;
//! 4. **seccomp**, a soft-deny filter (`clone3`, `unlink` → ENOSYS) under an allowlist:
//!    - with [`Policy::per_thread_filters`] (the binary) one allowlist per [`ThreadKind`]
//!      ([`thread_rules`]), each installed by the thread itself: the vring workers at their
//!      first event ([`enter_worker`], before they read a request), the main thread once the
//!      workers exist and before it accepts the frontend ([`enter_main`]); the request
//!      handler, which the main thread starts after that, inherits the main thread's;
//!    - otherwise one allowlist for every thread ([`rules`], the union of the kinds'),
//!      installed on the calling thread by [`apply`].
//!
//! `/proc` stays reachable: the union names open nodes as `/proc/self/fd/N` (docs/fsd.md,
//! "Security rules"). Landlock checks the file such a path resolves to, not the `/proc`
//! path, so those opens are allowed exactly when the node is in a layer.

use std::fmt;
use std::path::{Path, PathBuf};

use ax_jail::landlock::LandlockOutcome;
use ax_jail::privs::{cap, IPC, UTS};
use ax_jail::seccomp::{allow, allow_arg_in, Rules};
use ax_jail::{Filters, Jail, SeccompMode, Setup};
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, RestrictSelfAttr, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

/// The newest Landlock ABI asked for; older kernels get what they support (best effort).
const TARGET_ABI: ABI = ABI::V9;

/// Capabilities kept (when ax-fsd has them, i.e. runs as root), each for the union's copy of
/// what the guest does (docs/jail.md):
///
/// - CAP_DAC_OVERRIDE: open, list and write nodes whatever mode the guest gave them (modes are
///   checked by the guest kernel, `default_permissions`; ax-fsd's uid is not the guest's);
/// - CAP_FOWNER: chmod, utimes and xattrs on upper nodes of older layers that still belong
///   to another uid;
/// - CAP_SYS_ADMIN: `trusted.overlay.opaque` (trusted.* xattrs are root-only, and invisible
///   without it). Its other powers are syscalls the allowlist never lets through (mount,
///   unshare, setns, pivot_root, bpf, ...).
///
/// Dropped among others: CAP_CHOWN (every upper node belongs to the host user; the guest's
/// owner is an xattr, docs/fsd.md "Host ownership"), CAP_FSETID (no set-ID bit is ever set on
/// the host), CAP_MKNOD (no device node is ever made; a 0:0 whiteout needs no capability
/// since Linux 5.8, and older kernels fall back to xattr whiteouts), CAP_SETFCAP (a guest
/// cannot put `security.capability` on an upper file), CAP_DAC_READ_SEARCH
/// (open_by_handle_at), CAP_SETUID/SETGID, CAP_SYS_PTRACE, CAP_NET_*.
pub const KEPT_CAPS: [u32; 3] = [cap::DAC_OVERRIDE, cap::FOWNER, cap::SYS_ADMIN];

/// What to enforce.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Directories readable (files and listings) beneath: the lower layer.
    pub read_only: Vec<PathBuf>,
    /// Directories fully writable beneath (no execute, no device ioctl): the upper layer.
    pub read_write: Vec<PathBuf>,
    /// Single files readable and writable: the journal.
    pub files: Vec<PathBuf>,
    /// What a syscall outside the allowlist does.
    pub seccomp: SeccompMode,
    /// One allowlist per [`ThreadKind`], each installed by the thread itself ([`enter_main`],
    /// [`enter_worker`]); off: one allowlist ([`rules`]) installed by [`apply`] on the
    /// calling thread and inherited by every thread created afterwards.
    pub per_thread_filters: bool,
}

/// The kinds of ax-fsd thread, each with its own allowlist once jailed with
/// [`Policy::per_thread_filters`] (docs/jail.md, "ax-fsd: per thread kind").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the vring workers exist: accepts the frontend, starts the
    /// request handler (which inherits this filter: it handles the vhost-user messages),
    /// waits for it, stops the workers, exits.
    Main,
    /// A vring worker: serves the request queues (FUSE on the layers, the journal).
    Worker,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 2] = [ThreadKind::Main, ThreadKind::Worker];
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Main => "main",
            ThreadKind::Worker => "vring worker",
        })
    }
}

static JAIL: Jail<ThreadKind> = Jail::new();

/// Errors setting up the jail (ax-fsd refuses to serve unjailed).
pub type JailError = ax_jail::Error;

/// What [`apply`] enforced, for the log line.
pub type Report = ax_jail::Report;

/// Jails the process as the module doc says. Must run on the only thread (threads that
/// exist already would keep their privileges and Landlock domain): refused otherwise.
/// ~0.2 ms.
pub fn apply(policy: &Policy) -> Result<Report, JailError> {
    let filters = Filters::select(
        policy.per_thread_filters,
        &ThreadKind::ALL,
        thread_rules,
        rules,
    );
    let mut soft_deny = Rules::new();
    allow(&mut soft_deny, &[libc::SYS_clone3, libc::SYS_unlink]);
    JAIL.apply(
        Setup {
            label: "seccomp",
            seccomp: policy.seccomp,
            soft_deny,
            filters,
            single_threaded: true,
            namespaces: &[IPC, UTS],
            keep_caps: &KEPT_CAPS,
        },
        || restrict_paths(policy),
    )
}

/// The main thread enters its filter ([`ThreadKind::Main`]): call it once the vring workers
/// exist and before the frontend's connection is accepted (the request handler, started
/// afterwards, inherits it). Does nothing unless jailed with per-thread filters. Errors:
/// installing the filter failed.
pub fn enter_main() -> Result<(), JailError> {
    JAIL.enter(ThreadKind::Main)
}

/// A vring worker enters its filter ([`ThreadKind::Worker`]) the first time it gets here:
/// call it at the top of the backend's event handler, before anything from the guest is
/// read. Does nothing unless jailed with per-thread filters; ends the process if the filter
/// cannot be installed.
pub fn enter_worker() {
    JAIL.enter_once_or_exit(ThreadKind::Worker);
}

fn ll_err(e: impl fmt::Display) -> JailError {
    JailError::Landlock(e.to_string())
}

fn path_fd(p: &Path) -> Result<PathFd, JailError> {
    PathFd::new(p).map_err(|e| JailError::Landlock(format!("{}: {e}", p.display())))
}

/// The Landlock ruleset of [`Policy`] (see the module doc), enforced on the calling thread
/// and the threads it starts later (all threads at once on ABI ≥ 8).
fn restrict_paths(policy: &Policy) -> Result<LandlockOutcome, JailError> {
    let not_here: BitFlags<AccessFs> = AccessFs::Execute | AccessFs::IoctlDev;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = AccessFs::from_all(TARGET_ABI) & !not_here;
    let file = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let mut created = landlock::Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(ll_err)?
        .handle_access(AccessNet::from_all(TARGET_ABI))
        .map_err(ll_err)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(ll_err)?
        .create()
        .map_err(ll_err)?;
    let rules = policy
        .read_only
        .iter()
        .map(|p| (p, read))
        .chain(policy.read_write.iter().map(|p| (p, write)))
        .chain(policy.files.iter().map(|p| (p, file)));
    for (p, access) in rules {
        created = created
            .add_rule(PathBeneath::new(path_fd(p)?, access))
            .map_err(ll_err)?;
    }
    let created = created.all_threads(true).map_err(ll_err)?;
    Ok(created.restrict_self().map_err(ll_err)?.into())
}

/// The object directories a git lower reads while serving: `objects` of the repository's
/// common directory (a linked worktree's git dir names it in `commondir`), then `extra`
/// (`--objects`), each with the directories listed in its `info/alternates`, recursively
/// (relative entries are relative to the objects directory; at most 5 levels, like git).
/// Missing directories are left out.
pub fn git_object_dirs(git_dir: &Path, extra: Option<&Path>) -> Vec<PathBuf> {
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(s) if !s.trim().is_empty() => git_dir.join(s.trim_end_matches(['\n', '\r'])),
        _ => git_dir.to_path_buf(),
    };
    let mut out = Vec::new();
    let mut todo: Vec<(PathBuf, u32)> = extra
        .map(|x| (x.to_path_buf(), 0))
        .into_iter()
        .chain([(common.join("objects"), 0)])
        .collect();
    while let Some((dir, depth)) = todo.pop() {
        let Ok(dir) = dir.canonicalize() else {
            continue;
        };
        if out.contains(&dir) {
            continue;
        }
        if depth < 5 {
            for alt in alternates(&dir) {
                todo.push((dir.join(alt), depth + 1));
            }
        }
        out.push(dir);
    }
    out
}

/// Entries of `objects/info/alternates` (gitrepository-layout(5)): one directory per line,
/// `#` comments, C-style quoted when starting with `"`.
fn alternates(objects: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(objects.join("info/alternates")) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(
            |l| match l.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
                Some(q) => PathBuf::from(q.replace("\\\"", "\"").replace("\\\\", "\\")),
                None => PathBuf::from(l),
            },
        )
        .collect()
}

/// The allowlist of every ax-fsd thread when one filter serves the whole process: the union
/// of the [`thread_rules`] of every kind. Never allowed: `execve`, `socket`/`connect`/`bind`/
/// `listen`, `ptrace`, `mount`/`umount2`/`pivot_root`, `unshare`/`setns`,
/// `open_by_handle_at`, `bpf`, `kill`, `ioctl` beyond FIONBIO/FIOCLEX/FIONCLEX.
pub fn rules() -> Rules {
    let mut r = Rules::new();
    for k in ThreadKind::ALL {
        ax_jail::seccomp::merge(&mut r, &thread_rules(k));
    }
    r
}

/// The allowlist of `kind` (docs/jail.md has the why of each group): the base group
/// ([`ax_jail::seccomp::base`]) and
///
/// - [`ThreadKind::Main`]: thread creation (the request handler) and glibc's thread signal
///   handlers; the vhost-user control group ([`ax_jail::seccomp::vhost_user_control`]:
///   accept4, the messages with their SCM_RIGHTS fds, epoll sets and eventfds); `unlink`
///   (soft-denied: the listener removes its socket file on drop, ax-fsd already removed it
///   before the jail);
/// - [`ThreadKind::Worker`]: the vring loop (`epoll_wait epoll_pwait readv`) and the
///   union on the layers: *at(2) calls relative to the layer fds, `/proc/self/fd/N`
///   reopens, xattrs, copy-up (copy_file_range, SEEK_DATA/SEEK_HOLE, O_TMPFILE + linkat),
///   whiteouts (mknodat), renameat2 (glibc uses renameat for flags 0), fallocate; the git
///   lower's object reads (open, mmap, getdents64 of pack directories); the journal's
///   appends; the process's ids and RLIMIT_NOFILE (the union's fd budget).
pub fn thread_rules(kind: ThreadKind) -> Rules {
    use libc::*;
    let mut r = ax_jail::seccomp::with_base();
    match kind {
        ThreadKind::Main => {
            ax_jail::seccomp::thread_creation(&mut r);
            ax_jail::seccomp::glibc_thread_signals(&mut r);
            ax_jail::seccomp::vhost_user_control(&mut r);
            allow(&mut r, &[SYS_unlink]);
        }
        ThreadKind::Worker => {
            allow(&mut r, &[SYS_epoll_wait, SYS_epoll_pwait, SYS_readv]);
            ax_jail::seccomp::ids(&mut r);
            // getrlimit/setrlimit(RLIMIT_NOFILE) of this process; raising above the hard
            // limit needs CAP_SYS_RESOURCE, which is dropped.
            allow_arg_in(&mut r, SYS_prlimit64, 0, &[0]);
            allow(
                &mut r,
                &[
                    SYS_open,
                    SYS_openat,
                    SYS_fstat,
                    SYS_newfstatat,
                    SYS_statx,
                    SYS_lseek,
                    SYS_pread64,
                    SYS_preadv,
                    SYS_preadv2,
                    SYS_pwrite64,
                    SYS_pwritev,
                    SYS_pwritev2,
                    SYS_getdents64,
                    SYS_mkdirat,
                    SYS_mknodat,
                    SYS_symlinkat,
                    SYS_readlink,
                    SYS_readlinkat,
                    SYS_unlinkat,
                    SYS_renameat,
                    SYS_renameat2,
                    SYS_linkat,
                    SYS_fchownat,
                    SYS_chmod,
                    SYS_fchmodat,
                    SYS_utimensat,
                    SYS_getxattr,
                    SYS_lgetxattr,
                    SYS_setxattr,
                    SYS_lsetxattr,
                    SYS_listxattr,
                    SYS_llistxattr,
                    SYS_removexattr,
                    SYS_lremovexattr,
                    SYS_ftruncate,
                    SYS_fallocate,
                    SYS_copy_file_range,
                    SYS_fsync,
                    SYS_fdatasync,
                    SYS_fstatfs,
                    SYS_statfs,
                    SYS_getcwd,
                ],
            );
        }
    }
    r
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
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_open_by_handle_at,
            libc::SYS_name_to_handle_at,
            libc::SYS_bpf,
            libc::SYS_kill,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_openat2,
            libc::SYS_setuid,
            libc::SYS_capset,
        ] {
            assert!(!r.contains_key(&nr), "syscall {nr} allowed");
        }
        assert_eq!(
            r[&libc::SYS_ioctl].len(),
            3,
            "ioctl: FIONBIO/FIOCLEX/FIONCLEX only"
        );
        for mode in [SeccompMode::Kill, SeccompMode::Log] {
            assert!(!ax_jail::seccomp::allowlist(rules(), mode)
                .unwrap()
                .is_empty());
        }
    }

    #[test]
    fn thread_kinds_split_the_process_allowlist() {
        let (main, worker) = (
            thread_rules(ThreadKind::Main),
            thread_rules(ThreadKind::Worker),
        );
        let all = rules();
        for (kind, r) in [("main", &main), ("worker", &worker)] {
            for nr in r.keys() {
                assert!(
                    all.contains_key(nr),
                    "{kind}: {nr} not in the process table"
                );
            }
            // The base group is in every kind.
            for nr in ax_jail::seccomp::with_base().keys() {
                assert!(r.contains_key(nr), "{kind}: base {nr} missing");
            }
        }
        for nr in all.keys() {
            assert!(main.contains_key(nr) || worker.contains_key(nr), "{nr}");
        }
        // A worker serves FUSE: no accepting, no messages with fds, no threads.
        for nr in [
            libc::SYS_accept4,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_prctl,
            libc::SYS_seccomp,
            libc::SYS_eventfd2,
            libc::SYS_epoll_ctl,
            libc::SYS_ioctl,
            libc::SYS_unlink,
        ] {
            assert!(!worker.contains_key(&nr), "worker allows {nr}");
        }
        // The main thread and the request handler never touch the layers.
        for nr in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_getdents64,
            libc::SYS_renameat2,
            libc::SYS_unlinkat,
            libc::SYS_setxattr,
            libc::SYS_fchownat,
            libc::SYS_pwrite64,
            libc::SYS_copy_file_range,
        ] {
            assert!(!main.contains_key(&nr), "main allows {nr}");
        }
        for k in ThreadKind::ALL {
            assert!(
                !ax_jail::seccomp::allowlist(thread_rules(k), SeccompMode::Kill)
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn git_object_dirs_follow_commondir_and_alternates() {
        let t = tempfile::tempdir().unwrap();
        let main = t.path().join("repo/.git");
        let wt = main.join("worktrees/wt");
        let shared = t.path().join("shared/objects");
        let private = t.path().join("snap/objects");
        for d in [
            &main.join("objects/info"),
            &wt,
            &shared,
            &private.join("info"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(wt.join("commondir"), "../..\n").unwrap();
        // One relative alternate, one absolute, a comment, a missing one.
        std::fs::write(
            main.join("objects/info/alternates"),
            "# comment\n../../../shared/objects\n/nonexistent/objects\n",
        )
        .unwrap();
        std::fs::write(
            private.join("info/alternates"),
            format!("{}\n", main.join("objects").display()),
        )
        .unwrap();
        let got = git_object_dirs(&wt, Some(&private));
        let want: Vec<PathBuf> = [main.join("objects"), shared, private]
            .iter()
            .map(|p| p.canonicalize().unwrap())
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        let mut w = want.clone();
        w.sort();
        assert_eq!(sorted, w, "{got:?}");
        // Without commondir the git dir is the common dir.
        assert_eq!(
            git_object_dirs(&main, None).len(),
            2,
            "objects + its alternate"
        );
    }
}
