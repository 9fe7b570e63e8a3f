use super::*;
use smoltcp::wire::ArpRepr;

const GUEST: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 2);
const GW: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 1);
const DST: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

fn tcp_frame(src: Ipv4Addr, syn: bool, ack: bool) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: 443,
        control: if syn {
            TcpControl::Syn
        } else {
            TcpControl::None
        },
        seq_number: TcpSeqNumber(1000),
        ack_number: ack.then_some(TcpSeqNumber(5)),
        window_len: 1000,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: DST,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
        dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(&mut t, &IpAddress::Ipv4(src), &IpAddress::Ipv4(DST), &caps);
    buf
}

#[test]
fn syns_are_held_other_segments_pass() {
    let f = tcp_frame(GUEST, true, false);
    let Class::Syn(syn) = classify(&f, GUEST, GW, |_| false) else {
        panic!("a new SYN is held")
    };
    assert_eq!(syn.key.dst, SocketAddrV4::new(DST, 443));
    assert_eq!(syn.seq, TcpSeqNumber(1000));
    assert!(
        matches!(classify(&f, GUEST, GW, |_| true), Class::Pass),
        "known flow"
    );
    let ack = tcp_frame(GUEST, false, true);
    assert!(matches!(classify(&ack, GUEST, GW, |_| false), Class::Pass));
    let spoofed = tcp_frame(Ipv4Addr::new(100, 96, 0, 3), true, false);
    assert!(matches!(
        classify(&spoofed, GUEST, GW, |_| false),
        Class::Drop(_)
    ));
    let mut bad = f.clone();
    bad[14 + 20 + 4] ^= 0xff; // corrupt the sequence number: the checksum fails
    assert!(matches!(
        classify(&bad, GUEST, GW, |_| false),
        Class::Drop("tcp checksum")
    ));
}

#[test]
fn rst_acknowledges_the_syn() {
    let f = tcp_frame(GUEST, true, false);
    let Class::Syn(syn) = classify(&f, GUEST, GW, |_| false) else {
        panic!("a new SYN is held")
    };
    let rst = rst_for(&syn, EthernetAddress([2, 0x61, 0x78, 0, 0, 1]));
    let eth = EthernetFrame::new_checked(&rst[..]).unwrap();
    assert_eq!(eth.dst_addr(), EthernetAddress([2, 0, 0, 0, 0, 2]));
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.src_addr(), ip.dst_addr()), (DST, GUEST));
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(t.verify_checksum(&IpAddress::Ipv4(DST), &IpAddress::Ipv4(GUEST)));
    assert!(t.rst() && t.ack());
    assert_eq!(t.ack_number(), TcpSeqNumber(1001));
    assert_eq!((t.src_port(), t.dst_port()), (443, 40000));
}

#[test]
fn arp_only_for_the_gateway() {
    for (target, pass) in [(GW, true), (Ipv4Addr::new(100, 96, 0, 3), false)] {
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            source_protocol_addr: GUEST,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        let mut buf = vec![0u8; 14 + arp.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        f.set_ethertype(EthernetProtocol::Arp);
        arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
        let c = classify(&buf, GUEST, GW, |_| false);
        assert_eq!(matches!(c, Class::Pass), pass, "{target}");
    }
}
