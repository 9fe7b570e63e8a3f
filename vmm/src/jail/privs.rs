//! Privileges: PR_SET_NO_NEW_PRIVS, capabilities (capabilities(7)), namespaces (unshare(2)),
//! through the shared `ax-jail` crate.
//!
//! Capabilities and no_new_privs are per-thread attributes inherited by threads created
//! later, so [`super::apply_process`] sets them on the main thread before any VMM thread
//! starts, and every thread entering the jail sets them again (cheap and idempotent).

pub use ax_jail::privs::{can_unshare, CapsOutcome};
use ax_jail::privs::{IPC, NET, UTS};

use super::JailError;

/// PR_SET_NO_NEW_PRIVS: no execve can ever grant privileges again (setuid bits, file caps).
pub fn no_new_privs() -> Result<(), JailError> {
    ax_jail::privs::no_new_privs()
}

/// Empties the bounding set (where permitted), the ambient set and the effective,
/// permitted and inheritable sets of the calling thread: ax-vmm keeps no capability.
pub fn drop_capabilities() -> Result<CapsOutcome, JailError> {
    ax_jail::privs::drop_capabilities(&[])
}

/// Moves the calling thread into new ipc and uts (and, if `net`, net) namespaces, each
/// where permitted (needs CAP_SYS_ADMIN); returns the ones entered (~50 µs for ipc + uts).
///
/// The network namespace is on request only: ~0.5 ms of spawn time (plus the kernel's
/// asynchronous teardown), for little over what seccomp (sockets only on device threads,
/// AF_UNIX only) and Landlock (no TCP) already enforce.
pub fn unshare_namespaces(net: bool) -> Vec<&'static str> {
    if net {
        ax_jail::privs::unshare_namespaces(&[IPC, UTS, NET])
    } else {
        ax_jail::privs::unshare_namespaces(&[IPC, UTS])
    }
}
