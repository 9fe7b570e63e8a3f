//! Connecting to the real destination: route overrides, blocked address ranges (loopback,
//! link-local, private, metadata), the optional HTTP CONNECT proxy, the host's resolver
//! ([`host_lookup`]), and TLS to the upstream with the extra CAs per host (`tls`).
//! Behaviour and config: docs/network.md ("Routes", "Blocked ranges", "Upstream proxy").

mod lookup;
pub(crate) mod tls;

pub use lookup::{host_lookup, Lookup};

use crate::config::Config;
use crate::BoxStream;
use anyhow::Context as _;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
/// ULA fc00::/7, link-local fe80::/10, multicast ff00::/8, and v4-mapped forms of the above.
pub fn blocked(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return blocked_v4(v4);
            }
            let s = v6.segments()[0];
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

/// The addresses of every interface of this host (getifaddrs(3)), IPv4 and IPv6.
/// Errors: getifaddrs failing (out of memory, no netlink).
fn host_addresses() -> io::Result<Vec<IpAddr>> {
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
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
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
        Ok(Connector {
            routes,
            proxy,
            timeout: CONNECT_TIMEOUT,
            own: host_addresses()?,
            tls: Default::default(),
        })
    }

    /// Why `ip` may not be reached without a route: [`blocked`] ranges, or one of this host's
    /// own interface addresses (any range: a public address of the host is still the host).
    pub fn why_blocked(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        blocked(ip).or_else(|| self.own.contains(&ip).then_some("an address of this host"))
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
        let addrs: Vec<IpAddr> = match host {
            Some(h) => {
                let h = normalize(h);
                let looked = tokio::task::spawn_blocking({
                    let h = h.clone();
                    move || host_lookup(&h)
                })
                .await
                .map_err(io::Error::other)?;
                match looked {
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
            .filter(|a| self.why_blocked(*a).is_none())
            .collect();
        if allowed.is_empty() && !addrs.is_empty() {
            let why = self.why_blocked(addrs[0]).unwrap_or("blocked");
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is {why}; add a [[route]] for the host to reach it",
                    addrs[0]
                ),
            ));
        }
        if let Some(proxy) = &self.proxy {
            let authority = match host {
                Some(h) => format!("{}:{}", normalize(h), dst.port()),
                None => dst.to_string(),
            };
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
    host.trim_end_matches('.').to_ascii_lowercase()
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
