//! Classification of guest frames before smoltcp sees them, and the RST the stack sends for a
//! held SYN it refuses. The stack only lets through what it serves: ARP for the gateway, ICMP
//! to the gateway, UDP to gateway:53, TCP segments of known flows; a new TCP SYN is held
//! (answered only once the upstream connect succeeded, RFC 9293 §3.5); anything else is dropped.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use std::net::{Ipv4Addr, SocketAddrV4};

/// A guest TCP connection: (guest end, destination as the guest addressed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest: SocketAddrV4,
    pub dst: SocketAddrV4,
}

/// A SYN the stack holds while the policy and the upstream connect decide its fate.
#[derive(Debug, Clone)]
pub struct HeldSyn {
    pub key: FlowKey,
    /// The guest's MAC (the RST goes back to it).
    pub guest_mac: EthernetAddress,
    /// The SYN's sequence number (the RST acknowledges it, RFC 9293 §3.10.7.1).
    pub seq: TcpSeqNumber,
    /// The frame as received, fed to smoltcp once the flow is accepted.
    pub frame: Vec<u8>,
}

/// What to do with one guest frame.
#[derive(Debug)]
pub enum Class {
    /// Hand to smoltcp.
    Pass,
    /// A new connection attempt.
    Syn(HeldSyn),
    /// Drop silently; the reason is for debug logs and counters.
    Drop(&'static str),
}

/// Classifies `frame` (Ethernet II, no virtio-net header) from the guest at `guest`.
/// `is_known(key)` says whether a TCP flow with that key already has a smoltcp socket (its
/// SYNs go to smoltcp). IPv4 from any other source address is dropped (no spoofing).
pub fn classify(
    frame: &[u8],
    guest: Ipv4Addr,
    gateway: Ipv4Addr,
    is_known: impl Fn(&FlowKey) -> bool,
) -> Class {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Class::Drop("short ethernet frame");
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let Ok(arp) = ArpPacket::new_checked(eth.payload()) else {
                return Class::Drop("bad arp");
            };
            // smoltcp in any-IP mode would answer for every address; only the gateway exists.
            if arp.operation() == ArpOperation::Request
                && arp.target_protocol_addr() != gateway.octets()
            {
                return Class::Drop("arp for another address");
            }
            Class::Pass
        }
        EthernetProtocol::Ipv4 => classify_ipv4(&eth, guest, gateway, is_known),
        _ => Class::Drop("not ipv4 or arp"),
    }
}

fn classify_ipv4(
    eth: &EthernetFrame<&[u8]>,
    guest: Ipv4Addr,
    gateway: Ipv4Addr,
    is_known: impl Fn(&FlowKey) -> bool,
) -> Class {
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return Class::Drop("bad ipv4");
    };
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Class::Drop("ipv4 fragment");
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if src != guest {
        return Class::Drop("source address is not the guest's");
    }
    match ip.next_header() {
        IpProtocol::Icmp if dst == gateway => Class::Pass,
        IpProtocol::Icmp => Class::Drop("icmp beyond the gateway"),
        IpProtocol::Udp => {
            let p = ip.payload();
            if dst == gateway && p.len() >= 4 && u16::from_be_bytes([p[2], p[3]]) == 53 {
                Class::Pass
            } else {
                Class::Drop("udp other than dns")
            }
        }
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return Class::Drop("bad tcp");
            };
            if !tcp.syn() || tcp.ack() {
                return Class::Pass;
            }
            let key = FlowKey {
                guest: SocketAddrV4::new(src, tcp.src_port()),
                dst: SocketAddrV4::new(dst, tcp.dst_port()),
            };
            if is_known(&key) {
                return Class::Pass;
            }
            // What smoltcp will check when the SYN is fed to it, so that an accepted flow
            // cannot stall on a SYN smoltcp would drop.
            let caps = ChecksumCapabilities::default();
            if !ip.verify_checksum()
                || TcpRepr::parse(&tcp, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), &caps)
                    .is_err()
            {
                return Class::Drop("tcp checksum");
            }
            Class::Syn(HeldSyn {
                key,
                guest_mac: eth.src_addr(),
                seq: tcp.seq_number(),
                frame: eth.as_ref().to_vec(),
            })
        }
        _ => Class::Drop("ip protocol not served"),
    }
}

/// The RST|ACK refusing `syn` (seq 0, ack = SYN's seq + 1, RFC 9293 §3.10.7.1), from the
/// address the guest tried to reach, as an Ethernet frame from `our_mac`.
pub fn rst_for(syn: &HeldSyn, our_mac: EthernetAddress) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: syn.key.dst.port(),
        dst_port: syn.key.guest.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(syn.seq + 1),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: *syn.key.dst.ip(),
        dst_addr: *syn.key.guest.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: our_mac,
        dst_addr: syn.guest_mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(
        &mut t,
        &IpAddress::Ipv4(ip.src_addr),
        &IpAddress::Ipv4(ip.dst_addr),
        &caps,
    );
    buf
}

#[cfg(test)]
mod tests;
