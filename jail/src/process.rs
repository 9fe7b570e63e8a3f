//! The apply sequence every jail runs, and the per-thread filters it leaves for threads to
//! install (docs/jail.md).
//!
//! [`Jail::apply`], on the main thread once setup is done:
//!
//! 1. refuses to run if other threads exist ([`Setup::single_threaded`]): capabilities,
//!    no_new_privs and (before Landlock ABI 8) the Landlock domain are per-thread attributes
//!    that only threads created *afterwards* inherit;
//! 2. compiles every seccomp program (after this nothing is opened);
//! 3. enters new namespaces where permitted (root);
//! 4. enforces the process's Landlock ruleset;
//! 5. drops every capability but the kept ones; PR_SET_NO_NEW_PRIVS;
//! 6. seccomp: with [`Filters::Process`] installs the soft-deny filter and the one allowlist
//!    on the calling thread, which every thread created afterwards inherits; with
//!    [`Filters::PerThread`] installs nothing and keeps the programs: each thread installs
//!    the soft-deny filter and its kind's allowlist itself ([`Jail::enter`] and friends).
//!
//! Seccomp filters stack: a thread keeps every filter its creator had when it was created,
//! and the strictest verdict wins. So with per-thread filters a thread is created either by a
//! thread that has not entered the jail yet (the main thread before it enters its own kind:
//! the new thread then carries exactly the soft-deny filter and its own allowlist,
//! `Seccomp_filters: 2`) or by a thread whose allowlist covers the new thread's needs (which
//! then inherits that filter).

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use seccompiler::BpfProgram;

use crate::landlock::LandlockOutcome;
use crate::privs::{CapsOutcome, Namespace};
use crate::seccomp::{Rules, SeccompMode};
use crate::Error;

/// Threads of this process (from `/proc/self/task`; 0 if unreadable).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// How a jailed process's threads get their seccomp allowlists.
pub enum Filters<K> {
    /// One allowlist, installed on the thread calling [`Jail::apply`]; every thread created
    /// afterwards inherits it. [`Jail::enter`] does nothing.
    Process(Rules),
    /// One allowlist per thread kind. [`Jail::apply`] installs none; each thread installs
    /// the soft-deny filter and its kind's allowlist itself ([`Jail::enter`]).
    PerThread(Vec<(K, Rules)>),
}

impl<K: Copy> Filters<K> {
    /// With `per_thread`, one allowlist per kind of `kinds` (`thread_rules(kind)`), else the
    /// one process-wide allowlist `process()` (the union of the kinds' tables, by the
    /// caller's construction).
    pub fn select(
        per_thread: bool,
        kinds: &[K],
        thread_rules: impl Fn(K) -> Rules,
        process: impl FnOnce() -> Rules,
    ) -> Self {
        if per_thread {
            Filters::PerThread(kinds.iter().map(|&k| (k, thread_rules(k))).collect())
        } else {
            Filters::Process(process())
        }
    }
}

/// What [`Jail::apply`] does, besides the Landlock ruleset (its own argument).
pub struct Setup<'a, K> {
    /// How the log line names the seccomp layer ("seccomp", "seccomp per thread").
    pub label: &'static str,
    /// What a syscall outside an allowlist does.
    pub seccomp: SeccompMode,
    /// Calls that fail with ENOSYS instead of killing (each listed call with its argument
    /// conditions, [`crate::seccomp::soft_deny_table`]). Installed before every allowlist; a
    /// call it matches must also be in the thread's allowlist for the ENOSYS to win.
    pub soft_deny: Rules,
    /// The allowlists.
    pub filters: Filters<K>,
    /// Refuse when other threads exist already.
    pub single_threaded: bool,
    /// Namespaces to enter (where permitted: root).
    pub namespaces: &'a [Namespace],
    /// Capabilities kept (when the process has them); all others dropped.
    pub keep_caps: &'a [u32],
}

