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

/// The guest's network link, from `ax.net=` on the kernel command line (docs/network.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// eth0's address.
    pub addr: std::net::Ipv4Addr,
    /// Prefix length of the link subnet (1..=30).
    pub prefix: u8,
    /// Default gateway and DNS server (ax-netstack).
    pub gateway: std::net::Ipv4Addr,
    /// Link MTU; `None` keeps the driver's (the device's `mtu` config field, else 1500).
    pub mtu: Option<u16>,
}

impl NetConfig {
    /// Parses `ADDR/PREFIX,GATEWAY[,MTU]`, e.g. `100.96.0.2/30,100.96.0.1,1500`.
    pub fn parse(v: &str) -> Result<NetConfig, String> {
        let bad = || {
            format!("ax.net={v:?} is not ADDR/PREFIX,GATEWAY[,MTU] (e.g. 100.96.0.2/30,100.96.0.1)")
        };
        let mut parts = v.split(',');
        let (addr, prefix) = parts
            .next()
            .and_then(|a| a.split_once('/'))
            .ok_or_else(bad)?;
        let addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let gateway = parts.next().and_then(|g| g.parse().ok()).ok_or_else(bad)?;
        let mtu = match parts.next() {
            Some(m) => Some(
                m.parse::<u16>()
                    .ok()
                    .filter(|m| (576..=9000).contains(m))
                    .ok_or_else(bad)?,
            ),
            None => None,
        };
        if parts.next().is_some() || !(1..=30).contains(&prefix) {
            return Err(bad());
        }
        Ok(NetConfig {
            addr,
            prefix,
            gateway,
            mtu,
        })
    }
}

fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= ifr.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    Ok(ifr)
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2); the fd is owned immediately.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct sockaddr_in` for `ip` as the `struct sockaddr` the ioctls take.
fn sockaddr(ip: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(sock: &OwnedFd, req: libc::c_ulong, arg: &mut T, what: &str) -> io::Result<()> {
    // SAFETY: `arg` is the structure `req` expects (netdevice(7), route(4)).
    if unsafe { libc::ioctl(sock.as_raw_fd(), req as _, arg as *mut T) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// `struct rtentry` (linux/route.h) for SIOCADDRT, declared here for every libc target.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Configures `ifname` from `cfg`: waits up to `wait` for the interface to appear (the
/// virtio-net driver probes asynchronously), sets the MTU, address and netmask, brings it up,
/// adds the default route through the gateway and points `/etc/resolv.conf` at it.
pub fn configure(ifname: &str, cfg: &NetConfig, wait: std::time::Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let sys = std::path::Path::new("/sys/class/net").join(ifname);
    while !sys.exists() {
        if std::time::Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {ifname} after {wait:?} (is virtio_net in /etc/ax/modules, and does the VMM have a net device?)"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sock = inet_socket()?;
    if let Some(mtu) = cfg.mtu {
        let mut ifr = ifreq(ifname)?;
        ifr.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        ioctl(&sock, libc::SIOCSIFMTU as _, &mut ifr, "SIOCSIFMTU")?;
    }
    let mut ifr = ifreq(ifname)?;
    ifr.ifr_ifru.ifru_addr = sockaddr(cfg.addr);
    ioctl(&sock, libc::SIOCSIFADDR as _, &mut ifr, "SIOCSIFADDR")?;
    let mask = std::net::Ipv4Addr::from(u32::MAX << (32 - u32::from(cfg.prefix)));
    let mut ifr = ifreq(ifname)?;
    ifr.ifr_ifru.ifru_netmask = sockaddr(mask);
    ioctl(&sock, libc::SIOCSIFNETMASK as _, &mut ifr, "SIOCSIFNETMASK")?;
    link_up(ifname)?;
    let any = sockaddr(std::net::Ipv4Addr::UNSPECIFIED);
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: any,
        rt_gateway: sockaddr(cfg.gateway),
        rt_genmask: any,
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(
        &sock,
        libc::SIOCADDRT as _,
        &mut rt,
        "SIOCADDRT (default route)",
    )?;
    // The rootfs may ship resolv.conf as a symlink (systemd-resolved); replace it.
    let _ = std::fs::remove_file("/etc/resolv.conf");
    std::fs::write(
        "/etc/resolv.conf",
        format!(
            "# written by agentd (ax.net=): ax-netstack answers DNS\nnameserver {}\n",
            cfg.gateway
        ),
    )?;
    Ok(())
}
