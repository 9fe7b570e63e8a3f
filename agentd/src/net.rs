//! Host name and loopback.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Sets the host name (sethostname(2)) and, best effort, writes `/etc/hostname` and adds
/// `127.0.1.1 <name>` to `/etc/hosts` so the name resolves.
pub fn set_hostname(name: &str) -> io::Result<()> {
    nix::unistd::sethostname(name)?;
    let _ = std::fs::write("/etc/hostname", format!("{name}\n"));
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if !hosts.split_whitespace().any(|w| w == name) {
        let mut h = hosts;
        if h.is_empty() {
            h.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        }
        if !h.ends_with('\n') {
            h.push('\n');
        }
        h.push_str(&format!("127.0.1.1\t{name}\n"));
        let _ = std::fs::write("/etc/hosts", h);
    }
    Ok(())
}

/// Brings interface `ifname` up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`; see
/// netdevice(7)). For `lo` the kernel then assigns 127.0.0.1/8 and ::1 itself.
pub fn link_up(ifname: &str) -> io::Result<()> {
    // SAFETY: socket(2); the fd is owned immediately.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; the name is copied with its NUL terminator within bounds.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= ifr.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
