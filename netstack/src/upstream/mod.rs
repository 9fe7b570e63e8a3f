//! Connecting to the real destination: route overrides, blocked address ranges (loopback,
//! link-local, private, metadata), the optional HTTP CONNECT proxy, the host's resolver
//! ([`host_lookup`]), and TLS to the upstream with the extra CAs per host (`tls`).
//! Behaviour and config: docs/network.md ("Routes", "Blocked ranges", "Upstream proxy").

mod lookup;
pub(crate) mod tls;

pub use lookup::{host_lookup, Lookup};

/// The resolver a netstack asks whether a name exists and where it is: [`host_lookup`]
/// (getaddrinfo(3)) unless the embedder gives another ([`Connector::with_resolver`], tests).
/// Called on a blocking thread; the name is already in its normal form.
pub type Resolver = Arc<dyn Fn(&str) -> Result<Vec<IpAddr>, Lookup> + Send + Sync>;

use crate::config::Config;
use crate::policy::{in_net, Policy};
use crate::{hostname, BoxStream};
use anyhow::Context as _;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for one upstream connection (TCP connect, plus the CONNECT exchange with an
/// upstream proxy); the guest's SYN is held meanwhile and answered with RST after it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes upstream connections for one agent.
pub struct Connector {
    routes: HashMap<String, RouteTarget>,
    /// `host:port` of the HTTP CONNECT proxy.
    proxy: Option<String>,
    timeout: Duration,
    /// The host's own interface addresses (read at startup): a service bound to 0.0.0.0 on
    /// the host must not be reachable from the guest through them.
    own: Vec<IpAddr>,
    /// The prefixes of those interfaces (the host's LANs, v4 and v6), see [`own_prefixes`].
    own_nets: Vec<(IpAddr, u8)>,
    /// The policy's address rules, applied to every address a name resolves to.
    rules: Policy,
    /// Where names are looked up.
    resolver: Resolver,
    /// Upstream TLS client configs by host and ALPN list ([`Connector::tls_config`]).
    tls: tls::ClientConfigs,
}

struct RouteTarget {
    ip: IpAddr,
    port: Option<u16>,
    roots: Vec<Vec<u8>>,
}

/// Why an address may not be reached without an explicit route, or None if it may.
/// IPv4: 0/8, loopback 127/8, RFC 1918 (10/8, 172.16/12, 192.168/16), shared 100.64/10
/// (RFC 6598), link-local 169.254/16 (cloud metadata 169.254.169.254), the synthetic DNS pool
/// 198.18/15, multicast 224/4, reserved 240/4 and broadcast. IPv6: unspecified, loopback,
/// ULA fc00::/7, link-local fe80::/10, multicast ff00::/8, v4-mapped `::ffff:a.b.c.d` and
/// NAT64 `64:ff9b::a.b.c.d` (RFC 6052 well-known prefix, /96) and 6to4 `2002:AABB:CCDD::/48`
/// (RFC 3056) of a blocked IPv4 address, the local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215:
/// an operator's own translator; where it puts the IPv4 address is not fixed) and the
/// deprecated IPv4-compatible ::/96 (RFC 4291 §2.5.5.1) whole.
pub fn blocked(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return blocked_v4(v4);
            }
            let seg = v6.segments();
            let s = seg[0];
            let embedded = |hi: u16, lo: u16| Ipv4Addr::from((hi as u32) << 16 | lo as u32);
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return blocked_v4(embedded(seg[6], seg[7]))
                    .map(|_| "NAT64 (64:ff9b::/96) of a blocked IPv4 address");
            }
            if seg[..3] == [0x64, 0xff9b, 1] {
                return Some("local-use NAT64 (64:ff9b:1::/48)");
            }
            if s == 0x2002 {
                return blocked_v4(embedded(seg[1], seg[2]))
                    .map(|_| "6to4 (2002::/16) of a blocked IPv4 address");
            }
            if seg[..6] == [0; 6] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
                return Some("IPv4-compatible IPv6 address (::/96, deprecated)");
            }
            if v6 == Ipv6Addr::UNSPECIFIED {
                Some("unspecified address")
            } else if v6 == Ipv6Addr::LOCALHOST {
                Some("loopback")
            } else if s & 0xfe00 == 0xfc00 {
                Some("unique local address (fc00::/7)")
            } else if s & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s & 0xff00 == 0xff00 {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// Shortest interface prefix blocked as a whole, IPv4 and IPv6: a shorter one (a /0 or /4 on
/// a tunnel interface) would block most of the Internet, so only its address is blocked.
const MIN_OWN_PREFIX: (u8, u8) = (8, 16);

/// The networks of the host's interfaces (its LANs) from `(address, prefix length)` pairs:
/// each address masked to its prefix; prefixes shorter than [`MIN_OWN_PREFIX`] are skipped
/// (their addresses stay blocked as addresses of this host).
pub fn own_prefixes(ifaces: &[(IpAddr, u8)]) -> Vec<(IpAddr, u8)> {
    let mut out: Vec<(IpAddr, u8)> = ifaces
        .iter()
        .filter_map(|&(ip, len)| match ip {
            IpAddr::V4(a) if (MIN_OWN_PREFIX.0..=32).contains(&len) => {
                let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
                Some((IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)), len))
            }
            IpAddr::V6(a) if (MIN_OWN_PREFIX.1..=128).contains(&len) => {
                let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
                Some((IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)), len))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn prefix_len(sa: *const libc::sockaddr) -> u8 {
    if sa.is_null() {
        return 0;
    }
    // SAFETY: a non-null netmask of getifaddrs has the family of its address.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let m = &*(sa as *const libc::sockaddr_in);
                u32::from_be(m.sin_addr.s_addr).count_ones() as u8
            }
            libc::AF_INET6 => {
                let m = &*(sa as *const libc::sockaddr_in6);
                u128::from_be_bytes(m.sin6_addr.s6_addr).count_ones() as u8
            }
            _ => 0,
        }
    }
}

