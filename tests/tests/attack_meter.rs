//! Attack on fail-closed metering from inside a real guest (QEMU, the real image): the agent
//! holds only placeholders for the provider keys and uses them, with curl, on endpoints that
//! would spend money without a meter, and with a Host header that is not the provider's.
//! ax-netstack (the real one, TLS intercepted with the agent CA) routes `api.anthropic.com` and
//! `api.openai.com` to a scripted provider on the host's loopback (`ax_tests::llm::Server`,
//! which records every request it gets). docs/metering.md is the contract:
//!
//! 1. `POST /v1/messages/batches` (Anthropic) and `POST /v1/completions` (OpenAI) with the
//!    placeholder key: 403 naming the method, path and host; the provider never receives
//!    them; the guest never sees the real key.
//! 2. The Anthropic key sent to the provider's address with `Host: other.example` (and with
//!    `Host: api.openai.com`): 403; the provider never sees a request with a foreign Host.
//! 3. A normal `POST /v1/messages` still works, reaches the provider with the real key, and is
//!    metered: `axctl cost` has exactly one call with the scripted tokens, priced from
//!    netstack/prices.toml.
//!
//! Why this fails without the route table / Host check: the scripted provider answers *every*
//! request with 200 and records it. Were the table bypassed (every path with a substituted key
//! forwarded), the batches and completions requests would reach it with the real key: curl
//! would print status 200 instead of 403, and `server.requests()` would hold those paths —
//! both asserted below. Were the Host check missing, the request with `Host: other.example`
//! would be recorded by the server with the real key and answered 200.

use ax_tests::llm::{Recorded, Reply, Script, Server, Usage};
use ax_tests::{ensure_image, require_qemu, Env};

const REAL_ANTHROPIC: &str =
    "sk-ant-api03-REALKEYmeter-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01-abcdAA";
const REAL_OPENAI: &str = "sk-proj-REALKEYmeter-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";
const MODEL: &str = "claude-sonnet-4-5";
/// What the scripted provider answers to `POST /v1/messages`.
const USAGE: Usage = Usage {
    input: 1100,
    output: 700,
    cache_read: 0,
    cache_write: 0,
};

/// A provider that answers everything with 200: a Messages answer with [`USAGE`] on
/// `POST /v1/messages`, `{"ok": true}` elsewhere (so any request that slipped past the
/// netstack would succeed, and be recorded).
struct Provider;

impl Script for Provider {
    fn reply(&self, req: &Recorded) -> Reply {
        if req.method == "POST" && req.path() == "/v1/messages" {
            let mut r = Reply::json(
                200,
                &serde_json::json!({
                    "id": "msg_meter_e2e",
                    "type": "message",
                    "role": "assistant",
                    "model": MODEL,
                    "content": [{"type": "text", "text": "metered hello"}],
                    "stop_reason": "end_turn",
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": USAGE.input,
                        "output_tokens": USAGE.output,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0
                    }
                }),
            );
            r.usage = Some(USAGE);
            r.model = Some(MODEL.into());
            r
        } else {
            Reply::json(200, &serde_json::json!({"ok": true, "path": req.path()}))
        }
    }
}

fn toml_str(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// `--net-config`: both provider hosts go to `server` (trusting its CA); the two keys, each
/// for its own host.
fn net_config(server: &Server) -> String {
    let (p, ca) = (server.addr.port(), toml_str(&server.ca_pem));
    format!(
        r#"
[[route]]
host = "api.anthropic.com"
address = "127.0.0.1:{p}"
ca_pem = {ca}

[[route]]
host = "api.openai.com"
address = "127.0.0.1:{p}"
ca_pem = {ca}

[[secret]]
name = "ANTHROPIC_API_KEY"
value = "{REAL_ANTHROPIC}"
hosts = ["api.anthropic.com"]

[[secret]]
name = "OPENAI_API_KEY"
value = "{REAL_OPENAI}"
hosts = ["api.openai.com"]
"#
    )
}

/// The text between `== name` and the next `== ` marker of the guest script's output.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("== {name}\n"))
        .unwrap_or_else(|| panic!("no section {name} in output:\n{out}"));
    let rest = &out[start + name.len() + 4..];
    &rest[..rest.find("\n== ").map_or(rest.len(), |i| i + 1)]
}

/// The `status=NNN` curl printed in section `name`.
fn status(out: &str, name: &str) -> String {
    let s = section(out, name);
    s.lines()
        .find_map(|l| l.strip_prefix("status="))
        .unwrap_or_else(|| panic!("no status in section {name}:\n{s}"))
        .to_string()
}

/// µ$ of [`USAGE`] for [`MODEL`] from the shipped price table (docs/ledger.md: tokens × $ per
/// 1e6 tokens = µ$).
fn expected_cost() -> i64 {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../netstack/prices.toml"
    ))
    .unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    let p = &t["models"][MODEL];
    let f = |k: &str| {
        p[k].as_float()
            .or(p[k].as_integer().map(|i| i as f64))
            .unwrap()
    };
    (USAGE.input as f64 * f("input") + USAGE.output as f64 * f("output")).round() as i64
}

