//! kill -9 of the processes of a running agent that the other crash tests do not cover (the VMM:
//! run.rs and workspace.rs; ax-fsd: workspace.rs; ax-netstack: network.rs): the supervisor
//! itself, and the `axctl run --wait` in front of it. Every finished write of the guest must
//! still reach the branch (SPECIFICATION.md, "kill -9 of any process loses no finished write").

use ax_tests::{ensure_image, git, repo_with, require_qemu, start_until_ready, wait_ready, Env};
use std::time::Duration;

/// Whether process `pid` still exists (signal 0).
fn alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn killing_the_supervisor_takes_the_vm_down_and_loses_no_finished_write() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let (repo, _) = repo_with(&[("a.txt", "a\n")]);
    let r = repo.path();
    start_until_ready(
        &env,
        r,
        "supkill",
        "echo saved > saved.txt && echo more >> a.txt && sync && touch /tmp/ready && sleep 600",
    );
    let st = env.inspect("supkill");
    let sup = st["supervisor_pid"].as_i64().expect("supervisor_pid") as i32;
    let vmm = st["vmm_pid"].as_i64().expect("vmm_pid") as i32;
    unsafe { libc::kill(sup, libc::SIGKILL) };

    // Its children die with it (PR_SET_PDEATHSIG): no VM keeps running unsupervised.
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while alive(vmm) {
        assert!(
            std::time::Instant::now() < end,
            "the VMM (pid {vmm}) outlived its supervisor by 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent is reported failed with the reason, not left "running".
    let st = env.wait_for("supkill", Duration::from_secs(20), |v| {
        v["status"] != "running"
    });
    assert_eq!(st["status"], "failed", "{st}");
    assert!(
        st["reason"].as_str().unwrap_or("").contains("supervisor"),
        "{st}"
    );
    // The finished writes are in the upper layer: commit builds the branch from them.
    let o = env.run(&["commit", "supkill"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(git(r, &["show", "ax/supkill:saved.txt"]), "saved\n");
    assert_eq!(git(r, &["show", "ax/supkill:a.txt"]), "a\nmore\n");
    // The host's work tree was never written.
    assert_eq!(git(r, &["status", "--porcelain"]), "");
    assert_eq!(std::fs::read_to_string(r.join("a.txt")).unwrap(), "a\n");
}

#[test]
fn killing_axctl_run_wait_leaves_the_agent_running_and_its_work_safe() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let (repo, _) = repo_with(&[("a.txt", "a\n")]);
    let r = repo.path();
    let mut front = env
        .axctl()
        .args([
            "run",
            "--wait",
            "--repo",
            r.to_str().unwrap(),
            "--name",
            "frontkill",
            "--prompt",
            "echo saved > saved.txt && sync && touch /tmp/ready && sleep 600",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(&env, "frontkill", Duration::from_secs(120));
    unsafe { libc::kill(front.id() as i32, libc::SIGKILL) };
    front.wait().unwrap();
    // The supervisor runs in its own session: the agent keeps running, like `docker run`
    // whose client was killed.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(env.inspect("frontkill")["status"], "running");
    let o = env.run(&["stop", "frontkill"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = env.wait_for("frontkill", Duration::from_secs(60), |v| {
        v["status"] != "running" && v["status"] != "stopping"
    });
    assert_ne!(st["status"], "running");
    assert_eq!(git(r, &["show", "ax/frontkill:saved.txt"]), "saved\n");
}
