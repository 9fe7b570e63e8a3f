//! Precedence, `extends`, built-ins and launch rendering, against real files in temp dirs.

use super::*;
use std::path::Path;

struct World {
    _tmp: tempfile::TempDir,
    dirs: Dirs,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            repo: Some(tmp.path().join("repo/.ax/agents")),
            user: tmp.path().join("config/ax/agents"),
        };
        std::fs::create_dir_all(dirs.repo.as_ref().unwrap()).unwrap();
        std::fs::create_dir_all(&dirs.user).unwrap();
        World { _tmp: tmp, dirs }
    }
    fn user(&self, name: &str, text: &str) -> &Self {
        std::fs::write(self.dirs.user.join(format!("{name}.toml")), text).unwrap();
        self
    }
    fn repo(&self, name: &str, text: &str) -> &Self {
        std::fs::write(
            self.dirs
                .repo
                .as_ref()
                .unwrap()
                .join(format!("{name}.toml")),
            text,
        )
        .unwrap();
        self
    }
    fn load(&self, name: &str) -> Agent {
        load(&self.dirs, name).unwrap()
    }
    fn err(&self, name: &str) -> String {
        let e = load(&self.dirs, name).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2, "{e}");
        e.to_string()
    }
}

fn vars<'a>(prompt: Option<&'a str>, secrets: &'a BTreeMap<String, String>) -> LaunchVars<'a> {
    LaunchVars::new("job-1", prompt, secrets)
}

#[test]
fn builtins_parse_and_render() {
    let w = World::new();
    let names: Vec<String> = list(&w.dirs).unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, builtin::NAMES);
    let none = BTreeMap::new();
    for (name, argv) in [
        (
            "claude",
            vec!["claude", "--dangerously-skip-permissions", "-p", "do it"],
        ),
        (
            "codex",
            vec![
                "codex",
                "exec",
                "--dangerously-bypass-approvals-and-sandbox",
                "--skip-git-repo-check",
                "do it",
            ],
        ),
        ("gemini", vec!["gemini", "--yolo", "-p", "do it"]),
        ("opencode", vec!["opencode", "run", "do it"]),
        ("shell", vec!["sh", "-c", "do it"]),
    ] {
        let a = w.load(name);
        assert_eq!(a.source, Source::Builtin);
        assert!(!a.about.is_empty());
        assert_eq!(
            a.launch(Mode::Batch, &vars(Some("do it"), &none))
                .unwrap()
                .argv,
            argv,
            "{name}"
        );
        assert!(a.interactive.is_some(), "{name}");
        // Every native JSON/TOML file a built-in writes parses.
        for f in a
            .launch(Mode::Interactive, &vars(None, &none))
            .unwrap()
            .files
        {
            if f.path.ends_with(".json") {
                serde_json::from_str::<serde_json::Value>(&f.contents)
                    .unwrap_or_else(|e| panic!("{name} {}: {e}", f.path));
            } else if f.path.ends_with(".toml") {
                toml::from_str::<toml::Table>(&f.contents)
                    .unwrap_or_else(|e| panic!("{name} {}: {e}", f.path));
            }
        }
    }
    // The compatibility path used by `axctl run` keeps the shell behaviour.
    assert_eq!(w.load("shell").argv("exit 7"), ["sh", "-c", "exit 7"]);
}

