//! Per-connection outgoing frame queue.
//!
//! Session output is broadcast from reader threads that must never block (the child's pipes
//! and PTYs are always drained), so they only push into a connection's [`Outbox`]; that
//! connection's writer thread pops frames and writes them to the socket. An outbox that holds
//! more than its byte budget belongs to a client that has fallen too far behind: it is
//! aborted (queue dropped, socket shut down) instead of blocking anyone.

use crate::proto::Frame;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Default budget of queued frame payload bytes per connection: 4 MiB.
pub const DEFAULT_BUDGET: usize = 4 << 20;

/// Bytes charged for a frame's header and bookkeeping on top of its payload.
const FRAME_OVERHEAD: usize = 64;

struct State {
    q: VecDeque<Frame>,
    bytes: usize,
    /// No more frames are accepted; the writer drains what is queued, then stops.
    closed: bool,
    /// The queue was dropped; the writer stops at once.
    aborted: bool,
}

/// A bounded queue of frames for one connection, plus the means to shut its socket down.
pub struct Outbox {
    st: Mutex<State>,
    cv: Condvar,
    budget: usize,
    shutdown: Box<dyn Fn() + Send + Sync>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn cost(f: &Frame) -> usize {
    FRAME_OVERHEAD
        + match f {
            Frame::Stdout(b) | Frame::Stderr(b) | Frame::Stdin(b) => b.len(),
            _ => 0,
        }
}

impl Outbox {
    /// A new outbox holding at most `budget` bytes; `shutdown` shuts the connection's socket
    /// down in both directions (it is called on abort and must be callable from any thread).
    pub fn new(budget: usize, shutdown: Box<dyn Fn() + Send + Sync>) -> Outbox {
        Outbox {
            st: Mutex::new(State {
                q: VecDeque::new(),
                bytes: 0,
                closed: false,
                aborted: false,
            }),
            cv: Condvar::new(),
            budget,
            shutdown,
        }
    }

    /// Queues `f`. Returns `false` if the outbox is closed, or if `f` would exceed the budget,
    /// in which case the outbox is aborted (the client is too slow).
    pub fn push(&self, f: Frame) -> bool {
        let mut st = lock(&self.st);
        if st.closed || st.aborted {
            return false;
        }
        let c = cost(&f);
        if st.bytes + c > self.budget {
            drop(st);
            log::warn!(
                "client fell more than {} bytes behind; dropping it",
                self.budget
            );
            self.abort();
            return false;
        }
        st.bytes += c;
        st.q.push_back(f);
        self.cv.notify_all();
        true
    }

    /// Queues `f` regardless of the budget (replay, acknowledgements). `false` if closed.
    pub fn push_forced(&self, f: Frame) -> bool {
        let mut st = lock(&self.st);
        if st.closed || st.aborted {
            return false;
        }
        st.bytes += cost(&f);
        st.q.push_back(f);
        self.cv.notify_all();
        true
    }

    /// Queues `f` as the last frame (EXIT, ERROR, OK of SHUTDOWN): the writer writes it and
    /// then closes the connection.
    pub fn push_final(&self, f: Frame) {
        let mut st = lock(&self.st);
        if st.closed || st.aborted {
            return;
        }
        st.bytes += cost(&f);
        st.q.push_back(f);
        st.closed = true;
        self.cv.notify_all();
    }

    /// Accepts no more frames; queued frames are still written.
    pub fn close(&self) {
        lock(&self.st).closed = true;
        self.cv.notify_all();
    }

    /// Whether no more frames are accepted (a final frame was queued, or it was aborted).
    pub fn is_closed(&self) -> bool {
        let st = lock(&self.st);
        st.closed || st.aborted
    }

    /// Drops everything queued and shuts the socket down.
    pub fn abort(&self) {
        {
            let mut st = lock(&self.st);
            st.aborted = true;
            st.q.clear();
            st.bytes = 0;
        }
        self.cv.notify_all();
        (self.shutdown)();
    }

    /// Blocks for the next frame; `None` once the outbox is closed and empty, or aborted.
    pub fn pop(&self) -> Option<Frame> {
        let mut st = lock(&self.st);
        loop {
            if st.aborted {
                return None;
            }
            if let Some(f) = st.q.pop_front() {
                st.bytes = st.bytes.saturating_sub(cost(&f));
                return Some(f);
            }
            if st.closed {
                return None;
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Shuts the socket down (used by the writer once it has written the last frame).
    pub fn shutdown_socket(&self) {
        (self.shutdown)();
    }
}
