//! The DNS responder on the gateway, over UDP and TCP (RFC 1035 §4.2), through `GuestPort`.

mod stack_support;

use smoltcp::socket::tcp::State;
use stack_support::*;

const CFG: &str = "[[route]]\nhost = \"api.route.test\"\naddress = \"127.0.0.1:9\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_a_aaaa_nxdomain_and_route_override() {
    let (_ns, gp) = start(CFG);
    let mut g = Guest::new(gp);

    // A route override answers for its host (the host's resolver never sees it).
    let r = g.dns_udp("api.route.test", 1, 30001).await;
    assert_eq!(
        (rcode(&r), &r[0..2]),
        (0, &[0x42, 0x42][..]),
        "NOERROR, same id"
    );
    let a = answers_a(&r);
    assert_eq!(a.len(), 1);
    assert_eq!(
        &a[0].octets()[..2],
        &[198, 18],
        "synthetic address from 198.18.0.0/15"
    );
    // Stable per name, case-insensitive.
    assert_eq!(answers_a(&g.dns_udp("API.Route.Test", 1, 30002).await), a);

    // AAAA of an existing name: NOERROR without records (never NXDOMAIN).
    let r = g.dns_udp("api.route.test", 28, 30003).await;
    assert_eq!((rcode(&r), ancount(&r)), (0, 0));

    // A name the host resolves (from /etc/hosts) exists too; a different address.
    let r = g.dns_udp("localhost", 1, 30004).await;
    assert_eq!(rcode(&r), 0);
    let l = answers_a(&r);
    assert_eq!(l.len(), 1);
    assert_ne!(l, a);
    let r = g.dns_udp("localhost", 28, 30005).await;
    assert_eq!(
        (rcode(&r), ancount(&r)),
        (0, 0),
        "AAAA no-data for an existing name"
    );

    // A name that does not resolve on the host: NXDOMAIN, for A and AAAA alike.
    for qtype in [1, 28] {
        let r = g.dns_udp("nonexistent.invalid", qtype, 30006).await;
        assert_eq!(
            (rcode(&r), ancount(&r)),
            (3, 0),
            "NXDOMAIN for type {qtype}"
        );
    }

    // PTR of a synthetic address names the host it stands for.
    let o = a[0].octets();
    let r = g
        .dns_udp(
            &format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]),
            12,
            30007,
        )
        .await;
    assert_eq!((rcode(&r), ancount(&r)), (0, 1));
    assert!(
        r.windows(15).any(|w| w == b"\x03api\x05route\x04test"),
        "PTR names api.route.test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_queries_on_one_connection() {
    let (_ns, gp) = start(CFG);
    let mut g = Guest::new(gp);
    let udp = answers_a(&g.dns_udp("api.route.test", 1, 30010).await);
    let h = g.connect(GW_IP, 53, 40053);
    assert!(established(&mut g, h).await, "TCP to gateway:53 accepted");
    // Two length-prefixed queries in one write (RFC 7766 §6.2.1 pipelining).
    let mut out = Vec::new();
    for (id, name, qtype) in [
        (1u16, "api.route.test", 1u16),
        (2, "nonexistent.invalid", 1),
        (3, "api.route.test", 28),
    ] {
        let q = dns_query(id, name, qtype);
        out.extend_from_slice(&(q.len() as u16).to_be_bytes());
        out.extend_from_slice(&q);
    }
    g.tcp(h).send_slice(&out).unwrap();
    let mut buf = Vec::new();
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    let ok = g
        .until(10, |g| {
            let s = g.tcp(h);
            while s.can_recv() {
                s.recv(|b| {
                    buf.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            while buf.len() >= 2 {
                let n = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                if buf.len() < 2 + n {
                    break;
                }
                msgs.push(buf[2..2 + n].to_vec());
                buf.drain(..2 + n);
            }
            msgs.len() == 3
        })
        .await;
    assert!(ok, "three answers over TCP, got {}", msgs.len());
    assert_eq!(u16::from_be_bytes([msgs[0][0], msgs[0][1]]), 1);
    assert_eq!(
        (rcode(&msgs[0]), answers_a(&msgs[0])),
        (0, udp),
        "same address as over UDP"
    );
    assert_eq!(
        (
            u16::from_be_bytes([msgs[1][0], msgs[1][1]]),
            rcode(&msgs[1])
        ),
        (2, 3),
        "NXDOMAIN"
    );
    assert_eq!((rcode(&msgs[2]), ancount(&msgs[2])), (0, 0), "AAAA no data");
    g.tcp(h).close();
    assert!(
        g.until(10, |g| matches!(
            g.tcp(h).state(),
            State::TimeWait | State::Closed
        ))
        .await,
        "the responder closes after our FIN"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_gateway_ports_are_refused() {
    let (_ns, gp) = start("");
    let mut g = Guest::new(gp);
    let h = g.connect(GW_IP, 22, 40022);
    assert!(!established(&mut g, h).await, "RST for gateway:22");
}
