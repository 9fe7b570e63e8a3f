//! `axctl run --repo`: the repository on the guest's /workspace through ax-fsd (git-backed
//! lower, copy-on-write upper), and the agent's work as branch ax/<name>.

use ax_tests::{ensure_image, repo_with, require_qemu, start_until_ready, Env};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use ax_tests::git;

/// Every file under `root` (relative path → mode and sha256 of its bytes or link target).
fn files(root: &Path) -> BTreeMap<String, (u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(
                rel,
                (m.mode(), format!("{:x}", sha2::Sha256::digest(&bytes))),
            );
        }
    }
    out
}

#[test]
fn agent_edits_land_on_branch_and_host_tree_is_untouched() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let (repo, base) = repo_with(&[
        ("README", "hello from the host\n"),
        ("old.txt", "to be deleted\n"),
        ("src/lib.rs", "fn a() {}\n"),
    ]);
    let r = repo.path();
    let before = files(r);

    let o = env.run(&[
        "run", "--repo", r.to_str().unwrap(), "--name", "ws", "--wait", "--prompt",
        "cat README && echo new > new.txt && rm old.txt && mkdir -p tools && printf '#!/bin/sh\\n' > tools/run && chmod +x tools/run && echo 'fn b() {}' >> src/lib.rs && mv src srcx && ln -s README link && ls",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        env.dump("ws");
        let f = "fsd.log";
        eprintln!("==== {f}\n{}", ax_tests::read(&env.agent_dir("ws").join(f)));
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.starts_with("hello from the host\n"), "{out}");

    // The branch holds exactly the agent's changes.
    let stat = git(
        r,
        &["diff", "--no-renames", "--name-status", &base, "ax/ws"],
    );
    let mut lines: Vec<&str> = stat.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "A\tlink",
            "A\tnew.txt",
            "A\tsrcx/lib.rs",
            "A\ttools/run",
            "D\told.txt",
            "D\tsrc/lib.rs"
        ],
        "{stat}"
    );
    assert!(git(r, &["ls-tree", "ax/ws", "tools/run"]).starts_with("100755"));
    assert_eq!(git(r, &["show", "ax/ws:new.txt"]), "new\n");
    assert!(git(r, &["ls-tree", "ax/ws", "link"]).starts_with("120000"));
    assert_eq!(
        git(r, &["show", "ax/ws:srcx/lib.rs"]),
        "fn a() {}\nfn b() {}\n"
    );
    let st = env.inspect("ws");
    assert_eq!(st["branch"]["files_changed"], 6, "{st}");
    let human = String::from_utf8_lossy(&env.run(&["inspect", "ws"]).stdout).into_owned();
    assert!(human.contains("Branch:    ax/ws at "), "{human}");
    assert!(human.contains(&format!("Base:      {base}")), "{human}");
    assert!(human.contains("6 files changed"), "{human}");

    // The host's work tree, index, config, hooks and refs are byte-identical; the only new
    // files are the branch's ref and reflog and the objects it needs (content-addressed).
    let after = files(r);
    for (path, v) in &before {
        assert_eq!(after.get(path), Some(v), "{path} changed or vanished");
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        let allowed = path == ".git/refs/heads/ax/ws"
            || path == ".git/logs/refs/heads/ax/ws"
            || (path.starts_with(".git/objects/") && !path.starts_with(".git/objects/info/"));
        assert!(
            allowed,
            "unexpected new file in the host repository: {path}"
        );
    }
    assert_eq!(git(r, &["status", "--porcelain"]), "");
}

#[test]
fn two_agents_on_one_repo_never_see_each_others_writes() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let (repo, _) = repo_with(&[("shared.txt", "base\n")]);
    let r = repo.path().to_path_buf();
    let run = |me: &'static str, other: &'static str| {
        let mut c = env.axctl();
        c.args([
            "run",
            "--repo",
            r.to_str().unwrap(),
            "--name",
            me,
            "--wait",
            "--prompt",
        ]);
        c.arg(format!(
            "echo {me} > {me}.txt && echo {me} >> shared.txt && sleep 4 && \
             if [ -e {other}.txt ]; then echo SAW-{other}; fi; cat shared.txt"
        ));
        c.output().expect("run axctl")
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run("aa", "bb"));
        let b = s.spawn(|| run("bb", "aa"));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (me, o) in [("aa", &a), ("bb", &b)] {
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{me}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !out.contains("SAW-"),
            "{me} saw the other agent's file: {out}"
        );
        assert_eq!(out, format!("base\n{me}\n"), "{me}");
        let names = git(&r, &["diff", "--name-only", "main", &format!("ax/{me}")]);
        let mut names: Vec<&str> = names.lines().collect();
        names.sort();
        let mine = format!("{me}.txt");
        assert_eq!(names, [mine.as_str(), "shared.txt"], "{me}");
    }
}

