//! Pseudo-terminals: open a master/slave pair and set window sizes (pty(7), ioctl_tty(2)).

use crate::proto::WinSize;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

/// An open PTY pair; both fds are close-on-exec (the slave is `dup2`ed onto 0/1/2 of the
/// child, which clears the flag there).
pub struct Pty {
    /// The master side, kept by agentd: reads give the terminal's output, writes are input.
    pub master: File,
    /// The slave side, given to the child as its controlling terminal.
    pub slave: OwnedFd,
}

/// Opens a new PTY pair via `/dev/ptmx` (posix_openpt(3), grantpt(3), unlockpt(3),
/// ptsname_r(3)) and sets its window size. Needs devpts mounted at `/dev/pts`.
pub fn open(size: WinSize) -> io::Result<Pty> {
    use nix::fcntl::OFlag;
    let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&m)?;
    nix::pty::unlockpt(&m)?;
    let name = nix::pty::ptsname_r(&m)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `slave` is a fresh fd we own; `m` is converted into an owned File.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let master = unsafe { File::from_raw_fd(m.into_raw_fd()) };
    set_size(&master, size)?;
    Ok(Pty { master, slave })
}

/// Sets the terminal's window size (`TIOCSWINSZ`); the kernel sends `SIGWINCH` to the
/// terminal's foreground process group.
pub fn set_size(master: &File, size: WinSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
