//! Privileges: PR_SET_NO_NEW_PRIVS, capabilities (capabilities(7)), namespaces (unshare(2)).
//!
//! Capabilities and no_new_privs are per-thread attributes inherited by threads created
//! later, so a jail sets them on the main thread before its worker threads start.

use std::io;

use crate::Error;

/// `_LINUX_CAPABILITY_VERSION_3` (include/uapi/linux/capability.h): two 32-bit words.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Capability numbers (include/uapi/linux/capability.h) the jails refer to.
pub mod cap {
    /// Change file owners (chown(2)) arbitrarily.
    pub const CHOWN: u32 = 0;
    /// Bypass file read, write and execute permission checks.
    pub const DAC_OVERRIDE: u32 = 1;
    /// Bypass file read and directory search checks (and open_by_handle_at(2)).
    pub const DAC_READ_SEARCH: u32 = 2;
    /// Bypass checks that the file's owner is the caller (chmod, utimes, xattrs on others'
    /// files).
    pub const FOWNER: u32 = 3;
    /// Keep set-user/group-ID bits on files the caller does not own / whose group it is not in.
    pub const FSETID: u32 = 4;
    /// Modify the bounding set (PR_CAPBSET_DROP).
    pub const SETPCAP: u32 = 8;
    /// Create device nodes (mknod(2) of character/block devices, incl. overlayfs whiteouts).
    pub const MKNOD: u32 = 27;
    /// Many administrative operations, among them `trusted.*` xattrs and unshare(2).
    pub const SYS_ADMIN: u32 = 21;
    /// Set file capabilities (`security.capability` xattr).
    pub const SETFCAP: u32 = 31;

    /// The name capabilities(7) uses, for log lines and docs.
    pub fn name(cap: u32) -> String {
        match cap {
            CHOWN => "CAP_CHOWN".into(),
            DAC_OVERRIDE => "CAP_DAC_OVERRIDE".into(),
            DAC_READ_SEARCH => "CAP_DAC_READ_SEARCH".into(),
            FOWNER => "CAP_FOWNER".into(),
            FSETID => "CAP_FSETID".into(),
            SETPCAP => "CAP_SETPCAP".into(),
            MKNOD => "CAP_MKNOD".into(),
            SYS_ADMIN => "CAP_SYS_ADMIN".into(),
            SETFCAP => "CAP_SETFCAP".into(),
            n => format!("cap {n}"),
        }
    }
}

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
pub fn no_new_privs() -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::Privs(format!(
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

fn bit(data: &[CapData; 2], cap: u32, f: impl Fn(&CapData) -> u32) -> bool {
    cap < 64 && f(&data[(cap / 32) as usize]) & (1 << (cap % 32)) != 0
}

/// True if the calling thread has `cap` in its effective set.
pub fn has_effective(cap: u32) -> bool {
    capget()
        .map(|d| bit(&d, cap, |c| c.effective))
        .unwrap_or(false)
}

/// The calling thread's effective set as a bit mask (bit n = capability n).
pub fn effective_mask() -> u64 {
    capget()
        .map(|d| u64::from(d[0].effective) | (u64::from(d[1].effective) << 32))
        .unwrap_or(0)
}

/// True if the calling thread may create namespaces (CAP_SYS_ADMIN).
pub fn can_unshare() -> bool {
    has_effective(cap::SYS_ADMIN)
}

/// What [`drop_capabilities`] managed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CapsOutcome {
    /// Successful PR_CAPBSET_DROP calls, 0..=CAP_LAST_CAP (needs CAP_SETPCAP; 0 when not root).
    pub bounding_dropped: u32,
    /// The effective, permitted and inheritable sets hold nothing outside the kept set now.
    pub sets_cleared: bool,
    /// Capabilities still effective afterwards (bit n = capability n): the kept ones the
    /// thread had.
    pub kept: u64,
}

impl CapsOutcome {
    /// The kept capabilities by name, comma-separated ("none" when empty).
    pub fn kept_names(&self) -> String {
        let names: Vec<String> = (0..64)
            .filter(|c| self.kept & (1u64 << c) != 0)
            .map(cap::name)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }
}

/// Drops every capability not in `keep` from the bounding set (where permitted), clears the
/// ambient set, and lowers the effective and permitted sets to those of `keep` the thread
/// has (the inheritable set to empty). `keep = &[]` leaves no capability at all.
pub fn drop_capabilities(keep: &[u32]) -> Result<CapsOutcome, Error> {
    let keep_mask = keep
        .iter()
        .filter(|&&c| c < 64)
        .fold(0u64, |m, &c| m | (1u64 << c));
    let mut out = CapsOutcome::default();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the capset below
    // removes (unless kept). Without CAP_SETPCAP (not root) every drop fails with EPERM:
    // nothing to do, an unprivileged process has no capability to lose.
    for c in 0..64u32 {
        if keep_mask & (1u64 << c) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c, 0, 0, 0) } == 0 {
            out.bounding_dropped += 1;
        } else if io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            break; // EINVAL: past CAP_LAST_CAP
        } else if out.bounding_dropped == 0 {
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
    let now = capget().map_err(|e| Error::Privs(format!("capget: {e}")))?;
    let mut data = [CapData::default(); 2];
    for (i, d) in data.iter_mut().enumerate() {
        let k = (keep_mask >> (32 * i)) as u32;
        d.permitted = now[i].permitted & k;
        d.effective = now[i].effective & k;
    }
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and a two-element data array as capset(2) expects for version 3;
    // lowering sets to a subset of themselves is always permitted.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(Error::Privs(format!(
            "capset: {}",
            io::Error::last_os_error()
        )));
    }
    out.sets_cleared = true;
    out.kept = u64::from(data[0].effective) | (u64::from(data[1].effective) << 32);
    Ok(out)
}

