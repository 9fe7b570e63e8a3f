//! Refusals through `GuestPort`: policy deny, blocked ranges (also via DNS answers), a closed
//! upstream port — each a RST to the guest and an audit record with the reason.

mod stack_support;

use stack_support::*;
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_deny_is_rst_with_a_reason_and_no_upstream_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (_ns, gp, dir) = start_audited(&format!(
        r#"
[[route]]
host = "denied.test"
address = "127.0.0.1:{port}"
[[route]]
host = "allowed.test"
address = "127.0.0.1:{port}"
[policy]
default = "allow"
[[policy.rule]]
host = "denied.test"
action = "deny"
"#
    ));
    let mut g = Guest::new(gp);
    let denied = g.resolve("denied.test").await; // DNS still answers for a denied name
    let h = g.connect(denied, 443, 41000);
    assert!(!established(&mut g, h).await, "denied flow must be refused");
    let rows = connections(&dir, 1).await;
    assert_eq!(rows[0].decision, "deny");
    assert_eq!(rows[0].host.as_deref(), Some("denied.test"));
    assert_eq!(rows[0].port, 443);
    let reason = rows[0].reason.clone().unwrap();
    assert!(reason.contains("policy rule 1"), "{reason}");
    // The upstream was never contacted.
    assert!(tokio::time::timeout(Duration::from_millis(300), l.accept())
        .await
        .is_err());

    // The same route under an allowing name connects (the listener is reachable at all).
    let allowed = g.resolve("allowed.test").await;
    let h = g.connect(allowed, 443, 41001);
    let (acc, est) = tokio::join!(l.accept(), established(&mut g, h));
    assert!(acc.is_ok() && est);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_ranges_are_refused_without_a_route() {
    let (_ns, gp, dir) = start_audited("");
    let mut g = Guest::new(gp);
    // A name that resolves to loopback on the host: DNS answers, the connection is refused.
    let lo = g.resolve("localhost").await;
    let h = g.connect(lo, 22, 41010);
    assert!(
        !established(&mut g, h).await,
        "loopback via DNS must be refused"
    );
    // Literal addresses: private range and the cloud metadata address.
    let h = g.connect(Ipv4Addr::new(10, 1, 2, 3), 80, 41011);
    assert!(!established(&mut g, h).await, "RFC 1918 must be refused");
    let h = g.connect(Ipv4Addr::new(169, 254, 169, 254), 80, 41012);
    assert!(!established(&mut g, h).await, "metadata must be refused");
    // A synthetic address the DNS responder never handed out.
    let h = g.connect(Ipv4Addr::new(198, 19, 200, 1), 443, 41013);
    assert!(
        !established(&mut g, h).await,
        "unknown synthetic address must be refused"
    );

    let rows = connections(&dir, 4).await;
    let reason = |ip: &str| {
        let r = rows
            .iter()
            .find(|r| r.ip == ip)
            .unwrap_or_else(|| panic!("no record for {ip}"));
        assert_eq!(r.decision, "deny", "{ip}");
        r.reason.clone().unwrap()
    };
    assert!(reason(&lo.to_string()).contains("loopback"));
    assert!(reason("10.1.2.3").contains("RFC 1918"));
    assert!(reason("169.254.169.254").contains("metadata"));
    assert!(reason("198.19.200.1").contains("not handed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_upstream_port_is_rst() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: connecting gets ECONNREFUSED
    let (_ns, gp, dir) = start_audited(&format!(
        "[[route]]\nhost = \"closed.test\"\naddress = \"127.0.0.1:{port}\"\n"
    ));
    let mut g = Guest::new(gp);
    let ip = g.resolve("closed.test").await;
    let h = g.connect(ip, 80, 41020);
    assert!(
        !established(&mut g, h).await,
        "failed upstream connect must be RST"
    );
    let rows = connections(&dir, 1).await;
    let reason = rows[0].reason.clone().unwrap();
    assert!(reason.contains("upstream connect failed"), "{reason}");
    assert_eq!(
        rows[0].decision, "allow",
        "the policy allowed it; the upstream failed"
    );
}
