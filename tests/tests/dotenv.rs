//! The synthesized `/workspace/.env`: the agent's secrets as placeholders in a
//! dotenv file in the repository, which git in the guest leaves out and `ax/<name>` never
//! contains (agentd/src/dotenv.rs, docs/network.md "Secrets"). Under QEMU with the real image.

use ax_tests::{ensure_image, require_qemu, Env};
use std::path::Path;

const REAL_KEY: &str = "sk-ant-api03-REALKEYdotenvtest0123456789abcdefghijklmnopqrstuvwxyzABCDEF";

fn git(repo: &Path, args: &[&str]) -> String {
    ax_tests::git(repo, args).trim().to_string()
}

#[test]
fn dotenv_holds_placeholders_and_is_never_committed() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let repo = tempfile::tempdir().unwrap();
    let r = repo.path();
    git(r, &["init", "-q", "-b", "main"]);
    std::fs::write(r.join("README.md"), "# demo\n").unwrap();
    git(r, &["add", "-A"]);
    git(r, &["commit", "-q", "-m", "base"]);
    let base = git(r, &["rev-parse", "HEAD"]);
    let cfg = r.join("../dotenv-net.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[secret]]\nname = \"ANTHROPIC_API_KEY\"\nvalue = \"{REAL_KEY}\"\nhosts = [\"api.anthropic.com\"]\n"
        ),
    )
    .unwrap();
    let script = r#"cd /workspace
echo "== dotenv"; cat .env
echo "== status"; git status --porcelain
echo "guest" > guest.txt; git add -A; git -c user.name=g -c user.email=g@g commit -qm guest
echo "== committed"; git show --name-only --format= HEAD
echo "== end""#;
    let o = env.run(&[
        "run",
        "--repo",
        r.to_str().unwrap(),
        "--name",
        "dot",
        "--net-config",
        cfg.to_str().unwrap(),
        "--wait",
        "--prompt",
        script,
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        env.dump("dot");
    }
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !out.contains(REAL_KEY),
        "the real key reached the guest:\n{out}"
    );
    // The lines after `== name` up to the next `== ` line.
    let section = |name: &str| -> String {
        let head = format!("== {name}");
        let mut lines = out.lines().skip_while(|l| *l != head);
        assert!(lines.next().is_some(), "no section {name}:\n{out}");
        let body: Vec<&str> = lines.take_while(|l| !l.starts_with("== ")).collect();
        body.join("\n")
    };
    let dotenv = section("dotenv");
    assert!(
        dotenv
            .lines()
            .any(|l| l.starts_with("ANTHROPIC_API_KEY=sk-ant-api03-axph")),
        "{out}"
    );
    // Git in the guest does not see it, so `git add -A` left it out.
    assert_eq!(section("status").trim(), "", "{out}");
    assert_eq!(section("committed").trim(), "guest.txt", "{out}");
    // The branch has the guest's commit and nothing else.
    let files = git(r, &["diff", "--name-only", &base, "ax/dot"]);
    assert_eq!(files, "guest.txt");
    // The host working tree has no .env.
    assert!(!r.join(".env").exists());
}
