//! Jail building blocks shared by ax's host processes (docs/jail.md).
//!
//! ax-vmm (`vmm/src/jail/`), ax-fsd (`fsd/src/jail.rs`) and ax-netstack
//! (`netstack/src/jail.rs`) each decide *what* to allow; this crate holds what all three do
//! the same way:
//!
//! - [`Jail`]: the apply sequence (single-thread check, filters compiled, namespaces,
//!   Landlock, capabilities, no_new_privs, then one filter for the process or a filter per
//!   thread kind that each thread installs on entering), the [`Report`] of what was applied,
//!   the [`Error`] type;
//! - [`privs`]: PR_SET_NO_NEW_PRIVS, capabilities (capabilities(7): drop all but a given
//!   set), new namespaces (unshare(2));
//! - [`seccomp`]: seccompiler rule tables (syscall → argument conditions): the [`seccomp::base`]
//!   group every thread kind of every process starts from, the groups several share
//!   (thread creation, vhost-user control, ...), the soft-deny filter, [`SeccompMode`],
//!   installing a filter;
//! - [`landlock`]: the outcome of a Landlock ruleset for log lines.

pub mod landlock;
pub mod privs;
mod process;
pub mod seccomp;

pub use process::{thread_count, Filters, Jail, Report, Setup};
pub use seccomp::SeccompMode;

/// A jail step failed. One line, with how to go on: the processes refuse to run unjailed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building or installing a seccomp filter.
    #[error(
        "jail: seccomp: {0}; run with --seccomp log to find the syscall, or --no-jail to debug"
    )]
    Seccomp(String),
    /// Creating or enforcing a Landlock ruleset.
    #[error("jail: landlock: {0}; run with --no-jail to debug")]
    Landlock(String),
    /// no_new_privs, capabilities.
    #[error("jail: {0}; run with --no-jail to debug")]
    Privs(String),
    /// Other threads existed when the jail was applied (they would keep their privileges).
    #[error(
        "jail: {0} threads exist before the jail; it must be applied while single-threaded; \
         run with --no-jail to debug"
    )]
    Threads(usize),
    /// [`Jail::apply`] ran twice.
    #[error("jail: already applied")]
    AlreadyApplied,
    /// A thread the jail needs could not start.
    #[error("jail: cannot start the {0} thread: {1}")]
    Spawn(&'static str, std::io::Error),
}