#[test]
fn claude_runs_sandboxed_without_telemetry() {
    let w = World::new();
    let mut sec = BTreeMap::new();
    sec.insert("ANTHROPIC_API_KEY".to_string(), "ph-anthropic".to_string());
    let l = w
        .load("claude")
        .launch(Mode::Batch, &vars(Some("x"), &sec))
        .unwrap();
    for (k, v) in [
        ("IS_SANDBOX", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("ANTHROPIC_API_KEY", "ph-anthropic"),
    ] {
        assert_eq!(l.env.get(k).map(String::as_str), Some(v), "{k}");
    }
    let cfg = l
        .files
        .iter()
        .find(|f| f.path == "/root/.claude.json")
        .unwrap();
    assert_eq!(cfg.mode, 0o600);
    let v: serde_json::Value = serde_json::from_str(&cfg.contents).unwrap();
    assert_eq!(v["hasCompletedOnboarding"], true);
    assert_eq!(l.secrets[0].name, "ANTHROPIC_API_KEY");
    assert_eq!(l.secrets[0].hosts, ["api.anthropic.com"]);
    // Codex's auth file gets the placeholder through ${OPENAI_API_KEY}.
    sec.insert("OPENAI_API_KEY".to_string(), "ph-openai".to_string());
    let l = w
        .load("codex")
        .launch(Mode::Batch, &vars(Some("x"), &sec))
        .unwrap();
    let auth = l
        .files
        .iter()
        .find(|f| f.path == "/root/.codex/auth.json")
        .unwrap();
    assert!(auth.contents.contains("\"ph-openai\""), "{}", auth.contents);
}

#[test]
fn precedence_repo_over_user_over_builtin() {
    let w = World::new();
    w.user(
        "shell",
        "about = \"user shell\"\ncommand = [\"bash\", \"-c\", \"{prompt}\"]\n",
    );
    let a = w.load("shell");
    assert_eq!((a.about.as_str(), a.source.kind()), ("user shell", "user"));
    w.repo(
        "shell",
        "about = \"repo shell\"\ncommand = \"zsh -c {prompt}\"\n",
    );
    let a = w.load("shell");
    assert_eq!(a.about, "repo shell");
    assert!(matches!(&a.source, Source::Repo(p) if p.ends_with(".ax/agents/shell.toml")));
    assert_eq!(
        a.argv("echo 'hi'"),
        ["sh", "-c", "zsh -c 'echo '\\''hi'\\'''"]
    );
    // Without the repository, the user file wins.
    let no_repo = Dirs {
        repo: None,
        user: w.dirs.user.clone(),
    };
    assert_eq!(load(&no_repo, "shell").unwrap().about, "user shell");
}

#[test]
fn extends_merges_over_the_base() {
    let w = World::new();
    // A user claude.toml extending "claude" starts from the built-in claude.
    w.user(
        "claude",
        r#"extends = "claude"
about = "claude, bigger"
memory = "4G"
env = { DISABLE_TELEMETRY = "0", EXTRA = "1" }
instructions = "Run the tests before you finish."
[[mcp]]
name = "docs"
url = "https://mcp.example.com/mcp"
"#,
    );
    // A repo agent extending "claude" gets the user's claude (highest precedence).
    w.repo(
        "review",
        "extends = \"claude\"\nabout = \"reviewer\"\ncpus = 4\n",
    );
    let none = BTreeMap::new();
    for (name, about, cpus) in [
        ("claude", "claude, bigger", None),
        ("review", "reviewer", Some(4)),
    ] {
        let a = w.load(name);
        assert_eq!(
            (a.about.as_str(), a.cpus, a.memory_mib),
            (about, cpus, Some(4096)),
            "{name}"
        );
        let l = a.launch(Mode::Batch, &vars(Some("p"), &none)).unwrap();
        assert_eq!(l.argv[0], "claude");
        assert_eq!(l.env["DISABLE_TELEMETRY"], "0");
        assert_eq!(l.env["EXTRA"], "1");
        assert_eq!(l.env["IS_SANDBOX"], "1");
        let md = l
            .files
            .iter()
            .find(|f| f.path == "/root/.claude/CLAUDE.md")
            .unwrap();
        assert_eq!(md.contents, "Run the tests before you finish.");
        let cfg = l
            .files
            .iter()
            .find(|f| f.path == "/root/.claude.json")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&cfg.contents).unwrap();
        assert_eq!(v["hasCompletedOnboarding"], true, "base file kept");
        assert_eq!(
            v["mcpServers"]["docs"]["url"],
            "https://mcp.example.com/mcp"
        );
    }
}

#[test]
fn extends_errors_point_at_the_file() {
    let w = World::new();
    w.user("a", "extends = \"b\"\n")
        .user("b", "about = \"x\"\nextends = \"a\"\n");
    let e = w.err("a");
    assert!(
        e.contains("b.toml:2:11: extends \"a\" makes a cycle"),
        "{e}"
    );
    w.user("c", "\nextends = \"nope\"\n");
    let e = w.err("c");
    assert!(
        e.contains("c.toml:2:11: extends \"nope\": no such agent"),
        "{e}"
    );
    w.user("d", "about = \"no command\"\n");
    let e = w.err("d");
    assert!(e.contains("d.toml:1:1: no command"), "{e}");
    w.user("e", "name = \"other\"\ncommand = [\"x\"]\n");
    assert!(w.err("e").contains("e.toml:1:8: name = \"other\" differs"));
    w.user(
        "f",
        "command = [\"x\"]\n[[mcp]]\nname = \"m\"\ncommand = \"srv\"\n",
    );
    assert!(w.err("f").contains("need mcp_config"));
    assert!(w
        .err("nope")
        .contains("unknown agent 'nope'; use one of: a, b, c, claude"));
}

