//! vhost-user backend plumbing shared by ax-fsd (virtio-fs), ax-netstack (virtio-net) and
//! ax-vsock (virtio-vsock): what every back-end process does the same way, so each backend
//! crate keeps only its device logic.
//!
//! - [`listen`] binds the vhost-user Unix socket (vhost-user spec, "Back-end" role, server
//!   mode) before the frontend starts; [`wait_for_frontend`] blocks until the frontend
//!   connected (the jails go on from there, docs/jail.md);
//! - [`serve`] runs a `vhost_user_backend::VhostUserDaemon` for exactly one frontend, with
//!   extra file descriptors the backend wants polled ([`Watch`]), and treats the frontend
//!   going away as the normal end; [`serve_with_hook`] runs a hook between starting the
//!   vring workers and accepting the frontend (where the jails install the serving thread's
//!   seccomp filter);
//! - [`process_available`]: the loop over a driver-to-device queue's available ring (with
//!   `VIRTIO_RING_F_EVENT_IDX` notification suppression);
//! - [`config_slice`] and [`ExitEvent`]: the parts of `VhostUserBackend` every device fills
//!   in the same way (`get_config`, `exit_event`);
//! - [`log_to_stderr`]: the processes' logger (`<prog>: <LEVEL>: <message>` on stderr, level
//!   from an environment variable);
//! - `testing` (feature `testing`, for dev-dependencies): a vhost-user frontend in the test
//!   process, guest RAM in a memfd and split virtqueues laid out by hand.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use anyhow::anyhow;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

mod logging;
mod queue;
#[cfg(feature = "testing")]
pub mod testing;

pub use logging::log_to_stderr;
pub use queue::process_available;

/// A bound vhost-user listening socket, created before the frontend starts (its existence on
/// disk tells the supervisor the backend is ready).
pub struct VhostUserListener {
    inner: Listener,
}