/// What [`Jail::apply`] enforced, for the log line.
#[derive(Debug)]
pub struct Report {
    /// [`Setup::label`].
    pub label: &'static str,
    /// What a syscall outside an allowlist does.
    pub seccomp: SeccompMode,
    /// The thread kinds with an allowlist of their own (empty: one for the whole process).
    pub thread_kinds: Vec<String>,
    /// Landlock outcome.
    pub landlock: LandlockOutcome,
    /// Namespaces entered.
    pub namespaces: Vec<&'static str>,
    /// Capabilities outcome.
    pub caps: CapsOutcome,
    /// Capabilities were meant to be kept ([`Setup::keep_caps`] not empty).
    pub keeps_caps: bool,
    /// Time [`Jail::apply`] took (None: not shown).
    pub took: Option<Duration>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "jail: {} ({}), filters: {}, {}, namespaces: {}, capabilities: {} (bounding set {}), \
             no_new_privs",
            self.label,
            match self.seccomp {
                SeccompMode::Kill => "kill on violation",
                SeccompMode::Log => "LOG ONLY on violation",
            },
            if self.thread_kinds.is_empty() {
                "one for every thread".to_string()
            } else {
                format!("per thread kind ({})", self.thread_kinds.join(", "))
            },
            self.landlock,
            if self.namespaces.is_empty() {
                "none (needs CAP_SYS_ADMIN)".to_string()
            } else {
                self.namespaces.join(",")
            },
            self.caps.kept_names(),
            match (self.caps.bounding_dropped > 0, self.keeps_caps) {
                (false, _) => "kept: no CAP_SETPCAP",
                (true, false) => "emptied",
                (true, true) => "reduced to them",
            },
        )?;
        match self.took {
            Some(t) => write!(f, " ({} µs)", t.as_micros()),
            None => Ok(()),
        }
    }
}

struct Active<K> {
    soft_deny: BpfProgram,
    /// None: [`Filters::Process`] (installed by apply).
    per_thread: Option<Vec<(K, BpfProgram)>>,
}

thread_local! {
    /// The calling thread installed its kind's filter, or carries its creator's.
    static ENTERED: Cell<bool> = const { Cell::new(false) };
}

/// A process's jail: set once by [`Jail::apply`], then entered by its threads. One static per
/// process, e.g. `static JAIL: Jail<ThreadKind> = Jail::new();`.
pub struct Jail<K: 'static> {
    active: OnceLock<Active<K>>,
}

impl<K: Copy + PartialEq + fmt::Display + 'static> Default for Jail<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + PartialEq + fmt::Display + 'static> Jail<K> {
    /// Not applied yet.
    pub const fn new() -> Self {
        Jail {
            active: OnceLock::new(),
        }
    }

    /// True once [`Jail::apply`] has succeeded in this process.
    pub fn is_active(&self) -> bool {
        self.active.get().is_some()
    }

    /// True once applied with [`Filters::PerThread`].
    pub fn is_per_thread(&self) -> bool {
        self.active.get().is_some_and(|a| a.per_thread.is_some())
    }

    /// Jails the process as the module doc says; `landlock` enforces the process's ruleset.
    /// Errors: a step failed (the process must not go on serving).
    pub fn apply(
        &self,
        setup: Setup<'_, K>,
        landlock: impl FnOnce() -> Result<LandlockOutcome, Error>,
    ) -> Result<Report, Error> {
        let t0 = Instant::now();
        if self.is_active() {
            return Err(Error::AlreadyApplied);
        }
        if setup.single_threaded {
            let threads = thread_count();
            if threads > 1 {
                return Err(Error::Threads(threads));
            }
        }
        let soft_deny = crate::seccomp::soft_deny_table(setup.soft_deny)?;
        let (process, per_thread, thread_kinds) = match setup.filters {
            Filters::Process(r) => (
                Some(crate::seccomp::allowlist(r, setup.seccomp)?),
                None,
                Vec::new(),
            ),
            Filters::PerThread(kinds) => {
                let names = kinds.iter().map(|(k, _)| k.to_string()).collect();
                let progs = kinds
                    .into_iter()
                    .map(|(k, r)| Ok((k, crate::seccomp::allowlist(r, setup.seccomp)?)))
                    .collect::<Result<Vec<_>, Error>>()?;
                (None, Some(progs), names)
            }
        };
        let namespaces = crate::privs::unshare_namespaces(setup.namespaces);
        let landlock = landlock()?;
        let caps = crate::privs::drop_capabilities(setup.keep_caps)?;
        crate::privs::no_new_privs()?;
        if let Some(prog) = &process {
            // The soft-deny filter first: it only narrows, and once the allowlist is in,
            // seccomp(2) must pass the allowlist.
            crate::seccomp::install(&soft_deny)?;
            crate::seccomp::install(prog)?;
            ENTERED.with(|e| e.set(true));
        }
        self.active
            .set(Active {
                soft_deny,
                per_thread,
            })
            .map_err(|_| Error::AlreadyApplied)?;
        Ok(Report {
            label: setup.label,
            seccomp: setup.seccomp,
            thread_kinds,
            landlock,
            namespaces,
            caps,
            keeps_caps: !setup.keep_caps.is_empty(),
            took: Some(t0.elapsed()),
        })
    }

