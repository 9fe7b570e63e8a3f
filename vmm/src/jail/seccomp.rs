//! Per-thread-kind seccomp-bpf allowlists (seccomp(2), SECCOMP_SET_MODE_FILTER), compiled
//! with seccompiler.
//!
//! Every thread kind gets the [`base`] set (the base group shared by all jails,
//! [`ax_jail::seccomp::base`], plus the soft-denied unlink calls) and what its own job needs; anything else takes the default action:
//! SECCOMP_RET_KILL_PROCESS, or SECCOMP_RET_LOG with `--seccomp=log` (the kernel logs the
//! syscall to the audit log / dmesg as `type=1326 ... syscall=N` and lets it through).
//!
//! The tables were found by running the test guests under `strace -f` with `--no-jail`
//! and are explained, per entry, in docs/jail.md. Arguments are filtered where it is cheap:
//! ioctl request numbers (KVM_RUN ...), `socket` domains (AF_UNIX only), `mmap`/`mprotect`
//! (never PROT_EXEC), `clone` flags (threads only), `tgkill` (this process only), `prctl`
//! (PR_SET_NAME only).
//!
//! Filters stack: a thread keeps every filter it inherited and the strictest verdict wins.
//! So a thread that spawns others must hold a superset of its children's filters; that is
//! why device threads come from the [`super::ThreadKind::Spawner`] thread (device ∪ thread
//! creation) and never from a vCPU thread.

use ax_jail::seccomp::{allow, allow_arg_in, Rules};
use kvm_bindings::{
    kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irqfd, kvm_msi, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region,
};
use seccompiler::BpfProgram;

use super::{JailError, SeccompMode, ThreadKind};

/// `_IOC` encoding (include/uapi/asm-generic/ioctl.h): dir(2) | size(14) | type(8) | nr(8).
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
/// KVM's ioctl type (include/uapi/linux/kvm.h `KVMIO`).
const KVMIO: u64 = 0xAE;

/// KVM ioctl request numbers (include/uapi/linux/kvm.h).
pub mod kvm_ioctl {
    use super::*;
    /// `_IO(KVMIO, 0x80)`
    pub const KVM_RUN: u64 = ioc(IOC_NONE, KVMIO, 0x80, 0);
    /// `_IOR(KVMIO, 0x81, struct kvm_regs)`
    pub const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, std::mem::size_of::<kvm_regs>());
    /// `_IOR(KVMIO, 0x83, struct kvm_sregs)`
    pub const KVM_GET_SREGS: u64 = ioc(IOC_READ, KVMIO, 0x83, std::mem::size_of::<kvm_sregs>());
    /// `_IOW(KVMIO, 0x61, struct kvm_irq_level)`
    pub const KVM_IRQ_LINE: u64 = ioc(IOC_WRITE, KVMIO, 0x61, std::mem::size_of::<kvm_irq_level>());
    /// `_IOW(KVMIO, 0x6a, struct kvm_irq_routing)`
    pub const KVM_SET_GSI_ROUTING: u64 = ioc(
        IOC_WRITE,
        KVMIO,
        0x6a,
        std::mem::size_of::<kvm_irq_routing>(),
    );
    /// `_IOW(KVMIO, 0x76, struct kvm_irqfd)`
    pub const KVM_IRQFD: u64 = ioc(IOC_WRITE, KVMIO, 0x76, std::mem::size_of::<kvm_irqfd>());
    /// `_IOW(KVMIO, 0x79, struct kvm_ioeventfd)`
    pub const KVM_IOEVENTFD: u64 =
        ioc(IOC_WRITE, KVMIO, 0x79, std::mem::size_of::<kvm_ioeventfd>());
    /// `_IOW(KVMIO, 0xa5, struct kvm_msi)`
    pub const KVM_SIGNAL_MSI: u64 = ioc(IOC_WRITE, KVMIO, 0xa5, std::mem::size_of::<kvm_msi>());
    /// `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)`
    pub const KVM_SET_USER_MEMORY_REGION: u64 = ioc(
        IOC_WRITE,
        KVMIO,
        0x46,
        std::mem::size_of::<kvm_userspace_memory_region>(),
    );
}

/// Every thread: the shared base group ([`ax_jail::seccomp::base`]: memory, futexes,
/// signals, time, ids, writing logs and serial output to fds opened at setup, closing fds,
/// exit) and `unlink`/`unlinkat`, turned into ENOSYS by [`soft_deny`] (the vsock muxer
/// removes its socket file on drop; in the jail that is left to whoever started the VMM).
fn base(r: &mut Rules) {
    ax_jail::seccomp::base(r);
    allow(r, &[libc::SYS_unlink, libc::SYS_unlinkat]);
}

/// vCPU threads: KVM_RUN and the ioctls of the exit path, plus what a virtio device
/// activation (written by the guest on a vCPU thread) does before it hands the device
/// thread's creation to the spawner.
fn vcpu(r: &mut Rules) {
    use kvm_ioctl::*;
    use libc::*;
    allow_arg_in(
        r,
        SYS_ioctl,
        1,
        &[
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_IRQ_LINE,
            KVM_IRQFD,
            KVM_IOEVENTFD,
            KVM_SIGNAL_MSI,
            KVM_SET_GSI_ROUTING,
        ],
    );
    // Activation: queue eventfd clones, the worker's epoll and kill eventfd.
    allow(
        r,
        &[SYS_eventfd2, SYS_epoll_create1, SYS_epoll_ctl, SYS_dup],
    );
}

