//! The product's main job end to end: the real Claude Code and Codex CLIs in the
//! guest (QEMU), their built-in definitions (`axctl run --agent claude|codex`), talking to a
//! scripted provider on the host's loopback (tests/src/llm) that the netstack reaches through
//! a `[[route]]` with the server's test CA, TLS intercepted on the way. Each conversation
//! creates one file and edits another; then:
//!
//! - branch `ax/<name>` differs from the base by exactly those two files, with the scripted
//!   contents;
//! - the server saw the real key in every request and never a placeholder;
//! - nothing in the guest held the real key: a scripted probe (a tool call whose output goes
//!   back to the server) searches the guest's environments, /root, /workspace and /tmp for it;
//!   the agent's output and its upper layer on the host do not contain it either;
//! - the ledger (`axctl cost --json`) has exactly the token counts the server answered with,
//!   priced from the shipped price table (netstack/prices.toml), and `axctl inspect` shows them.
//!
//! And three agents at once on one repository: three branches, no cross-talk, `axctl ps`
//! right while they run and after.
//!
//! Slow under TCG (Claude Code's binary is ~380 MB); the tests take one lock so they run one
//! at a time whatever `--test-threads` says.

use ax_tests::llm::{anthropic, openai, Recorded, Server, Usage};
use ax_tests::{ensure_image, require_qemu, Env};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The real keys carry a marker that the guest-side probe searches for (split in the probe's
/// command line so the command itself never contains it).
const MARKER: &str = "REALKEYe2e";
const ANTHROPIC_KEY: &str =
    "sk-ant-api03-REALKEYe2e-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-abcdefAA";
const OPENAI_KEY: &str = "sk-proj-REALKEYe2e-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";

const README: &str = "# demo\n\nversion = 1\n";
const NOTES: &str = "Notes written by the scripted agent.\n";
const PROMPT: &str = "Create NOTES.md and bump the version in README.md";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

use ax_tests::git;

/// A git repository with README.md committed on `main`.
fn make_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), README).unwrap();
    git(&repo, &["add", "README.md"]);
    git(&repo, &["commit", "-q", "-m", "base"]);
    repo
}

fn toml_str(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// `--net-config`: `host` goes to the server on loopback, trusting its CA.
fn net_config(dir: &Path, host: &str, server: &Server) -> PathBuf {
    let p = dir.join("net.toml");
    std::fs::write(
        &p,
        format!(
            "[[route]]\nhost = \"{host}\"\naddress = \"127.0.0.1:{}\"\nca_pem = {}\n",
            server.addr.port(),
            toml_str(&server.ca_pem)
        ),
    )
    .unwrap();
    p
}

/// The probe the scripted model runs in the guest: the agent's environment, the placeholder
/// files, and every file or process environment holding the marker (there must be none).
fn probe_command() -> String {
    let (a, b) = MARKER.split_at(4);
    format!(
        "echo \"key=$ANTHROPIC_API_KEY\"; echo \"okey=$OPENAI_API_KEY\"; \
         echo hits:; grep -rlas \"{a}\"\"{b}\" /proc/[0-9]*/environ /root /workspace /tmp /etc 2>/dev/null; \
         echo end-hits; env | grep -c axph"
    )
}

/// The expected cost of `u` for `model` from netstack/prices.toml (exact name, else the
/// longest prefix), in micro-dollars, the way docs/ledger.md defines it.
fn price_micro_usd(model: &str, u: &Usage) -> i64 {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../netstack/prices.toml"
    ))
    .unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    let models = t["models"].as_table().unwrap();
    let key = models
        .keys()
        .filter(|k| model.starts_with(k.as_str()))
        .max_by_key(|k| k.len())
        .unwrap_or_else(|| panic!("{model} is not in the price table"));
    let p = &models[key];
    let f = |k: &str| {
        p[k].as_float()
            .or(p[k].as_integer().map(|i| i as f64))
            .unwrap()
    };
    (u.input as f64 * f("input")
        + u.output as f64 * f("output")
        + u.cache_read as f64 * f("cache_read")
        + u.cache_write as f64 * f("cache_write"))
    .round() as i64
}

