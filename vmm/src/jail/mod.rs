//! The jail: what a guest escape into ax-vmm lands in (docs/jail.md).
//!
//! Once the VM is built (RAM mapped, KVM set up, kernel loaded, devices and their files and
//! sockets open) ax-vmm needs no new file, no new privilege and only a handful of syscalls.
//! [`apply_process`] runs on the main thread between `Machine::new` and `Machine::run`; the
//! sequence is the shared one of [`ax_jail::Jail::apply`] with per-thread filters:
//!
//! 1. namespaces: new ipc and uts (and on request net) namespaces where permitted (root),
//!    unless `Policy::namespaces` is off;
//! 2. Landlock ([`landlock::restrict`]): no file-system access, no TCP, no abstract Unix
//!    sockets or signals outside the process; best effort by kernel ABI;
//! 3. capabilities: bounding set (where permitted), ambient, effective, permitted and
//!    inheritable sets emptied; PR_SET_NO_NEW_PRIVS;
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
use std::sync::Mutex;
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

/// Errors setting up the jail (the VMM refuses to run the guest unjailed): the shared
/// [`ax_jail::Error`].
pub type JailError = ax_jail::Error;

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

/// What [`apply_process`] enforced (the shared [`ax_jail::Report`]).
pub type Report = ax_jail::Report;

type Job = Box<dyn FnOnce() + Send>;

/// The jail's state: the per-thread filters once [`apply_process`] ran.
static JAIL: ax_jail::Jail<ThreadKind> = ax_jail::Jail::new();

/// The spawner thread's job queue (None without device threads).
static SPAWNER: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// True once [`apply_process`] has run in this process.
pub fn is_active() -> bool {
    JAIL.is_active()
}

/// Jails the process (namespaces, Landlock, capabilities, no_new_privs) from the calling
/// thread, which must be the only one (threads started earlier keep their privileges: the
/// setup's helper threads are all joined by then); then threads entering the jail
/// ([`spawn`], [`enter_thread`]) install their seccomp filters. ~0.2 ms (release build).
pub fn apply_process(policy: &Policy) -> Result<Report, JailError> {
    use ax_jail::privs::{IPC, NET, UTS};
    // Kinds not used by this VM get no filter (entering one is an error).
    let kinds = ThreadKind::ALL
        .iter()
        .filter(|k| policy.device_threads || !matches!(k, ThreadKind::Device | ThreadKind::Spawner))
        .map(|&k| (k, seccomp::rules(k)))
        .collect();
    let namespaces: &[ax_jail::privs::Namespace] = match (policy.namespaces, policy.net_namespace) {
        (false, _) => &[],
        (true, false) => &[IPC, UTS],
        (true, true) => &[IPC, UTS, NET],
    };
    let mut report = JAIL.apply(
        ax_jail::Setup {
            label: "seccomp per thread",
            seccomp: policy.seccomp,
            soft_deny: seccomp::soft_deny_rules(),
            filters: ax_jail::Filters::PerThread(kinds),
            // The setup's helper threads are joined by now; ax-vmm does not check.
            single_threaded: false,
            namespaces,
            keep_caps: &[],
        },
        || landlock::restrict(&policy.unix_connect_dirs),
    )?;
    report.took = None; // main.rs logs the time itself
    if !policy.device_threads {
        return Ok(report);
    }
    let (tx, rx) = mpsc::channel::<Job>();
    Builder::new()
        .name("jail-spawner".into())
        .stack_size(128 << 10)
        .spawn(move || {
            JAIL.enter_or_exit(ThreadKind::Spawner);
            for job in rx {
                job();
            }
        })
        .map_err(|e| JailError::Spawn("spawner", e))?;
    *SPAWNER.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    Ok(report)
}

/// Installs the seccomp filter of `kind` on the calling thread (and sets no_new_privs).
/// Does nothing when the jail is off. Errors: no `kind` threads were expected in this VM
/// (Policy::device_threads), or installing failed.
pub fn enter_thread(kind: ThreadKind) -> Result<(), JailError> {
    JAIL.enter(kind)
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
        JAIL.enter_or_exit(kind);
        f()
    };
    let spawner = match kind {
        ThreadKind::Device if is_active() => {
            SPAWNER.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
