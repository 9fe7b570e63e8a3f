//! virtio-mmio devices under the real ax-vmm binary, exercised by bare-metal test guests
//! (tests/guests/virtio_*.S): probing and feature negotiation, virtio-blk reads/refused
//! writes, interrupts through the irqfd, hybrid vsock both ways, and malformed driver
//! behaviour. Needs /dev/kvm; without it each test prints a loud SKIP line.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(120);

/// A test disk image: `sectors` sectors of pseudo-random bytes (xorshift, fixed seed).
fn image(dir: &Path, name: &str, sectors: usize, seed: u32) -> (PathBuf, Vec<u8>) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..sectors * 512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

/// The guest's hash: h = h * 31 + byte (wrapping), from 0.
fn guest_hash(b: &[u8]) -> u32 {
    b.iter()
        .fold(0u32, |h, &x| h.wrapping_mul(31).wrapping_add(u32::from(x)))
}

/// Writes vm.toml for `guest` with extra TOML appended.
fn config(dir: &Path, guest: &Path, extra: &str) -> PathBuf {
    let f = dir.join("vm.toml");
    std::fs::write(
        &f,
        format!("kernel = {}\nmemory_mib = 32\n{extra}", toml_path(guest)),
    )
    .unwrap();
    f
}

fn run(cfg: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run_vmm(&args, T);
    (o.status.code(), stdout(&o), stderr(&o))
}