/// Device (event) threads: an epoll loop over eventfds, timerfds and host Unix sockets
/// (virtio-vsock hybrid UDS: accept4 on the listener, connect to `<uds>_<port>`), reads of
/// disk images opened at setup.
fn device(r: &mut Rules) {
    use libc::*;
    allow(
        r,
        &[
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_epoll_ctl,
            SYS_epoll_create1,
            SYS_eventfd2,
            SYS_dup,
            SYS_readv,
            SYS_pread64,
            SYS_preadv,
            SYS_preadv2,
            SYS_pwrite64,
            SYS_pwritev,
            SYS_pwritev2,
            SYS_fsync,
            SYS_fdatasync,
            SYS_lseek,
            SYS_fstat,
            SYS_timerfd_settime,
            SYS_timerfd_gettime,
            SYS_accept4,
            SYS_connect,
            SYS_recvfrom,
            SYS_recvmsg,
            SYS_sendto,
            SYS_sendmsg,
            SYS_shutdown,
            SYS_getsockopt,
            SYS_getsockname,
            SYS_getpeername,
            SYS_poll,
            SYS_ppoll,
        ],
    );
    // New sockets: Unix domain only (connect(2) cannot be filtered by address: its
    // sockaddr is in memory; see docs/jail.md for what covers it).
    allow_arg_in(r, SYS_socket, 0, &[AF_UNIX as u64]);
    // std's set_nonblocking / set_cloexec on sockets (asm-generic/ioctls.h).
    allow_arg_in(r, SYS_ioctl, 1, &[FIONBIO, FIOCLEX, FIONCLEX]);
}

/// The main thread once the VM runs: wait for the exit eventfd, kick vCPUs, join threads,
/// tear down. Tearing down deletes the memory slots (KVM_SET_USER_MEMORY_REGION with size 0,
/// see `Vm::delete_memory`) once every vCPU thread has stopped.
fn main_thread(r: &mut Rules) {
    use libc::*;
    allow(r, &[SYS_poll, SYS_ppoll, SYS_epoll_wait, SYS_epoll_pwait]);
    allow_arg_in(r, SYS_ioctl, 1, &[kvm_ioctl::KVM_SET_USER_MEMORY_REGION]);
}

/// The allowlist of `kind` (syscall number → rules).
pub fn rules(kind: ThreadKind) -> Rules {
    let mut r = Rules::new();
    base(&mut r);
    match kind {
        ThreadKind::Main => main_thread(&mut r),
        ThreadKind::Vcpu => vcpu(&mut r),
        ThreadKind::Device => device(&mut r),
        ThreadKind::Spawner => {
            device(&mut r);
            ax_jail::seccomp::thread_creation(&mut r);
        }
    }
    r
}

/// The BPF program for `kind`: allow the table, else kill the process (or log).
pub fn filter(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, JailError> {
    ax_jail::seccomp::allowlist(rules(kind), mode)
}

/// The second filter every jailed thread carries: a few calls fail softly with ENOSYS
/// instead of killing the process. clone3 takes its flags in memory, out of a filter's
/// reach, and glibc falls back to clone(2) (whose flags the allowlist checks) on ENOSYS;
/// unlink/unlinkat are what a device's Drop does to remove its socket file (the caller of
/// the VMM cleans those up). Filters stack and the strictest verdict wins, so for a kind
/// whose allowlist lacks one of these it still kills.
pub fn soft_deny() -> Result<BpfProgram, JailError> {
    ax_jail::seccomp::soft_deny_table(soft_deny_rules())
}

/// The table of [`soft_deny`]: `clone3`, `unlink`, `unlinkat`.
pub fn soft_deny_rules() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[libc::SYS_clone3, libc::SYS_unlink, libc::SYS_unlinkat],
    );
    r
}

/// Installs `prog` on the calling thread (sets PR_SET_NO_NEW_PRIVS first).
pub fn install(prog: &BpfProgram) -> Result<(), JailError> {
    ax_jail::seccomp::install(prog)
}

#[cfg(test)]
mod tests {
    use super::kvm_ioctl::*;
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_IRQ_LINE, 0x4008_ae61);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
    }

    #[test]
    fn every_kind_compiles_and_none_allows_opening_files_or_exec() {
        for kind in ThreadKind::ALL {
            let r = rules(kind);
            for nr in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_openat2,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_unshare,
                libc::SYS_setns,
                libc::SYS_bpf,
                libc::SYS_bind,
                libc::SYS_listen,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_kill,
            ] {
                assert!(!r.contains_key(&nr), "{kind:?} allows syscall {nr}");
            }
            for mode in [SeccompMode::Kill, SeccompMode::Log] {
                assert!(!filter(kind, mode).unwrap().is_empty());
            }
        }
        assert!(!soft_deny().unwrap().is_empty());
    }

    #[test]
    fn only_device_threads_may_make_sockets_and_only_vcpus_run_kvm() {
        for kind in ThreadKind::ALL {
            let r = rules(kind);
            let sockets = matches!(kind, ThreadKind::Device | ThreadKind::Spawner);
            for nr in [
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_accept4,
                libc::SYS_sendmsg,
            ] {
                assert_eq!(r.contains_key(&nr), sockets, "{kind:?} syscall {nr}");
            }
            let ioctl = r.get(&libc::SYS_ioctl).map(Vec::len).unwrap_or(0);
            match kind {
                ThreadKind::Vcpu => assert_eq!(ioctl, 8),
                ThreadKind::Main => assert_eq!(ioctl, 1),
                _ => assert_eq!(ioctl, 3),
            }
            let clone = r.contains_key(&libc::SYS_clone);
            assert_eq!(clone, kind == ThreadKind::Spawner, "{kind:?} clone");
        }
    }
}