#[test]
fn guest_cannot_spend_the_key_on_unmetered_paths_or_foreign_hosts() {
    if !require_qemu() {
        return;
    }
    ensure_image();
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Provider);
    let cfg = dir.path().join("net.toml");
    std::fs::write(&cfg, net_config(&server)).unwrap();

    // Each attack prints curl's body and `status=NNN`.
    let w = r#"-w '\nstatus=%{http_code}\n'"#;
    let ant = r#"-H "x-api-key: $ANTHROPIC_API_KEY" -H "anthropic-version: 2023-06-01" -H "content-type: application/json""#;
    let oai = r#"-H "Authorization: Bearer $OPENAI_API_KEY" -H "content-type: application/json""#;
    let msg = r#"'{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'"#;
    let script = format!(
        r#"
echo "== keys"; echo "ant=$ANTHROPIC_API_KEY"; echo "oai=$OPENAI_API_KEY"
echo "== batches"
curl -sS -m 60 {w} https://api.anthropic.com/v1/messages/batches {ant} \
  -d '{{"requests":[{{"custom_id":"a","params":{{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}}}]}}'
echo "== completions"
curl -sS -m 60 {w} https://api.openai.com/v1/completions {oai} \
  -d '{{"model":"gpt-3.5-turbo-instruct","prompt":"hi","max_tokens":16}}'
echo "== host-other"
curl -sS -m 60 {w} https://api.anthropic.com/v1/messages -H "Host: other.example" {ant} -d {msg}
echo "== host-openai"
curl -sS -m 60 {w} https://api.anthropic.com/v1/messages -H "Host: api.openai.com" {ant} -d {msg}
echo "== messages"
curl -sS -m 60 {w} https://api.anthropic.com/v1/messages {ant} -d {msg}
echo "== end"
"#
    );
    let o = env.run(&[
        "run",
        "--name",
        "meter1",
        "--no-repo",
        "--net-config",
        cfg.to_str().unwrap(),
        "--wait",
        "--prompt",
        &script,
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("==== guest output\n{out}");
    eprintln!("==== requests the provider got\n{}", server.summary());
    if !o.status.success() {
        env.dump("meter1");
        eprintln!(
            "==== netstack.log\n{}",
            ax_tests::read(&env.agent_dir("meter1").join("netstack.log"))
        );
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The guest held placeholders and never saw the real keys.
    let keys = section(&out, "keys");
    for (var, real) in [("ant", REAL_ANTHROPIC), ("oai", REAL_OPENAI)] {
        let ph = keys
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap();
        assert!(!ph.is_empty() && ph != real, "{var} placeholder {ph:?}");
        assert!(!out.contains(real), "the guest saw the real key {var}");
    }

    // 1. Unmetered paths: 403 naming method, path and host.
    for (name, what) in [
        ("batches", "POST /v1/messages/batches on api.anthropic.com"),
        ("completions", "POST /v1/completions on api.openai.com"),
    ] {
        assert_eq!(status(&out, name), "403", "{name}:\n{out}");
        assert!(section(&out, name).contains(what), "{name}:\n{out}");
    }
    // 2. The key with a Host that is not the verified name: 403.
    for name in ["host-other", "host-openai"] {
        assert_eq!(status(&out, name), "403", "{name}:\n{out}");
        assert!(
            section(&out, name).contains("verified for api.anthropic.com"),
            "{name}:\n{out}"
        );
    }
    // 3. The normal call works.
    assert_eq!(status(&out, "messages"), "200", "messages:\n{out}");
    assert!(section(&out, "messages").contains("metered hello"), "{out}");

    // The provider got exactly the one metered call, with the real key and its own Host;
    // none of the refused requests (nor any other path, nor a placeholder) reached it.
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "{}", server.summary());
    let r = &reqs[0];
    assert_eq!((r.method.as_str(), r.path()), ("POST", "/v1/messages"));
    assert_eq!(r.header("x-api-key"), Some(REAL_ANTHROPIC));
    let host = r.header("host").unwrap_or_default().to_ascii_lowercase();
    assert!(host.starts_with("api.anthropic.com"), "Host {host}");
    for r in &reqs {
        let p = r.path();
        assert!(
            !p.contains("batches") && !p.contains("completions"),
            "{p} reached the provider"
        );
        assert!(
            !r.headers.iter().any(|(_, v)| v.contains("other.example")),
            "a request with Host other.example reached the provider"
        );
    }

    // Metered: one ledger row with the scripted tokens, priced from the shipped table.
    let o = env.run(&["cost", "--agent", "meter1", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &v["total"];
    assert_eq!(t["calls"], 1, "{v}");
    assert_eq!(t["input_tokens"], USAGE.input, "{v}");
    assert_eq!(t["output_tokens"], USAGE.output, "{v}");
    assert_eq!(t["unpriced_calls"], 0, "{v}");
    let cost = expected_cost();
    assert!(cost > 0);
    assert_eq!(t["cost_micro_usd"], cost, "{v}");

    // The refusals are in the audit log: blocked, 403, with the reason.
    let o = env.run(&["audit", "meter1", "--requests", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["requests"].as_array().expect("requests");
    let blocked = |path: &str| {
        rows.iter()
            .filter(|r| r["path"] == path && r["status"] == 403 && r["blocked"].is_string())
            .count()
    };
    assert_eq!(blocked("/v1/messages/batches"), 1, "{v}");
    assert_eq!(blocked("/v1/completions"), 1, "{v}");
    assert_eq!(
        blocked("/v1/messages"),
        2,
        "the two foreign-Host requests: {v}"
    );
}
