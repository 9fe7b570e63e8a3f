//! seccomp-bpf allowlists (Documentation/userspace-api/seccomp_filter.rst) built as Rust
//! tables and compiled with seccompiler for x86_64.
//!
//! A table ([`Rules`]) maps a syscall number to alternative argument conditions (none =
//! always allowed). The helpers here build the entries both jails use; each jail writes its
//! own tables on top (ax-vmm: `vmm/src/jail/seccomp.rs`, ax-fsd: `fsd/src/jail.rs`).

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
}
