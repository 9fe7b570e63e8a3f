//! `axctl run` and friends against the real guest image under QEMU (TCG here).

use ax_supervisor::driver::hardware_kvm;
use ax_tests::{ensure_image, require_qemu, Env};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `run --wait` of `prompt`: (exit code, stdout, stderr).
fn run_wait(env: &Env, name: &str, prompt: &str) -> (i32, String, String) {
    let o = env.run(&["run", "--name", name, "--wait", "--prompt", prompt]);
    let r = (
        o.status.code().unwrap_or(-1),
        text(&o.stdout),
        text(&o.stderr),
    );
    if r.0 != 0 {
        env.dump(name);
    }
    r
}

#[test]
fn uname_in_the_guest_says_linux_and_pid1_is_agentd() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let (code, out, err) = run_wait(&env, "uname", "uname -a; cat /proc/1/comm; hostname; pwd");
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Linux "), "uname: {out}");
    assert!(lines[0].contains("x86_64"), "uname: {out}");
    assert_eq!(lines[1], "agentd", "PID 1's comm: {out}");
    assert_eq!(lines[2], "uname", "host name is the agent name: {out}");
    assert_eq!(lines[3], "/workspace", "{out}");
    let st = env.inspect("uname");
    assert_eq!(st["status"], "exited");
    assert_eq!(st["exit_code"], 0);
    // The VM is gone when run --wait returns.
    let pid = st["vmm_pid"].as_i64().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "VMM {pid} still alive"
    );
    // The output also landed in the log.
    let o = env.run(&["logs", "uname"]);
    assert_eq!(text(&o.stdout), out);
}

#[test]
fn exit_code_and_stdin_come_through() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let (code, out, _) = run_wait(&env, "seven", "echo before; echo to-stderr >&2; exit 7");
    assert_eq!(code, 7);
    assert_eq!(out, "before\n");
    assert_eq!(env.inspect("seven")["status"], "exited");
    let ps = text(&env.run(&["ps", "--all"]).stdout);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("seven") && l.contains("exited(7)")),
        "{ps}"
    );

    // stdin piped through --wait, EOF included.
    let mut child = env
        .axctl()
        .args([
            "run",
            "--name",
            "stdin",
            "--wait",
            "--prompt",
            "tr a-z A-Z; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from the host\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "status {:?}", o.status);
    assert_eq!(text(&o.stdout), "HELLO FROM THE HOST\ndone\n");
}

#[test]
fn background_run_exec_logs_stop() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let o = env.run(&["run", "--prompt", "echo started; sleep 600"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let name = text(&o.stdout).trim().to_string();
    assert_eq!(name, "echo-started-sleep-600", "name is the prompt's slug");
    let st = env.wait_for(&name, Duration::from_secs(90), |v| {
        v["status"] != "starting"
    });
    if st["status"] != "running" {
        env.dump(&name);
    }
    assert_eq!(st["status"], "running");
    let ps = text(&env.run(&["ps"]).stdout);
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&name) && l.contains("running")),
        "{ps}"
    );

    // exec runs in the same live VM and returns its exit code.
    let o = env.run(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "pgrep -x sleep >/dev/null && echo seen; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "seen\n");

    let o = env.run(&["logs", &name]);
    assert!(
        text(&o.stdout).contains("started"),
        "logs: {:?}",
        text(&o.stdout)
    );

    // A second agent with the same name is refused with a usage error.
    let o = env.run(&["run", "--name", &name, "--prompt", "true"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("already exists"),
        "{}",
        text(&o.stderr)
    );

    // rm of a running agent is refused; stop ends it; then rm works.
    assert_eq!(env.run(&["rm", &name]).status.code(), Some(2));
    // logs -f follows until the agent ends, then returns by itself.
    let follower = env
        .axctl()
        .args(["logs", "-f", &name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    assert!(env.run(&["stop", &name]).status.success());
    assert!(t.elapsed() < Duration::from_secs(30));
    let st = env.inspect(&name);
    assert_eq!(st["status"], "exited", "{st}");
    assert_eq!(st["exit_code"], 143, "SIGTERM → 128+15: {st}");
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success());
    assert!(
        text(&followed.stdout).contains("started"),
        "{}",
        text(&followed.stdout)
    );
    assert!(env.run(&["rm", &name]).status.success());
    assert_eq!(env.run(&["inspect", &name]).status.code(), Some(2));
}

#[test]
fn killing_the_vm_process_shows_failed() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let o = env.run(&["run", "--name", "victim", "--prompt", "sleep 600"]);
    assert!(o.status.success());
    let st = env.wait_for("victim", Duration::from_secs(90), |v| {
        v["status"] != "starting"
    });
    assert_eq!(st["status"], "running");
    let pid = st["vmm_pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let st = env.wait_for("victim", Duration::from_secs(20), |v| {
        v["status"] != "running"
    });
    assert_eq!(st["status"], "failed", "{st}");
    let reason = st["reason"].as_str().unwrap_or("");
    assert!(reason.contains("signal 9"), "reason: {reason}");
    let ps = text(&env.run(&["ps", "--all"]).stdout);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("victim") && l.contains("failed")),
        "{ps}"
    );
}