#[test]
fn probe_every_device_and_negotiate() {
    if skip_without_kvm("probe_every_device_and_negotiate") {
        return;
    }
    let g = guest("virtio_probe");
    let dir = tempfile::tempdir().unwrap();
    let (ro, _) = image(dir.path(), "ro.img", 64, 1);
    let (rw, _) = image(dir.path(), "rw.img", 3, 2);
    let uds = dir.path().join("v.sock");
    let cfg = config(
        dir.path(),
        &g,
        &format!(
            "[[block]]\npath = {}\n[[block]]\npath = {}\nread_only = false\n[vsock]\nguest_cid = 42\nuds_path = {}\n",
            toml_path(&ro),
            toml_path(&rw),
            toml_path(&uds)
        ),
    );
    for extra in [&[][..], &["--no-acpi"][..]] {
        let (code, out, err) = run(&cfg, extra);
        assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
        // slot 0: read-only blk, 64 sectors: features hi = VERSION_1, lo = FLUSH|RO|SEG_MAX|SIZE_MAX|INDIRECT|EVENT_IDX
        assert!(
            out.contains("probe: slot=00000000 magic=74726976 version=00000002 id=00000002\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "probe:   features=00000001:30000226 queues=00000001 qmax=00000000/00000100\n"
            ),
            "{out}"
        );
        assert!(out.contains("probe:   status=0000000f config=00000040:00000000 unmapped=00000000 shmlen=ffffffff byte=00000000 end=00000000 reset=00000000\n"), "{out}");
        // slot 1: writable blk, 3 sectors, no RO bit
        assert!(
            out.contains("probe: slot=00000001 magic=74726976 version=00000002 id=00000002\n"),
            "{out}"
        );
        assert!(
            out.contains("probe:   features=00000001:30000206 queues=00000001"),
            "{out}"
        );
        assert!(
            out.contains("status=0000000f config=00000003:00000000"),
            "{out}"
        );
        // slot 2: vsock, CID 42, three queues
        assert!(
            out.contains("probe: slot=00000002 magic=74726976 version=00000002 id=00000013\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "probe:   features=00000001:20000000 queues=00000003 qmax=00000000/00000100\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("status=0000000f config=0000002a:00000000"),
            "{out}"
        );
        // slot 3: nothing mapped
        assert!(
            out.contains("probe: slot=00000003 magic=00000000\n"),
            "{out}"
        );
        assert!(out.contains("probe: done\n"), "{out}");
        // The bad accesses were logged, not fatal.
        assert!(
            err.contains("control registers need aligned 32-bit access"),
            "{err}"
        );
        assert!(err.contains("clean shutdown"), "{err}");
    }
}

#[test]
fn blk_reads_hash_and_refuses_writes_on_a_read_only_disk() {
    if skip_without_kvm("blk_reads_hash_and_refuses_writes_on_a_read_only_disk") {
        return;
    }
    let g = guest("virtio_blk");
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = image(dir.path(), "disk.img", 2048, 0x1234_5678);
    let cfg = config(
        dir.path(),
        &g,
        &format!("[[block]]\npath = {}\nread_only = true\n", toml_path(&img)),
    );
    let (code, out, err) = run(&cfg, &[]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let h0 = guest_hash(&data[..512]);
    let h1000 = guest_hash(&data[1000 * 512..1001 * 512]);
    assert_eq!(
        line(&out, "blk: status="),
        "blk: status=0000000f capacity=00000800"
    );
    assert_eq!(
        line(&out, "blk: read sector=0 "),
        format!("blk: read sector=0 status=00000000 used=00000201 hash={h0:08x}")
    );
    assert_eq!(
        line(&out, "blk: read sector=1000 "),
        format!("blk: read sector=1000 status=00000000 used=00000201 hash={h1000:08x}")
    );
    // VIRTIO_BLK_S_IOERR for the write and the read past the end; UNSUPP for type 0x99.
    assert_eq!(
        line(&out, "blk: write"),
        "blk: write sector=0 status=00000001 used=00000001"
    );
    assert_eq!(
        line(&out, "blk: read past end"),
        "blk: read past end status=00000001 used=00000001"
    );
    assert_eq!(
        line(&out, "blk: get-id"),
        "blk: get-id status=00000000 used=00000015 id=ax-blk0"
    );
    assert_eq!(
        line(&out, "blk: flush"),
        "blk: flush status=00000000 used=00000001"
    );
    assert_eq!(
        line(&out, "blk: unknown"),
        "blk: unknown type status=00000002 used=00000001"
    );
    assert_eq!(
        line(&out, "blk: reread"),
        format!("blk: reread sector=0 hash={h0:08x}")
    );
    assert!(out.contains("blk: done\n"), "{out}");
    assert_eq!(
        std::fs::read(&img).unwrap(),
        data,
        "the read-only image changed"
    );
    assert!(err.contains("write to read-only disk"), "{err}");
}

#[test]
fn blk_writes_reach_a_writable_disk() {
    if skip_without_kvm("blk_writes_reach_a_writable_disk") {
        return;
    }
    let g = guest("virtio_blk");
    let dir = tempfile::tempdir().unwrap();
    let (img, mut data) = image(dir.path(), "disk.img", 2048, 77);
    let cfg = config(dir.path(), &g, "");
    let (code, out, err) = run(&cfg, &["--block-rw", img.to_str().unwrap()]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        line(&out, "blk: write"),
        "blk: write sector=0 status=00000000 used=00000001"
    );
    data[..512].fill(0x5a);
    assert_eq!(
        line(&out, "blk: reread"),
        format!("blk: reread sector=0 hash={:08x}", guest_hash(&data[..512]))
    );
    assert_eq!(std::fs::read(&img).unwrap(), data);
}

#[test]
fn used_buffer_notifications_arrive_as_interrupts() {
    if skip_without_kvm("used_buffer_notifications_arrive_as_interrupts") {
        return;
    }
    let g = guest("virtio_irq");
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path(), "disk.img", 8, 5);
    let cfg = config(dir.path(), &g, "");
    let (code, out, err) = run(&cfg, &["--block", img.to_str().unwrap()]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for i in 0..3 {
        assert!(
            out.contains(&format!(
                "irq: request {i:08x} used id=00000000 status=00000000\n"
            )),
            "{out}"
        );
    }
    // Exactly one interrupt per used buffer, InterruptStatus bit 0 (used buffer).
    assert_eq!(
        line(&out, "irq: count="),
        "irq: count=00000003 isr=00000001"
    );
    assert!(
        !out.contains("UNEXPECTED") && !out.contains("TIMEOUT"),
        "{out}"
    );
}

fn wait_line(rx: &mpsc::Receiver<String>, want: &str, seen: &mut Vec<String>) {
    if let Err(e) = recv_line(rx, want, seen, Instant::now() + T) {
        panic!(
            "no {want:?} from the guest ({e}); got:\n{}",
            seen.join("\n")
        );
    }
}
#[test]
fn vsock_guest_connects_out_and_host_connects_in() {
    if skip_without_kvm("vsock_guest_connects_out_and_host_connects_in") {
        return;
    }
    let g = guest("virtio_vsock");
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    // (a) the guest connects to host port 5000: <uds>_5000.
    let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let host_a = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 16];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"pong from host\n").unwrap();
        b
    });
    let (child, rx) = spawn_vmm(&[
        "--kernel",
        g.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--vsock-cid",
        "7",
    ]);
    let mut seen = Vec::new();
    wait_line(&rx, "vsock: listening on 1024", &mut seen);
    assert_eq!(&host_a.join().unwrap(), b"ping from guest\n");
    // (b) the host connects in through the hybrid socket.
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    let mut ok = Vec::new();
    let mut b = [0u8; 1];
    while !ok.ends_with(b"\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "socket closed before OK: {ok:?}"
        );
        ok.push(b[0]);
    }
    let ok = String::from_utf8(ok).unwrap();
    assert!(
        ok.starts_with("OK ") && ok[3..].trim().parse::<u32>().is_ok(),
        "{ok:?}"
    );
    s.write_all(b"hello guest\n").unwrap();
    let mut echo = [0u8; 12];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello guest\n");
    drop(s);
    let (code, out, err) = finish(child, rx, seen, Instant::now() + T);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("vsock: status=0000000f guest_cid=00000007\n"),
        "{out}"
    );
    assert!(out.contains("vsock: a: reply op=00000002\n"), "{out}");
    assert!(
        out.contains("vsock: a: host says: pong from host\n"),
        "{out}"
    );
    assert!(out.contains("vsock: a: closed\n"), "{out}");
    assert!(out.contains("vsock: b: echo: hello guest\n"), "{out}");
    assert!(out.contains("vsock: done\n"), "{out}");
}

