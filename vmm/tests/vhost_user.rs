//! The vhost-user frontend under the real ax-vmm binary (jailed, as in production), against
//! a real virtio-fs backend other than our own ax-fsd: virtiofsd (`cargo install --locked
//! virtiofsd`, done by scripts/deps). The test guest (tests/guests/virtio_fs.S) reads the tag,
//! sends FUSE_INIT through the device and prints the reply. Needs /dev/kvm (without it each
//! test prints a loud SKIP line) and virtiofsd (missing: a loud SKIP line, or a failure under
//! `AX_TEST_REQUIRE_VM`, which CI sets).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(120);

/// virtiofsd on PATH (or in cargo's bin directory, where `cargo install` puts it).
fn virtiofsd_path() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(Path::new(&h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
}

/// A running virtiofsd, killed on drop.
struct Backend {
    child: Child,
    log: PathBuf,
}

impl Backend {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The SKIP checks every test here shares: KVM and virtiofsd.
fn prerequisites(test: &str) -> Option<PathBuf> {
    if skip_without_kvm(test) {
        return None;
    }
    let v = virtiofsd_path();
    if v.is_none() {
        skip_missing_tool(
            test,
            "virtiofsd not installed (scripts/deps installs it: cargo install --locked virtiofsd)",
        );
    }
    v
}

/// Starts virtiofsd sharing `dir/share` on `dir/fs.sock` and waits for the socket.
fn start_virtiofsd(bin: &Path, dir: &Path) -> (Backend, PathBuf) {
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello.txt"), b"hello\n").unwrap();
    let sock = dir.join("fs.sock");
    let log = dir.join("virtiofsd.log");
    let child = Command::new(bin)
        .arg(format!("--socket-path={}", sock.display()))
        .arg(format!("--shared-dir={}", share.display()))
        .arg("--sandbox=none")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn virtiofsd");
    let mut b = Backend { child, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Ok(Some(st)) = b.child.try_wait() {
            panic!(
                "virtiofsd exited ({st}) before creating its socket:\n{}",
                std::fs::read_to_string(&b.log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "virtiofsd made no socket in 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (b, sock)
}

#[test]
fn fuse_init_through_the_vhost_user_fs_frontend() {
    let test = "fuse_init_through_the_vhost_user_fs_frontend";
    let Some(bin) = prerequisites(test) else {
        return;
    };
    let g = guest("virtio_fs");
    let dir = tempfile::tempdir().unwrap();
    let (backend, sock) = start_virtiofsd(&bin, dir.path());
    let cfg = dir.path().join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "kernel = {}\nmemory_mib = 32\n[[vhost_user]]\nsocket = {}\ndevice_type = \"fs\"\ntag = \"workspace\"\nnum_queues = 2\nqueue_size = 1024\n",
            toml_path(&g),
            toml_path(&sock)
        ),
    )
    .unwrap();
    let o = run_vmm(&["--config", cfg.to_str().unwrap()], T);
    let (out, err) = (stdout(&o), stderr(&o));
    let ctx = format!(
        "stdout:\n{out}\nstderr:\n{err}\nvirtiofsd:\n{}",
        backend.log()
    );
    assert_eq!(o.status.code(), Some(0), "{ctx}");
    // Device ID 26, VERSION_1 | EVENT_IDX | INDIRECT_DESC (virtiofsd's, minus bit 30 which
    // is vhost-user's own), QueueNumMax 1024, the tag and one request queue.
    assert_eq!(
        line(&out, "fs: id="),
        "fs: id=0000001a features=00000001:30000000 qmax=00000400 tag=workspace request_queues=00000001",
        "{ctx}"
    );
    let want = [
        "fs: status=0000000f",
        "fs: used id=00000000 len=00000050",
        // fuse_out_header: 16 + fuse_init_out 64 bytes, error 0, our unique.
        "fs: reply len=00000050 error=00000000 unique=00000001",
        // The reset stops the backend's rings; the second activation works.
        "fs: reset status=00000000",
        "fs: reply len=00000050 error=00000000 unique=00000002",
        // The backend's call set InterruptStatus bit 0 (used buffer).
        "fs: isr=00000001 after ack=00000000",
        "fs: done",
    ];
    for w in want {
        assert!(out.lines().any(|l| l == w), "{w:?} missing\n{ctx}");
    }
    let init = line(&out, "fs: init major=");
    assert!(init.starts_with("fs: init major=00000007 minor="), "{ctx}");
    eprintln!("FUSE_INIT reply as the guest printed it:\n{out}");
    assert!(err.contains("clean shutdown"), "{ctx}");
    assert!(
        !err.contains("panicked") && !err.contains("ax-vmm: warn"),
        "{ctx}"
    );
}

#[test]
fn backend_death_mid_run_needs_reset_and_the_vmm_survives() {
    let test = "backend_death_mid_run_needs_reset_and_the_vmm_survives";
    let Some(bin) = prerequisites(test) else {
        return;
    };
    let g = guest("virtio_fs");
    let dir = tempfile::tempdir().unwrap();
    let (mut backend, sock) = start_virtiofsd(&bin, dir.path());
    let fs = format!("{}:workspace", sock.display());
    let (mut child, rx) = spawn_vmm(&[
        "--kernel",
        g.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--cmdline",
        "wait",
        "--vhost-user-fs",
        &fs,
    ]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + T;
    if let Err(e) = recv_line(
        &rx,
        "fs: waiting for the backend to go",
        &mut seen,
        deadline,
    ) {
        let _ = child.kill();
        panic!("guest did not get to the wait ({e}):\n{}", seen.join("\n"));
    }
    // The backend dies while the device is active.
    backend.kill();
    let (code, out, err) = finish(child, rx, seen, deadline);
    let ctx = format!("stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(code, Some(0), "{ctx}");
    assert!(
        out.contains("fs: reply len=00000050 error=00000000 unique=00000001\n"),
        "{ctx}"
    );
    // DEVICE_NEEDS_RESET with a configuration-change interrupt; after a reset the device
    // cannot be activated again (no backend), and the guest goes on.
    for w in [
        "fs: backend gone: status=0000004f isr.config=00000002",
        "fs: reset status=00000000",
        "fs: reinit status=0000004f",
        "fs: survived",
    ] {
        assert!(out.lines().any(|l| l == w), "{w:?} missing\n{ctx}");
    }
    assert!(err.contains("the backend closed the connection"), "{ctx}");
    assert!(err.contains("clean shutdown"), "{ctx}");
    assert!(!err.contains("panicked"), "{ctx}");
}

#[test]
fn missing_backend_and_bad_vhost_user_config_are_clear_errors() {
    let test = "missing_backend_and_bad_vhost_user_config_are_clear_errors";
    let g = guest("virtio_fs");
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let (code, _, err) = boot(&g, &[&["--memory-mib", "32"][..], extra].concat(), T);
        (code, err)
    };
    // Usage/config errors (exit 2): no tag, a tag too long for virtio_fs_config, a socket
    // directory that does not exist.
    let (code, err) = run(&["--vhost-user-fs", "/tmp/no-tag-here"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("SOCKET:TAG"), "{err}");
    let long = format!("{}:{}", dir.path().join("s").display(), "t".repeat(37));
    let (code, err) = run(&["--vhost-user-fs", &long]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("1..=36 bytes"), "{err}");
    let (code, err) = run(&["--vhost-user-net", "/nonexistent/dir/net.sock"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("directory does not exist"), "{err}");

    // No backend listening: a runtime failure (exit 1) that says what to do.
    if skip_without_kvm(test) {
        return;
    }
    let sock = dir.path().join("nobody.sock");
    let (code, err) = run(&["--vhost-user-fs", &format!("{}:workspace", sock.display())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot connect to the vhost-user backend")
            && err.contains("nobody.sock")
            && err.contains("start the backend first"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