/// Checks `axctl cost --agent NAME --json` against what the server answered. Every request
/// to the API endpoint is a ledger row (Codex's refused WebSocket upgrades too: no usage,
/// no model, so unpriced; on an accepted WebSocket, each message), the answered ones with
/// the scripted usage. `openai`: the
/// provider's input count includes cached tokens, the ledger's does not.
fn check_ledger(env: &Env, name: &str, reqs: &[Recorded], openai: bool) {
    let endpoint: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| r.path() == "/v1/messages" || r.path() == "/v1/responses")
        // An accepted WebSocket upgrade is no call; each message on it is.
        .filter(|r| r.status != 101)
        .collect();
    let unanswered = endpoint.iter().filter(|r| r.usage.is_none()).count() as u64;
    let metered: Vec<(&Recorded, Usage)> = reqs
        .iter()
        .filter_map(|r| {
            r.usage.map(|mut u| {
                if openai {
                    u.input -= u.cache_read;
                }
                (r, u)
            })
        })
        .collect();
    let sum = |f: fn(&Usage) -> u64| metered.iter().map(|(_, u)| f(u)).sum::<u64>();
    let cost: i64 = metered
        .iter()
        .map(|(r, u)| price_micro_usd(r.model.as_deref().unwrap(), u))
        .sum();
    let o = env.run(&["cost", "--agent", name, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &v["total"];
    assert_eq!(t["calls"], endpoint.len() as u64, "{v}");
    assert_eq!(t["input_tokens"], sum(|u| u.input), "{v}");
    assert_eq!(t["output_tokens"], sum(|u| u.output), "{v}");
    assert_eq!(t["cache_read_tokens"], sum(|u| u.cache_read), "{v}");
    assert_eq!(t["cache_write_tokens"], sum(|u| u.cache_write), "{v}");
    assert_eq!(t["unpriced_calls"], unanswered, "{v}");
    assert_eq!(t["cost_micro_usd"], cost, "{v}");
    assert!(cost > 0);
    // inspect shows the same totals.
    let i = env.inspect(name);
    assert_eq!(i["usage"]["calls"], endpoint.len() as u64, "{i}");
    assert_eq!(i["usage"]["input_tokens"], sum(|u| u.input), "{i}");
    assert_eq!(i["usage"]["cost_micro_usd"], cost, "{i}");
}

/// Branch ax/NAME against main: exactly NOTES.md added and README.md changed, as scripted.
fn check_branch(repo: &Path, name: &str) {
    let branch = format!("ax/{name}");
    let diff = git(repo, &["diff", "--name-status", "main", &branch]);
    assert_eq!(diff, "A\tNOTES.md\nM\tREADME.md\n", "{branch} vs main");
    assert_eq!(git(repo, &["show", &format!("{branch}:NOTES.md")]), NOTES);
    assert_eq!(
        git(repo, &["show", &format!("{branch}:README.md")]),
        README.replace("version = 1", "version = 2")
    );
    // The host work tree is untouched.
    assert_eq!(git(repo, &["status", "--porcelain"]), "");
    assert_eq!(ax_tests::read(&repo.join("README.md")), README);
}

/// No file of the agent's state directory holds `needle` (output, logs, upper layer, …).
fn state_files_without(dir: &Path, needle: &str) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && e.metadata().unwrap().len() < 64 << 20 {
                let b = std::fs::read(&p).unwrap_or_default();
                assert!(
                    !b.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{} holds the real key",
                    p.display()
                );
            }
        }
    }
}

/// Runs `axctl run --agent AGENT --wait` in `repo`; returns (exit code, stdout, stderr).
fn run_agent(
    env: &Env,
    repo: &Path,
    agent: &str,
    name: &str,
    cfg: &Path,
    key: Option<(&str, &str)>,
) -> (i32, String, String) {
    let mut c = env.axctl();
    c.current_dir(repo).args([
        "run",
        "--agent",
        agent,
        "--name",
        name,
        "--memory",
        "2048",
        "--cpus",
        "2",
        "--timeout",
        "15m",
        "--net-config",
        cfg.to_str().unwrap(),
        "--wait",
        "--prompt",
        PROMPT,
    ]);
    if let Some((k, v)) = key {
        c.env(k, v);
    }
    let t = Instant::now();
    let o = c.output().unwrap();
    eprintln!("{agent} run took {:.1} s", t.elapsed().as_secs_f64());
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn dump(env: &Env, name: &str, server: &Server) {
    env.dump(name);
    eprintln!(
        "==== netstack.log\n{}",
        ax_tests::read(&env.agent_dir(name).join("netstack.log"))
    );
    eprintln!("==== requests\n{}", server.summary());
}

/// What the probe saw in the guest: (placeholder of `var`, marker hits, placeholders in env).
fn parse_probe(out: &str, var: &str) -> (String, String, String) {
    let ph = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("no {var}= in the probe output:\n{out}"))
        .to_string();
    let hits = out
        .split("hits:")
        .nth(1)
        .and_then(|r| r.split("end-hits").next())
        .unwrap_or_else(|| panic!("no hits section:\n{out}"))
        .trim()
        .to_string();
    let count = out.rsplit("end-hits").next().unwrap().trim().to_string();
    (ph, hits, count)
}

