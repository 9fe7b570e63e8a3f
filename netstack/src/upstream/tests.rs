use super::*;

#[test]
fn blocked_ranges() {
    for (ip, want) in [
        ("127.0.0.1", true),
        ("169.254.169.254", true),
        ("10.1.2.3", true),
        ("172.16.0.1", true),
        ("172.32.0.1", false),
        ("192.168.1.1", true),
        ("100.64.0.1", true),
        ("100.128.0.1", false),
        ("0.0.0.0", true),
        ("224.0.0.1", true),
        ("255.255.255.255", true),
        ("198.18.0.5", true),
        ("93.184.216.34", false),
        ("::1", true),
        ("fd00::1", true),
        ("fe80::1", true),
        ("ff02::1", true),
        ("::ffff:127.0.0.1", true),
        ("2606:4700::1", false),
        // NAT64 (RFC 6052) of blocked IPv4 addresses, and of a public one
        ("64:ff9b::7f00:1", true),
        ("64:ff9b::a9fe:a9fe", true),
        ("64:ff9b::10.0.0.1", true),
        ("64:ff9b::93.184.216.34", false),
        ("64:ff9b:1::5db8:d822", true), // local-use NAT64 (RFC 8215): whole /48
        ("2002:7f00:1::1", true),       // 6to4 of 127.0.0.1
        ("2002:5db8:d822::1", false),
        ("::127.0.0.1", true), // IPv4-compatible (deprecated)
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(blocked(ip).is_some(), want, "{ip}");
    }
}

#[tokio::test]
async fn connect_times_out_when_the_proxy_never_answers() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await; // accepts, never answers
        drop(s);
    });
    let c = Config::parse(
        &format!("agent='a'\n[network]\nupstream_proxy='http://127.0.0.1:{port}'\n"),
        "t",
    )
    .unwrap();
    let mut k = Connector::new(&c).unwrap();
    k.timeout = Duration::from_millis(300);
    let dst: SocketAddr = "198.18.0.1:443".parse().unwrap();
    let e = k.connect_tcp(Some("slow.invalid"), dst).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    hold.abort();
}

/// A service the host binds to 0.0.0.0 is reachable at each of the host's addresses; the
/// guest must not reach it through any of them, public ones included, unless routed.
#[tokio::test]
async fn the_hosts_own_addresses_are_refused() {
    let c = Config::parse("agent='a'\n", "t").unwrap();
    let k = Connector::new(&c).unwrap();
    let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let own: Vec<IpAddr> = k
        .own
        .iter()
        .copied()
        .filter(|a| blocked(*a).is_none())
        .collect();
    if own.is_empty() {
        eprintln!("SKIP: the_hosts_own_addresses_are_refused: this host has no address outside the blocked ranges");
    }
    for ip in own {
        // Reachable from the host itself: the refusal below is the policy, not the network.
        tokio::net::TcpStream::connect((ip, port)).await.unwrap();
        let e = k
            .connect_tcp(None, SocketAddr::new(ip, port))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{ip}: {e}");
        assert!(e.to_string().contains("an address of this host"), "{e}");
    }
    assert!(k.own.contains(&"127.0.0.1".parse().unwrap()), "{:?}", k.own);
}

#[tokio::test]
async fn literal_blocked_addresses_are_refused_without_connecting() {
    let c = Config::parse("agent='a'\n", "t").unwrap();
    let k = Connector::new(&c).unwrap();
    for dst in [
        "127.0.0.1:22",
        "10.0.0.1:80",
        "169.254.169.254:80",
        "[::1]:22",
    ] {
        let e = k.connect_tcp(None, dst.parse().unwrap()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{dst}: {e}");
    }
}

#[test]
fn route_ca_file_gives_der_roots() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    let c = Config::parse(
        &format!(
            "agent='a'\n[[route]]\nhost='gw.corp'\naddress='10.0.0.5:443'\nca_file={:?}\n",
            path.to_str().unwrap()
        ),
        "t",
    )
    .unwrap();
    let k = Connector::new(&c).unwrap();
    assert_eq!(k.extra_roots("GW.corp"), vec![ca.der().to_vec()]);
    assert!(k.extra_roots("other.corp").is_empty());
    let c = Config::parse(
        "agent='a'\n[[route]]\nhost='h'\naddress='10.0.0.5'\nca_file='/nonexistent/ca.pem'\n",
        "t",
    )
    .unwrap();
    let e = format!("{:#}", Connector::new(&c).err().unwrap());
    assert!(e.contains("cannot read ca_file /nonexistent/ca.pem"), "{e}");
}

#[test]
fn routes_parse_and_bad_pem_is_refused() {
    let c = Config::parse(
        "agent='a'\n[[route]]\nhost='API.Example.com'\naddress='127.0.0.1:8443'\n",
        "t",
    )
    .unwrap();
    let k = Connector::new(&c).unwrap();
    assert!(k.has_route("api.example.com."));
    assert!(k.extra_roots("api.example.com").is_empty());
    let c = Config::parse(
        "agent='a'\n[[route]]\nhost='h'\naddress='127.0.0.1'\nca_pem='nope'\n",
        "t",
    )
    .unwrap();
    let e = format!("{:#}", Connector::new(&c).err().unwrap());
    assert!(e.contains("ca_pem holds no valid certificate"), "{e}");
}

