//! `axctl cost` and `axctl audit` on a ledger written by the real netstack `Meter` and `Audit`
//! (the same code path the intercepting proxy uses), read through the real `axctl` binary.

use ax_netstack::config::Config;
use ax_netstack::meter::{Audit, ConnRecord, Meter, Outcome, RequestRecord};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn axctl(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_axctl"))
        .args(args)
        .env("XDG_STATE_HOME", state)
        .env("XDG_CONFIG_HOME", state.join("config"))
        .env("XDG_CACHE_HOME", state.join("cache"))
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "axctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// An Anthropic non-streaming call: `input` uncached input and `output` tokens of `model`.
fn call(meter: &Meter, model: &str, input: u64, output: u64) {
    let p = meter
        .provider_for("api.anthropic.com", "/v1/messages")
        .unwrap();
    let parts = http::Request::builder()
        .method("POST")
        .uri("https://api.anthropic.com/v1/messages")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut m = meter.begin(p, &parts);
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    m.response_head(http::StatusCode::OK, &h);
    let body = format!(
        r#"{{"model":"{model}","usage":{{"input_tokens":{input},"output_tokens":{output},"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}}}"#
    );
    // Split in two to go through the incremental path.
    let (a, b) = body.as_bytes().split_at(body.len() / 2);
    m.body_chunk(a);
    m.body_chunk(b);
    m.finish(Outcome::Complete);
}

fn write_ledger(state: &Path) {
    let ledger = state.join("ax/ledger.sqlite");
    for agent in ["a1", "a2"] {
        let cfg = Config::parse(
            &format!(
                "agent = {agent:?}\n[meter]\nledger = {:?}\n",
                ledger.display().to_string()
            ),
            "t",
        )
        .unwrap();
        let meter = Meter::open(&cfg).unwrap();
        if agent == "a1" {
            // sonnet-4-5: 1000×3 + 2000×15 = 33000 µ$; haiku-4-5: 1000×1 + 1000×5 = 6000 µ$
            call(&meter, "claude-sonnet-4-5-20250929", 1000, 2000);
            call(&meter, "claude-haiku-4-5", 1000, 1000);
        } else {
            // haiku: 2000×1 + 4000×5 = 22000 µ$; unknown model: unpriced
            call(&meter, "claude-haiku-4-5-20251001", 2000, 4000);
            call(&meter, "my-own-model", 10, 10);
        }
        let audit = Audit::open(&cfg).unwrap();
        audit.connection(ConnRecord {
            flow_id: 1,
            host: Some("api.anthropic.com".into()),
            ip: "198.18.0.1".parse().unwrap(),
            port: 443,
            decision: "intercept",
            reason: None,
            bytes_up: 500,
            bytes_down: 900,
        });
        audit.connection(ConnRecord {
            flow_id: 2,
            host: None,
            ip: "169.254.169.254".parse().unwrap(),
            port: 80,
            decision: "deny",
            reason: Some("link-local address".into()),
            bytes_up: 0,
            bytes_down: 0,
        });
        audit.request(RequestRecord {
            flow_id: 1,
            host: "api.anthropic.com".into(),
            method: "POST".into(),
            path: "/v1/messages?beta=true".into(),
            status: 200,
            bytes_up: 300,
            bytes_down: 800,
            blocked: None,
        });
    }
}

#[test]
fn cost_tables_and_json_from_a_meter_written_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    write_ledger(state);

    let out = stdout(&axctl(state, &["cost"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[0]),
        [
            "AGENT",
            "CALLS",
            "INPUT",
            "OUTPUT",
            "CACHE_READ",
            "CACHE_WRITE",
            "COST"
        ]
    );
    assert_eq!(
        cols(lines[1]),
        ["a1", "2", "2000", "3000", "0", "0", "$0.0390"]
    );
    // a2 has an unpriced call: marked with *.
    assert_eq!(
        cols(lines[2]),
        ["a2", "*", "2", "2010", "4010", "0", "0", "$0.0229"]
    );
    assert_eq!(
        cols(lines[3]),
        ["TOTAL", "*", "4", "4010", "7010", "0", "0", "$0.0619"]
    );

    let v: Value =
        serde_json::from_str(&stdout(&axctl(state, &["cost", "--by", "model", "--json"]))).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["by"], "model");
    let groups: Vec<(String, i64, u64)> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_string(),
                g["cost_micro_usd"].as_i64().unwrap(),
                g["calls"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("claude-haiku-4-5".to_string(), 6000, 1),
            ("claude-haiku-4-5-20251001".to_string(), 22000, 1),
            ("claude-sonnet-4-5-20250929".to_string(), 33000, 1),
            ("my-own-model".to_string(), 900, 1),
        ]
    );
    assert_eq!(v["total"]["cost_micro_usd"], 61900);
    assert_eq!(v["total"]["cost_usd"], 0.0619);
    assert_eq!(v["total"]["unpriced_calls"], 1);
    assert_eq!(v["total"]["output_tokens"], 7010);

    let v: Value = serde_json::from_str(&stdout(&axctl(
        state,
        &[
            "cost", "--agent", "a2", "--since", "1h", "--by", "day", "--json",
        ],
    )))
    .unwrap();
    let g = v["groups"].as_array().unwrap();
    assert!(!g.is_empty() && g.len() <= 2, "{v}"); // a run across UTC midnight gives 2 days
    for day in g {
        let k = day["key"].as_str().unwrap();
        assert!(
            k.len() == 10 && k.as_bytes()[4] == b'-' && k.as_bytes()[7] == b'-',
            "{k}"
        );
    }
    assert_eq!(v["total"]["calls"], 2);
    assert_eq!(v["total"]["cost_micro_usd"], 22900);

    let bad = axctl(state, &["cost", "--since", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("axctl: --since"));
}

#[test]
fn audit_shows_connections_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    write_ledger(state);

    let v: Value =
        serde_json::from_str(&stdout(&axctl(state, &["audit", "a1", "--json"]))).unwrap();
    assert_eq!(v["agent"], "a1");
    let conns = v["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[1]["decision"], "deny");
    assert_eq!(conns[1]["ip"], "169.254.169.254");
    assert_eq!(conns[1]["reason"], "link-local address");
    let reqs = v["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["path"], "/v1/messages");
    assert_eq!(reqs[0]["status"], 200);

    let out = stdout(&axctl(state, &["audit", "a1", "--requests"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("TIME"));
    assert!(
        lines[1].contains("POST") && lines[1].contains("/v1/messages   200"),
        "{out}"
    );
    assert!(!out.contains('?'));

    let out = stdout(&axctl(state, &["audit", "a2"]));
    assert!(
        out.starts_with("CONNECTIONS\n") && out.contains("\nREQUESTS\n"),
        "{out}"
    );
    assert!(out.contains("169.254.169.254:80"), "{out}");

    let v: Value = serde_json::from_str(&stdout(&axctl(
        state,
        &["audit", "a2", "--connections", "--json"],
    )))
    .unwrap();
    assert!(v.get("requests").is_none());
    assert_eq!(v["connections"].as_array().unwrap().len(), 2);

    let unknown = axctl(state, &["audit", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("axctl ps --all"));
}

#[test]
fn cost_without_a_ledger_is_an_empty_table() {
    let dir = tempfile::tempdir().unwrap();
    let o = axctl(dir.path(), &["cost"]);
    let out = stdout(&o);
    assert_eq!(
        out.lines()
            .last()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["TOTAL", "0", "0", "0", "0", "0", "$0.0000"]
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("no ledger"));
}
