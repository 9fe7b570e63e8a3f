//! The scripted LLM providers (tests/src/llm) against the real, pinned agent CLIs on the host,
//! no VM: the Claude Code and Codex native binaries from the agents layer's npm tarballs run
//! in a temporary git repository with the built-in definitions' argv, environment and config
//! files (rendered by `Agent::launch` for a host home), pointed at the loopback server. Each
//! must complete the scripted tool-use conversation: create one file, edit another, finish.
//! This checks the scripts themselves; tests/tests/agents_e2e.rs runs the same conversations
//! in the guest through ax-netstack.
//!
//! Skips loudly when the tarballs are not cached (an image build caches them).

use ax_cli::agents::{self, Dirs, LaunchVars, Mode};
use ax_tests::llm::{anthropic, host, openai, Server};
use ax_tests::skip;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ANTHROPIC_KEY: &str =
    "sk-ant-api03-HOSTtestREALkey0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH";
const OPENAI_KEY: &str = "sk-proj-HOSTtestREALkey0123456789abcdefghijklmnopqrstuvwxyz";

pub const README: &str = "# demo\n\nversion = 1\n";
/// A shell command the scripted model runs (its output must come back in the tool result).
const PROBE: &str = "echo probe-$((6*7))";
pub const NOTES: &str = "Notes written by the scripted agent.\n";

use ax_tests::git;

/// A git repository with README.md committed.
fn make_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README.md"), README).unwrap();
    git(dir, &["add", "README.md"]);
    git(dir, &["commit", "-q", "-m", "base"]);
}

/// Renders built-in agent `name` for a host home/workspace, writes its files, and returns
/// (argv, env).
fn launch(
    name: &str,
    home: &Path,
    work: &Path,
    prompt: &str,
    secrets: &BTreeMap<String, String>,
) -> (Vec<String>, BTreeMap<String, String>) {
    let dirs = Dirs {
        repo: None,
        user: home.join("no-user-definitions"),
    };
    let agent = agents::load(&dirs, name).unwrap();
    let vars = LaunchVars {
        prompt: Some(prompt),
        name: "host",
        home: home.to_str().unwrap(),
        workspace: work.to_str().unwrap(),
        secrets,
    };
    let l = agent.launch(Mode::Batch, &vars).unwrap();
    for f in &l.files {
        let p = Path::new(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &f.contents).unwrap();
    }
    (l.argv, l.env)
}

/// Runs argv (argv[0] replaced by `bin`) in `work` with exactly `env` (+ PATH), up to
/// `limit`; returns (exit code, stdout, stderr).
fn run(
    bin: &Path,
    argv: &[String],
    work: &Path,
    env: &BTreeMap<String, String>,
    limit: Duration,
) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(bin)
        .args(&argv[1..])
        .current_dir(work)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + limit;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code().unwrap_or(-1);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (code, ax_tests::read(&out), ax_tests::read(&err))
}

fn check_repo(work: &Path) {
    assert_eq!(
        ax_tests::read(&work.join("NOTES.md")),
        NOTES,
        "NOTES.md written"
    );
    assert_eq!(
        ax_tests::read(&work.join("README.md")),
        README.replace("version = 1", "version = 2"),
        "README.md edited"
    );
    let status = git(work, &["status", "--porcelain"]);
    assert_eq!(
        status, " M README.md\n?? NOTES.md\n",
        "exactly those two changes"
    );
}

#[test]
fn claude_code_completes_the_scripted_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = match host::unpack_locked(
        "node_modules/@anthropic-ai/claude-code-linux-x64",
        "package/claude",
        tmp.path(),
    ) {
        Ok(b) => b,
        Err(why) => return skip("llm_host claude", &why),
    };
    let (home, work) = (tmp.path().join("home"), tmp.path().join("repo"));
    make_repo(&work);
    let w = work.to_str().unwrap();
    let server = Server::start(
        anthropic::ClaudeScript::write_then_edit(
            w,
            "NOTES.md",
            NOTES,
            "README.md",
            "version = 1",
            "version = 2",
        )
        .with_probe(PROBE),
    );
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let secrets = BTreeMap::from([("ANTHROPIC_API_KEY".to_string(), ANTHROPIC_KEY.to_string())]);
    let (argv, mut env) = launch(
        "claude",
        &home,
        &work,
        "Create NOTES.md and bump the version in README.md",
        &secrets,
    );
    env.insert("HOME".into(), home.display().to_string());
    env.insert("ANTHROPIC_BASE_URL".into(), server.url());
    env.insert("NODE_EXTRA_CA_CERTS".into(), ca.display().to_string());
    env.insert("SSL_CERT_FILE".into(), ca.display().to_string());
    let (code, out, err) = run(&bin, &argv, &work, &env, Duration::from_secs(180));
    eprintln!(
        "claude exit {code}\nstdout:\n{out}\nstderr:\n{err}\nrequests:\n{}",
        server.summary()
    );
    assert_eq!(code, 0, "claude failed");
    let reqs = server.requests();
    let steps: Vec<usize> = reqs.iter().filter_map(|r| r.step).collect();
    assert_eq!(
        steps,
        vec![0, 1, 2, 3, 4],
        "each scripted turn answered once, in order"
    );
    // `claude -p` streams (the SSE path of the script).
    assert!(reqs
        .iter()
        .filter(|r| r.step.is_some())
        .all(|r| r.json()["stream"] == true));
    for r in &reqs {
        assert_eq!(
            r.header("x-api-key"),
            Some(ANTHROPIC_KEY),
            "{} {}",
            r.method,
            r.target
        );
    }
    // The tool results went back to the model without errors.
    let last = reqs.iter().rfind(|r| r.step == Some(4)).unwrap().json();
    let probe = anthropic::ClaudeScript::tool_result(&last, 3).expect("probe result");
    assert!(probe.contains("probe-42"), "{probe}");
    let results: Vec<&serde_json::Value> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 4);
    for r in results {
        assert_ne!(r["is_error"], true, "tool failed: {r}");
    }
    assert!(
        out.contains("Created NOTES.md and updated README.md."),
        "{out}"
    );
    check_repo(&work);
}

