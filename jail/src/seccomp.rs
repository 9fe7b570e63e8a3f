//! seccomp-bpf allowlists (Documentation/userspace-api/seccomp_filter.rst) built as Rust
//! tables and compiled with seccompiler for x86_64.
//!
//! A table ([`Rules`]) maps a syscall number to alternative argument conditions (none =
//! always allowed). Every thread kind of every jailed process starts from [`base`], the
//! group all of them need (memory, futexes, signals, time, ids, writing and closing fds,
//! exit), and adds its own entries (ax-vmm: `vmm/src/jail/seccomp.rs`, ax-fsd:
//! `fsd/src/jail.rs`, ax-netstack: `netstack/src/jail.rs`; docs/jail.md has the tables). The
//! other helpers build entries several jails share: [`thread_creation`],
//! [`glibc_thread_signals`], [`ids`], [`vhost_user_control`], [`inheritance_check`].

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use crate::Error;

/// What a syscall outside an allowlist does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// SECCOMP_RET_KILL_PROCESS: the whole process dies with SIGSYS (the default).
    #[default]
    Kill,
    /// SECCOMP_RET_LOG: the kernel logs the syscall (dmesg / audit, `type=1326`) and lets
    /// it through. For finding missing syscalls; never for production.
    Log,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            _ => Err(format!(
                "invalid seccomp mode {s:?}; use \"kill\" (default) or \"log\" (debugging)"
            )),
        }
    }
}

impl std::fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeccompMode::Kill => "kill",
            SeccompMode::Log => "log",
        })
    }
}

/// A rule set under construction: syscall number → alternative rules (empty = always).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// One argument condition. Panics only for `arg > 5`, which no table uses.
pub fn cond(arg: u8, len: Len, op: Op, v: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, v).expect("seccomp condition")
}

/// A rule: all `conds` must hold. Panics only for an empty list, which no table uses.
pub fn rule(conds: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conds).expect("seccomp rule")
}

/// Allows each of `nrs` unconditionally.
pub fn allow(r: &mut Rules, nrs: &[i64]) {
    for &nr in nrs {
        r.insert(nr, Vec::new());
    }
}

/// Allows `nr` when the 32-bit argument `arg` equals one of `values` (added to the
/// alternatives already there).
pub fn allow_arg_in(r: &mut Rules, nr: i64, arg: u8, values: &[u64]) {
    let e = r.entry(nr).or_default();
    for &v in values {
        e.push(rule(vec![cond(arg, Len::Dword, Op::Eq, v)]));
    }
}

/// Allows `nr` when the 32-bit argument `arg` has none of the bits in `mask`.
pub fn allow_arg_without(r: &mut Rules, nr: i64, arg: u8, mask: u64) {
    r.entry(nr)
        .or_default()
        .push(rule(vec![cond(arg, Len::Dword, Op::MaskedEq(mask), 0)]));
}

/// tgkill(2) (pthread_kill, abort) only to threads of the calling process.
pub fn allow_tgkill_self(r: &mut Rules) {
    let pid = std::process::id() as u64;
    r.entry(libc::SYS_tgkill)
        .or_default()
        .push(rule(vec![cond(0, Len::Dword, Op::Eq, pid)]));
}

/// The base group: what every thread of every jailed process (ax-vmm, ax-fsd, ax-netstack)
/// needs, exactly the intersection of the allowlists of all their thread kinds, nothing
/// more (`unlink`/`unlinkat`, in every process's tables, are not: ax-fsd's vring workers
/// only have `unlinkat`, its main thread only the soft-denied `unlink`, ax-netstack's guest
/// I/O threads neither):
///
/// - memory: `brk mmap mprotect munmap mremap madvise`, `mmap`/`mprotect` never with
///   PROT_EXEC (no new code after setup);
/// - futexes and scheduling: `futex sched_yield`;
/// - signals: `rt_sigreturn rt_sigprocmask sigaltstack restart_syscall`, `tgkill` to this
///   process's own threads only (pthread_kill, abort);
/// - time: `clock_gettime clock_nanosleep nanosleep`;
/// - ids and randomness: `getpid gettid getrandom`;
/// - fds opened during setup: `read` (eventfds), `write writev` (logs on stderr, eventfd
///   signals), `close`,
///   `fcntl` F_GETFD/F_SETFD/F_GETFL/F_SETFL/F_DUPFD_CLOEXEC only (std's debug check on
///   close, O_NONBLOCK, `EventFd::try_clone`);
/// - `exit exit_group`.
pub fn base(r: &mut Rules) {
    use libc::*;
    allow(
        r,
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
            SYS_read,
            SYS_write,
            SYS_writev,
            SYS_close,
            SYS_exit,
            SYS_exit_group,
        ],
    );
    allow_arg_without(r, SYS_mmap, 2, PROT_EXEC as u64);
    allow_arg_without(r, SYS_mprotect, 2, PROT_EXEC as u64);
    allow_arg_in(
        r,
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
    allow_tgkill_self(r);
}

