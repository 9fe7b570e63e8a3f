//! The vhost-user vsock backend ([`ax_vsock::serve`]) driven by a real vhost-user frontend
//! (vhost's `Frontend` with `ax_vhost::testing`'s memfd guest RAM and hand-laid split
//! virtqueues, virtio 1.2 §2.7), no VM: the configuration space, a host `CONNECT` reaching the
//! guest's receive queue as a REQUEST (virtio 1.2 §5.10.6), and the end on disconnect.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ax_vhost::testing::{ack_protocol_features, GuestRam, Vq, DESC_F_WRITE};
use ax_vsock::HybridConfig;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 16;
const RXQ: usize = 0;
/// Receive buffer `i` at `BUF_BASE + i * 0x1000`, 4 KiB each.
const BUF_BASE: u64 = 0x10_0000;
const GUEST_CID: u64 = 7;

#[test]
fn host_connect_reaches_the_guest_rx_queue_and_disconnect_ends_serve() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vhost.sock");
    let uds = dir.path().join("vsock.sock");
    let listener = ax_vsock::listen(&sock).unwrap();
    let cfg = HybridConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.clone(),
    };
    let server = std::thread::spawn(move || ax_vsock::serve(listener, cfg));

    let mut fe = Frontend::connect(&sock, 3).expect("connect");
    let mem = GuestRam::new(c"vsock-guest-ram", MEM_SIZE);
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    let version1 = 1u64 << 32;
    let proto = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    assert_eq!(
        offered & (version1 | proto),
        version1 | proto,
        "{offered:#x}"
    );
    fe.set_features(version1 | proto).unwrap();
    ack_protocol_features(&mut fe);
    // struct virtio_vsock_config { le64 guest_cid; } (§5.10.4)
    let (_, c) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    assert_eq!(c, GUEST_CID.to_le_bytes());
    fe.set_mem_table(&[mem.region()]).unwrap();
    let mut vqs: Vec<Vq> = (0..3)
        .map(|q| Vq::setup(&mut fe, &mem, q, 0x1_0000 * (q as u64 + 1), QSIZE, true))
        .collect();
    let rx = &mut vqs[RXQ];
    for i in 0..4 {
        rx.write_desc(
            &mem,
            i,
            BUF_BASE + u64::from(i) * 0x1000,
            4096,
            DESC_F_WRITE,
            0,
        );
        rx.publish(&mem, i);
    }
    rx.kick();

    // A host client asks for guest port 5000: the muxer (polled through ax_vhost's Watch)
    // puts a REQUEST in the receive queue.
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 5000\n").unwrap();
    let t0 = Instant::now();
    let (id, len) = loop {
        if let Some(used) = rx.pop_used(&mem) {
            break used;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no REQUEST in the rx queue after 10 s"
        );
        rx.wait_call(50);
    };
    // struct virtio_vsock_hdr (§5.10.6): le64 src_cid, le64 dst_cid, le32 src_port,
    // le32 dst_port, le32 len, le16 type, le16 op, ... (44 bytes).
    assert_eq!(len, 44, "a header without payload");
    let hdr = BUF_BASE + u64::from(id) * 0x1000;
    let read_u64 = |off: u64| -> u64 { mem.read_obj(GuestAddress(hdr + off)).unwrap() };
    let read_u32 = |off: u64| -> u32 { mem.read_obj(GuestAddress(hdr + off)).unwrap() };
    let read_u16 = |off: u64| -> u16 { mem.read_obj(GuestAddress(hdr + off)).unwrap() };
    assert_eq!(read_u64(0), 2, "src_cid: the host");
    assert_eq!(read_u64(8), GUEST_CID, "dst_cid");
    assert_eq!(read_u32(20), 5000, "dst_port");
    assert_eq!(read_u16(28), 1, "type: VIRTIO_VSOCK_TYPE_STREAM");
    assert_eq!(read_u16(30), 1, "op: VIRTIO_VSOCK_OP_REQUEST");

    drop(vqs);
    drop(fe);
    server
        .join()
        .unwrap()
        .expect("a frontend going away ends serve with Ok");
    assert!(!uds.exists(), "the hybrid socket file is removed on return");
}