/// A namespace to enter, with its name for logs.
pub type Namespace = (libc::c_int, &'static str);

/// No System V IPC / POSIX message queues shared with the host.
pub const IPC: Namespace = (libc::CLONE_NEWIPC, "ipc");
/// A private hostname.
pub const UTS: Namespace = (libc::CLONE_NEWUTS, "uts");
/// No network interfaces at all, not even lo; ~0.5 ms of spawn time plus the kernel's
/// asynchronous teardown. Pathname Unix sockets still work (found through the file system),
/// abstract ones do not (they are per network namespace).
pub const NET: Namespace = (libc::CLONE_NEWNET, "net");

/// Moves the calling thread into new namespaces, each where permitted (needs
/// CAP_SYS_ADMIN); returns the names of the ones entered (none without CAP_SYS_ADMIN).
pub fn unshare_namespaces(which: &[Namespace]) -> Vec<&'static str> {
    if !can_unshare() {
        return Vec::new();
    }
    let mut entered = Vec::new();
    for &(flag, name) in which {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_names_lists_capabilities() {
        let o = CapsOutcome {
            kept: (1 << cap::MKNOD) | (1 << cap::CHOWN),
            ..Default::default()
        };
        assert_eq!(o.kept_names(), "CAP_CHOWN,CAP_MKNOD");
        assert_eq!(CapsOutcome::default().kept_names(), "none");
    }

    #[test]
    fn dropping_in_a_thread_keeps_exactly_the_kept_set() {
        // Capabilities are per thread: drop in a scratch thread, the test process keeps its own.
        let before = effective_mask();
        let (out, after) = std::thread::spawn(|| {
            let out = drop_capabilities(&[cap::MKNOD, cap::CHOWN]).unwrap();
            (out, effective_mask())
        })
        .join()
        .unwrap();
        let want = before & ((1 << cap::MKNOD) | (1 << cap::CHOWN));
        assert_eq!(after, want);
        assert_eq!(out.kept, want);
        assert!(out.sets_cleared);
        assert_eq!(effective_mask(), before, "the calling thread is unaffected");
    }
}
