//! The jail: what a guest escape into ax-vmm lands in (docs/jail.md).
//!
//! Once the VM is built (RAM mapped, KVM set up, kernel loaded, devices and their files and
//! sockets open) ax-vmm needs no new file, no new privilege and only a handful of syscalls.
//! [`apply_process`] runs on the main thread between `Machine::new` and `Machine::run`:
//!
//! 1. namespaces ([`privs::unshare_namespaces`]): new ipc and uts (and on request net)
//!    namespaces where permitted (root), unless `Policy::namespaces` is off;
//! 2. Landlock ([`landlock::restrict`]): no file-system access, no TCP, no abstract Unix
//!    sockets or signals outside the process; best effort by kernel ABI;
//! 3. capabilities ([`privs::drop_capabilities`]): bounding set (where permitted), ambient,
//!    effective, permitted and inheritable sets emptied; PR_SET_NO_NEW_PRIVS;
//! 4. the spawner thread, which starts device threads (see below).
//!
//! Then each thread installs the seccomp filter of its kind ([`ThreadKind`], tables in
//! [`seccomp`]) as its first act: vCPU threads and device threads when they start
//! ([`spawn`]), the main thread right after it started the vCPUs ([`enter_thread`]).
//!
//! Seccomp filters stack (a thread keeps the filters it inherited), so a thread that starts
//! another must allow everything the child needs. vCPU threads start device threads (a
//! virtio device is activated when the guest writes DRIVER_OK, on a vCPU thread); rather
//! than give vCPU threads the device threads' socket syscalls, [`spawn`] hands device
//! threads' creation to the spawner thread, whose filter is the device filter plus thread
//! creation.
//!
//! With the jail off (`--no-jail`, `jail = false`) nothing here runs: [`spawn`] starts the
//! thread directly and [`enter_thread`] does nothing.

pub mod landlock;
pub mod privs;
pub mod seccomp;

use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::{Builder, JoinHandle};

/// What a syscall outside a thread's allowlist does (`kill`, the default, or `log`).
pub use ax_jail::SeccompMode;

/// The kinds of thread, each with its own seccomp allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM runs: waits for the exit event, stops and joins the
    /// vCPUs, tears down.
    Main,
    /// A vCPU thread: KVM_RUN and the PIO/MMIO exits it dispatches to devices.
    Vcpu,
    /// A device (event) thread: epoll over eventfds and host sockets, disk reads.
    Device,
    /// The jail's spawner thread: creates device threads (device ∪ thread creation).
    Spawner,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Spawner,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Device => "device",
            ThreadKind::Spawner => "spawner",
        })
    }
}

/// Errors setting up the jail (the VMM refuses to run the guest unjailed).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Building or installing a seccomp filter.
    #[error(
        "jail: seccomp: {0}; run with --seccomp=log to find the syscall, or --no-jail to debug"
    )]
    Seccomp(String),
    /// Landlock.
    #[error("jail: landlock: {0}; run with --no-jail to debug")]
    Landlock(String),
    /// no_new_privs or capabilities.
    #[error("jail: {0}; run with --no-jail to debug")]
    Privs(String),
    /// apply_process ran twice.
    #[error("jail: already applied")]
    AlreadyApplied,
    /// The spawner thread could not start.
    #[error("jail: cannot start the spawner thread: {0}")]
    Spawn(io::Error),
}

impl From<ax_jail::Error> for JailError {
    fn from(e: ax_jail::Error) -> Self {
        match e {
            ax_jail::Error::Seccomp(m) => JailError::Seccomp(m),
            ax_jail::Error::Landlock(m) => JailError::Landlock(m),
            ax_jail::Error::Privs(m) => JailError::Privs(m),
        }
    }
}

/// What to enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// What a syscall outside the allowlist does.
    pub seccomp: SeccompMode,
    /// Enter new ipc and uts namespaces where permitted (root).
    pub namespaces: bool,
    /// Also enter a new network namespace (needs `namespaces`; costs ~0.5 ms of spawn).
    pub net_namespace: bool,
    /// Directories beneath which connect(2) to pathname Unix sockets stays allowed
    /// (Landlock ABI ≥ 9; the vsock UDS directory).
    pub unix_connect_dirs: Vec<PathBuf>,
    /// The VM has devices with threads of their own (virtio): start the spawner thread.
    /// Without it (~80 µs saved at spawn) [`spawn`] refuses device threads.
    pub device_threads: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            seccomp: SeccompMode::Kill,
            namespaces: true,
            net_namespace: false,
            unix_connect_dirs: Vec::new(),
            device_threads: true,
        }
    }
}

/// What [`apply_process`] enforced.
#[derive(Debug)]
pub struct Report {
    /// Landlock outcome.
    pub landlock: landlock::LandlockOutcome,
    /// Namespaces entered.
    pub namespaces: Vec<&'static str>,
    /// Capabilities outcome.
    pub caps: privs::CapsOutcome,
    /// Seccomp mode of the per-thread filters.
    pub seccomp: SeccompMode,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "jail: seccomp per thread ({}), {}, namespaces: {}, capabilities: {} (bounding set {}), no_new_privs",
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
            if self.caps.sets_cleared { "none" } else { "kept" },
            if self.caps.bounding_dropped > 0 {
                "emptied"
            } else {
                "kept: no CAP_SETPCAP"
            },
        )
    }
}

