//! Helpers for the integration tests: build the assembly test guests, check /dev/kvm, run
//! the real `ax-vmm` binary with a timeout.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The ax-vmm binary under test.
pub const VMM: &str = env!("CARGO_BIN_EXE_ax-vmm");

/// `Ok` when /dev/kvm opens read-write; else the reason, for a loud SKIP line.
pub fn kvm_available() -> Result<(), String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))
}

/// Prints a loud `SKIP: <test>: <why>` line straight to the stderr fd, so it shows even
/// when the test harness captures output of passing tests.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: {test}: {why}");
}

/// Prints the SKIP line and returns true when KVM is unusable.
pub fn skip_without_kvm(test: &str) -> bool {
    match kvm_available() {
        Ok(()) => false,
        Err(why) => {
            skip(test, &format!("{why} (this test boots a real KVM guest)"));
            true
        }
    }
}

fn guests_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

/// Builds test guest `name` (tests/guests/<name>.S) into an ELF with a PVH note; cached
/// per test run in CARGO_TARGET_TMPDIR. Panics with the compiler output on failure.
pub fn guest(name: &str) -> PathBuf {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&out_dir).unwrap();
    // A per-process name: tests run in parallel threads and processes.
    let out = out_dir.join(format!("{name}.{}.elf", std::process::id()));
    if out.exists() {
        return out;
    }
    let tmp =
        out.with_extension(format!("tmp{:?}", std::thread::current().id()).replace(['(', ')'], ""));
    let src = guests_src();
    let o = Command::new("gcc")
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", src.join("guest.ld").display()))
        .arg("-I")
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .arg(src.join(format!("{name}.S")))
        .output()
        .expect("run gcc (install gcc to build the test guests)");
    assert!(
        o.status.success(),
        "building guest {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// Builds the bzImage-format test guest `name` (tests/guests/<name>.S linked with
/// bzimage.ld, then `objcopy -O binary`): a flat file with a setup header, as a bzImage.
pub fn bzimage_guest(name: &str) -> PathBuf {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&out_dir).unwrap();
    let tag =
        format!("{}.{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], "");
    let elf = out_dir.join(format!("{name}.{tag}.elf"));
    let bin = out_dir.join(format!("{name}.{tag}.bzImage"));
    let src = guests_src();
    let o = Command::new("gcc")
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", src.join("bzimage.ld").display()))
        .arg("-o")
        .arg(&elf)
        .arg(src.join(format!("{name}.S")))
        .output()
        .expect("run gcc (install gcc to build the test guests)");
    assert!(
        o.status.success(),
        "building guest {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin)
        .output()
        .expect("run objcopy (binutils)");
    assert!(
        o.status.success(),
        "objcopy {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    bin
}

/// Runs ax-vmm with `args`, killing it after `timeout`.
pub fn run_vmm(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ax-vmm");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