#[test]
fn attach_to_a_running_shell_through_tmux() {
    if !require_qemu() {
        return;
    }
    if ax_tests::which("tmux").is_none() {
        panic!("tmux is required for this test: apt-get install tmux");
    }
    ensure_image();
    let env = Env::new();
    // No --prompt: the agent's interactive command (`bash -l` for `shell`) on a terminal.
    let o = env.run(&["run", "--name", "tty"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // An interactive session cannot be --wait'ed on (exit 2 naming the fix).
    let w = env.run(&["run", "--name", "tty-wait", "--wait"]);
    assert_eq!(w.status.code(), Some(2));
    assert!(
        text(&w.stderr).contains("axctl attach"),
        "{}",
        text(&w.stderr)
    );
    let st = env.wait_for("tty", Duration::from_secs(90), |v| {
        v["status"] != "starting"
    });
    assert_eq!(st["status"], "running");

    let sock = env.state.path().join("tmux.sock");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .output()
            .expect("tmux")
    };
    let axctl = ax_tests::bin_dir().join("axctl");
    let cmd = format!(
        "env XDG_STATE_HOME={} XDG_CACHE_HOME={} {} attach tty; echo ATTACH-EXIT=$?; sleep 60",
        env.state.path().display(),
        ax_tests::cache_home().display(),
        axctl.display()
    );
    assert!(tmux(&["new-session", "-d", "-x", "100", "-y", "30", &cmd])
        .status
        .success());
    // The pane's text once `done` holds for it (or after 30 s).
    let pane_until = |done: &dyn Fn(&str) -> bool| -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let s = text(&tmux(&["capture-pane", "-p"]).stdout);
            if done(&s) || Instant::now() > end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let pane = |want: &str| pane_until(&|s: &str| s.contains(want));
    // `stty size` prints "<rows> 100": the guest PTY has the pane's width.
    let stty_line = |s: &str| {
        s.lines()
            .any(|l| l.trim().ends_with(" 100") && l.trim().split(' ').count() == 2)
    };
    let s = pane("detach with");
    assert!(s.contains("detach with"), "{s}");
    tmux(&[
        "send-keys",
        "echo tty-$((6*7)); [ -t 0 ] && stty size",
        "Enter",
    ]);
    let s = pane_until(&|s: &str| s.contains("tty-42") && stty_line(s));
    assert!(s.contains("tty-42"), "pane: {s}");
    assert!(
        stty_line(&s),
        "the guest PTY has the pane's width (stty size): {s}"
    );
    // Ctrl+] then d detaches; the shell keeps running.
    tmux(&["send-keys", "C-]", ""]);
    tmux(&["send-keys", "d", ""]);
    let s = pane("ATTACH-EXIT=0");
    assert!(s.contains("detached from tty"), "{s}");
    assert!(s.contains("ATTACH-EXIT=0"), "{s}");
    assert_eq!(env.inspect("tty")["status"], "running");
    tmux(&["kill-server"]);

    // The shell's state survived the detach: a later exec sees the same VM.
    let o = env.run(&["exec", "tty", "--", "sh", "-c", "echo alive"]);
    assert_eq!(text(&o.stdout), "alive\n");
    assert!(env.run(&["stop", "tty"]).status.success());
}

#[test]
fn usage_errors_exit_2_with_a_hint() {
    let env = Env::new();
    for (args, needle) in [
        (
            vec!["run", "--agent", "nope", "--prompt", "x"],
            "unknown agent 'nope'",
        ),
        (
            vec!["run", "--name", "Bad_Name", "--prompt", "x"],
            "invalid agent name",
        ),
        (vec!["run", "--prompt", " "], "prompt is empty"),
        (vec!["logs", "ghost"], "no agent named 'ghost'"),
        (vec!["attach", "ghost"], "no agent named 'ghost'"),
        (vec!["run", "--bogus"], "unexpected argument"),
    ] {
        let o = env.run(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}: stdout must stay clean");
    }
    // --vmm ax where hardware KVM is not usable: a usage error saying why.
    if let Err(why) = hardware_kvm() {
        let o = env.run(&["run", "--vmm", "ax", "--prompt", "x"]);
        assert_eq!(o.status.code(), Some(2));
        let err = text(&o.stderr);
        assert!(
            err.contains("needs hardware KVM") && err.contains(&why),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // No QEMU on PATH: a one-line error naming the package.
    let o = env
        .axctl()
        .env("PATH", "/nonexistent")
        .args(["run", "--prompt", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("apt-get install qemu-system-x86"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn git_ax_is_the_same_cli() {
    // `git ax …` finds `git-ax` on PATH: the same commands, the same exit codes.
    let env = Env::new();
    let path = format!(
        "{}:{}",
        ax_tests::bin_dir().display(),
        std::env::var("PATH").unwrap()
    );
    let o = Command::new("git")
        .args(["ax", "ps", "--all"])
        .env("PATH", &path)
        .env("XDG_STATE_HOME", env.state.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("NAME"), "{}", text(&o.stdout));
    let o = Command::new("git")
        .args(["ax", "logs", "ghost"])
        .env("PATH", &path)
        .env("XDG_STATE_HOME", env.state.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

#[test]
fn timeout_fails_the_agent_and_ctrl_c_reaches_it() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    // --timeout: the agent is stopped and marked failed with the reason.
    let o = env.run(&[
        "run",
        "--name",
        "slow",
        "--wait",
        "--timeout",
        "2s",
        "--prompt",
        "echo hi; sleep 100",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hi\n");
    assert!(
        text(&o.stderr).contains("timed out after 2s"),
        "{}",
        text(&o.stderr)
    );
    let st = env.inspect("slow");
    assert_eq!(st["status"], "failed");
    assert_eq!(st["reason"], "timed out after 2s");

    // ^C on `run --wait` is forwarded to the agent, whose exit code comes back.
    let mut child = env
        .axctl()
        .args([
            "run",
            "--name",
            "int",
            "--wait",
            "--prompt",
            "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.2; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let end = Instant::now() + Duration::from_secs(90);
    while !text(&seen).contains("ready") && Instant::now() < end {
        use std::io::Read;
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "agent output ended early: {}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    use std::io::Read;
    out.read_to_end(&mut seen).unwrap();
    assert_eq!(status.code(), Some(5), "output: {}", text(&seen));
    assert!(text(&seen).contains("got-int"), "{}", text(&seen));
}

#[test]
fn ax_vmm_runs_the_agent_on_hardware_kvm() {
    if let Err(why) = hardware_kvm() {
        ax_tests::skip_without_hardware_kvm(
            "ax_vmm_runs_the_agent_on_hardware_kvm",
            &format!("no hardware KVM ({why}); ax-vmm itself is covered by vmm/tests with bare-metal guests"),
        );
        return;
    }
    ensure_image();
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--vmm",
        "ax",
        "--name",
        "kvm",
        "--wait",
        "--prompt",
        "uname -a; cat /proc/1/comm; exit 7",
    ]);
    if o.status.code() != Some(7) {
        env.dump("kvm");
    }
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("Linux kvm "), "{out}");
    assert!(out.contains("agentd"), "{out}");
    assert_eq!(env.inspect("kvm")["vmm"], "ax");
}
