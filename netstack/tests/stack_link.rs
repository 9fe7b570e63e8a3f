//! Link-level behaviour of the stack, with raw Ethernet frames through `GuestPort`: ARP for
//! the gateway, ICMP echo to the gateway, UDP other than DNS dropped, the RX eventfd.

mod stack_support;

use smoltcp::wire::*;
use stack_support::*;
use std::net::Ipv4Addr;

fn readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arp_answers_for_the_gateway_only() {
    let (_ns, port) = start("");
    assert!(!readable(port.rx_eventfd()), "nothing queued yet");
    port.send(arp_request(Ipv4Addr::new(100, 96, 0, 3)));
    port.send(arp_request(Ipv4Addr::new(8, 8, 8, 8)));
    port.send(arp_request(GW_IP));
    let mut got = None;
    for _ in 0..500 {
        if readable(port.rx_eventfd()) {
            got = port.try_recv();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let f = got.expect("an ARP reply for the gateway");
    let eth = EthernetFrame::new_checked(&f[..]).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
    assert_eq!(eth.dst_addr(), EthernetAddress(GUEST_MAC));
    match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap() {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } => {
            assert_eq!(operation, ArpOperation::Reply);
            assert_eq!(
                source_hardware_addr,
                EthernetAddress(ax_netstack::stack::GATEWAY_MAC)
            );
            assert_eq!(source_protocol_addr, GW_IP);
            assert_eq!(target_protocol_addr, GUEST_IP);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Only the gateway's address is answered; the queue drained resets the eventfd.
    let rest = collect(&port, 200).await;
    assert!(
        rest.is_empty(),
        "answers for other addresses: {}",
        rest.len()
    );
    assert!(!readable(port.rx_eventfd()));
}

fn echo_request(dst: Ipv4Addr, ident: u16) -> Vec<u8> {
    echo_request_from(GUEST_IP, dst, ident)
}

fn echo_request_from(src: Ipv4Addr, dst: Ipv4Addr, ident: u16) -> Vec<u8> {
    let data = b"ax-ping";
    let icmp = Icmpv4Repr::EchoRequest {
        ident,
        seq_no: 1,
        data,
    };
    let mut b = vec![0u8; icmp.buffer_len()];
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(&mut b[..]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    ipv4_frame_from(src, dst, IpProtocol::Icmp, &b)
}

fn is_echo_reply(f: &[u8], ident: u16) -> bool {
    let eth = EthernetFrame::new_checked(f).unwrap();
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return false;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    if ip.next_header() != IpProtocol::Icmp {
        return false;
    }
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    icmp.msg_type() == Icmpv4Message::EchoReply && icmp.echo_ident() == ident
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gateway_answered_other_ping_and_udp_dropped() {
    let (_ns, port) = start("");
    port.send(arp_request(GW_IP)); // the stack learns the guest's MAC
                                   // QUIC to some server, UDP to the gateway off port 53, ping to a remote host: all dropped.
    port.send(udp_frame(
        Ipv4Addr::new(93, 184, 216, 34),
        40000,
        443,
        b"quic initial",
    ));
    port.send(udp_frame(GW_IP, 40001, 123, b"ntp"));
    port.send(echo_request(Ipv4Addr::new(93, 184, 216, 34), 7));
    port.send(echo_request(GW_IP, 9));
    // A spoofed source address gets nothing.
    port.send(echo_request_from(Ipv4Addr::new(100, 96, 0, 3), GW_IP, 11));
    let frames = collect(&port, 400).await;
    let replies: Vec<_> = frames.iter().filter(|f| is_echo_reply(f, 9)).collect();
    assert_eq!(replies.len(), 1, "one echo reply from the gateway");
    assert!(
        !frames.iter().any(|f| is_echo_reply(f, 11)),
        "spoofed ping must not be answered"
    );
    assert!(
        !frames.iter().any(|f| is_echo_reply(f, 7)),
        "remote ping must not be answered"
    );
    // Besides the ARP reply and the echo reply nothing came back: no ICMP unreachable either.
    let other: Vec<_> = frames
        .iter()
        .filter(|f| {
            !is_echo_reply(f, 9)
                && EthernetFrame::new_checked(&f[..]).unwrap().ethertype() != EthernetProtocol::Arp
        })
        .collect();
    assert!(
        other.is_empty(),
        "unexpected frames for dropped UDP/ICMP: {}",
        other.len()
    );
}
