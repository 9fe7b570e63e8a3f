//! The DNS responder on gateway:53, UDP and TCP (RFC 1035 §4; TCP framing RFC 1035 §4.2.2,
//! RFC 7766). Names are answered with synthetic addresses from 198.18.0.0/15 (RFC 2544's
//! benchmarking range, never routed on the Internet), one per name, stable for the life of
//! the netstack, so that a TCP flow to such an address carries the name the guest resolved
//! (`Flow::host`): the policy decides by name, route overrides apply by name, and the upstream
//! connect resolves the name on the host. docs/network.md ("DNS") has the behaviour table.
//!
//! A name "exists" when a `[[route]]` names it, or the host's resolver (getaddrinfo) finds it,
//! or (with an upstream proxy, which resolves names itself) always. Existing names: `A` gets
//! the synthetic address, every other type NOERROR with no data (AAAA: the guest uses IPv4).
//! Names the host cannot resolve: NXDOMAIN; resolver failures: SERVFAIL.
//!
//! Before anything else a question's name is put in its normal form
//! ([`crate::hostname::from_wire`]); a name without one (a label holding `\`, `.`, a space,
//! a control or non-ASCII byte, a numeric last label, …) is answered REFUSED and logged, so it
//! never reaches the policy, the pool or the host's resolver. The policy is asked next: a name
//! it denies on every port ([`crate::policy::Policy::name_denied`]) gets its synthetic address
//! without a host lookup, so no query for a denied name leaves the host (DNS tunnelling under
//! `default = "deny"`); the connection to it is refused like any denied one.

use super::{GuestStream, Shared};
// Re-exported under their old path for `jail::prepare` and tests/jail_policy.rs (not moved
// with them yet); everything else names `upstream::host_lookup`.
pub use crate::upstream::{host_lookup, Lookup};
use smoltcp::wire::IpEndpoint;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// First address of the synthetic pool (198.18.0.0/15).
pub const POOL_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const POOL_SIZE: u32 = 1 << 17;
/// TTL of positive answers, seconds (the mapping never changes while the netstack runs).
pub const TTL: u32 = 300;
/// How long "this name does not exist" is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Longest wait for the host resolver.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Record type A (RFC 1035 §3.2.2).
pub const TYPE_A: u16 = 1;
/// Record type PTR (RFC 1035 §3.2.2).
pub const TYPE_PTR: u16 = 12;
/// Record type AAAA (RFC 3596 §2.1).
pub const TYPE_AAAA: u16 = 28;
/// Query type `*` (RFC 1035 §3.2.3).
pub const TYPE_ANY: u16 = 255;
/// Response code: no error (RFC 1035 §4.1.1).
pub const NOERROR: u8 = 0;
/// Response code: format error.
pub const FORMERR: u8 = 1;
/// Response code: server failure.
pub const SERVFAIL: u8 = 2;
/// Response code: name error (the name does not exist).
pub const NXDOMAIN: u8 = 3;
/// Response code: not implemented.
pub const NOTIMP: u8 = 4;
/// Response code: refused (RFC 1035 §4.1.1): names that are not host names.
pub const REFUSED: u8 = 5;

/// Is `ip` in the synthetic pool?
pub fn in_pool(ip: Ipv4Addr) -> bool {
    u32::from(ip) & !(POOL_SIZE - 1) == u32::from(POOL_BASE)
}

/// The name ↔ synthetic address table.
pub struct Names {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_name: HashMap<String, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, String>,
    missing: HashMap<String, Instant>,
    next: u32,
}

/// What the responder knows about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The name exists; its synthetic address.
    Exists(Ipv4Addr),
    /// NXDOMAIN.
    NoName,
    /// The resolver failed (SERVFAIL); the message says why.
    Failed(String),
}

impl Names {
    /// An empty table; the first name gets 198.18.0.1.
    pub fn new() -> Names {
        Names {
            inner: Mutex::new(Table {
                next: 1,
                ..Table::default()
            }),
        }
    }

    /// The name a synthetic address was handed out for.
    pub fn host_for(&self, ip: Ipv4Addr) -> Option<String> {
        self.inner.lock().unwrap().by_ip.get(&ip).cloned()
    }

    /// The synthetic address for `name` (normalized: lower case, no trailing dot), assigning
    /// the next one in the pool; after 2^17 - 2 names the oldest addresses are reused.
    pub fn assign(&self, name: &str) -> Ipv4Addr {
        let mut t = self.inner.lock().unwrap();
        if let Some(ip) = t.by_name.get(name) {
            return *ip;
        }
        let ip = Ipv4Addr::from(u32::from(POOL_BASE) + t.next);
        t.next = if t.next + 1 >= POOL_SIZE - 1 {
            1
        } else {
            t.next + 1
        };
        if let Some(old) = t.by_ip.insert(ip, name.to_string()) {
            t.by_name.remove(&old);
        }
        t.by_name.insert(name.to_string(), ip);
        ip
    }

