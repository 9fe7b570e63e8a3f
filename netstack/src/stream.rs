//! QEMU's `-netdev stream` transport: Ethernet frames over a connected Unix stream socket, each
//! preceded by its length as a 4-byte big-endian integer (the format of QEMU's `-netdev
//! socket`/`stream` backends). QEMU's own virtio-net device then runs in QEMU (its peer has no
//! vnet header, so no offloads are offered to the guest) and only plain frames cross the socket.
//!
//! Why not vhost-user for QEMU: QEMU 7.2's virtio-net enables the vrings
//! (`VHOST_USER_SET_VRING_ENABLE`) before it acks any feature, needs
//! `VHOST_USER_F_PROTOCOL_FEATURES` for that, and the vhost crate's back-end refuses the message
//! until the feature is acked; ax-vmm's frontend, which does it in the spec's order, uses
//! [`crate::vhost_user`].

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::vhost_user::{FramePort, Stats, MAX_TX_FRAME};

/// Binds `path` (replacing a stale socket file). Call it before starting QEMU.
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {}: {e} (is the directory writable?)",
                path.display()
            ),
        )
    })
}

/// Accepts one connection (QEMU) on `listener` and moves frames between it and `port` until
/// it closes; returns the counters (`tx`: from the guest, `rx`: to the guest). Blocking.
/// Errors: accept failures, a length prefix above the largest frame.
pub fn serve<P: FramePort>(listener: UnixListener, port: P) -> io::Result<Stats> {
    let (conn, _) = listener.accept()?;
    let port = Arc::new(port);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (port, stop, mut out) = (port.clone(), stop.clone(), conn.try_clone()?);
        std::thread::Builder::new()
            .name("net-stream-rx".into())
            .spawn(move || {
                // Its own seccomp filter first (docs/jail.md).
                crate::jail::enter_guest_io();
                to_guest(&*port, &mut out, &stop)
            })?
    };
    // The main thread's filter, before it reads the guest's frames.
    crate::jail::enter_main().map_err(io::Error::other)?;
    let mut stats = Stats::default();
    let result = from_guest(&*port, &conn, &mut stats);
    stop.store(true, Ordering::SeqCst);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let (rx_frames, _) = writer.join().unwrap_or((0, None));
    stats.rx_frames = rx_frames;
    result.map(|()| stats)
}

/// Reads length-prefixed frames until EOF and hands them to the port (buffered: one read
/// system call brings many frames).
fn from_guest<P: FramePort>(port: &P, conn: &UnixStream, stats: &mut Stats) -> io::Result<()> {
    let mut conn = io::BufReader::with_capacity(BATCH, conn);
    let mut len = [0u8; 4];
    loop {
        match conn.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_TX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame length {n} above {MAX_TX_FRAME}: not a QEMU netdev stream"),
            ));
        }
        let mut frame = vec![0u8; n];
        conn.read_exact(&mut frame)?;
        if n < 14 {
            stats.tx_dropped += 1;
            continue;
        }
        stats.tx_frames += 1;
        port.send(frame);
    }
}

/// Bytes of frames gathered into one read or write system call.
const BATCH: usize = 64 * 1024;

/// Writes every frame the port yields (gathered into writes of up to [`BATCH`] bytes),
/// waiting on its eventfd in between; returns the count when `stop` is set or the socket
/// fails.
fn to_guest<P: FramePort>(
    port: &P,
    out: &mut UnixStream,
    stop: &AtomicBool,
) -> (u64, Option<io::Error>) {
    let fd = port.rx_eventfd();
    let mut sent = 0u64;
    let mut buf = Vec::with_capacity(BATCH + 4 + MAX_TX_FRAME);
    while !stop.load(Ordering::SeqCst) {
        loop {
            buf.clear();
            while buf.len() < BATCH {
                let Some(f) = port.try_recv() else { break };
                buf.extend_from_slice(&(f.len() as u32).to_be_bytes());
                buf.extend_from_slice(&f);
                sent += 1;
            }
            if buf.is_empty() {
                break;
            }
            if let Err(e) = out.write_all(&buf) {
                return (sent, Some(e));
            }
        }
        wait_readable(fd, 100);
        drain(fd);
    }
    (sent, None)
}

fn wait_readable(fd: RawFd, timeout_ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) };
}

/// Resets the eventfd's counter if it is set (never blocks, whatever the fd's flags).
fn drain(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut v = [0u8; 8];
    // SAFETY: poll on one valid pollfd, then an 8-byte read into a local buffer, done only when
    // the eventfd is readable (so the read does not block).
    unsafe {
        if libc::poll(&mut p, 1, 0) == 1 {
            libc::read(fd, v.as_mut_ptr().cast(), 8);
        }
    }
}
