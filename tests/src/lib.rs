//! Harness for ax's end-to-end tests (the tests themselves are in `tests/tests/`).
//!
//! The tests drive the real `axctl` binary, which boots the real guest image under QEMU
//! (TCG here, KVM where the host has it). Binaries come from the same target directory as
//! the test executable, so run `cargo build --workspace --bins` before `cargo test` (the
//! README's test command does). Each [`Env`] has its own `XDG_STATE_HOME` (agents) and
//! shares one image cache, `<target>/ax-test-cache` (or `$AX_TEST_CACHE`), built once under a
//! file lock by [`ensure_image`].
//!
//! A test whose prerequisite is missing prints a loud SKIP line ([`skip`], [`require_qemu`]);
//! with `AX_TEST_REQUIRE_VM=1` (`.ci/run` sets it) it fails instead. Only a host without
//! hardware KVM still skips then ([`skip_without_hardware_kvm`]).

pub mod llm;

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/`, where cargo put the binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    let dir = if deps.ends_with("deps") {
        deps.parent().unwrap()
    } else {
        deps
    };
    for b in ["axctl", "agentd"] {
        assert!(
            dir.join(b).is_file(),
            "{} missing: run `cargo build --workspace --bins` before the tests",
            dir.join(b).display()
        );
    }
    dir.to_path_buf()
}

/// The shared image cache directory (an `XDG_CACHE_HOME`).
pub fn cache_home() -> PathBuf {
    match std::env::var_os("AX_TEST_CACHE") {
        Some(p) => PathBuf::from(p),
        None => bin_dir().parent().unwrap().join("ax-test-cache"),
    }
}

/// One test's world: its own state dir, the shared image cache.
pub struct Env {
    pub state: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        Env {
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `axctl` with this env's XDG dirs, run from the env's own directory (outside any git
    /// repository, so agents get an empty /workspace unless a test says otherwise).
    pub fn axctl(&self) -> Command {
        let mut c = Command::new(bin_dir().join("axctl"));
        c.current_dir(self.state.path())
            .env("XDG_STATE_HOME", self.state.path())
            .env("XDG_CACHE_HOME", cache_home())
            .env("XDG_CONFIG_HOME", self.state.path().join("config"))
            .stdin(Stdio::null());
        c
    }

    /// Runs `axctl args…` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.axctl().args(args).output().expect("run axctl")
    }

    /// The agent's state dir.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.state.path().join("ax/agents").join(name)
    }

    /// `axctl inspect NAME --json`.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let o = self.run(&["inspect", name, "--json"]);
        assert!(
            o.status.success(),
            "inspect failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("inspect json")
    }

    /// Polls `inspect` until `pred` holds or `limit` passes; returns the last state.
    pub fn wait_for(
        &self,
        name: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + limit;
        loop {
            let v = self.inspect(name);
            if pred(&v) || Instant::now() > end {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Dumps an agent's logs to stderr (for failing tests).
    pub fn dump(&self, name: &str) {
        for f in [
            "supervisor.log",
            "vmm.log",
            "console.log",
            "output.log",
            "netstack.log",
        ] {
            let p = self.agent_dir(name).join(f);
            let s = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = s.lines().rev().take(40).collect();
            eprintln!("==== {} (last 40 lines)", p.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Never leave VMs behind: stop whatever this env still runs.
        if let Ok(o) = self.axctl().args(["ps", "--json"]).output() {
            if let Ok(serde_json::Value::Array(a)) = serde_json::from_slice(&o.stdout) {
                for s in a {
                    if let Some(pid) = s["supervisor_pid"].as_i64() {
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                    if let Some(pid) = s["vmm_pid"].as_i64() {
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

/// Builds the guest image into [`cache_home`] once (across test processes, under a lock).
pub fn ensure_image() {
    let cache = cache_home();
    std::fs::create_dir_all(&cache).unwrap();
    let lock = std::fs::File::create(cache.join(".build.lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an owned fd; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let env = Env::new();
    let o = env.run(&["image", "ls", "--json"]);
    assert!(
        o.status.success(),
        "image ls: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("image ls json");
    // Rebuild when there is no image, or when the newest one carries another agentd than the
    // one just built (the tests must exercise the current guest init).
    let agentd = std::fs::read(bin_dir().join("agentd")).expect("read agentd");
    let want = hex(&sha2::Sha256::digest(&agentd));
    // …or when it lacks the agents layer of the current agents lock (the agent CLIs; their
    // layer is cached by lock hash, so a rebuild for a new agentd does not unpack them again).
    let agents_lock = hex(&sha2::Sha256::digest(
        std::fs::read(agents_lock_path()).expect("read image/agents.lock.toml"),
    ));
    let current = v.as_array().and_then(|a| a.first()).and_then(|img| {
        let m = std::fs::read(Path::new(img["dir"].as_str()?).join("manifest.json")).ok()?;
        let m: serde_json::Value = serde_json::from_slice(&m).ok()?;
        Some(
            m["initrd"]["agentd_sha256"].as_str()? == want
                && m["agents"]["lock_sha256"].as_str() == Some(agents_lock.as_str()),
        )
    });
    if current.is_none() {
        // No image at all (a fresh CI machine): this exercises `axctl run` building the image
        // itself before its first run, with the progress display on stderr.
        eprintln!("no guest image yet: `axctl run` builds it first");
        let o = env
            .axctl()
            .args([
                "run",
                "--name",
                "bootstrap",
                "--wait",
                "--prompt",
                "echo booted",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "first run (with image build) failed: {err}"
        );
        assert!(err.contains("building one now"), "{err}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "booted\n");
        return;
    }
    if current != Some(true) {
        eprintln!(
            "building the guest image for the tests (agentd {}, agents lock {})",
            &want[..12],
            &agents_lock[..12]
        );
        let st = env
            .axctl()
            .args(["image", "build"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "axctl image build failed");
    }
}

/// `image/agents.lock.toml` in the source tree (the pins axctl embeds).
pub fn agents_lock_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/agents.lock.toml")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub use ax_common::testing::{require_vm, REQUIRE_VM};

/// `true` when QEMU is there. Without it: a loud SKIP (and `false`), or a panic under
/// [`require_vm`]: the suite's VM tests need it.
pub fn require_qemu() -> bool {
    if which("qemu-system-x86_64").is_some() {
        return true;
    }
    skip(
        "VM tests",
        "qemu-system-x86_64 not installed (apt-get install qemu-system-x86; scripts/deps does)",
    );
    false
}

/// A test cannot run because something the project installs is missing (QEMU, python3, git,
/// tmux, a cached agent CLI, …): prints a loud `SKIP: <test>: <why>` line straight to the
/// process's stderr, so it shows even when the test harness captures output (`eprintln!`
/// would be captured). Under [`require_vm`] (CI) it panics with the same text instead.
///
/// Not for a host without hardware KVM (a kvm-pvm `/dev/kvm`, no VMX/SVM): no package
/// installs that, so such a test calls [`skip_without_hardware_kvm`], which always skips.
pub fn skip(test: &str, why: &str) {
    ax_common::testing::skip_missing(test, why);
}

/// A test that needs hardware KVM (ax-vmm running the real guest image) on a host without it:
/// a loud SKIP line, also under [`require_vm`].
pub fn skip_without_hardware_kvm(test: &str, why: &str) {
    ax_common::testing::print_skip(test, why);
}

/// Looks `prog` up in PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Reads a file to a string, empty if missing.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Runs `git -C dir ARGS` with a fixed identity (`t <t@t>`) and no signing, panicking with
/// git's stderr when it fails; returns its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A new repository on branch `main` with `files` (path, content) in one commit "base
/// commit"; also returns the commit id.
pub fn repo_with(files: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let repo = tempfile::tempdir().unwrap();
    let r = repo.path();
    git(r, &["init", "-q", "-b", "main"]);
    for (path, body) in files {
        let p = r.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    git(r, &["add", "-A"]);
    git(r, &["commit", "-q", "-m", "base commit"]);
    let head = git(r, &["rev-parse", "HEAD"]).trim().to_string();
    (repo, head)
}

/// Starts agent `name` in the background on `repo` with `prompt` (which must end by touching
/// /tmp/ready and then sleeping), and waits until it runs and the file exists.
pub fn start_until_ready(env: &Env, repo: &Path, name: &str, prompt: &str) {
    let o = env.run(&[
        "run",
        "--repo",
        repo.to_str().unwrap(),
        "--name",
        name,
        "--prompt",
        prompt,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = env.wait_for(name, std::time::Duration::from_secs(90), |v| {
        v["status"] != "starting"
    });
    assert_eq!(st["status"], "running");
    wait_ready(env, name, Duration::from_secs(60));
}

/// Waits until agent `name`'s guest has `/tmp/ready` (polled with `axctl exec`); panics after
/// `timeout`.
pub fn wait_ready(env: &Env, name: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    while env
        .run(&["exec", name, "--", "test", "-e", "/tmp/ready"])
        .status
        .code()
        != Some(0)
    {
        assert!(Instant::now() < end, "agent {name} never got ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}