    /// Resolves `name` as described in the module docs.
    pub(crate) async fn resolve(&self, shared: &Shared, name: &str) -> Resolved {
        if let Some(ip) = self.inner.lock().unwrap().by_name.get(name) {
            return Resolved::Exists(*ip);
        }
        if shared.ctx.upstream.has_route(name) {
            return Resolved::Exists(self.assign(name));
        }
        if let Some(why) = shared.ctx.policy.name_denied(name) {
            log::debug!("dns {name}: {why}; answered without asking the host's resolver");
            return Resolved::Exists(self.assign(name));
        }
        if let Some(t) = self.inner.lock().unwrap().missing.get(name) {
            if t.elapsed() < NEGATIVE_TTL {
                return Resolved::NoName;
            }
        }
        let via_proxy = shared.ctx.config.network.upstream_proxy.is_some();
        let looked = tokio::time::timeout(LOOKUP_TIMEOUT, shared.ctx.upstream.lookup(name)).await;
        match looked {
            Ok(Ok(_)) => Resolved::Exists(self.assign(name)),
            _ if via_proxy => Resolved::Exists(self.assign(name)),
            Ok(Err(Lookup::NoName)) => {
                let mut t = self.inner.lock().unwrap();
                t.missing.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
                t.missing.insert(name.to_string(), Instant::now());
                Resolved::NoName
            }
            Ok(Err(Lookup::Failed(why))) => Resolved::Failed(why),
            Err(_) => Resolved::Failed("host resolver timed out".into()),
        }
    }
}

impl Default for Names {
    fn default() -> Self {
        Names::new()
    }
}

/// A parsed query: the header fields we echo and the single question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Message ID (copied into the response).
    pub id: u16,
    /// The RD bit (copied into the response).
    pub rd: bool,
    /// Lower case, no trailing dot; empty for the root. For a name without a normal form
    /// ([`Query::invalid`]): the labels joined by dots, escaped for printing.
    pub name: String,
    /// Why the name is not a host name ([`crate::hostname::from_wire`]); answered REFUSED.
    pub invalid: Option<crate::hostname::InvalidName>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS (not checked: everything is treated as IN).
    pub qclass: u16,
    /// The question section as sent (echoed in the response).
    question: Vec<u8>,
}

/// Parses a query message. Err(Some(id)) is a malformed or unsupported query that still has
/// a header to answer (FORMERR/NOTIMP); Err(None) is not worth an answer.
pub fn parse_query(msg: &[u8]) -> Result<Query, (Option<u16>, u8)> {
    if msg.len() < 12 {
        return Err((None, FORMERR));
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return Err((None, FORMERR)); // a response, not a query
    }
    if (flags >> 11) & 0xf != 0 {
        return Err((Some(id), NOTIMP)); // only opcode QUERY
    }
    if u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return Err((Some(id), FORMERR));
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(i).ok_or((Some(id), FORMERR))? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Err((Some(id), FORMERR)); // compression in a question: not from a stub
        }
        let label = msg.get(i..i + len).ok_or((Some(id), FORMERR))?;
        labels.push(label);
        i += len;
    }
    let tail = msg.get(i..i + 4).ok_or((Some(id), FORMERR))?;
    if labels.iter().map(|l| l.len() + 1).sum::<usize>() > 254 {
        return Err((Some(id), FORMERR)); // over 255 bytes on the wire (RFC 1035 §2.3.4)
    }
    let (name, invalid) = if labels.is_empty() {
        (String::new(), None)
    } else {
        match crate::hostname::from_wire(labels.iter().copied()) {
            Ok(n) => (n, None),
            Err(e) => (e.name.clone(), Some(e)),
        }
    };
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        name,
        invalid,
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        question: msg[12..i + 4].to_vec(),
    })
}