/// The addresses of every interface of this host (getifaddrs(3)), IPv4 and IPv6, each with
/// the prefix length of its netmask. Errors: getifaddrs failing (out of memory, no netlink).
fn host_addresses() -> io::Result<Vec<(IpAddr, u8)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
            match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push((
                        IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                        prefix_len(ifa.ifa_netmask),
                    ));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push((
                        IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                        prefix_len(ifa.ifa_netmask),
                    ));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "this-network address (0.0.0.0/8)",
        [127, ..] => "loopback",
        [10, ..] => "private (RFC 1918)",
        [172, b, ..] if (16..32).contains(&b) => "private (RFC 1918)",
        [192, 168, ..] => "private (RFC 1918)",
        [100, b, ..] if (64..128).contains(&b) => "shared address space (100.64.0.0/10)",
        [169, 254, ..] => "link-local (169.254.0.0/16, cloud metadata)",
        [198, 18 | 19, ..] => "the synthetic DNS range (198.18.0.0/15)",
        [a, ..] if a >= 224 => "multicast or reserved",
        _ => return None,
    })
}

impl Connector {
    /// Reads route CA files (before the jail). Errors: an unreadable or invalid CA file, a
    /// PEM without certificates.
    pub fn new(config: &Config) -> anyhow::Result<Connector> {
        let mut routes = HashMap::new();
        for r in &config.routes {
            let (ip, port) = match r.address.parse::<SocketAddr>() {
                Ok(sa) => (sa.ip(), Some(sa.port())),
                Err(_) => (r.address.parse::<IpAddr>()?, None),
            };
            let mut roots = Vec::new();
            if let Some(pem) = &r.ca_pem {
                roots.extend(pem_certs(pem.as_bytes()).with_context(|| {
                    format!("route for {}: ca_pem holds no valid certificate; paste the PEM (-----BEGIN CERTIFICATE-----)", r.host)
                })?);
            }
            if let Some(path) = &r.ca_file {
                let text = std::fs::read(path).with_context(|| {
                    format!(
                        "route for {}: cannot read ca_file {}",
                        r.host,
                        path.display()
                    )
                })?;
                roots.extend(pem_certs(&text).with_context(|| {
                    format!(
                        "route for {}: ca_file {} holds no valid PEM certificate",
                        r.host,
                        path.display()
                    )
                })?);
            }
            routes.insert(normalize(&r.host), RouteTarget { ip, port, roots });
        }
        let proxy = config.network.upstream_proxy.as_ref().map(|p| {
            p.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        });
        let ifaces = host_addresses()?;
        let own_nets = own_prefixes(&ifaces);
        let mut own: Vec<IpAddr> = ifaces.into_iter().map(|(ip, _)| ip).collect();
        own.sort();
        own.dedup();
        Ok(Connector {
            routes,
            proxy,
            timeout: CONNECT_TIMEOUT,
            own,
            own_nets,
            rules: Policy::new(config),
            resolver: Arc::new(host_lookup),
            tls: Default::default(),
        })
    }