#[test]
fn claude_code_in_the_guest_writes_and_edits_through_the_netstack() {
    if !require_qemu() {
        return;
    }
    let _g = serial();
    ensure_image();
    let env = Env::new();
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let server = Server::start(
        anthropic::ClaudeScript::write_then_edit(
            "/workspace",
            "NOTES.md",
            NOTES,
            "README.md",
            "version = 1",
            "version = 2",
        )
        .with_probe(&probe_command()),
    );
    let cfg = net_config(tmp.path(), "api.anthropic.com", &server);
    // The key comes from axctl's environment (the well-known name's fallback).
    let (code, out, err) = run_agent(
        &env,
        &repo,
        "claude",
        "c1",
        &cfg,
        Some(("ANTHROPIC_API_KEY", ANTHROPIC_KEY)),
    );
    eprintln!("==== claude output\n{out}\n==== stderr\n{err}");
    if code != 0 {
        dump(&env, "c1", &server);
    }
    assert_eq!(code, 0, "claude failed: {err}");
    assert!(
        out.contains("Created NOTES.md and updated README.md."),
        "{out}"
    );
    assert!(!out.contains(MARKER) && !err.contains(MARKER));

    let reqs = server.requests();
    let steps: Vec<usize> = reqs.iter().filter_map(|r| r.step).collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4], "{}", server.summary());
    for r in &reqs {
        assert_eq!(
            r.header("x-api-key"),
            Some(ANTHROPIC_KEY),
            "{} {}",
            r.method,
            r.target
        );
        let text = format!("{:?}", r.headers);
        assert!(
            !text.contains("axph"),
            "a placeholder reached the server: {text}"
        );
    }
    // The probe's output, as the provider received it.
    let last = reqs.iter().find(|r| r.step == Some(4)).unwrap().json();
    let probe = anthropic::ClaudeScript::tool_result(&last, 3).expect("probe result");
    let (ph, hits, count) = parse_probe(&probe, "key");
    assert!(ph.starts_with("sk-ant-api03-axph"), "placeholder: {probe}");
    assert_eq!(hits, "", "the real key is in the guest:\n{probe}");
    assert_ne!(count, "0", "{probe}");
    state_files_without(&env.agent_dir("c1"), MARKER);

    check_branch(&repo, "c1");
    check_ledger(&env, "c1", &reqs, false);
}

#[test]
fn codex_in_the_guest_writes_and_edits_through_the_netstack() {
    codex_e2e(false);
}

/// The server offers the Responses WebSocket, which the pinned Codex prefers whenever the
/// upgrade is accepted (the real API accepts it). ax-netstack refuses WebSocket upgrades to LLM
/// APIs (they would pass unmetered), Codex falls back to HTTPS + SSE, and every call is metered.
#[test]
fn codex_offered_the_responses_websocket_is_still_metered() {
    codex_e2e(true);
}

fn codex_e2e(websocket: bool) {
    if !require_qemu() {
        return;
    }
    let _g = serial();
    ensure_image();
    let env = Env::new();
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let mut script = openai::CodexScript::write_then_edit(
        "NOTES.md",
        NOTES,
        "README.md",
        "version = 1",
        "version = 2",
    )
    .with_probe(&probe_command());
    script.websocket = websocket;
    let server = Server::start(script);
    let cfg = net_config(tmp.path(), "api.openai.com", &server);
    // The key is a stored secret (value on stdin).
    let mut add = env
        .axctl()
        .args(["secrets", "add", "OPENAI_API_KEY"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        add.stdin
            .take()
            .unwrap()
            .write_all(OPENAI_KEY.as_bytes())
            .unwrap();
    }
    assert!(add.wait().unwrap().success());
    let (code, out, err) = run_agent(&env, &repo, "codex", "x1", &cfg, None);
    eprintln!("==== codex output\n{out}\n==== stderr\n{err}");
    if code != 0 {
        dump(&env, "x1", &server);
    }
    assert_eq!(code, 0, "codex failed: {err}");
    assert!(
        out.contains("Created NOTES.md and updated README.md."),
        "{out}"
    );
    assert!(!out.contains(MARKER) && !err.contains(MARKER));

    let reqs = server.requests();
    let steps: Vec<usize> = reqs.iter().filter_map(|r| r.step).collect();
    assert_eq!(steps, vec![0, 1, 2, 3], "{}", server.summary());
    let bearer = format!("Bearer {OPENAI_KEY}");
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(bearer.as_str()),
            "{} {}",
            r.method,
            r.target
        );
        let text = format!("{:?}", r.headers);
        assert!(
            !text.contains("axph"),
            "a placeholder reached the server: {text}"
        );
    }
    let last = reqs.iter().find(|r| r.step == Some(3)).unwrap().json();
    let probe = openai::CodexScript::tool_output(&last, 2).expect("probe output");
    let (ph, hits, count) = parse_probe(&probe, "okey");
    assert!(ph.starts_with("sk-proj-axph"), "placeholder: {probe}");
    assert_eq!(hits, "", "the real key is in the guest:\n{probe}");
    assert_ne!(count, "0", "{probe}");
    state_files_without(&env.agent_dir("x1"), MARKER);

    check_branch(&repo, "x1");
    check_ledger(&env, "x1", &reqs, true);
}

