//! ax-fsd's FUSE request parser and dispatcher ([`Server`], virtio-fs requests from the
//! guest kernel) over the real union file system ([`UnionFs`]) in a fresh temporary
//! directory per input.

use std::sync::Arc;

use ax_fsd::fuse::abi::{opcode, read_struct, InHeader, OutHeader};
use ax_fsd::fuse::io::VecSink;
use ax_fsd::fuse::server::Server;
use ax_fsd::journal::Journal;
use ax_fsd::union::{UnionFs, UnionOptions};
use vm_memory::ByteValued;

const HDR: usize = 40;
const OUT_HDR: usize = 16;
/// `fuse_write_in` (fuse.h).
const WRITE_IN: usize = 40;
/// Largest FALLOCATE offset/length let through: the target must not fill the disk.
const MAX_ALLOC: u64 = 1 << 20;

/// A fresh lower (two files, a directory, a symlink pointing out) and an empty upper.
fn layers() -> std::io::Result<(tempfile::TempDir, UnionFs)> {
    let dir = tempfile::tempdir()?;
    let lower = dir.path().join("lower");
    let upper = dir.path().join("upper");
    std::fs::create_dir_all(lower.join("d"))?;
    std::fs::create_dir(&upper)?;
    std::fs::write(lower.join("a"), b"lower a\n")?;
    std::fs::write(lower.join("d/b"), b"lower b\n")?;
    std::os::unix::fs::symlink("/etc/passwd", lower.join("out"))?;
    let fs = UnionFs::new(
        &lower,
        &upper,
        Arc::new(Journal::memory()),
        UnionOptions::default(),
    )?;
    Ok((dir, fs))
}

fn request(op: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (HDR + body.len()) as u32,
        opcode: op,
        unique,
        nodeid,
        ..Default::default()
    };
    let mut v = h.as_slice().to_vec();
    v.extend_from_slice(body);
    v
}

/// Checks a reply against the request's `unique` and the room the driver gave (`out_cap`).
fn check_reply(r: &[u8], unique: u64, out_cap: usize) {
    assert!(
        r.len() <= out_cap.max(OUT_HDR),
        "reply of {} bytes > room {out_cap}",
        r.len()
    );
    let (h, _) = read_struct::<OutHeader>(r).expect("a reply has a header");
    assert_eq!(h.len as usize, r.len(), "out header len");
    assert_eq!(h.unique, unique, "out header unique");
    assert!(h.error <= 0 && h.error > -4096, "error {}", h.error);
}

/// Input: records `[op, node, room, n, body[n]]`. `op` 0xff sends `body` as raw bytes
/// (header included, unchecked); otherwise a header is built around `body` with opcode `op`
/// and node id `node`, and the reply room is `16 + room * 16` bytes. INIT is sent first.
/// Replies fit the room and echo `unique`; READ and WRITE also go through the zero-copy
/// paths.
pub fn fuse(data: &[u8]) {
    let Ok((_dir, fs)) = layers() else {
        return;
    };
    let server = Server::new(fs);
    let init = [7u32, 38, 65536, u32::MAX];
    let init: Vec<u8> = init.iter().flat_map(|v| v.to_le_bytes()).collect();
    let r = server
        .handle(&request(opcode::INIT, 1, 0, &init), 4096)
        .expect("INIT reply");
    check_reply(&r, 1, 4096);
    let mut rest = data;
    let mut unique = 2u64;
    while rest.len() >= 4 {
        let (op, node, room, n) = (rest[0], rest[1], rest[2], rest[3] as usize);
        let body = &rest[4..(4 + n).min(rest.len())];
        rest = &rest[(4 + n).min(rest.len())..];
        let out_cap = OUT_HDR + room as usize * 16;
        unique += 1;
        if op == 0xff {
            if let Some(r) = server.handle(body, out_cap) {
                let (h, _) = read_struct::<InHeader>(body).expect("replied: has a header");
                check_reply(&r, h.unique, out_cap);
            }
            continue;
        }
        let op = u32::from(op);
        let mut body = body.to_vec();
        if op == opcode::FALLOCATE && body.len() >= 24 {
            for at in [8, 16] {
                let v = u64::from_le_bytes(body[at..at + 8].try_into().unwrap()) % MAX_ALLOC;
                body[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        let req = request(op, unique, u64::from(node), &body);
        if let Some(r) = server.handle(&req, out_cap) {
            check_reply(&r, unique, out_cap);
        }
        if op == opcode::READ {
            let mut sink = VecSink::new(out_cap - OUT_HDR);
            let h = server.handle_read(&req, &mut sink).expect("has a header");
            assert_eq!(h.unique, unique);
            assert_eq!(h.len as usize, OUT_HDR + sink.buf.len(), "READ reply len");
            assert!(sink.buf.len() <= out_cap - OUT_HDR);
        }
        if op == opcode::WRITE && req.len() >= HDR + WRITE_IN {
            let (head, payload) = req.split_at(HDR + WRITE_IN);
            let mut payload: &[u8] = payload;
            if let Some(r) = server.handle_write(head, &mut payload, out_cap) {
                check_reply(&r, unique, out_cap);
            }
        }
    }
}
