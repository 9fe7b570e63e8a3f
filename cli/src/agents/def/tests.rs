//! Schema tests: every value error carries file:line:col.

use super::*;

fn err(text: &str) -> String {
    parse(text, "a.toml").unwrap_err().to_string()
}

#[test]
fn full_file_parses() {
    let f = parse(
        r#"
about = "x"
command = ["tool", "-p", "{prompt}"]
interactive = "tool --name {name}"
env = { A = "1" }
secrets = [{ name = "K", hosts = ["api.example.com"], env = "KEY" }]
cpus = 2
memory = "2G"
timeout = "30m"
instructions = "be nice"
instructions_file = "~/.tool/RULES.md"
mcp_config = "claude"
[policy]
default = "deny"
[[policy.rule]]
host = "*.example.com"
ports = [443]
action = "allow"
[[mcp]]
name = "fs"
command = "mcp-fs"
args = ["/workspace"]
[[mcp]]
name = "web"
url = "https://mcp.example.com/mcp"
[[files]]
path = "~/.tool/config.json"
mode = 0o600
contents = "{}"
"#,
        "a.toml",
    )
    .unwrap();
    assert_eq!(f.memory, Some(Memory(2048)));
    assert_eq!(f.cpus, Some(Cpus(2)));
    assert_eq!(f.timeout, Some(Timeout(Duration::from_secs(1800))));
    assert_eq!(f.files.as_ref().unwrap()[0].mode, 0o600);
    assert_eq!(f.secrets.as_ref().unwrap()[0].env_var(), "KEY");
    assert_eq!(f.policy.as_ref().unwrap().rules[0].action, Action::Allow);
    assert!(matches!(f.command, Some(Command::Argv(ref v)) if v.len() == 3));
    assert!(matches!(f.interactive, Some(Command::Shell(_))));
    let mcp = f.mcp.unwrap();
    assert!(matches!(mcp[1].transport, McpTransport::Http { .. }));
}

#[test]
fn errors_carry_file_line_col() {
    // Unknown key: points at the key.
    assert!(
        err("about = \"x\"\ncomand = [\"a\"]\n").starts_with("a.toml:2:1: unknown field `comand`"),
        "{}",
        err("about = \"x\"\ncomand = [\"a\"]\n")
    );
    // Bad values: point at the value.
    for (text, at, want) in [
        ("memory = \"2T\"\n", "a.toml:1:10:", "unknown unit"),
        ("\n\ncpus = 99\n", "a.toml:3:8:", "1..=64"),
        ("timeout = \"soon\"\n", "a.toml:1:11:", "timeout \"soon\""),
        (
            "command = [\"x\", \"{promt}\"]\n",
            "a.toml:1:17:",
            "unknown placeholder {promt}",
        ),
        ("command = \"\"\n", "a.toml:1:11:", "empty"),
        (
            "instructions_file = \"CLAUDE.md\"\n",
            "a.toml:1:21:",
            "must start with",
        ),
        (
            "[[files]]\npath = \"~/../etc/x\"\ncontents = \"\"\n",
            "a.toml:2:8:",
            "no \"..\"",
        ),
        (
            "[policy]\ndefault = \"block\"\n",
            "a.toml:2:11:",
            "unknown variant `block`",
        ),
        (
            "[[policy.rule]]\nhost = \"https://x.com\"\naction = \"deny\"\n",
            "a.toml:2:8:",
            "not a host name",
        ),
        ("[[mcp]]\nname = \"x\"\n", "a.toml:1:1:", "either command"),
        (
            "secrets = [{ name = \"K\", host = [\"x\"] }]\n",
            "a.toml:1:26:",
            "unknown field `host`",
        ),
    ] {
        let e = err(text);
        assert!(e.starts_with(at) && e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn memory_units() {
    assert_eq!(Memory::parse("512M"), Ok(Memory(512)));
    assert_eq!(Memory::parse("1GiB"), Ok(Memory(1024)));
    assert_eq!(Memory::parse("4096"), Ok(Memory(4096)));
    assert!(Memory::parse("64M").unwrap_err().contains("out of range"));
    assert!(Memory::parse("G").is_err());
}

#[test]
fn guest_paths() {
    let p = GuestPath::parse("~/.claude.json").unwrap();
    assert_eq!(p.resolve("/root"), "/root/.claude.json");
    assert_eq!(
        GuestPath::parse("/etc/x").unwrap().resolve("/root"),
        "/etc/x"
    );
    for bad in ["x", "~", "~/", "/", "/a/../b", "~/./x", "~user/x"] {
        assert!(GuestPath::parse(bad).is_err(), "{bad}");
    }
}
