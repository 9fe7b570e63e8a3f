//! Process-wide child reaper.
//!
//! agentd is PID 1, so every orphan in the guest becomes its child and must be reaped, while
//! the exit statuses of session processes must reach their sessions. One thread does both:
//! a `SIGCHLD` handler writes a byte to a self-pipe, the thread wakes, calls
//! `waitpid(-1, WNOHANG)` until nothing is left (waitpid(2)), and hands each status whose PID
//! was registered with [`spawn`] to its callback; other statuses (orphans) are dropped.
//!
//! Spawning and reaping share one lock, so a child cannot be reaped before its PID is
//! registered, and `std::process::Command::spawn` (which itself `waitpid`s a child whose
//! `exec` failed) never races with the reaper.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Called once, on the reaper thread, with the `waitpid` status word of the registered child.
pub type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

/// How a child ended (decoded from the `waitpid` status word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`; 0..=255.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// Decodes a raw `waitpid` status (`WIFEXITED`/`WEXITSTATUS`, `WIFSIGNALED`/`WTERMSIG`).
    pub fn from_raw(status: i32) -> ExitStatus {
        if libc::WIFEXITED(status) {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        } else {
            ExitStatus::Signal(libc::WTERMSIG(status))
        }
    }
}

struct Reaper {
    callbacks: Mutex<HashMap<i32, OnExit>>,
    wake_w: OwnedFd,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();
static WAKE_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = WAKE_FD.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        let saved = unsafe { *libc::__errno_location() };
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking, a full pipe
        // already means "wake up".
        unsafe { libc::write(fd, b"c".as_ptr().cast(), 1) };
        unsafe { *libc::__errno_location() = saved };
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| {
        let mut fds = [0i32; 2];
        // SAFETY: plain pipe2(2) into a 2-element array.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert!(rc == 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: both fds were just created and are owned here.
        let (r, w) = unsafe {
            use std::os::fd::FromRawFd;
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        WAKE_FD.store(w.as_raw_fd(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: installs an async-signal-safe handler for SIGCHLD.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigchld as *const () as usize;
            sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
        }
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_loop(r))
            .expect("spawn reaper thread");
        Reaper {
            callbacks: Mutex::new(HashMap::new()),
            wake_w: w,
        }
    })
}

static SPAWN_LOCK: Mutex<()> = Mutex::new(());

fn reap_loop(wake_r: OwnedFd) {
    loop {
        let mut pfd = libc::pollfd {
            fd: wake_r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // A missed wake-up only delays reaping by the timeout.
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        let mut buf = [0u8; 64];
        // SAFETY: non-blocking read into a local buffer.
        while unsafe { libc::read(wake_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        let (done, _) = reap_now();
        for (cb, st) in done {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(st))).is_err() {
                log::error!("reaper: exit callback panicked");
            }
        }
    }
}

/// Reaps every exited child now; returns the callbacks to run (outside the lock) and
/// whether this process has no children left at all (`ECHILD`).
fn reap_now() -> (Vec<(OnExit, ExitStatus)>, bool) {
    let _g = lock(&SPAWN_LOCK);
    let r = match REAPER.get() {
        Some(r) => r,
        None => return (Vec::new(), false),
    };
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 {
            let none = io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
            return (out, none);
        }
        if pid == 0 {
            break;
        }
        if let Some(cb) = lock(&r.callbacks).remove(&pid) {
            out.push((cb, ExitStatus::from_raw(status)));
        } else {
            log::debug!("reaped orphan {pid}");
        }
    }
    (out, false)
}

/// Starts the reaper (idempotent). Call early in PID 1 so orphans are reaped from the start.
pub fn start() {
    let _ = reaper();
}

/// Runs `spawn` under the reaper's lock; it must start exactly one child and return its PID,
/// a value for the caller, and the callback to run when that child exits. Errors from `spawn`
/// are returned unchanged.
pub fn spawn<T>(spawn: impl FnOnce() -> io::Result<(i32, T, OnExit)>) -> io::Result<(i32, T)> {
    let r = reaper();
    let g = lock(&SPAWN_LOCK);
    let (pid, t, on_exit) = spawn()?;
    lock(&r.callbacks).insert(pid, on_exit);
    drop(g);
    // The child may have exited before it was registered; make sure we look.
    // SAFETY: write(2) of one byte to our own non-blocking pipe.
    unsafe { libc::write(r.wake_w.as_raw_fd(), b"s".as_ptr().cast(), 1) };
    Ok((pid, t))
}

/// Waits up to `timeout` for all children of this process to be gone (used by power-off).
/// Returns whether none are left.
pub fn wait_all(timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (done, none_left) = reap_now();
        for (cb, st) in done {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(st)));
        }
        if none_left {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
