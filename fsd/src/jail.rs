//! The ax-fsd jail (docs/jail.md, "ax-fsd").
//!
//! ax-fsd parses FUSE requests from the guest, so a bug in it must not reach more of the host
//! than the agent's share. Once the layers and the journal are open and the frontend has
//! connected to the vhost-user socket, `main.rs` calls [`apply`] on the main thread while it
//! is the only thread; every thread started afterwards (vhost-user-backend's request handler
//! and vring workers, which serve the guest) inherits all of it:
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
//! 4. **seccomp**: one allowlist ([`rules`]) for every thread (the threads are started by
//!    vhost-user-backend, which has no hook for a per-thread filter), plus a soft-deny filter
//!    (`clone3`, `unlink` → ENOSYS).
//!
//! `/proc` stays reachable: the union names open nodes as `/proc/self/fd/N` (docs/fsd.md,
//! "Security rules"). Landlock checks the file such a path resolves to, not the `/proc`
//! path, so those opens are allowed exactly when the node is in a layer.

use std::fmt;
use std::path::{Path, PathBuf};

use ax_jail::landlock::LandlockOutcome;
use ax_jail::privs::{cap, CapsOutcome, IPC, UTS};
use ax_jail::seccomp::{
    allow, allow_arg_in, allow_arg_without, allow_tgkill_self, thread_creation, Rules,
};
use ax_jail::SeccompMode;
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, RestrictSelfAttr, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

/// The newest Landlock ABI asked for; older kernels get what they support (best effort).
const TARGET_ABI: ABI = ABI::V9;

/// Capabilities kept (when ax-fsd has them, i.e. runs as root), each for the union's
/// faithful copy of what the guest does (docs/jail.md):
///
/// - CAP_CHOWN: new nodes get the guest caller's uid/gid, copy-up keeps the lower owner,
///   SETATTR uid/gid;
/// - CAP_DAC_OVERRIDE: open, list and write nodes the guest owns (modes are checked by the
///   guest kernel, `default_permissions`; ax-fsd's uid is not the guest's);
/// - CAP_FOWNER: chmod, utimes and xattrs on nodes owned by guest users;
/// - CAP_FSETID: keep set-user/group-ID bits through chmod and writes;
/// - CAP_MKNOD: whiteouts (character device 0:0) and the guest's own device nodes;
/// - CAP_SYS_ADMIN: `trusted.overlay.opaque` (trusted.* xattrs are root-only, and invisible
///   without it). Its other powers are syscalls the allowlist never lets through (mount,
///   unshare, setns, pivot_root, bpf, ...).
///
/// Dropped among others: CAP_SETFCAP (a guest cannot put `security.capability` on an upper
/// file), CAP_DAC_READ_SEARCH (open_by_handle_at), CAP_SETUID/SETGID, CAP_SYS_PTRACE,
/// CAP_NET_*.
pub const KEPT_CAPS: [u32; 6] = [
    cap::CHOWN,
    cap::DAC_OVERRIDE,
    cap::FOWNER,
    cap::FSETID,
    cap::MKNOD,
    cap::SYS_ADMIN,
];

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
}