#[test]
fn malformed_driver_is_rejected_and_the_vmm_survives() {
    if skip_without_kvm("malformed_driver_is_rejected_and_the_vmm_survives") {
        return;
    }
    let g = guest("virtio_malformed");
    let dir = tempfile::tempdir().unwrap();
    let (img, data) = image(dir.path(), "disk.img", 64, 9);
    let cfg = config(dir.path(), &g, "");
    let (code, out, err) = run(&cfg, &["--block", img.to_str().unwrap()]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let want = [
        // Read-only and unknown registers keep their values; bad QueueSel reads 0.
        "mal: magic=74726976 status=00000000 unknown=00000000 qmax(sel 99)=00000000",
        // QueueNum 6: DRIVER_OK refused with DEVICE_NEEDS_RESET and a config interrupt.
        "mal: queue size 6: status=0000004f isr=00000002 after reset=00000000",
        "mal: reinit status=0000000f",
        // Unusable chains are returned with used length 0, the status byte untouched.
        "mal: outside memory used=00000000 status=000000ee",
        "mal: loop 0->1->0 used=00000000 status=000000ee",
        "mal: self loop used=00000000 status=000000ee",
        "mal: oversized used=00000000 status=000000ee",
        // A valid chain asking for an impossible sector gets VIRTIO_BLK_S_IOERR.
        "mal: huge sector used=00000001 status=00000001",
        // A head index the device cannot return: DEVICE_NEEDS_RESET.
        "mal: bad head: status=0000004f",
        "mal: recovered used=00000201 status=00000000",
        "mal: survived",
    ];
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, want, "stderr:\n{err}");
    for msg in [
        "control registers need aligned 32-bit access",
        "QueueNum 6 is not a power of two",
        "is outside guest memory",
        "device-readable descriptor after a device-writable one",
        "no device-writable status byte",
        "beyond the capacity",
        "DEVICE_NEEDS_RESET",
    ] {
        assert!(err.contains(msg), "{msg:?} not logged:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("clean shutdown"), "{err}");
    assert_eq!(std::fs::read(&img).unwrap(), data);
    assert_eq!(guest_hash(&data[..0]), 0);
}