/// A fresh table holding [`base`].
pub fn with_base() -> Rules {
    let mut r = Rules::new();
    base(&mut r);
    r
}

/// The user and group ids of the process: `getuid geteuid getgid getegid` (ax-fsd's union
/// and glibc's resolver read them; nothing can change them, setuid is never allowed).
pub fn ids(r: &mut Rules) {
    allow(
        r,
        &[
            libc::SYS_getuid,
            libc::SYS_geteuid,
            libc::SYS_getgid,
            libc::SYS_getegid,
        ],
    );
}

/// `rt_sigaction` for signals 32 and 33 only: glibc installs its internal SIGCANCEL and
/// SIGSETXID handlers at the first pthread_create of the process, which for ax-fsd and
/// ax-netstack happens in the jail.
pub fn glibc_thread_signals(r: &mut Rules) {
    allow_arg_in(r, libc::SYS_rt_sigaction, 0, &[32, 33]);
}

/// The thread that runs a vhost-user daemon (`VhostUserDaemon`, through `ax_vhost::serve`)
/// and its request handler: `accept4` of the frontend on the listener bound before the jail;
/// vhost-user messages with SCM_RIGHTS (the guest RAM memfd, kick/call eventfds: `recvmsg
/// recvfrom sendmsg sendto shutdown`); the vring workers' epoll sets and eventfds
/// (`epoll_create1 epoll_ctl epoll_wait epoll_pwait eventfd2 poll ppoll dup readv`);
/// `ioctl` FIONBIO/FIOCLEX/FIONCLEX only.
pub fn vhost_user_control(r: &mut Rules) {
    use libc::*;
    allow(
        r,
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
            SYS_readv,
        ],
    );
    allow_arg_in(r, SYS_ioctl, 1, &[FIONBIO, FIOCLEX, FIONCLEX]);
}

/// `prctl(PR_GET_SECCOMP)`: for threads that check whether they inherited a filter before
/// installing their own (`Jail::enter_unless_inherited`). It only reads the calling
/// thread's own seccomp mode.
pub fn inheritance_check(r: &mut Rules) {
    allow_arg_in(r, libc::SYS_prctl, 0, &[libc::PR_GET_SECCOMP as u64]);
}

/// Adds every entry of `other` to `r`: the result allows a call when either table does
/// (an unconditional entry in either stays unconditional; alternatives are not repeated).
pub fn merge(r: &mut Rules, other: &Rules) {
    for (nr, alts) in other {
        match r.get_mut(nr) {
            None => {
                r.insert(*nr, alts.clone());
            }
            Some(mine) if mine.is_empty() => {}
            Some(mine) if alts.is_empty() => mine.clear(),
            Some(mine) => {
                for a in alts {
                    if !mine.contains(a) {
                        mine.push(a.clone());
                    }
                }
            }
        }
    }
}

/// `r` in a canonical text form, one line per syscall number in ascending order: `nr` alone
/// when always allowed, else `nr` and its alternatives sorted (each a rule's conditions). Two
/// tables allow the same calls when their descriptions are equal; for comparing tables
/// across versions and processes (docs/jail.md, "Checking the tables").
pub fn describe(r: &Rules) -> Vec<String> {
    r.iter()
        .map(|(nr, alts)| {
            if alts.is_empty() {
                return nr.to_string();
            }
            let mut a: Vec<String> = alts.iter().map(|x| format!("{x:?}")).collect();
            a.sort();
            a.dedup();
            format!("{nr} {}", a.join(" | "))
        })
        .collect()
}

/// What a thread needs to create a thread (std::thread::Builder::spawn) and what the new
/// thread does before its own filter is in place: clone(2) only with CLONE_THREAD and no
/// CLONE_NEW* flag; clone3 (turned into ENOSYS by [`soft_deny`], so glibc falls back to
/// clone(2), whose flags are checkable); set_robust_list, rseq, sched_getaffinity;
/// prctl PR_SET_NAME / PR_SET_NO_NEW_PRIVS; seccomp SECCOMP_SET_MODE_FILTER (a filter only
/// ever narrows what the thread inherited).
pub fn thread_creation(r: &mut Rules) {
    use libc::*;
    let ns = (CLONE_NEWNS
        | CLONE_NEWUSER
        | CLONE_NEWNET
        | CLONE_NEWPID
        | CLONE_NEWIPC
        | CLONE_NEWUTS
        | CLONE_NEWCGROUP) as u64;
    let thread = CLONE_THREAD as u64;
    r.entry(SYS_clone).or_default().push(rule(vec![cond(
        0,
        Len::Qword,
        Op::MaskedEq(thread | ns),
        thread,
    )]));
    allow(r, &[SYS_clone3]);
    allow(r, &[SYS_set_robust_list, SYS_rseq, SYS_sched_getaffinity]);
    allow_arg_in(r, SYS_prctl, 0, &[PR_SET_NAME as u64]);
    allow_arg_in(r, SYS_prctl, 0, &[PR_SET_NO_NEW_PRIVS as u64]);
    allow_arg_in(r, SYS_seccomp, 0, &[SECCOMP_SET_MODE_FILTER as u64]);
}

