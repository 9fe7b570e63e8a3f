//! Helpers for the integration tests: build the assembly test guests, check /dev/kvm, run
//! the real `ax-vmm` binary with a timeout.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
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
#[allow(unused_imports)]
pub use ax_common::testing::print_skip as skip;

/// A tool scripts/deps installs (iasl, virtiofsd) is missing: a loud SKIP line, or a panic
/// under `AX_TEST_REQUIRE_VM` (.ci/run sets it). KVM itself is not such a tool:
/// [`skip_without_kvm`] always skips.
#[allow(unused_imports)] // not every test binary has a tool to miss
pub use ax_common::testing::skip_missing as skip_missing_tool;

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

/// Compiles and links tests/guests/<name>.S with linker script `script` into `out`,
/// optionally with tests/guests on the include path. Panics with the compiler output on
/// failure.
fn link_guest(name: &str, script: &str, include: bool, out: &Path) {
    let src = guests_src();
    let mut gcc = Command::new("gcc");
    gcc.args([
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,--no-warn-rwx-segments",
    ])
    .arg(format!("-Wl,-T,{}", src.join(script).display()));
    if include {
        gcc.arg("-I").arg(&src);
    }
    let o = gcc
        .arg("-o")
        .arg(out)
        .arg(src.join(format!("{name}.S")))
        .output()
        .expect("run gcc (install gcc to build the test guests)");
    assert!(
        o.status.success(),
        "building guest {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
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
    link_guest(name, "guest.ld", true, &tmp);
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
    link_guest(name, "bzimage.ld", false, &elf);
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

/// Spawns ax-vmm with `args`, stdin from /dev/null, stdout and stderr piped.
fn spawn_piped(args: &[&str]) -> Child {
    Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ax-vmm")
}

/// Spawns ax-vmm; stdout lines arrive on the channel.
pub fn spawn_vmm(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = spawn_piped(args);
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Runs ax-vmm with `args`, killing it after `timeout`.
pub fn run_vmm(args: &[&str], timeout: Duration) -> Output {
    let mut child = spawn_piped(args);
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

/// Boots `kernel` under ax-vmm with `flags` after `--kernel`, killing it after `timeout`;
/// returns (exit code, serial output on stdout, stderr).
pub fn boot(kernel: &Path, flags: &[&str], timeout: Duration) -> (Option<i32>, String, String) {
    let mut args = vec!["--kernel", kernel.to_str().unwrap()];
    args.extend_from_slice(flags);
    let o = run_vmm(&args, timeout);
    (o.status.code(), stdout(&o), stderr(&o))
}

/// A path as a quoted TOML string.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.to_str().unwrap())
}

/// The first line of `out` starting with `prefix`; panics showing `out` when none does.
pub fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

/// Collects stdout lines from `rx` into `seen` until one equals `want`; the error when
/// `deadline` passes (or the channel closes) first.
pub fn recv_line(
    rx: &mpsc::Receiver<String>,
    want: &str,
    seen: &mut Vec<String>,
    deadline: Instant,
) -> Result<(), mpsc::RecvTimeoutError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx.recv_timeout(left)?;
        let hit = l == want;
        seen.push(l);
        if hit {
            return Ok(());
        }
    }
}

/// Waits until `deadline` for a `spawn_vmm` child to exit, kills it if still running, and
/// returns (exit code, every stdout line including `seen`, stderr).
pub fn finish(
    mut child: Child,
    rx: mpsc::Receiver<String>,
    mut seen: Vec<String>,
    deadline: Instant,
) -> (Option<i32>, String, String) {
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
        seen.push(l);
    }
    (status.code(), seen.join("\n") + "\n", err)
}
