//! The real `axctl` binary: `agents`, `secrets`, `accounts`, each test in its own
//! XDG config/state directories, run outside any git repository unless it makes one.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }
    fn store(&self) -> PathBuf {
        self.config().join("ax/secrets.toml")
    }
    /// `axctl` with this env's XDG dirs and no provider variables from the test's own
    /// environment.
    fn axctl(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_axctl"));
        c.current_dir(self.dir.path())
            .env("XDG_CONFIG_HOME", self.config())
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .stdin(Stdio::null());
        for v in [
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "GEMINI_API_KEY",
            "GOOGLE_API_KEY",
            "GITHUB_TOKEN",
            "GH_TOKEN",
        ] {
            c.env_remove(v);
        }
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.axctl().args(args).output().unwrap()
    }
    /// `axctl args…` with `input` on stdin (a pipe).
    fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .axctl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // axctl may refuse its arguments and exit before reading stdin: a broken pipe then.
        if let Err(e) = child.stdin.take().unwrap().write_all(input.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        child.wait_with_output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn usage_error(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout {} stderr {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let e = text(&o.stderr);
    assert!(e.starts_with("axctl: "), "{e}");
    e
}

#[test]
fn agents_lists_builtins_and_secret_availability() {
    let env = Env::new();
    let out = ok(&env.run(&["agents"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("SECRETS"),
        "{out}"
    );
    let names: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["claude", "codex", "gemini", "opencode", "shell"]);
    assert!(out.contains("ANTHROPIC_API_KEY (MISSING)"), "{out}");

    // An environment variable of axctl makes the well-known secret available.
    let o = env
        .axctl()
        .args(["agents", "--json"])
        .env("ANTHROPIC_API_KEY", "sk-ant-from-env-000000")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let claude = &v[0];
    assert_eq!(claude["name"], "claude");
    assert_eq!(claude["source"], "builtin");
    assert_eq!(claude["secrets"][0]["name"], "ANTHROPIC_API_KEY");
    assert_eq!(claude["secrets"][0]["available"], "environment");
    assert_eq!(v[1]["secrets"][0]["available"], serde_json::Value::Null);
    assert!(!text(&o.stdout).contains("sk-ant-from-env"));
}

#[test]
fn agents_shows_user_and_repo_definitions() {
    let env = Env::new();
    let user = env.config().join("ax/agents");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(
        user.join("claude.toml"),
        "extends = \"claude\"\nabout = \"my claude\"\n",
    )
    .unwrap();
    // A repository with its own definition, found from a subdirectory like git would.
    let repo = env.dir.path().join("repo");
    std::fs::create_dir_all(repo.join(".ax/agents")).unwrap();
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    assert!(Command::new("git")
        .args(["init", "-q"])
        .current_dir(&repo)
        .status()
        .unwrap()
        .success());
    std::fs::write(
        repo.join(".ax/agents/lint.toml"),
        "about = \"runs the linter\"\ncommand = \"make lint {prompt}\"\n",
    )
    .unwrap();
    let o = env
        .axctl()
        .current_dir(repo.join("sub"))
        .args(["agents", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let find = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(find("claude")["source"], "user");
    assert_eq!(find("claude")["about"], "my claude");
    assert_eq!(
        find("claude")["path"],
        user.join("claude.toml").display().to_string()
    );
    assert_eq!(find("lint")["source"], "repo");
    assert_eq!(find("lint")["about"], "runs the linter");
    assert_eq!(find("codex")["source"], "builtin");
}

#[test]
fn broken_user_definition_exits_2_with_file_line() {
    let env = Env::new();
    let user = env.config().join("ax/agents");
    std::fs::create_dir_all(&user).unwrap();
    let f = user.join("mine.toml");
    std::fs::write(&f, "about = \"x\"\ncommand = [\"tool\", \"{promt}\"]\n").unwrap();
    let e = usage_error(&env.run(&["agents"]));
    assert!(
        e.starts_with(&format!(
            "axctl: {}:2:20: unknown placeholder {{promt}}",
            f.display()
        )),
        "{e}"
    );
    assert!(e.contains("docs/agents.md"), "{e}");
    std::fs::write(&f, "about = \"x\"\ncommand = [\"tool\"]\nmemroy = \"2G\"\n").unwrap();
    let e = usage_error(&env.run(&["agents"]));
    assert!(
        e.contains(&format!("{}:3:1: unknown field `memroy`", f.display())),
        "{e}"
    );
}

/// The value goes in on stdin only: while `secrets add` waits for it, its command line (what
/// `ps` shows) has no trace of it; afterwards the store has it, mode 0600, and `ls` masks it.
#[test]
fn secrets_add_reads_stdin_and_ls_masks() {
    let env = Env::new();
    let value = "sk-ant-api03-Zq8vT3kWm9XbY2nR7pL4f3a9";
    let mut child = env
        .axctl()
        .args(["secrets", "add", "ANTHROPIC_API_KEY"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command line once the new image is in place (the child may still be starting).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let cmdline = loop {
        let c = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
        if text(&c).contains("secrets") || std::time::Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let ps = Command::new("ps")
        .args(["-ww", "-o", "args=", "-p", &child.id().to_string()])
        .output();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    ok(&o);
    assert_eq!(
        text(&cmdline).split('\0').collect::<Vec<_>>()[1..4],
        ["secrets", "add", "ANTHROPIC_API_KEY"]
    );
    assert!(!text(&cmdline).contains("Zq8v"));
    if let Ok(ps) = ps {
        assert!(!text(&ps.stdout).contains("Zq8v"));
    }
    assert!(text(&o.stderr).contains("stored ANTHROPIC_API_KEY for api.anthropic.com"));
    assert!(!text(&o.stderr).contains("Zq8v") && !text(&o.stdout).contains("Zq8v"));

    let meta = std::fs::metadata(env.store()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(env.store().parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let stored: toml::Table =
        toml::from_str(&std::fs::read_to_string(env.store()).unwrap()).unwrap();
    // Trailing newline stripped.
    assert_eq!(
        stored["secret"]["ANTHROPIC_API_KEY"]["value"].as_str(),
        Some(value)
    );

    let out = ok(&env.run(&["secrets", "ls"]));
    assert!(
        out.contains("ANTHROPIC_API_KEY") && out.contains("sk-ant-…f3a9") && out.contains("never"),
        "{out}"
    );
    assert!(!out.contains("Zq8v"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&env.run(&["secrets", "ls", "--json"]))).unwrap();
    assert_eq!(v[0]["value"], "sk-ant-…f3a9");
    assert_eq!(v[0]["hosts"], serde_json::json!(["api.anthropic.com"]));
    assert_eq!(v[0]["last_used"], serde_json::Value::Null);

    // Stored beats the environment in accounts.
    let o = env
        .axctl()
        .args(["accounts", "--json"])
        .env("ANTHROPIC_API_KEY", "sk-ant-env-0000000000000")
        .env("GH_TOKEN", "ghp_envtoken0000000000abcd")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v[0]["provider"], "anthropic");
    assert_eq!(v[0]["source"], "stored");
    assert_eq!(v[0]["value"], "sk-ant-…f3a9");
    assert_eq!(v[1]["source"], serde_json::Value::Null);
    assert_eq!(v[3]["provider"], "github");
    assert_eq!(v[3]["credential"], "GH_TOKEN");
    assert_eq!(v[3]["source"], "environment");
    assert_eq!(v[3]["value"], "ghp_…abcd");
    assert_eq!(
        v[3]["hosts"],
        serde_json::json!(["github.com", "api.github.com"])
    );
    let out = ok(&env.run(&["accounts"]));
    assert!(out.contains("openai") && out.contains("none"), "{out}");

    ok(&env.run(&["secrets", "rm", "ANTHROPIC_API_KEY"]));
    assert_eq!(ok(&env.run(&["secrets", "ls", "--json"])).trim(), "[]");
    usage_error(&env.run(&["secrets", "rm", "ANTHROPIC_API_KEY"]));
}

#[test]
fn secrets_add_refuses_bad_input() {
    let env = Env::new();
    let e = usage_error(&env.run_stdin(&["secrets", "add", "ANTHROPIC_API_KEY"], "\n"));
    assert!(e.contains("empty"), "{e}");
    let e = usage_error(&env.run_stdin(&["secrets", "add", "MY_TOKEN"], "v"));
    assert!(e.contains("axctl secrets add MY_TOKEN --host HOST"), "{e}");
    let e = usage_error(&env.run_stdin(
        &[
            "secrets",
            "add",
            "MY_TOKEN",
            "--host",
            "https://x.example.com",
        ],
        "v",
    ));
    assert!(e.contains("not a host name"), "{e}");
    let e = usage_error(&env.run_stdin(
        &["secrets", "add", "MY-TOKEN", "--host", "x.example.com"],
        "v",
    ));
    assert!(e.contains("invalid secret name"), "{e}");
    assert!(!env.store().exists());
    // A custom name with hosts and --body.
    ok(&env.run_stdin(
        &[
            "secrets",
            "add",
            "MY_TOKEN",
            "--host",
            "x.example.com",
            "--host",
            "Y.example.com",
            "--body",
        ],
        "tok-1234567890abcdef",
    ));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&env.run(&["secrets", "ls", "--json"]))).unwrap();
    assert_eq!(
        v[0]["hosts"],
        serde_json::json!(["x.example.com", "y.example.com"])
    );
    assert_eq!(v[0]["body"], true);
    assert_eq!(v[0]["value"], "tok-…cdef");
}

#[test]
fn shared_store_is_refused_with_the_fix() {
    let env = Env::new();
    ok(&env.run_stdin(
        &["secrets", "add", "OPENAI_API_KEY"],
        "sk-proj-abcdefghijklmnop",
    ));
    std::fs::set_permissions(env.store(), std::fs::Permissions::from_mode(0o640)).unwrap();
    for args in [&["secrets", "ls"][..], &["accounts"], &["agents"]] {
        let e = usage_error(&env.run(args));
        assert!(
            e.contains(&format!("chmod 600 {}", env.store().display())),
            "{args:?}: {e}"
        );
        assert!(!e.contains("abcdefghijklmnop"));
    }
}

#[test]
fn secrets_import_binds_known_names() {
    let env = Env::new();
    let f = env.dir.path().join("keys.env");
    std::fs::write(
        &f,
        "# keys\nexport ANTHROPIC_API_KEY=\"sk-ant-imported-0000001111\"\nGITHUB_TOKEN='ghp_imported00000000002222'\nINTERNAL_KEY=int-0000000000003333 # ours\n",
    )
    .unwrap();
    let fs = f.to_str().unwrap();
    let e = usage_error(&env.run(&["secrets", "import", fs]));
    assert!(e.contains("INTERNAL_KEY") && e.contains("--host"), "{e}");
    assert!(!env.store().exists(), "nothing stored on error");
    ok(&env.run(&["secrets", "import", fs, "--host", "keys.internal.example"]));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&env.run(&["secrets", "ls", "--json"]))).unwrap();
    let by = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by("ANTHROPIC_API_KEY")["hosts"],
        serde_json::json!(["api.anthropic.com"])
    );
    assert_eq!(
        by("GITHUB_TOKEN")["hosts"],
        serde_json::json!(["github.com", "api.github.com"])
    );
    assert_eq!(
        by("INTERNAL_KEY")["hosts"],
        serde_json::json!(["keys.internal.example"])
    );
    assert_eq!(by("INTERNAL_KEY")["value"], "int-…3333");
    let bad = env.dir.path().join("bad.env");
    std::fs::write(&bad, "A=1\nthis is not a pair\n").unwrap();
    let e = usage_error(&env.run(&["secrets", "import", bad.to_str().unwrap()]));
    assert!(e.contains("bad.env:2: expected KEY=VALUE"), "{e}");
}

/// On a terminal the value is typed without echo: the pty never shows it.
#[test]
fn secrets_add_on_a_terminal_does_not_echo() {
    use nix::sys::termios::{tcgetattr, LocalFlags};
    let env = Env::new();
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: std::os::fd::OwnedFd = pty.slave;
    let mut master = std::fs::File::from(pty.master);
    let child = env
        .axctl()
        .args(["secrets", "add", "GEMINI_API_KEY"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until axctl has turned echo off (the terminal's settings are shared by both ends).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tcgetattr(&slave)
        .unwrap()
        .local_flags
        .contains(LocalFlags::ECHO)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "axctl never turned echo off"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    master
        .write_all(b"AIzaSyTypedOnTheTerminal00009876\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    ok(&o);
    assert!(text(&o.stderr).contains("Value for GEMINI_API_KEY (input hidden): "));
    // Echo is back on, and nothing of the value came back through the terminal.
    assert!(tcgetattr(&slave)
        .unwrap()
        .local_flags
        .contains(LocalFlags::ECHO));
    drop(slave);
    let mut seen = Vec::new();
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&master),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let _ = master.read_to_end(&mut seen);
    assert!(
        !text(&seen).contains("TypedOnTheTerminal"),
        "echoed: {:?}",
        text(&seen)
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&env.run(&["secrets", "ls", "--json"]))).unwrap();
    assert_eq!(v[0]["value"], "…9876");
    assert_eq!(
        v[0]["hosts"],
        serde_json::json!(["generativelanguage.googleapis.com"])
    );
}
