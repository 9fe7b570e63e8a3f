//! Landlock (Documentation/userspace-api/landlock.rst): after setup the VMM opens no file.
//!
//! The ruleset handles every access right the kernel knows (best effort: the `landlock`
//! crate drops what an older kernel lacks, and a kernel without Landlock leaves the
//! process unrestricted, which is logged) and grants almost none:
//!
//! * file system (ABI 1–5): no rule at all, so no open, create, remove, rename, link,
//!   truncate or device ioctl on any path. Files opened during setup (kernel, serial log,
//!   disk images, /dev/kvm) keep working: Landlock checks at open time.
//! * pathname Unix sockets (ABI 9, `LANDLOCK_ACCESS_FS_RESOLVE_UNIX`): connect(2) only
//!   beneath the directories given (the vsock UDS directory, for guest-initiated
//!   `<uds>_<port>` connections). On ABI < 9 connect(2) to a pathname socket is not
//!   restricted by Landlock (see docs/jail.md).
//! * TCP (ABI 4): no bind, no connect.
//! * scopes (ABI 6): no connect to abstract Unix sockets created outside this process, no
//!   signals to processes outside it.
//!
//! With ABI 8 the ruleset is enforced on every thread of the process at once
//! (LANDLOCK_RESTRICT_SELF_TSYNC); before that, on the calling thread and the threads it
//! creates later.

use std::path::PathBuf;

use ::landlock::{
    Access, AccessFs, AccessNet, PathBeneath, PathFd, RestrictSelfAttr, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

use super::JailError;

/// The newest ABI this module asks for; older kernels get what they support.
const TARGET_ABI: ABI = ABI::V9;

pub use ax_jail::landlock::LandlockOutcome;

fn err(e: impl std::fmt::Display) -> JailError {
    JailError::Landlock(e.to_string())
}

/// Restricts the calling thread (and, ABI ≥ 8, all threads) as the module doc says.
/// `unix_connect_dirs`: directories beneath which connect(2) to Unix sockets stays allowed.
pub fn restrict(unix_connect_dirs: &[PathBuf]) -> Result<LandlockOutcome, JailError> {
    let mut created = ::landlock::Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(err)?
        .handle_access(AccessNet::from_all(TARGET_ABI))
        .map_err(err)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?;
    for dir in unix_connect_dirs {
        let fd =
            PathFd::new(dir).map_err(|e| JailError::Landlock(format!("{}: {e}", dir.display())))?;
        created = created
            .add_rule(PathBeneath::new(fd, AccessFs::ResolveUnix))
            .map_err(err)?;
    }
    let created = created.all_threads(true).map_err(err)?;
    Ok(created.restrict_self().map_err(err)?.into())
}