impl AsRawFd for VhostUserListener {
    /// The listening socket (e.g. to poll for a pending frontend connection).
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl VhostUserListener {
    /// Blocks until a frontend is waiting on the socket; see [`wait_for_frontend`].
    pub fn wait_for_frontend(&self) -> io::Result<()> {
        wait_for_frontend(self)
    }
}

/// Blocks until a frontend is waiting on the listening socket `listener` (a pending
/// connection: POLLIN), so a jail can go on after it connected and before anything is
/// served. Any listening socket does (a [`VhostUserListener`], a `UnixListener`, a raw fd).
/// Retries on EINTR. Errors: poll(2) failing otherwise.
pub fn wait_for_frontend(listener: &impl AsRawFd) -> io::Result<()> {
    loop {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n > 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Binds the vhost-user socket at `socket` (replacing a stale socket file). Call it before
/// starting the frontend (VMM), then hand the listener to [`serve`]. Errors: one line naming
/// the path (e.g. its directory is missing or not writable).
pub fn listen(socket: &Path) -> anyhow::Result<VhostUserListener> {
    let inner = Listener::new(socket, true).map_err(|e| {
        anyhow!(
            "cannot listen on vhost-user socket {}: {e} (is the directory writable?)",
            socket.display()
        )
    })?;
    Ok(VhostUserListener { inner })
}

/// A file descriptor besides the vrings that the daemon's first worker thread polls for the
/// backend: when `fd` is readable, the backend's `handle_event` runs with
/// `device_event == event`.
pub struct Watch<'a> {
    /// The file descriptor (e.g. an eventfd), polled for `EPOLLIN`.
    pub fd: RawFd,
    /// The `device_event` it raises: above `num_queues()`, since the daemon reserves
    /// `[0, num_queues]` (one per queue, then its exit event).
    pub event: u16,
    /// What it is, for the error message ("cannot register {what}: …").
    pub what: &'a str,
}

/// Serves one vhost-user frontend on `listener` with `backend` (vhost-user spec, back-end
/// side) until it disconnects; the daemon's thread is called `name`. Registers `watch` on the
/// first worker thread first. Blocking: run it on a thread. On return every worker thread has
/// been sent its exit event.
///
/// A frontend going away (the VM powered off: `Disconnected` or `PartialMessage`) is `Ok`.
/// Errors: creating the daemon, registering a [`Watch`], or any other vhost-user failure.
pub fn serve<T>(
    name: &str,
    backend: T,
    listener: VhostUserListener,
    watch: &[Watch<'_>],
) -> anyhow::Result<()>
where
    T: VhostUserBackend<Bitmap = ()> + Clone + 'static,
    T::Vring: Clone + Send + Sync,
{
    serve_with_hook(name, backend, listener, watch, || Ok(()))
}

/// [`serve`], calling `workers_started` on the calling thread once the daemon's vring worker
/// threads exist and before the frontend's connection is accepted. The request-handler
/// thread is created after it, by the calling thread: a jail installs the calling thread's
/// own seccomp filter there, which the workers do not get and the request handler inherits
/// (docs/jail.md). An error from `workers_started` ends serving.
pub fn serve_with_hook<T>(
    name: &str,
    backend: T,
    mut listener: VhostUserListener,
    watch: &[Watch<'_>],
    workers_started: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    T: VhostUserBackend<Bitmap = ()> + Clone + 'static,
    T::Vring: Clone + Send + Sync,
{
    let mut daemon = VhostUserDaemon::new(
        name.to_string(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| anyhow!("vhost-user daemon: {e}"))?;
    if !watch.is_empty() {
        let handler = daemon
            .get_epoll_handlers()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("vhost-user daemon has no thread"))?;
        for w in watch {
            handler
                .register_listener(w.fd, vmm_sys_util::epoll::EventSet::IN, u64::from(w.event))
                .map_err(|e| anyhow!("cannot register {}: {e}", w.what))?;
        }
    }
    if let Err(e) = workers_started() {
        for h in daemon.get_epoll_handlers() {
            h.send_exit_event();
        }
        return Err(e);
    }
    let result = daemon
        .start(&mut listener.inner)
        .and_then(|()| daemon.wait());
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
    match result {
        Ok(()) => Ok(()),
        // The frontend going away (VM powered off) is the normal end.
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(anyhow!("vhost-user: {e}")),
    }
}

/// The bytes `[offset, offset + size)` of a device configuration space `config`, for
/// `VHOST_USER_GET_CONFIG` (`VhostUserBackend::get_config`); empty when the range does not
/// lie inside `config` (the frontend then fails the request).
pub fn config_slice(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = offset as usize;
    let end = start.saturating_add(size as usize);
    config
        .get(start..end)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// The event a backend gives the daemon's worker threads to stop them
/// (`VhostUserBackend::exit_event`): one non-blocking consumer/notifier pair, handed out as
/// clones.
pub struct ExitEvent {
    consumer: EventConsumer,
    notifier: EventNotifier,
}

impl ExitEvent {
    /// Creates the pair. Errors: eventfd(2).
    pub fn new() -> io::Result<Self> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
        Ok(Self { consumer, notifier })
    }

    /// Clones of the pair, as `exit_event` returns them; `None` when a clone (dup(2)) fails.
    pub fn pair(&self) -> Option<(EventConsumer, EventNotifier)> {
        Some((
            self.consumer.try_clone().ok()?,
            self.notifier.try_clone().ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_slice_is_bounds_checked() {
        let c = [1u8, 2, 3, 4];
        assert_eq!(config_slice(&c, 0, 4), c);
        assert_eq!(config_slice(&c, 1, 2), [2, 3]);
        assert_eq!(config_slice(&c, 4, 0), Vec::<u8>::new());
        assert!(config_slice(&c, 2, 4).is_empty());
        assert!(config_slice(&c, u32::MAX, u32::MAX).is_empty());
    }

    #[test]
    fn listen_names_the_path_and_wait_sees_a_connection() {
        let e = listen(Path::new("/nonexistent/dir/v.sock"))
            .err()
            .expect("error")
            .to_string();
        assert!(e.contains("/nonexistent/dir/v.sock"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock");
        let l = listen(&sock).unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        l.wait_for_frontend().unwrap();
    }

    #[test]
    fn exit_event_hands_out_working_clones() {
        let x = ExitEvent::new().unwrap();
        let (c, n) = x.pair().unwrap();
        n.notify().unwrap();
        c.consume().unwrap();
        let (c2, _) = x.pair().unwrap();
        x.notifier.notify().unwrap();
        c2.consume().unwrap();
    }
}
