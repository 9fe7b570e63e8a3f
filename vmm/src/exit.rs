//! Why a VM stopped, and the one-shot handle vCPUs and devices use to stop it.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The reason a VM stopped. The first reason recorded wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest asked for a reset through the i8042 controller (command 0xfe on port 0x64):
    /// a clean shutdown (Linux `reboot=k`, our test guests).
    Reset,
    /// The guest powered off (ACPI sleep state S5, or KVM_SYSTEM_EVENT_SHUTDOWN).
    PowerOff,
    /// KVM_EXIT_HLT: a vCPU halted with nothing left to wake it (only without an in-kernel
    /// LAPIC); treated as an orderly stop.
    Halted {
        /// vCPU index.
        vcpu: u8,
    },
    /// KVM_EXIT_SHUTDOWN: the vCPU triple faulted (KVM API doc §5, "KVM_EXIT_SHUTDOWN").
    TripleFault {
        /// vCPU index.
        vcpu: u8,
        /// Guest RIP when it happened.
        rip: u64,
    },
    /// KVM_EXIT_INTERNAL_ERROR (e.g. emulation failure).
    InternalError {
        /// vCPU index.
        vcpu: u8,
        /// `kvm_run.internal.suberror` (1 = emulation, 2 = simultaneous #PF, 3 = delivery event).
        suberror: u32,
        /// Guest RIP.
        rip: u64,
    },
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest.
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// `hardware_entry_failure_reason`.
        reason: u64,
        /// Guest RIP.
        rip: u64,
    },
    /// Another exit the VMM does not handle, or a KVM_RUN error.
    Error {
        /// vCPU index.
        vcpu: u8,
        /// What happened (names the exit reason).
        what: String,
        /// Guest RIP (0 when it could not be read).
        rip: u64,
    },
}

impl GuestExit {
    /// True for a guest-initiated, orderly stop.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            GuestExit::Reset | GuestExit::PowerOff | GuestExit::Halted { .. }
        )
    }
}

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestExit::Reset => write!(f, "guest reset through the i8042 controller (clean shutdown)"),
            GuestExit::PowerOff => write!(f, "guest powered off (clean shutdown)"),
            GuestExit::Halted { vcpu } => write!(f, "vCPU {vcpu} halted (KVM_EXIT_HLT)"),
            GuestExit::TripleFault { vcpu, rip } => write!(
                f,
                "guest triple fault (KVM_EXIT_SHUTDOWN) on vCPU {vcpu} at RIP {rip:#x}; the guest kernel crashed before it could report why: boot it with earlyprintk=serial to see its last messages"
            ),
            GuestExit::InternalError { vcpu, suberror, rip } => write!(
                f,
                "KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror {suberror}{}) on vCPU {vcpu} at RIP {rip:#x}; the host KVM could not run this guest instruction (on kvm-pvm, mask the CPU feature with cpu_template = \"pvm\")",
                match suberror {
                    1 => ": emulation failure",
                    2 => ": simultaneous exceptions",
                    3 => ": event delivery failure",
                    _ => "",
                }
            ),
            GuestExit::FailEntry { vcpu, reason, rip } => write!(
                f,
                "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}) on vCPU {vcpu} at RIP {rip:#x}; the vCPU state is invalid"
            ),
            GuestExit::Error { vcpu, what, rip } => write!(f, "vCPU {vcpu} stopped: {what} at RIP {rip:#x}"),
        }
    }
}

/// Shared between vCPU threads, devices and the main thread: the first `request` records
/// the reason and signals the eventfd the main thread waits on.
#[derive(Clone)]
pub struct ExitHandle {
    inner: Arc<(Mutex<Option<GuestExit>>, EventFd)>,
}

impl ExitHandle {
    /// A new, unsignalled handle.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitHandle {
            inner: Arc::new((Mutex::new(None), EventFd::new(EFD_NONBLOCK)?)),
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the waiter.
    pub fn request(&self, reason: GuestExit) {
        let mut r = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
            // An eventfd write only fails on counter overflow, which a single write cannot reach.
            let _ = self.inner.1.write(1);
        }
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<GuestExit> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once a reason is recorded.
    pub fn requested(&self) -> bool {
        self.reason().is_some()
    }

    /// Blocks until a reason is recorded and returns it.
    pub fn wait(&self) -> GuestExit {
        loop {
            if let Some(r) = self.reason() {
                return r;
            }
            let mut pfd = libc::pollfd {
                fd: self.eventfd_raw(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is a valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, -1) };
        }
    }

    fn eventfd_raw(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.inner.1.as_raw_fd()
    }
}
