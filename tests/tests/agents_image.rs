//! The agents layer in a real guest (QEMU, TCG here): `agents.erofs` is attached as the second
//! disk, agentd mounts it read-only on /opt/ax, and the pinned CLIs run from PATH and report
//! exactly the versions of image/agents.lock.toml.

use ax_image::agents;
use ax_tests::{ensure_image, require_qemu, Env};

/// The commands run in the guest, one per runtime, each introduced by a `== <name>` line.
fn version_script(names: &[&str]) -> String {
    let mut s = String::from("grep ' /opt/ax ' /proc/mounts; echo PATH=$PATH; ");
    for n in names {
        // `cmd --version` with its exit code and wall time (seconds, for the record only).
        s.push_str(&format!(
            "echo =={n}; command -v {n}; t0=$(date +%s.%N); {n} --version </dev/null 2>&1; \
             rc=$?; t1=$(date +%s.%N); \
             secs=$(awk -v a=$t0 -v b=$t1 'BEGIN {{ printf \"%.2f\", b - a }}'); \
             echo \"exit=$rc secs=$secs\"; "
        ));
    }
    s
}

/// Splits the output into sections by `==<name>` lines.
fn sections(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("==") {
            v.push((name.to_string(), String::new()));
        } else if let Some((_, body)) = v.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    v
}

#[test]
fn pinned_agent_clis_run_in_the_guest() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let lock = agents::parse(agents::EMBEDDED, "embedded agents lock").unwrap();
    let version = |name: &str| {
        lock.runtimes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} not in the agents lock"))
            .version
            .clone()
    };
    let names = ["claude", "codex", "gemini", "opencode"];
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--name",
        "agents",
        "--wait",
        "--timeout",
        "15m",
        "--prompt",
        &version_script(&["node", "claude", "codex", "gemini", "opencode"]),
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        env.dump("agents");
    }
    assert!(
        o.status.success(),
        "stdout:\n{out}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{out}");
    let first = out.lines().next().unwrap_or("");
    assert!(
        first.contains(" /opt/ax erofs ro"),
        "agents layer not mounted read-only on /opt/ax: {first}"
    );
    assert!(out.contains("PATH=/opt/ax/bin:"), "{out}");
    let secs = sections(&out);
    let body = |name: &str| -> &str {
        secs.iter()
            .rfind(|(n, _)| n == name)
            .map(|(_, b)| b.as_str())
            .unwrap_or_else(|| panic!("no section for {name}:\n{out}"))
    };
    // The node on PATH is the layer's (Debian's would be /usr/bin/node, version 18).
    assert!(body("node").contains("/opt/ax/bin/node\n"), "{out}");
    assert!(
        body("node").contains(&format!("v{}\n", version("node"))),
        "node: {}",
        body("node")
    );
    for n in names {
        let b = body(n);
        assert!(b.contains(&format!("/opt/ax/bin/{n}\n")), "{n}: {b}");
        assert!(b.contains("exit=0 "), "{n} --version failed: {b}");
        let want = version(n);
        // The version as the CLI prints it, e.g. "2.1.330 (Claude Code)", "codex-cli 0.169.0".
        assert!(
            b.lines().any(|l| l
                .split(|c: char| c.is_whitespace() || c == 'v')
                .any(|w| w == want)),
            "{n}: expected version {want}, got:\n{b}"
        );
    }
}

#[test]
fn script_sections_parse() {
    let s = sections("x\n==a\n1\n2\n==b\n3\n");
    assert_eq!(
        s,
        [
            ("a".to_string(), "1\n2\n".to_string()),
            ("b".into(), "3\n".into())
        ]
    );
    assert!(version_script(&["claude"]).contains("claude --version"));
}
