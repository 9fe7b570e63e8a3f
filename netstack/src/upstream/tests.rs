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
