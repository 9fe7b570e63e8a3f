//! virtio-mmio devices under the real ax-vmm binary, exercised by bare-metal test guests
//! (tests/guests/virtio_*.S): probing and feature negotiation, virtio-blk reads/refused
//! writes, interrupts through the irqfd, hybrid vsock both ways, and malformed driver
//! behaviour. Needs /dev/kvm; without it each test prints a loud SKIP line.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.to_str().unwrap())
}

/// Writes vm.toml for `guest` with extra TOML appended.
fn config(dir: &Path, guest: &Path, extra: &str) -> PathBuf {
    let f = dir.join("vm.toml");
    std::fs::write(
        &f,
        format!(
            "kernel = {}\nmemory_mib = 32\n{extra}",
            toml_path(guest)
        ),
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

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
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
        assert!(out.contains("probe: slot=00000000 magic=74726976 version=00000002 id=00000002\n"), "{out}");
        assert!(out.contains("probe:   features=00000001:30000226 queues=00000001 qmax=00000000/00000100\n"), "{out}");
        assert!(out.contains("probe:   status=0000000f config=00000040:00000000 unmapped=00000000 shmlen=ffffffff byte=00000000 end=00000000 reset=00000000\n"), "{out}");
        // slot 1: writable blk, 3 sectors, no RO bit
        assert!(out.contains("probe: slot=00000001 magic=74726976 version=00000002 id=00000002\n"), "{out}");
        assert!(out.contains("probe:   features=00000001:30000206 queues=00000001"), "{out}");
        assert!(out.contains("status=0000000f config=00000003:00000000"), "{out}");
        // slot 2: vsock, CID 42, three queues
        assert!(out.contains("probe: slot=00000002 magic=74726976 version=00000002 id=00000013\n"), "{out}");
        assert!(out.contains("probe:   features=00000001:20000000 queues=00000003 qmax=00000000/00000100\n"), "{out}");
        assert!(out.contains("status=0000000f config=0000002a:00000000"), "{out}");
        // slot 3: nothing mapped
        assert!(out.contains("probe: slot=00000003 magic=00000000\n"), "{out}");
        assert!(out.contains("probe: done\n"), "{out}");
        // The bad accesses were logged, not fatal.
        assert!(err.contains("control registers need aligned 32-bit access"), "{err}");
        assert!(err.contains("clean shutdown"), "{err}");
    }
}