#[test]
fn broken_file_fails_listing_with_location() {
    let w = World::new();
    w.repo("x", "command = [\"x\"]\ncpus = \"two\"\n");
    let e = list(&w.dirs).unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2);
    let msg = e.to_string();
    let want = format!(
        "{}:2:8:",
        w.dirs.repo.as_ref().unwrap().join("x.toml").display()
    );
    assert!(msg.starts_with(&want), "{msg}");
    std::fs::write(Path::new(&w.dirs.user).join("Bad Name.toml"), "").unwrap();
    std::fs::remove_file(w.dirs.repo.as_ref().unwrap().join("x.toml")).unwrap();
    assert!(list(&w.dirs)
        .unwrap_err()
        .to_string()
        .contains("Bad Name.toml:1:1: the file name is not an agent name"));
}

#[test]
fn launch_modes_and_placeholders() {
    let w = World::new();
    w.user(
        "t",
        r#"command = ["tool", "--as", "{name}", "-p", "{prompt}"]
secrets = [{ name = "TOKEN", hosts = ["api.example.com"], env = "TOOL_TOKEN" }]
env = { AUTH = "Bearer ${TOKEN}", HOME_DIR = "${HOME}" }
[[files]]
path = "~/.tool/cfg"
contents = "token=${TOKEN} user=${USER}"
"#,
    );
    let a = w.load("t");
    let mut sec = BTreeMap::new();
    sec.insert("TOKEN".to_string(), "ph-tok".to_string());
    let l = a.launch(Mode::Batch, &vars(Some("go"), &sec)).unwrap();
    assert_eq!(l.argv, ["tool", "--as", "job-1", "-p", "go"]);
    assert_eq!(l.env["TOOL_TOKEN"], "ph-tok");
    assert_eq!(l.env["AUTH"], "Bearer ph-tok");
    assert_eq!(l.env["HOME_DIR"], "${HOME}");
    assert_eq!(l.files[0].path, "/root/.tool/cfg");
    assert_eq!(l.files[0].mode, 0o644);
    assert_eq!(l.files[0].contents, "token=ph-tok user=${USER}");
    let e = a.launch(Mode::Interactive, &vars(None, &sec)).unwrap_err();
    assert!(
        e.to_string().contains("agent t has no interactive command"),
        "{e}"
    );
    let e = a.launch(Mode::Batch, &vars(None, &sec)).unwrap_err();
    assert!(e.to_string().contains("needs a prompt"), "{e}");
}

/// The fragment is what the real netstack parser accepts, with the guest's placeholders.
#[test]
fn netstack_fragment_parses_with_the_netstack_config() {
    use ax_supervisor::secret::{Origin, ResolvedSecret};
    let w = World::new();
    w.user(
        "t",
        r#"command = ["tool", "{prompt}"]
secrets = [{ name = "TOKEN", hosts = ["api.example.com"] }]
[policy]
default = "deny"
[[policy.rule]]
host = "*.example.com"
ports = [443]
action = "intercept"
"#,
    );
    let resolved = vec![ResolvedSecret {
        name: "TOKEN".into(),
        value: "real-value-123".into(),
        hosts: vec!["api.example.com".into()],
        body: true,
        env: "TOKEN".into(),
        origin: Origin::Stored,
    }];
    let mut ph = BTreeMap::new();
    ph.insert("TOKEN".to_string(), "ph-0123456789".to_string());
    let l = w
        .load("t")
        .launch(Mode::Batch, &vars(Some("x"), &ph))
        .unwrap();
    assert_eq!(l.env["TOKEN"], "ph-0123456789");
    let mut t = ax_supervisor::netconf::secrets_fragment(&resolved, &ph, l.policy.as_ref());
    t.insert("agent".into(), "job-1".into());
    let cfg =
        ax_netstack::config::Config::parse(&toml::to_string(&t).unwrap(), "fragment").unwrap();
    assert_eq!(cfg.secrets[0].placeholder, "ph-0123456789");
    assert_eq!(cfg.secrets[0].hosts, ["api.example.com"]);
    assert!(cfg.secrets[0].body);
    assert_eq!(cfg.policy.default, ax_netstack::config::Action::Deny);
    assert_eq!(cfg.policy.rules[0].host, "*.example.com");
    assert_eq!(cfg.policy.rules[0].ports, [443]);
    assert_eq!(
        cfg.policy.rules[0].action,
        ax_netstack::config::Action::Intercept
    );
}
