//! The agent's network end to end: a real guest under QEMU, real curl and git in it,
//! the real ax-netstack between it and a loopback HTTPS server that plays api.anthropic.com and
//! a git host (tests/tests/network_upstream.py, its own test CA, reached through [[route]]s).
//!
//! What must hold: the guest's curl reaches `https://api.anthropic.com/v1/messages` with a
//! placeholder key; the upstream sees the real key; the guest never sees it (environment,
//! files, responses: the upstream echoes the key and the netstack scrubs it); the ledger has
//! the call's tokens and cost; a host the policy denies and the host's loopback services are
//! unreachable; `git clone` over HTTPS with a substituted token (Basic auth) works.

use ax_tests::{ensure_image, require_qemu, skip, which, Env};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const REAL_KEY: &str = "sk-ant-api03-REALKEYnetworktest0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
const REAL_TOKEN: &str = "ghp_REALTOKENnetworktest0123456789abcdefXYZ";

/// The loopback upstream process; killed on drop.
struct Upstream {
    child: Child,
    https_port: u16,
    service_port: u16,
    log: std::path::PathBuf,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a certificate for the upstream's names, as PEM files in `dir`; returns the
/// CA PEM.
fn make_certs(dir: &Path) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ax network test upstream CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let names = [
        "api.anthropic.com",
        "git.example.test",
        "blocked.example.test",
    ];
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    ca_cert.pem()
}

use ax_tests::git;

/// A bare repository `repo.git` under `root` with one commit holding README.
fn make_repo(root: &Path) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "cloned through ax-netstack\n").unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(
        root,
        &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
    );
}

fn start_upstream(dir: &Path) -> Upstream {
    let log = dir.join("requests.jsonl");
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/network_upstream.py"
        ))
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .arg("--log")
        .arg(&log)
        .arg("--git-root")
        .arg(dir)
        .args(["--api-key", REAL_KEY, "--token", REAL_TOKEN])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("upstream.stderr")).unwrap())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ports: Vec<u16> = line
        .strip_prefix("PORTS ")
        .unwrap_or_else(|| panic!("upstream said {line:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    Upstream {
        child,
        https_port: ports[0],
        service_port: ports[1],
        log,
    }
}

/// The `--net-config` file: routes to the upstream (with its CA), the deny rule, the secrets.
fn net_config(up: &Upstream, ca_pem: &str) -> String {
    let ca = toml_str(ca_pem);
    format!(
        r#"
[[route]]
host = "api.anthropic.com"
address = "127.0.0.1:{p}"
ca_pem = {ca}

[[route]]
host = "git.example.test"
address = "127.0.0.1:{p}"
ca_pem = {ca}

[[route]]
host = "blocked.example.test"
address = "127.0.0.1:{p}"
ca_pem = {ca}

[policy]
default = "allow"
[[policy.rule]]
host = "blocked.example.test"
action = "deny"

[[secret]]
name = "ANTHROPIC_API_KEY"
value = "{REAL_KEY}"
hosts = ["api.anthropic.com"]

[[secret]]
name = "GITHUB_TOKEN"
value = "{REAL_TOKEN}"
hosts = ["git.example.test"]
"#,
        p = up.https_port
    )
}

fn toml_str(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The text between `== name` and the next `== ` marker of the guest script's output.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("== {name}\n"))
        .unwrap_or_else(|| panic!("no section {name} in output:\n{out}"));
    let rest = &out[start + name.len() + 4..];
    &rest[..rest.find("\n== ").map_or(rest.len(), |i| i + 1)]
}