#[test]
fn diff_and_commit_while_running_and_after_a_vm_crash() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let (repo, _) = repo_with(&[("keep.txt", "keep\n"), ("gone.txt", "gone\n")]);
    let r = repo.path();
    start_until_ready(&env, r, "live", "echo one > one.txt && rm gone.txt && echo more >> keep.txt && sync && touch /tmp/ready && sleep 600");
    let o = env.run(&["diff", "live"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "D\tgone.txt\nM\tkeep.txt\nA\tone.txt\n"
    );

    // commit while the agent runs.
    let o = env.run(&["commit", "live"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ax/live "));
    assert_eq!(git(r, &["show", "ax/live:one.txt"]), "one\n");

    // The VM dies; its finished writes are still in the upper layer and commit still works.
    let pid = env.inspect("live")["vmm_pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let st = env.wait_for("live", std::time::Duration::from_secs(20), |v| {
        v["status"] != "running"
    });
    assert_eq!(st["status"], "failed");
    assert!(env.run(&["commit", "live"]).status.success());
    let names = git(r, &["diff", "--name-status", "main", "ax/live"]);
    assert_eq!(names, "D\tgone.txt\nM\tkeep.txt\nA\tone.txt\n");
    assert_eq!(git(r, &["show", "ax/live:keep.txt"]), "keep\nmore\n");

    // --no-repo inside a repository: an empty /workspace, and diff/commit are usage errors.
    let o = env
        .axctl()
        .current_dir(r)
        .args([
            "run",
            "--no-repo",
            "--name",
            "norepo",
            "--wait",
            "--prompt",
            "ls -A /workspace | wc -l",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "0\n");
    assert_eq!(env.run(&["diff", "norepo"]).status.code(), Some(2));
    assert_eq!(env.run(&["commit", "norepo"]).status.code(), Some(2));
}

#[test]
fn git_in_the_guest_works_and_its_commits_land_on_the_branch() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let (repo, _) = repo_with(&[("a.txt", "a\n"), ("sub/s.txt", "s\n")]);
    let r = repo.path();
    // An uncommitted host change: the agent starts where the user is.
    std::fs::write(r.join("wip.txt"), "work in progress\n").unwrap();
    let prompt =
        "set -e; git status --porcelain; echo status-done; git log --format=%s | head -3; \
                  echo b > b.txt; git add b.txt; git commit -q -m 'agent commit'; \
                  echo c > c.txt; git log --format=%s -1";
    // No --repo: like git, axctl uses the repository around the current directory.
    let o = env
        .axctl()
        .current_dir(r.join("sub"))
        .args(["run", "--name", "gg", "--wait", "--prompt", prompt])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        env.dump("gg");
    }
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        out, "status-done\nax: working tree at run start\nbase commit\nagent commit\n",
        "a clean status at start, the snapshot commit on top of the base, then the agent's commit"
    );
    let log = git(r, &["log", "--format=%s", "ax/gg"]);
    let subjects: Vec<&str> = log.lines().collect();
    assert_eq!(
        subjects,
        [
            "ax: uncommitted changes of agent gg",
            "agent commit",
            "ax: working tree at run start",
            "base commit"
        ]
    );
    let names = git(r, &["diff", "--name-status", "main", "ax/gg"]);
    assert_eq!(names, "A\tb.txt\nA\tc.txt\nA\twip.txt\n");
    // The host's own work tree still has its uncommitted file, untouched.
    assert_eq!(git(r, &["status", "--porcelain"]), "?? wip.txt\n");
}

#[test]
fn an_ax_fsd_crash_fails_the_agent_and_loses_no_finished_write() {
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
        "fsdcrash",
        "echo saved > saved.txt && sync && touch /tmp/ready && sleep 600",
    );
    // Kill the workspace's ax-fsd (found by its socket in the agent's state dir).
    let sock = env.agent_dir("fsdcrash").join("workspace.sock");
    let pids = Command::new("pgrep")
        .arg("-f")
        .arg(sock.to_str().unwrap())
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&pids.stdout)
        .lines()
        .next()
        .expect("ax-fsd pid")
        .parse()
        .unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let st = env.wait_for("fsdcrash", std::time::Duration::from_secs(30), |v| {
        v["status"] != "running"
    });
    assert_eq!(st["status"], "failed", "{st}");
    let reason = st["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("ax-fsd (workspace share) ended"),
        "{reason}"
    );
    // The finished write survives: commit builds the branch from the upper layer.
    let o = env.run(&["commit", "fsdcrash"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(git(r, &["show", "ax/fsdcrash:saved.txt"]), "saved\n");
}

#[test]
fn diff_prints_guest_chosen_names_quoted_as_git_does() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let (repo, _) = repo_with(&[("keep.txt", "keep\n")]);
    let r = repo.path();
    // Names with an escape sequence (clear screen), a newline that fakes a second diff line,
    // a tab, a quote, a backslash and UTF-8.
    start_until_ready(
        &env,
        r,
        "names",
        r#"for n in "$(printf 'e\033[2Jx')" "$(printf 'a\nD\tkeep.txt')" 'q"b\s' 'é.txt' plain.txt; do echo x > "$n"; done && sync && touch /tmp/ready && sleep 600"#,
    );
    let o = env.run(&["diff", "names"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = String::from_utf8(o.stdout).expect("axctl diff prints ASCII only");
    assert!(
        ours.bytes()
            .all(|b| b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b)),
        "{ours:?}"
    );
    assert_eq!(ours.lines().count(), 5, "{ours}");
    // The same names as git itself prints them from the branch.
    assert!(env.run(&["commit", "names"]).status.success());
    let theirs = git(
        r,
        &[
            "-c",
            "core.quotePath=true",
            "diff",
            "--name-status",
            "main",
            "ax/names",
        ],
    );
    let mut a: Vec<&str> = ours.lines().collect();
    let mut b: Vec<&str> = theirs.lines().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert!(ours.contains("A\t\"e\\033[2Jx\"\n"), "{ours}");
}