/// Errors setting up the jail (ax-fsd refuses to serve unjailed).
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
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "jail: seccomp ({}), {}, namespaces: {}, capabilities kept: {} (bounding set {}), \
             no_new_privs",
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
            self.caps.kept_names(),
            if self.caps.bounding_dropped > 0 {
                "reduced to them"
            } else {
                "kept: no CAP_SETPCAP"
            },
        )
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
/// ~0.2 ms.
pub fn apply(policy: &Policy) -> Result<Report, JailError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(JailError(format!(
            "{threads} threads exist before the jail; it must be applied while single-threaded"
        )));
    }
    // Compile first: from here on nothing new is opened outside the layers.
    let soft = ax_jail::seccomp::soft_deny(&[libc::SYS_clone3, libc::SYS_unlink])?;
    let allowlist = ax_jail::seccomp::allowlist(rules(), policy.seccomp)?;
    let namespaces = ax_jail::privs::unshare_namespaces(&[IPC, UTS]);
    let landlock = restrict_paths(policy)?;
    let caps = ax_jail::privs::drop_capabilities(&KEPT_CAPS)?;
    ax_jail::privs::no_new_privs()?;
    // The soft-deny filter first: once the allowlist is in, seccomp(2) is only allowed for
    // SECCOMP_SET_MODE_FILTER, which would still work, but the order keeps it obvious.
    ax_jail::seccomp::install(&soft)?;
    ax_jail::seccomp::install(&allowlist)?;
    Ok(Report {
        landlock,
        namespaces,
        caps,
        seccomp: policy.seccomp,
    })
}

fn ll_err(e: impl fmt::Display) -> JailError {
    JailError(format!("landlock: {e}"))
}

fn path_fd(p: &Path) -> Result<PathFd, JailError> {
    PathFd::new(p).map_err(|e| JailError(format!("landlock: {}: {e}", p.display())))
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

/// The seccomp allowlist of every ax-fsd thread once jailed (docs/jail.md has the why of
/// each group). Never allowed: `execve`, `socket`/`connect`/`bind`/`listen`, `ptrace`,
/// `mount`/`umount2`/`pivot_root`, `unshare`/`setns`, `open_by_handle_at`, `bpf`, `kill`,
/// `ioctl` beyond FIONBIO/FIOCLEX.
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
            SYS_exit,
            SYS_exit_group,
            // Turned into ENOSYS by the soft-deny filter: the vhost-user listener removes its
            // socket file on drop; ax-fsd already removed it before the jail.
            SYS_unlink,
        ],
    );
    allow_arg_without(&mut r, SYS_mmap, 2, PROT_EXEC as u64);
    allow_arg_without(&mut r, SYS_mprotect, 2, PROT_EXEC as u64);
    allow_tgkill_self(&mut r);
    // Threads: vhost-user-backend starts its vring workers and request handler after the
    // jail (they inherit it). glibc installs its internal SIGCANCEL/SIGSETXID handlers
    // (signals 32 and 33) at the first pthread_create: rt_sigaction for those only.
    thread_creation(&mut r);
    allow_arg_in(&mut r, SYS_rt_sigaction, 0, &[32, 33]);
    // getrlimit/setrlimit(RLIMIT_NOFILE) of this process (the union's fd budget); raising
    // above the hard limit needs CAP_SYS_RESOURCE, which is dropped.
    allow_arg_in(&mut r, SYS_prlimit64, 0, &[0]);
    // The vhost-user connection (accepted after the jail, on a listener bound before it):
    // messages with SCM_RIGHTS (the guest RAM memfd, kick/call eventfds), the event loops,
    // eventfd signalling.
    allow(
        &mut r,
        &[
            SYS_accept4,
            SYS_recvmsg,
            SYS_recvfrom,
            SYS_sendmsg,
            SYS_sendto,
            SYS_shutdown,
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_eventfd2,
            SYS_poll,
            SYS_ppoll,
            SYS_dup,
            SYS_read,
            SYS_readv,
            SYS_write,
            SYS_writev,
            SYS_close,
        ],
    );
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
        ],
    );
    allow_arg_in(&mut r, SYS_ioctl, 1, &[FIONBIO, FIOCLEX, FIONCLEX]);
    // The union (fsd/src/union, docs/fsd.md): *at(2) calls relative to the layer fds,
    // `/proc/self/fd/N` reopens, xattrs, copy-up (copy_file_range, SEEK_DATA/SEEK_HOLE,
    // O_TMPFILE + linkat), whiteouts (mknodat), renameat2 (glibc uses renameat for flags
    // 0), fallocate; the git lower's
    // object reads (open, mmap, getdents64 of pack directories); the journal's appends.
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
