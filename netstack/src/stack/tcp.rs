//! [`GuestStream`]: one guest TCP connection (a smoltcp socket) as a tokio byte stream.
//!
//! Reads drain the socket's receive buffer (closing it opens the guest's window again);
//! writes fill its send buffer (full: `Pending` until the guest acknowledges, so a fast
//! upstream is held back by a slow guest). EOF is the guest's FIN; `shutdown` sends ours.
//! A guest RST reads/writes as `ConnectionReset`; [`GuestStream::abort`] sends one.

use super::Shared;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes moved over one guest connection (for the audit record).
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from the guest (guest → upstream).
    pub up: AtomicU64,
    /// Bytes written to the guest (upstream → guest).
    pub down: AtomicU64,
}

/// The guest's end of one accepted TCP connection. Dropping it closes the connection like
/// closing a socket does: FIN after the queued data, or RST if received data was left unread.
pub struct GuestStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
    counters: Arc<Counters>,
}

impl GuestStream {
    pub(super) fn new(shared: Arc<Shared>, handle: SocketHandle) -> GuestStream {
        GuestStream {
            shared,
            handle,
            counters: Arc::new(Counters::default()),
        }
    }

    /// The byte counters, shared (they keep counting after the stream is boxed away).
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Resets the connection (RST to the guest), discarding queued data.
    pub fn abort(&mut self) {
        self.abort_handle().abort();
    }

    /// A handle that can reset this connection after the stream was split or moved.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle {
            shared: self.shared.clone(),
            handle: self.handle,
        }
    }

    /// The error for a socket that can no longer carry data in some direction.
    fn closed_error(closed_by_us: bool, state: tcp::State) -> Option<io::Error> {
        if state == tcp::State::Closed && !closed_by_us {
            Some(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the guest reset the connection",
            ))
        } else {
            None
        }
    }
}

/// The handshake is not complete yet (the SYN-ACK is out, the guest's ACK is not in): reads
/// and writes wait, they do not see a closed connection.
pub(crate) fn opening(s: &tcp::Socket) -> bool {
    matches!(s.state(), tcp::State::Listen | tcp::State::SynReceived)
}

/// Resets one guest connection from outside its [`GuestStream`].
pub struct AbortHandle {
    shared: Arc<Shared>,
    handle: SocketHandle,
}

impl AbortHandle {
    /// Sends RST to the guest and discards queued data (no-op once the stream is gone).
    pub fn abort(&self) {
        {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            if let Some(slot) = st.slots.get_mut(&self.handle) {
                slot.closed_by_us = true;
                st.sockets.get_mut::<tcp::Socket>(self.handle).abort();
            }
        }
        self.shared.notify.notify_one();
    }
}

impl AsyncRead for GuestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        let st = &mut *st;
        let s = st.sockets.get_mut::<tcp::Socket>(this.handle);
        let slot = st
            .slots
            .get_mut(&this.handle)
            .expect("slot of a live stream");
        if s.can_recv() {
            // Less than half the buffer free before this read: the guest may be waiting for
            // the window to open, so the loop must send a window update. Otherwise the next
            // ACK carries the new window anyway (one wake-up fewer per read).
            let tight = s.recv_capacity() - s.recv_queue() < s.recv_capacity() / 2;
            let n = s
                .recv_slice(buf.initialize_unfilled())
                .map_err(|e| io::Error::other(e.to_string()))?;
            buf.advance(n);
            this.counters.up.fetch_add(n as u64, Ordering::Relaxed);
            if tight {
                this.shared.notify.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if !s.may_recv() && !opening(s) {
            return match Self::closed_error(slot.closed_by_us, s.state()) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Ready(Ok(())), // EOF: the guest sent FIN
            };
        }
        slot.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        let st = &mut *st;
        let s = st.sockets.get_mut::<tcp::Socket>(this.handle);
        let slot = st
            .slots
            .get_mut(&this.handle)
            .expect("slot of a live stream");
        if !s.may_send() && !opening(s) {
            return Poll::Ready(Err(Self::closed_error(slot.closed_by_us, s.state())
                .unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the connection is closed for sending",
                    )
                })));
        }
        if s.can_send() {
            let n = s
                .send_slice(data)
                .map_err(|e| io::Error::other(e.to_string()))?;
            this.counters.down.fetch_add(n as u64, Ordering::Relaxed);
            this.shared.notify.notify_one();
            return Poll::Ready(Ok(n));
        }
        slot.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        st.sockets.get_mut::<tcp::Socket>(this.handle).close();
        if let Some(s) = st.slots.get_mut(&this.handle) {
            s.closed_by_us = true;
        }
        drop(st);
        this.shared.notify.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for GuestStream {
    fn drop(&mut self) {
        {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            let s = st.sockets.get_mut::<tcp::Socket>(self.handle);
            if s.recv_queue() > 0 {
                s.abort(); // like close(2) with unread data: RST (RFC 9293 §3.6.1 "abort")
            } else {
                s.close();
            }
            if let Some(slot) = st.slots.get_mut(&self.handle) {
                slot.alive = false;
                slot.read_waker = None;
                slot.write_waker = None;
            }
        }
        self.shared.notify.notify_one();
    }
}