/// A response to `q` with `rcode` and the given A records (name compressed to the question).
pub fn response(q: &Query, rcode: u8, a: &[Ipv4Addr], ptr: Option<&str>) -> Vec<u8> {
    let mut m = header(q.id, q.rd, rcode, 1, a.len() as u16 + ptr.is_some() as u16);
    m.extend_from_slice(&q.question);
    for ip in a {
        m.extend_from_slice(&[0xc0, 12]);
        m.extend_from_slice(&TYPE_A.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&TTL.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&ip.octets());
    }
    if let Some(name) = ptr {
        let mut rdata = Vec::new();
        for l in name.split('.').filter(|l| !l.is_empty()) {
            rdata.push(l.len() as u8);
            rdata.extend_from_slice(l.as_bytes());
        }
        rdata.push(0);
        m.extend_from_slice(&[0xc0, 12]);
        m.extend_from_slice(&TYPE_PTR.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&TTL.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    m
}

fn header(id: u16, rd: bool, rcode: u8, qd: u16, an: u16) -> Vec<u8> {
    // QR=1, opcode QUERY, AA=0, TC=0, RD copied, RA=1 (RFC 1035 §4.1.1).
    let flags: u16 = 0x8000 | if rd { 0x0100 } else { 0 } | 0x0080 | rcode as u16;
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    for n in [qd, an, 0, 0] {
        m.extend_from_slice(&n.to_be_bytes());
    }
    m
}

/// The synthetic address a reverse name (`d.c.b.a.in-addr.arpa`) stands for.
fn reverse_v4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut o: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if o.len() != 4 {
        return None;
    }
    o.reverse();
    Some(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
}

/// Answers one query message; None: no answer (garbage).
pub(crate) async fn answer(shared: &Shared, msg: &[u8]) -> Option<Vec<u8>> {
    let q = match parse_query(msg) {
        Ok(q) => q,
        Err((Some(id), rcode)) => return Some(header(id, false, rcode, 0, 0)),
        Err((None, _)) => return None,
    };
    if let Some(e) = &q.invalid {
        log::info!("dns: refused a query (type {}): {e}", q.qtype);
        return Some(response(&q, REFUSED, &[], None));
    }
    if q.name.is_empty() {
        return Some(response(&q, NOERROR, &[], None));
    }
    if q.qtype == TYPE_PTR {
        if let Some(ip) = reverse_v4(&q.name).filter(|ip| in_pool(*ip)) {
            if let Some(host) = shared.names.host_for(ip) {
                return Some(response(&q, NOERROR, &[], Some(&host)));
            }
        }
        return Some(response(&q, NXDOMAIN, &[], None));
    }
    let r = shared.names.resolve(shared, &q.name).await;
    log::debug!("dns {} type {}: {:?}", q.name, q.qtype, r);
    Some(match r {
        Resolved::Exists(ip) if q.qtype == TYPE_A || q.qtype == TYPE_ANY => {
            response(&q, NOERROR, &[ip], None)
        }
        Resolved::Exists(_) => response(&q, NOERROR, &[], None),
        Resolved::NoName => response(&q, NXDOMAIN, &[], None),
        Resolved::Failed(why) => {
            log::warn!("dns {}: host resolver failed: {why}", q.name);
            response(&q, SERVFAIL, &[], None)
        }
    })
}

/// Serves one UDP query from `from`.
pub(crate) async fn serve_udp(shared: Arc<Shared>, msg: Vec<u8>, from: IpEndpoint) {
    if let Some(resp) = answer(&shared, &msg).await {
        shared.send_dns(&resp, from);
    }
}

/// Serves DNS over one guest TCP connection to gateway:53: length-prefixed messages
/// (RFC 1035 §4.2.2), answered in order until the guest closes.
pub(crate) async fn serve_tcp(shared: Arc<Shared>, mut guest: GuestStream) {
    loop {
        let mut len = [0u8; 2];
        if guest.read_exact(&mut len).await.is_err() {
            break;
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if guest.read_exact(&mut msg).await.is_err() {
            break;
        }
        let Some(resp) = answer(&shared, &msg).await else {
            break;
        };
        let mut out = (resp.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&resp);
        if guest.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = guest.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn parse_and_answer_round_trip() {
        let q = parse_query(&query("Api.Example.COM", TYPE_A)).unwrap();
        assert_eq!(q.name, "api.example.com");
        assert_eq!((q.id, q.rd, q.qtype), (0x1234, true, TYPE_A));
        let r = response(&q, NOERROR, &[Ipv4Addr::new(198, 18, 0, 1)], None);
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0xf, NOERROR);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
        assert_eq!(&r[r.len() - 4..], &[198, 18, 0, 1]);
    }

    #[test]
    fn malformed_queries() {
        assert_eq!(parse_query(&[1, 2, 3]).unwrap_err(), (None, FORMERR));
        let mut m = query("a.b", TYPE_A);
        m.truncate(m.len() - 2);
        assert_eq!(parse_query(&m).unwrap_err(), (Some(0x1234), FORMERR));
        let mut m = query("a.b", TYPE_A);
        m[2] |= 0x10; // opcode 2 (STATUS)
        assert_eq!(parse_query(&m).unwrap_err(), (Some(0x1234), NOTIMP));
    }

    #[test]
    fn names_without_a_normal_form_are_marked() {
        let mut m = query("x.com", TYPE_A);
        m[12..14].copy_from_slice(b"\x01\\"); // label "\\" instead of "x"
        let q = parse_query(&m).unwrap();
        assert!(q.invalid.is_some(), "{q:?}");
        assert_eq!(q.name, "\\\\.com");
        let q = parse_query(&query("exampl\\101.com", TYPE_A)).unwrap();
        assert!(
            q.invalid.unwrap().to_string().contains("not a host name"),
            "escape refused"
        );
        let q = parse_query(&query("Example.COM", TYPE_A)).unwrap();
        assert_eq!((q.name.as_str(), q.invalid), ("example.com", None));
    }

    #[test]
    fn pool_assigns_stable_addresses() {
        let n = Names::new();
        let a = n.assign("a.example");
        let b = n.assign("b.example");
        assert_ne!(a, b);
        assert!(in_pool(a) && in_pool(b));
        assert!(!in_pool(Ipv4Addr::new(198, 20, 0, 1)));
        assert_eq!(n.assign("a.example"), a);
        assert_eq!(n.host_for(b).as_deref(), Some("b.example"));
        assert_eq!(
            reverse_v4("1.0.18.198.in-addr.arpa"),
            Some(Ipv4Addr::new(198, 18, 0, 1))
        );
    }
}