    /// Installs the soft-deny filter and `kind`'s allowlist on the calling thread (and sets
    /// no_new_privs). Does nothing when the jail is off or has one filter for the process.
    /// Call it as the thread's first act, before it touches anything from the guest.
    /// Errors: no allowlist for `kind` in this jail, or installing failed.
    pub fn enter(&self, kind: K) -> Result<(), Error> {
        let Some(a) = self.active.get() else {
            return Ok(());
        };
        let Some(filters) = &a.per_thread else {
            return Ok(());
        };
        let Some((_, prog)) = filters.iter().find(|(k, _)| *k == kind) else {
            return Err(Error::Seccomp(format!(
                "no filter for {kind} threads in this jail"
            )));
        };
        crate::privs::no_new_privs()?;
        crate::seccomp::install(&a.soft_deny)?;
        crate::seccomp::install(prog)?;
        ENTERED.with(|e| e.set(true));
        Ok(())
    }

    /// [`Jail::enter`] the first time the calling thread gets here, nothing afterwards (for
    /// threads created by code without a hook at their start, which enter at their first
    /// callback: vhost-user-backend's vring workers).
    pub fn enter_once(&self, kind: K) -> Result<(), Error> {
        if ENTERED.with(Cell::get) {
            return Ok(());
        }
        self.enter(kind)
    }

    /// [`Jail::enter`], unless the calling thread already carries a seccomp filter
    /// (PR_GET_SECCOMP): then it was created by a thread that had entered the jail and
    /// inherited that thread's filters, and adding its own would stack a second allowlist.
    /// For a pool whose threads are created both by a thread outside the jail (the first
    /// ones) and by members of the pool (tokio: the workers start blocking threads), where
    /// the pool's allowlist covers everything a member creating a thread needs.
    pub fn enter_unless_inherited(&self, kind: K) -> Result<(), Error> {
        if !self.is_per_thread() || ENTERED.with(Cell::get) {
            return Ok(());
        }
        // SAFETY: prctl with integer arguments only.
        let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
        if mode == 2 {
            ENTERED.with(|e| e.set(true));
            return Ok(());
        }
        self.enter(kind)
    }

    /// [`Jail::enter`], or end the process: a thread must never run unconfined when the
    /// jail is on.
    pub fn enter_or_exit(&self, kind: K) {
        exit_on_error(kind, self.enter(kind));
    }

    /// [`Jail::enter_once`], or end the process.
    pub fn enter_once_or_exit(&self, kind: K) {
        if !ENTERED.with(Cell::get) {
            exit_on_error(kind, self.enter(kind));
        }
    }

    /// [`Jail::enter_unless_inherited`], or end the process.
    pub fn enter_unless_inherited_or_exit(&self, kind: K) {
        exit_on_error(kind, self.enter_unless_inherited(kind));
    }
}

fn exit_on_error<K: fmt::Display>(kind: K, r: Result<(), Error>) {
    if let Err(e) = r {
        log::error!("cannot confine the {kind} thread: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Kind {
        A,
    }

    impl fmt::Display for Kind {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    #[test]
    fn entering_an_inactive_jail_does_nothing() {
        static J: Jail<Kind> = Jail::new();
        assert!(!J.is_active() && !J.is_per_thread());
        J.enter(Kind::A).unwrap();
        J.enter_once(Kind::A).unwrap();
        J.enter_unless_inherited(Kind::A).unwrap();
        // SAFETY: prctl with integer arguments only.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) }, 0);
    }

    #[test]
    fn report_names_filters_caps_and_time() {
        let r = Report {
            label: "seccomp",
            seccomp: SeccompMode::Kill,
            thread_kinds: vec!["main".into(), "worker".into()],
            landlock: LandlockOutcome {
                status: ::landlock::RulesetStatus::FullyEnforced,
                abi: Some(7),
            },
            namespaces: vec![],
            caps: CapsOutcome {
                bounding_dropped: 40,
                sets_cleared: true,
                kept: 0,
            },
            keeps_caps: false,
            took: Some(Duration::from_micros(250)),
        };
        assert_eq!(
            r.to_string(),
            "jail: seccomp (kill on violation), filters: per thread kind (main, worker), \
             landlock ABI 7: fully enforced, namespaces: none (needs CAP_SYS_ADMIN), \
             capabilities: none (bounding set emptied), no_new_privs (250 µs)"
        );
    }
}