    /// The same connector looking names up with `resolver` instead of [`host_lookup`].
    pub fn with_resolver(mut self, resolver: Resolver) -> Connector {
        self.resolver = resolver;
        self
    }

    /// Looks `name` (normal form) up with this connector's resolver, on a blocking thread.
    /// Errors: the resolver's, or `Failed` when the blocking task could not run.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, Lookup> {
        let (r, n) = (self.resolver.clone(), name.to_string());
        tokio::task::spawn_blocking(move || r(&n))
            .await
            .unwrap_or_else(|e| Err(Lookup::Failed(e.to_string())))
    }

    /// Why `ip` may not be reached without a route: [`blocked`] ranges, one of this host's
    /// own interface addresses (any range: a public address of the host is still the host),
    /// or an address in the prefix of one of its interfaces (its LANs; NAT64 and 6to4 forms
    /// of IPv4 ones too).
    pub fn why_blocked(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if let Some(why) = blocked(ip) {
            return Some(why);
        }
        if self.own.contains(&ip) {
            return Some("an address of this host");
        }
        let lan = |a: IpAddr| self.own_nets.iter().any(|&(n, len)| in_net(a, n, len));
        if lan(ip) {
            return Some("on a network of this host's interfaces");
        }
        if let IpAddr::V6(v6) = ip {
            let seg = v6.segments();
            let v4 = if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                Some(Ipv4Addr::from((seg[6] as u32) << 16 | seg[7] as u32))
            } else if seg[0] == 0x2002 {
                Some(Ipv4Addr::from((seg[1] as u32) << 16 | seg[2] as u32))
            } else {
                None
            };
            if v4.is_some_and(|a| lan(IpAddr::V4(a)) || self.own.contains(&IpAddr::V4(a))) {
                return Some("NAT64/6to4 form of an address on a network of this host");
            }
        }
        None
    }

    /// Why the connection to `ip:port` may not be made: [`Connector::why_blocked`], or an
    /// address rule of the policy denying it ([`Policy::address_denied`]).
    pub fn why_refused(&self, ip: IpAddr, port: u16) -> Option<String> {
        self.why_blocked(ip)
            .map(str::to_string)
            .or_else(|| self.rules.address_denied(ip, port))
    }

    /// Does a `[[route]]` name `host`?
    pub fn has_route(&self, host: &str) -> bool {
        self.routes.contains_key(&normalize(host))
    }

    /// Connects to the destination of a guest flow; see [`Connector::connect_tcp`].
    pub async fn connect(&self, host: Option<&str>, dst: SocketAddr) -> io::Result<BoxStream> {
        Ok(Box::new(self.connect_tcp(host, dst).await?))
    }

    /// Connects a guest flow upstream, within [`CONNECT_TIMEOUT`]:
    /// - `host` with a `[[route]]`: the route's address (its port, else `dst`'s), directly,
    ///   even into blocked ranges (the operator chose it);
    /// - with an upstream proxy: `CONNECT host:port` (or `ip:port` without a name) through it
    ///   (RFC 9110 §9.3.6), refusing names that resolve on this host only to blocked ranges;
    /// - else `host` resolved here (only `dst.port()` is used), or `dst` itself without a name;
    ///   blocked addresses are skipped, the others tried in order.
    ///
    /// Errors: `PermissionDenied` for blocked destinations, `TimedOut`, connect errors, and
    /// `ConnectionRefused` when the proxy answers CONNECT with a non-2xx status.
    pub async fn connect_tcp(&self, host: Option<&str>, dst: SocketAddr) -> io::Result<TcpStream> {
        match tokio::time::timeout(self.timeout, self.connect_inner(host, dst)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "upstream connect timed out after {} s",
                    self.timeout.as_secs()
                ),
            )),
        }
    }

    async fn connect_inner(&self, host: Option<&str>, dst: SocketAddr) -> io::Result<TcpStream> {
        if let Some(r) = host.and_then(|h| self.routes.get(&normalize(h))) {
            let to = SocketAddr::new(r.ip, r.port.unwrap_or(dst.port()));
            return tcp(to).await;
        }
        let host = match host.map(hostname::normalize).transpose() {
            Ok(h) => h,
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("refused: {e}"),
                ))
            }
        };
        let host = host.as_deref();
        let addrs: Vec<IpAddr> = match host {
            Some(h) => {
                match self.lookup(h).await {
                    Ok(a) => a,
                    Err(_) if self.proxy.is_some() => Vec::new(), // the proxy resolves it
                    Err(e) => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{h} does not resolve on this host: {e:?}"),
                        ))
                    }
                }
            }
            None => vec![dst.ip()],
        };
        let allowed: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.why_refused(*a, dst.port()).is_none())
            .collect();
        if allowed.is_empty() && !addrs.is_empty() {
            let why = self
                .why_refused(addrs[0], dst.port())
                .unwrap_or_else(|| "blocked".into());
            let fix = if why.starts_with("denied by") {
                "change the rule to reach it"
            } else {
                "add a [[route]] for the host to reach it"
            };
            let via = host
                .map(|h| format!(" ({h} resolves there)"))
                .unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is {why}{via}; {fix}", addrs[0]),
            ));
        }
        if let Some(proxy) = &self.proxy {
            let authority = proxy_authority(host, dst)?;
            return via_proxy(proxy, &authority).await;
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
        for a in allowed {
            match tcp(SocketAddr::new(a, dst.port())).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Extra trust anchors (DER) for `host`'s upstream TLS, from its route; empty if none.
    pub fn extra_roots(&self, host: &str) -> Vec<Vec<u8>> {
        self.routes
            .get(&normalize(host))
            .map(|r| r.roots.clone())
            .unwrap_or_default()
    }
}

fn normalize(host: &str) -> String {
    hostname::normalize(host).unwrap_or_else(|_| host.trim_end_matches('.').to_ascii_lowercase())
}

/// The `host:port` of a CONNECT request (RFC 9110 §9.3.6, authority-form of RFC 9112 §3.2.3)
/// for a flow to `dst` reached by `host`: the name in its normal form
/// ([`hostname::normalize`]: never CR, LF, space, `[`, `:` or an escape), or the literal
/// address (`[v6]:port`) without a name. Errors (`PermissionDenied`): a name without a normal
/// form.
pub fn proxy_authority(host: Option<&str>, dst: SocketAddr) -> io::Result<String> {
    match host {
        Some(h) => {
            let h = hostname::normalize(h).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("refused CONNECT: {e}"),
                )
            })?;
            Ok(format!("{h}:{}", dst.port()))
        }
        None => Ok(dst.to_string()),
    }
}

async fn tcp(to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(to).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Opens a tunnel through an HTTP proxy: `CONNECT authority HTTP/1.1` (RFC 9110 §9.3.6);
/// any 2xx status means the tunnel is up and the stream continues with the destination's bytes.
async fn via_proxy(proxy: &str, authority: &str) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("upstream proxy {proxy}: {e}")))?;
    s.set_nodelay(true)?;
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    // Read the response head byte by byte so nothing of the tunnel is consumed.
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(io::Error::other(format!(
                "upstream proxy {proxy}: response head too long"
            )));
        }
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("upstream proxy {proxy} closed during CONNECT {authority}"),
            ));
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("");
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if status_line.starts_with("HTTP/1.") && code.len() == 3 && code.starts_with('2') {
        Ok(s)
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("upstream proxy {proxy} refused CONNECT {authority}: {status_line}"),
        ))
    }
}

fn pem_certs(pem: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut rd = io::BufReader::new(pem);
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut rd)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!certs.is_empty(), "no CERTIFICATE block");
    Ok(certs)
}

#[cfg(test)]
mod tests;