fn ps(env: &Env, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["ps", "--json"];
    if all {
        args.push("--all");
    }
    let o = env.run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn three_agents_at_once_on_one_repository() {
    if !require_qemu() {
        return;
    }
    let _g = serial();
    ensure_image();
    let env = Env::new();
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path());
    let names = ["p1", "p2", "p3"];
    for n in names {
        // Each writes its own file and edits README.md its own way, then waits for the test
        // to release it (so all three are running at the same time).
        let script = format!(
            "echo {n} > {n}.txt && sed -i 's/version = 1/version = {n}/' README.md && \
             while [ ! -e /tmp/go ]; do sleep 0.2; done; cat README.md"
        );
        let o = env
            .axctl()
            .current_dir(&repo)
            .args(["run", "--agent", "shell", "--name", n, "--prompt", &script])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{n}\n"));
    }
    // While they start and run: ps lists exactly these three, never anything else, each
    // starting or running; until all three run.
    let end = Instant::now() + Duration::from_secs(600);
    loop {
        let live = ps(&env, false);
        let mut seen: Vec<&str> = live.iter().map(|s| s["name"].as_str().unwrap()).collect();
        seen.sort();
        assert_eq!(seen, names, "{live:?}");
        for s in &live {
            assert!(s["status"] == "starting" || s["status"] == "running", "{s}");
            assert_eq!(s["agent"], "shell");
        }
        if live.iter().all(|s| s["status"] == "running") {
            break;
        }
        assert!(Instant::now() < end, "not all running: {live:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Their VMs are distinct processes.
    let live = ps(&env, false);
    let mut pids: Vec<i64> = live
        .iter()
        .map(|s| s["vmm_pid"].as_i64().unwrap())
        .collect();
    pids.dedup();
    assert_eq!(pids.len(), 3);
    for n in names {
        let o = env.run(&["exec", n, "-T", "--", "touch", "/tmp/go"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for n in names {
        let st = env.wait_for(n, Duration::from_secs(300), |v| {
            v["status"] != "running" && v["status"] != "starting" && v["branch"].is_object()
        });
        assert_eq!(st["status"], "exited", "{st}");
        assert_eq!(st["exit_code"], 0, "{st}");
    }
    assert!(ps(&env, false).is_empty(), "nothing live after they exited");
    let all = ps(&env, true);
    assert_eq!(all.len(), 3, "{all:?}");
    for n in names {
        let out = ax_tests::read(&env.agent_dir(n).join("output.log"));
        assert!(out.contains(&format!("version = {n}")), "{n}: {out}");
        let branch = format!("ax/{n}");
        let diff = git(&repo, &["diff", "--name-status", "main", &branch]);
        assert_eq!(diff, format!("M\tREADME.md\nA\t{n}.txt\n"), "{branch}");
        assert_eq!(
            git(&repo, &["show", &format!("{branch}:{n}.txt")]),
            format!("{n}\n")
        );
        assert_eq!(
            git(&repo, &["show", &format!("{branch}:README.md")]),
            README.replace("version = 1", &format!("version = {n}"))
        );
    }
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
}

#[test]
fn a_missing_key_stops_the_run_before_anything_starts() {
    let env = Env::new();
    let o = env
        .axctl()
        .env_remove("ANTHROPIC_API_KEY")
        .args(["run", "--agent", "claude", "--no-repo", "--prompt", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("secret ANTHROPIC_API_KEY is not stored")
            && err.contains("axctl secrets add ANTHROPIC_API_KEY --host api.anthropic.com"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    let agents = env.state.path().join("ax/agents");
    assert!(
        !agents.exists() || std::fs::read_dir(&agents).unwrap().next().is_none(),
        "no agent left behind"
    );
}