/// Codex against the Responses server: over HTTPS + SSE (the server refuses the WebSocket,
/// Codex falls back) or over the WebSocket.
fn codex_conversation(websocket: bool) {
    let tmp = tempfile::tempdir().unwrap();
    // The CLI and its code-mode host (which runs the `exec` tool's JavaScript).
    let bin = match host::unpack_locked(
        "node_modules/@openai/codex-linux-x64",
        "package/vendor/x86_64-unknown-linux-musl/bin/",
        tmp.path(),
    ) {
        Ok(b) => b.join("codex"),
        Err(why) => return skip("llm_host codex", &why),
    };
    let (home, work) = (tmp.path().join("home"), tmp.path().join("repo"));
    make_repo(&work);
    let mut script = openai::CodexScript::write_then_edit(
        "NOTES.md",
        NOTES,
        "README.md",
        "version = 1",
        "version = 2",
    )
    .with_probe(PROBE);
    script.websocket = websocket;
    let server = Server::start(script);
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let secrets = BTreeMap::from([("OPENAI_API_KEY".to_string(), OPENAI_KEY.to_string())]);
    let (argv, mut env) = launch(
        "codex",
        &home,
        &work,
        "Create NOTES.md and bump the version in README.md",
        &secrets,
    );
    env.insert("HOME".into(), home.display().to_string());
    // The guest reaches api.openai.com through a netstack route; here the provider's base
    // URL points at the server (a config key of the pinned Codex).
    let cfg = home.join(".codex/config.toml");
    let text = ax_tests::read(&cfg);
    std::fs::write(
        &cfg,
        format!("openai_base_url = \"{}/v1\"\n{text}", server.url()),
    )
    .unwrap();
    env.insert("CODEX_CA_CERTIFICATE".into(), ca.display().to_string());
    env.insert("SSL_CERT_FILE".into(), ca.display().to_string());
    let (code, out, err) = run(&bin, &argv, &work, &env, Duration::from_secs(180));
    eprintln!(
        "codex exit {code}\nstdout:\n{out}\nstderr:\n{err}\nrequests:\n{}",
        server.summary()
    );
    assert_eq!(code, 0, "codex failed");
    let reqs = server.requests();
    // The transport the test asked for carried the conversation.
    let want = if websocket { "WS" } else { "POST" };
    assert!(
        reqs.iter()
            .filter(|r| r.step.is_some())
            .all(|r| r.method == want),
        "{}",
        server.summary()
    );
    let steps: Vec<usize> = reqs.iter().filter_map(|r| r.step).collect();
    assert_eq!(
        steps,
        vec![0, 1, 2, 3],
        "each scripted turn answered once, in order"
    );
    let last = reqs.iter().rfind(|r| r.step == Some(3)).unwrap().json();
    let probe = openai::CodexScript::tool_output(&last, 2).expect("probe output");
    assert!(probe.contains("probe-42"), "{probe}");
    for r in &reqs {
        assert_eq!(
            r.header("authorization").map(String::from),
            Some(format!("Bearer {OPENAI_KEY}")),
            "{} {}",
            r.method,
            r.target
        );
    }
    assert!(
        out.contains("Created NOTES.md and updated README.md."),
        "{out}"
    );
    check_repo(&work);
}

#[test]
fn codex_completes_the_scripted_conversation() {
    codex_conversation(false);
}

#[test]
fn codex_completes_the_scripted_conversation_over_the_websocket() {
    codex_conversation(true);
}
