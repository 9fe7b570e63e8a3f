//! Jail building blocks shared by ax's host processes (docs/jail.md).
//!
//! ax-vmm (`vmm/src/jail/`) and ax-fsd (`fsd/src/jail.rs`) each decide *what* to allow; this
//! crate holds the mechanics both need:
//!
//! - [`privs`]: PR_SET_NO_NEW_PRIVS, capabilities (capabilities(7): drop all but a given
//!   set), new namespaces (unshare(2));
//! - [`seccomp`]: building seccompiler rule tables (syscall → argument conditions), the
//!   thread-creation rules, the soft-deny filter, [`SeccompMode`], installing a filter;
//! - [`landlock`]: the outcome of a Landlock ruleset for log lines.

pub mod landlock;
pub mod privs;
pub mod seccomp;

pub use seccomp::SeccompMode;

/// A jail step failed. The messages are one line; callers add how to fix it (usually "run
/// with --no-jail to debug").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building or installing a seccomp filter.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// Creating or enforcing a Landlock ruleset.
    #[error("landlock: {0}")]
    Landlock(String),
    /// no_new_privs, capabilities.
    #[error("{0}")]
    Privs(String),
}