/// Compiles `rules` for x86_64: `matched` for a listed call, `mismatch` for the rest.
pub fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, Error> {
    let f = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| Error::Seccomp(format!("build filter: {e}")))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| Error::Seccomp(format!("compile filter: {e}")))
}

/// An allowlist: allow `rules`, else kill the process (or log, [`SeccompMode::Log`]).
pub fn allowlist(rules: Rules, mode: SeccompMode) -> Result<BpfProgram, Error> {
    let mismatch = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    compile(rules, mismatch, SeccompAction::Allow)
}

/// A soft-deny filter: each of `nrs` fails with ENOSYS, everything else passes (to the
/// allowlist, which is stacked with it). Filters stack and the strictest verdict wins, so a
/// call that is not also in the allowlist still kills. Install it *before* the allowlist
/// (once the allowlist is in, seccomp(2) itself may be refused).
pub fn soft_deny(nrs: &[i64]) -> Result<BpfProgram, Error> {
    let mut r = Rules::new();
    allow(&mut r, nrs);
    soft_deny_table(r)
}

/// [`soft_deny`] for a table: each listed call (with its argument conditions, if any) fails
/// with ENOSYS, everything else passes.
pub fn soft_deny_table(r: Rules) -> Result<BpfProgram, Error> {
    compile(
        r,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )
}

/// Installs `prog` on the calling thread (seccompiler sets PR_SET_NO_NEW_PRIVS first).
pub fn install(prog: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(prog).map_err(|e| Error::Seccomp(format!("install filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_mode_parses() {
        assert_eq!("kill".parse::<SeccompMode>().unwrap(), SeccompMode::Kill);
        assert_eq!("log".parse::<SeccompMode>().unwrap(), SeccompMode::Log);
        assert!("trap".parse::<SeccompMode>().unwrap_err().contains("kill"));
        assert_eq!(SeccompMode::Log.to_string(), "log");
    }

    #[test]
    fn tables_compile() {
        let mut r = Rules::new();
        allow(&mut r, &[libc::SYS_read]);
        allow_arg_in(&mut r, libc::SYS_ioctl, 1, &[libc::FIONBIO]);
        allow_arg_without(&mut r, libc::SYS_mmap, 2, libc::PROT_EXEC as u64);
        allow_tgkill_self(&mut r);
        thread_creation(&mut r);
        assert!(r.contains_key(&libc::SYS_clone));
        for mode in [SeccompMode::Kill, SeccompMode::Log] {
            assert!(!allowlist(r.clone(), mode).unwrap().is_empty());
        }
        assert!(!soft_deny(&[libc::SYS_clone3]).unwrap().is_empty());
    }

    #[test]
    fn base_is_the_documented_group_and_compiles() {
        let r = with_base();
        assert_eq!(r.len(), 26);
        for nr in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_clone,
            libc::SYS_ioctl,
            libc::SYS_unlink,
            libc::SYS_execve,
            libc::SYS_prctl,
            libc::SYS_seccomp,
        ] {
            assert!(!r.contains_key(&nr), "base allows {nr}");
        }
        assert_eq!(r[&libc::SYS_fcntl].len(), 5);
        assert_eq!(r[&libc::SYS_mmap].len(), 1, "mmap without PROT_EXEC only");
        assert!(!allowlist(r, SeccompMode::Kill).unwrap().is_empty());
    }

    #[test]
    fn merge_is_a_union_and_describe_is_canonical() {
        let mut a = Rules::new();
        allow_arg_in(&mut a, libc::SYS_ioctl, 1, &[libc::FIONBIO]);
        allow_arg_in(&mut a, libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]);
        let mut b = Rules::new();
        allow_arg_in(&mut b, libc::SYS_ioctl, 1, &[libc::FIOCLEX, libc::FIONBIO]);
        allow(&mut b, &[libc::SYS_fcntl, libc::SYS_read]);
        let mut ab = a.clone();
        merge(&mut ab, &b);
        let mut ba = b.clone();
        merge(&mut ba, &a);
        assert_eq!(describe(&ab), describe(&ba));
        assert_eq!(ab[&libc::SYS_ioctl].len(), 2, "no repeated alternative");
        assert!(ab[&libc::SYS_fcntl].is_empty(), "unconditional wins");
        assert!(ab.contains_key(&libc::SYS_read));
        // The order alternatives were added in does not matter.
        let mut c = Rules::new();
        allow_arg_in(&mut c, libc::SYS_ioctl, 1, &[libc::FIONBIO, libc::FIOCLEX]);
        let mut d = Rules::new();
        allow_arg_in(&mut d, libc::SYS_ioctl, 1, &[libc::FIOCLEX, libc::FIONBIO]);
        assert_eq!(describe(&c), describe(&d));
        assert_ne!(describe(&c), describe(&a));
    }
}