#[test]
fn own_prefixes_mask_and_skip_huge_ones() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let nets = own_prefixes(&[
        (ip("192.0.2.2"), 24),
        (ip("fd00::2"), 64),
        (ip("2001:db8:1:2::9"), 64),
        (ip("198.51.100.7"), 4), // a /4 would block a sixteenth of the Internet
        (ip("2001:db8::1"), 8),
        (ip("192.0.2.9"), 24),
    ]);
    assert_eq!(
        nets,
        vec![
            (ip("192.0.2.0"), 24),
            (ip("2001:db8:1:2::"), 64),
            (ip("fd00::"), 64)
        ]
    );
}

/// The host's LANs: a neighbour of the host on one of its interfaces' networks is refused,
/// v4 and v6 (also in NAT64 form), unless routed.
#[tokio::test]
async fn the_hosts_lan_prefixes_are_refused() {
    let c = Config::parse("agent='a'\n", "t").unwrap();
    let k = Connector::new(&c).unwrap();
    let mut checked = 0;
    for &(net, len) in &k.own_nets {
        let neighbour = match net {
            IpAddr::V4(n) if len <= 30 => IpAddr::V4(Ipv4Addr::from(u32::from(n) + 3)),
            IpAddr::V6(n) if len <= 120 => IpAddr::V6(Ipv6Addr::from(u128::from(n) + 0x77)),
            _ => continue,
        };
        if blocked(neighbour).is_some() || k.own.contains(&neighbour) {
            continue; // refused anyway; not what this test is about
        }
        let e = k
            .connect_tcp(None, SocketAddr::new(neighbour, 80))
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::PermissionDenied,
            "{neighbour}: {e}"
        );
        assert!(e.to_string().contains("network of this host"), "{e}");
        if let IpAddr::V4(v4) = neighbour {
            let o = v4.octets();
            let nat64: IpAddr = format!("64:ff9b::{}.{}.{}.{}", o[0], o[1], o[2], o[3])
                .parse()
                .unwrap();
            assert!(k.why_blocked(nat64).is_some(), "{nat64}");
        }
        checked += 1;
    }
    if checked == 0 {
        eprintln!("SKIP: the_hosts_lan_prefixes_are_refused: no interface network outside the blocked ranges");
    }
}

/// A CONNECT proxy stand-in: accepts connections, records what each sends first, answers 200.
async fn recording_proxy() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap_or(0) == 1 {
                    head.push(b[0]);
                }
                rec.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = s
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    (port, seen)
}

/// With an upstream proxy, a name the host cannot resolve goes to the proxy as is: it must be
/// a host name, never a bracketed literal (`[::1]` is the host's loopback to the proxy) or a
/// label carrying CR/LF (a second header in the CONNECT request).
#[tokio::test]
async fn connect_targets_are_host_names_only() {
    let (port, seen) = recording_proxy().await;
    let c = Config::parse(
        &format!("agent='a'\n[network]\nupstream_proxy='http://127.0.0.1:{port}'\n"),
        "t",
    )
    .unwrap();
    let k = Connector::new(&c)
        .unwrap()
        .with_resolver(std::sync::Arc::new(|_: &str| Err(Lookup::NoName)));
    let dst: SocketAddr = "198.18.0.1:443".parse().unwrap();
    for bad in [
        "[::1]",
        "[::ffff:127.0.0.1]",
        "127.0.0.1",
        "evil.test\r\nX-Injected: 1",
        "evil.test:22 HTTP/1.1\r\n\r\nGET",
        "exampl\\101.com",
    ] {
        let e = k.connect_tcp(Some(bad), dst).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{bad:?}: {e}");
        assert!(e.to_string().contains("not a host name"), "{e}");
    }
    // A proper name the host cannot resolve does go to the proxy, normalised.
    k.connect_tcp(Some("Only-The-Proxy.Example."), dst)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec!["CONNECT only-the-proxy.example:443 HTTP/1.1\r\nHost: only-the-proxy.example:443\r\n\r\n"]
    );
    assert_eq!(
        proxy_authority(None, "[2001:db8::1]:443".parse().unwrap()).unwrap(),
        "[2001:db8::1]:443"
    );
}

/// CIDR rules apply to the addresses a name resolves to: a name the policy allows that
/// resolves into a denied network is refused without connecting.
#[tokio::test]
async fn address_rules_apply_to_resolved_names() {
    let c = Config::parse(
        "agent='a'\n[[policy.rule]]\nhost='203.0.113.0/24'\naction='deny'\n[[policy.rule]]\nhost='*'\naction='allow'\n",
        "t",
    )
    .unwrap();
    let k = Connector::new(&c)
        .unwrap()
        .with_resolver(std::sync::Arc::new(|n: &str| {
            Ok(match n {
                "cidr.test" => vec!["203.0.113.5".parse().unwrap()],
                "mixed.test" => vec![
                    "203.0.113.5".parse().unwrap(),
                    "::ffff:203.0.113.6".parse().unwrap(),
                ],
                _ => Vec::new(),
            })
        }));
    for name in ["cidr.test", "mixed.test"] {
        let e = k
            .connect_tcp(Some(name), "198.18.0.1:80".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{name}: {e}");
        assert!(e.to_string().contains("denied by policy rule 1"), "{e}");
        assert!(
            e.to_string().contains(&format!("{name} resolves there")),
            "{e}"
        );
    }
}