#[test]
fn guest_reaches_llm_and_git_through_the_netstack_with_placeholders_only() {
    if !require_qemu() {
        return;
    }
    for prog in ["python3", "git"] {
        if which(prog).is_none() {
            skip(
                "network test",
                &format!("{prog} not installed (scripts/deps)"),
            );
            return;
        }
    }
    ensure_image();
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = make_certs(dir.path());
    make_repo(dir.path());
    let up = start_upstream(dir.path());
    let cfg = dir.path().join("net.toml");
    std::fs::write(&cfg, net_config(&up, &ca_pem)).unwrap();

    let script = format!(
        r#"
echo "== env"; env | sort
echo "== messages"
curl -sS -m 60 https://api.anthropic.com/v1/messages -H "x-api-key: $ANTHROPIC_API_KEY" \
  -H "anthropic-version: 2023-06-01" -H "content-type: application/json" \
  -d '{{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}'
echo; echo "messages_rc=$?"
echo "== deny"
curl -sS -m 30 -o /dev/null https://blocked.example.test/ 2>&1; echo "deny_rc=$?"
echo "== loopback"
curl -sS -m 30 http://localhost.:{svc}/ 2>&1; echo "loopback_rc=$?"
curl -sS -m 30 http://100.96.0.1:{svc}/ 2>&1; echo "gateway_rc=$?"
echo "== clone"
git clone -q "https://x-access-token:$GITHUB_TOKEN@git.example.test/repo.git" /tmp/clone 2>&1
echo "clone_rc=$?"; cat /tmp/clone/README
echo "== dump"
cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n'
find /run/ax/rw /tmp /root /workspace -xdev -type f -size -4M -exec cat {{}} + 2>/dev/null
echo; echo "== end"
"#,
        svc = up.service_port
    );
    let o = env.run(&[
        "run",
        "--name",
        "net1",
        "--no-repo",
        "--net-config",
        cfg.to_str().unwrap(),
        "--wait",
        "--prompt",
        &script,
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    // Shown with --nocapture (and on failure).
    eprintln!("==== guest output\n{out}");
    if !o.status.success() {
        env.dump("net1");
        eprintln!(
            "==== netstack.log\n{}",
            ax_tests::read(&env.agent_dir("net1").join("netstack.log"))
        );
        eprintln!("==== output\n{out}");
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The guest held placeholders, never the real values: not in any process environment,
    // not in any file it wrote, not in any response it got.
    for real in [REAL_KEY, REAL_TOKEN] {
        assert!(
            !contains(&o.stdout, real),
            "a real secret reached the guest:\n{out}"
        );
    }
    let env_sec = section(&out, "env");
    let placeholder = env_sec
        .lines()
        .find_map(|l| l.strip_prefix("ANTHROPIC_API_KEY="))
        .expect("ANTHROPIC_API_KEY in the agent's environment");
    assert!(
        placeholder.starts_with("sk-ant-api03-axph"),
        "{placeholder}"
    );
    let token_ph = env_sec
        .lines()
        .find_map(|l| l.strip_prefix("GITHUB_TOKEN="))
        .expect("GITHUB_TOKEN in the agent's environment");
    assert!(token_ph.starts_with("ghp_axph"), "{token_ph}");
    for (k, v) in [
        ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
        (
            "NODE_EXTRA_CA_CERTS",
            "/usr/local/share/ca-certificates/ax-netstack-ca.crt",
        ),
    ] {
        assert!(
            env_sec.contains(&format!("{k}={v}\n")),
            "{k} not set:\n{env_sec}"
        );
    }

    // The LLM call went through with the real key and came back scrubbed.
    let msg = section(&out, "messages");
    assert!(msg.contains("hello from the loopback upstream"), "{msg}");
    assert!(msg.contains("messages_rc=0"), "{msg}");
    assert!(
        msg.contains(&format!("\"echo_key\": \"{placeholder}\"")),
        "the echoed key must come back as the placeholder: {msg}"
    );
    let log = ax_tests::read(&up.log);
    let reqs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let llm: Vec<&serde_json::Value> = reqs
        .iter()
        .filter(|r| r["path"] == "/v1/messages")
        .collect();
    assert_eq!(llm.len(), 1, "{log}");
    assert_eq!(
        llm[0]["headers"]["x-api-key"], REAL_KEY,
        "the upstream sees the real key"
    );
    assert!(
        !log.contains("axph"),
        "no placeholder ever reached the upstream: {log}"
    );

    // Denied by policy and the host's own loopback: refused, never reached.
    let deny = section(&out, "deny");
    assert!(!deny.contains("deny_rc=0"), "{deny}");
    assert!(
        !reqs
            .iter()
            .any(|r| r["headers"]["host"] == "blocked.example.test"),
        "the denied host was reached: {log}"
    );
    let lo = section(&out, "loopback");
    assert!(
        !lo.contains("host-only service"),
        "host loopback reached: {lo}"
    );
    assert!(
        !lo.contains("loopback_rc=0") && !lo.contains("gateway_rc=0"),
        "{lo}"
    );

    // git clone over HTTPS with the token substituted into Basic auth.
    let clone = section(&out, "clone");
    assert!(clone.contains("clone_rc=0"), "{clone}");
    assert!(clone.contains("cloned through ax-netstack"), "{clone}");
    let git_auth: Vec<&str> = reqs
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or("").starts_with("/repo.git/"))
        .filter_map(|r| r["headers"]["authorization"].as_str())
        .collect();
    assert!(!git_auth.is_empty(), "git sent no credentials: {log}");
    let want = format!("x-access-token:{REAL_TOKEN}");
    for a in git_auth {
        let b64 = a.strip_prefix("Basic ").expect("Basic auth");
        assert_eq!(
            decode_b64(b64),
            want.as_bytes(),
            "the upstream sees the real token"
        );
    }

    // The ledger has the call: tokens and cost.
    let o = env.run(&["cost", "--agent", "net1", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cost: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &cost["total"];
    assert_eq!(t["calls"], 1, "{cost}");
    assert_eq!(t["input_tokens"], 1000, "{cost}");
    assert_eq!(t["output_tokens"], 2000, "{cost}");
    assert!(t["cost_micro_usd"].as_i64().unwrap() > 0, "priced: {cost}");
    // The audit log has the refusal.
    let o = env.run(&["audit", "net1", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let audit: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        audit["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["host"] == "blocked.example.test" && c["decision"] == "deny"),
        "{audit}"
    );
}

#[test]
fn no_net_means_no_network_device() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--name",
        "nonet",
        "--no-repo",
        "--no-net",
        "--wait",
        "--prompt",
        "ls /sys/class/net; cat /etc/resolv.conf; env | grep -c SSL_CERT_FILE",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out, "lo\n0\n", "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!env.agent_dir("nonet").join("netstack.log").exists());
}

/// The pid of the ax-netstack serving `sock` (this test's agent), from /proc.
fn netstack_pid(sock: &Path) -> Option<i32> {
    let want = sock.to_str()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let is_netstack = args.first()?.ends_with(b"ax-netstack");
        (is_netstack && args.contains(&want.as_bytes())).then_some(pid)
    })
}

#[test]
fn a_dead_netstack_fails_the_agent_with_the_reason() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let o = env.run(&[
        "run",
        "--name",
        "netdie",
        "--no-repo",
        "--prompt",
        "touch /tmp/ready; sleep 600",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = env.wait_for("netdie", std::time::Duration::from_secs(90), |v| {
        v["status"] != "starting"
    });
    assert_eq!(st["status"], "running", "{st}");
    let sock = env.agent_dir("netdie").join("net.sock");
    let pid = netstack_pid(&sock).expect("the agent's ax-netstack runs");
    // SAFETY: kill(2) on the netstack this test's agent started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let st = env.wait_for("netdie", std::time::Duration::from_secs(60), |v| {
        v["status"] == "failed"
    });
    assert_eq!(st["status"], "failed", "{st}");
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("ax-netstack ended while the agent was running")
            && reason.contains("netstack.log"),
        "{reason}"
    );
    assert!(
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .all(|e| e.file_name().to_str() != Some(&st["vmm_pid"].to_string())),
        "the VM is gone"
    );
}

#[test]
fn bad_net_config_is_a_usage_error_naming_the_line() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("net.toml");
    std::fs::write(&cfg, "[policy]\ndefault = \"allow\"\nrules = 3\n").unwrap();
    let o = env.run(&[
        "run",
        "--no-repo",
        "--net-config",
        cfg.to_str().unwrap(),
        "--prompt",
        "true",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("net.toml") && err.contains("line 3"), "{err}");
    assert!(
        !env.state.path().join("ax/agents").exists()
            || std::fs::read_dir(env.state.path().join("ax/agents"))
                .unwrap()
                .next()
                .is_none(),
        "no agent left behind"
    );
}

fn decode_b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {s}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