type Job = Box<dyn FnOnce() + Send>;

struct Active {
    /// Per [`ThreadKind::index`]; empty for kinds not used by this VM.
    filters: Vec<seccompiler::BpfProgram>,
    soft_deny: seccompiler::BpfProgram,
    spawner: Mutex<Option<Sender<Job>>>,
}

static ACTIVE: OnceLock<Active> = OnceLock::new();

/// True once [`apply_process`] has run in this process.
pub fn is_active() -> bool {
    ACTIVE.get().is_some()
}

/// Jails the process (namespaces, Landlock, capabilities, no_new_privs) from the calling
/// thread, which must be the only one (threads started earlier keep their privileges: the
/// setup's helper threads are all joined by then); then threads entering the jail
/// ([`spawn`], [`enter_thread`]) install their seccomp filters. ~0.2 ms (release build).
pub fn apply_process(policy: &Policy) -> Result<Report, JailError> {
    if is_active() {
        return Err(JailError::AlreadyApplied);
    }
    // Compile everything first: after this point the process allocates but opens nothing.
    let filters = ThreadKind::ALL
        .iter()
        .map(|&k| match k {
            ThreadKind::Device | ThreadKind::Spawner if !policy.device_threads => Ok(Vec::new()),
            _ => seccomp::filter(k, policy.seccomp),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let soft_deny = seccomp::soft_deny()?;
    let namespaces = if policy.namespaces {
        privs::unshare_namespaces(policy.net_namespace)
    } else {
        Vec::new()
    };
    let landlock = landlock::restrict(&policy.unix_connect_dirs)?;
    let caps = privs::drop_capabilities()?;
    privs::no_new_privs()?;
    ACTIVE
        .set(Active {
            filters,
            soft_deny,
            spawner: Mutex::new(None),
        })
        .map_err(|_| JailError::AlreadyApplied)?;

    if !policy.device_threads {
        return Ok(Report {
            landlock,
            namespaces,
            caps,
            seccomp: policy.seccomp,
        });
    }
    let (tx, rx) = mpsc::channel::<Job>();
    Builder::new()
        .name("jail-spawner".into())
        .stack_size(128 << 10)
        .spawn(move || {
            enter_or_exit(ThreadKind::Spawner);
            for job in rx {
                job();
            }
        })
        .map_err(JailError::Spawn)?;
    if let Some(a) = ACTIVE.get() {
        *a.spawner.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }
    Ok(Report {
        landlock,
        namespaces,
        caps,
        seccomp: policy.seccomp,
    })
}

/// Installs the seccomp filter of `kind` on the calling thread (and sets no_new_privs).
/// Does nothing when the jail is off.
pub fn enter_thread(kind: ThreadKind) -> Result<(), JailError> {
    let Some(a) = ACTIVE.get() else {
        return Ok(());
    };
    let filter = &a.filters[kind.index()];
    if filter.is_empty() {
        return Err(JailError::Seccomp(format!(
            "no {kind} threads were expected in this VM (Policy::device_threads)"
        )));
    }
    privs::no_new_privs()?;
    // The soft-deny filter first: once the allowlist is in, seccomp(2) itself is refused.
    seccomp::install(&a.soft_deny)?;
    seccomp::install(filter)
}

/// [`enter_thread`], or stop the process: a thread must never run unjailed when the jail
/// is on.
fn enter_or_exit(kind: ThreadKind) {
    if let Err(e) = enter_thread(kind) {
        log::error!("cannot confine the {kind} thread: {e}");
        std::process::exit(1);
    }
}

/// Starts a thread of `kind` that installs its seccomp filter before running `f`.
/// With the jail on, device threads are created by the spawner thread (so they do not
/// inherit a vCPU thread's filter); other kinds are created by the caller.
pub fn spawn<F, T>(builder: Builder, kind: ThreadKind, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let body = move || {
        enter_or_exit(kind);
        f()
    };
    let spawner = match (kind, ACTIVE.get()) {
        (ThreadKind::Device, Some(a)) => {
            a.spawner.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
        _ => None,
    };
    let Some(spawner) = spawner else {
        if kind == ThreadKind::Device && is_active() {
            return Err(io::Error::other(
                "jail: no spawner thread for device threads (Policy::device_threads is off)",
            ));
        }
        return builder.spawn(body);
    };
    let (rtx, rrx) = mpsc::sync_channel(1);
    spawner
        .send(Box::new(move || {
            let _ = rtx.send(builder.spawn(body));
        }))
        .map_err(|_| io::Error::other("the jail's spawner thread is gone"))?;
    rrx.recv()
        .map_err(|_| io::Error::other("the jail's spawner thread did not answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_jail_spawn_and_enter_are_plain() {
        // Unit tests never call apply_process: the jail stays off in this process.
        assert!(!is_active());
        enter_thread(ThreadKind::Main).unwrap();
        let t = spawn(Builder::new(), ThreadKind::Device, || 7).unwrap();
        assert_eq!(t.join().unwrap(), 7);
    }
}
