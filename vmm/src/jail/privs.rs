//! Privileges: PR_SET_NO_NEW_PRIVS, capabilities (capabilities(7)), namespaces (unshare(2)).
//!
//! Capabilities and no_new_privs are per-thread attributes inherited by threads created
//! later, so [`super::apply_process`] sets them on the main thread before any VMM thread
//! starts, and every thread entering the jail sets them again (cheap and idempotent).

use std::io;

use super::JailError;

/// `_LINUX_CAPABILITY_VERSION_3` (include/uapi/linux/capability.h): two 32-bit words.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// `CAP_SYS_ADMIN`
const CAP_SYS_ADMIN: u32 = 21;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// PR_SET_NO_NEW_PRIVS: no execve can ever grant privileges again (setuid bits, file caps).
pub fn no_new_privs() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailError::Privs(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn capget() -> io::Result<[CapData; 2]> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array as capget(2) expects for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// True if the calling thread has `cap` in its effective set.
fn has_effective(cap: u32) -> bool {
    capget()
        .map(|d| d[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0)
        .unwrap_or(false)
}

/// True if the calling thread may create namespaces (CAP_SYS_ADMIN).
pub fn can_unshare() -> bool {
    has_effective(CAP_SYS_ADMIN)
}

/// What [`drop_capabilities`] managed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CapsOutcome {
    /// Successful PR_CAPBSET_DROP calls, 0..=CAP_LAST_CAP (needs CAP_SETPCAP; 0 when not root).
    pub bounding_dropped: u32,
    /// The effective, permitted and inheritable sets are empty now.
    pub sets_cleared: bool,
}

/// Empties the bounding set (where permitted), the ambient set and the effective,
/// permitted and inheritable sets of the calling thread.
pub fn drop_capabilities() -> Result<CapsOutcome, JailError> {
    let mut out = CapsOutcome::default();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the capset below
    // removes. Without CAP_SETPCAP (not root) every drop fails with EPERM: nothing to do,
    // an unprivileged process has no capability to lose.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } == 0 {
            out.bounding_dropped += 1;
        } else if io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            break; // EINVAL: past CAP_LAST_CAP
        } else if cap == 0 {
            break; // EPERM: no CAP_SETPCAP, every drop would fail the same way
        }
    }
    // SAFETY: prctl with integer arguments only. EINVAL on kernels before 4.3: no ambient set.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array as capset(2) expects for version 3;
    // lowering all sets to empty is always permitted.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(JailError::Privs(format!(
            "capset: {}",
            io::Error::last_os_error()
        )));
    }
    out.sets_cleared = true;
    Ok(out)
}

/// The namespaces the jail enters by default, with their names for logs (~50 µs together).
const NAMESPACES: &[(libc::c_int, &str)] = &[
    // No System V IPC / POSIX message queues shared with the host.
    (libc::CLONE_NEWIPC, "ipc"),
    // A private hostname.
    (libc::CLONE_NEWUTS, "uts"),
];

/// The network namespace, on request only: ~0.5 ms of spawn time (plus the kernel's
/// asynchronous teardown), for little over what seccomp (sockets only on device threads,
/// AF_UNIX only) and Landlock (no TCP) already enforce. No network interfaces at all, not
/// even lo; pathname Unix sockets still work, as they are found through the file system,
/// not the network namespace (abstract ones do not: they are per network namespace).
const NET_NAMESPACE: (libc::c_int, &str) = (libc::CLONE_NEWNET, "net");

/// Moves the calling thread into new ipc and uts (and, if `net`, net) namespaces, each
/// where permitted (needs CAP_SYS_ADMIN); returns the ones entered.
pub fn unshare_namespaces(net: bool) -> Vec<&'static str> {
    if !can_unshare() {
        return Vec::new();
    }
    let mut entered = Vec::new();
    let net = net.then_some(&NET_NAMESPACE);
    for &(flag, name) in NAMESPACES.iter().chain(net) {
        // SAFETY: unshare with a single namespace flag.
        if unsafe { libc::unshare(flag) } == 0 {
            entered.push(name);
        } else {
            log::debug!(
                "jail: unshare({name} namespace) failed: {}",
                io::Error::last_os_error()
            );
        }
    }
    entered
}
