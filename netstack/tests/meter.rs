//! Usage metering from recorded-format fixtures (tests/fixtures/meter, README there cites each
//! provider's documented format), fed through the public `Meter` / `CallMeter` API in random
//! chunk splits (deterministic seeds), priced from the shipped table, written to a real SQLite
//! ledger and read back; plus the spend cap.

use ax_netstack::config::Config;
use ax_netstack::meter::ledger::{Filter, Ledger};
use ax_netstack::meter::usage::{Parser, Usage};
use ax_netstack::meter::{Meter, Outcome, Provider};
use std::path::{Path, PathBuf};

/// splitmix64: a tiny deterministic PRNG for chunk splits.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `body` cut into random pieces: mostly small (1..=16 bytes, so events, CRLFs and UTF-8
/// characters are split), sometimes large.
fn splits(body: &[u8], seed: u64) -> Vec<&[u8]> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let n = if rng.next() % 4 == 0 {
            1 + (rng.next() % 512) as usize
        } else {
            1 + (rng.next() % 16) as usize
        };
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/meter")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Case {
    file: &'static str,
    host: &'static str,
    path: &'static str,
    content_type: &'static str,
    model: &'static str,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    cache_write_1h: u64,
    /// Worked out by hand from netstack/prices.toml (USD per 1e6 tokens = µ$ per token).
    cost_micro_usd: i64,
}

const CASES: &[Case] = &[
    // sonnet-4-5: 25×3 + 342×15 + 30000×0.30 + 1000×3.75 + 200×6 (1-hour writes)
    //   = 75 + 5130 + 9000 + 3750 + 1200
    Case {
        file: "anthropic_messages.sse",
        host: "api.anthropic.com",
        path: "/v1/messages",
        content_type: "text/event-stream; charset=utf-8",
        model: "claude-sonnet-4-5-20250929",
        input: 25,
        output: 342,
        cache_read: 30000,
        cache_write: 1200,
        cache_write_1h: 200,
        cost_micro_usd: 19155,
    },
    // haiku-4-5: 2095×1 + 503×5 + 500×0.10 = 2095 + 2515 + 50
    Case {
        file: "anthropic_messages.json",
        host: "api.anthropic.com",
        path: "/v1/messages",
        content_type: "application/json",
        model: "claude-haiku-4-5-20251001",
        input: 2095,
        output: 503,
        cache_read: 500,
        cache_write: 0,
        cache_write_1h: 0,
        cost_micro_usd: 4660,
    },
    // gpt-4.1: (3000−2048)×2 + 250×8 + 2048×0.50 = 1904 + 2000 + 1024
    Case {
        file: "openai_chat.sse",
        host: "api.openai.com",
        path: "/v1/chat/completions",
        content_type: "text/event-stream",
        model: "gpt-4.1-2025-04-14",
        input: 952,
        output: 250,
        cache_read: 2048,
        cache_write: 0,
        cache_write_1h: 0,
        cost_micro_usd: 4928,
    },
    // o4-mini: 19×1.10 + 1010×4.40 = 20.9 + 4444 = 4464.9
    Case {
        file: "openai_chat.json",
        host: "api.openai.com",
        path: "/v1/chat/completions",
        content_type: "application/json",
        model: "o4-mini-2025-04-16",
        input: 19,
        output: 1010,
        cache_read: 0,
        cache_write: 0,
        cache_write_1h: 0,
        cost_micro_usd: 4465,
    },
    // gpt-5-codex: (12000−8192)×1.25 + 900×10 + 8192×0.125 = 4760 + 9000 + 1024
    Case {
        file: "openai_responses.sse",
        host: "chatgpt.com",
        path: "/backend-api/codex/responses",
        content_type: "text/event-stream",
        model: "gpt-5-codex",
        input: 3808,
        output: 900,
        cache_read: 8192,
        cache_write: 0,
        cache_write_1h: 0,
        cost_micro_usd: 14784,
    },
    // gpt-5-mini: 200×0.25 + 52×2 + 128×0.025 = 50 + 104 + 3.2
    Case {
        file: "openai_responses.json",
        host: "api.openai.com",
        path: "/v1/responses",
        content_type: "application/json",
        model: "gpt-5-mini-2025-08-07",
        input: 200,
        output: 52,
        cache_read: 128,
        cache_write: 0,
        cache_write_1h: 0,
        cost_micro_usd: 157,
    },
    // gemini-2.5-flash: (9000−4000)×0.30 + (150+400)×2.50 + 4000×0.03 = 1500 + 1375 + 120
    Case {
        file: "gemini.sse",
        host: "generativelanguage.googleapis.com",
        path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        content_type: "text/event-stream",
        model: "gemini-2.5-flash",
        input: 5000,
        output: 550,
        cache_read: 4000,
        cache_write: 0,
        cache_write_1h: 0,
        cost_micro_usd: 2995,
    },
    // gemini-2.5-pro: 1500×1.25 + (300+1200)×10 = 1875 + 15000
    Case {
        file: "gemini.json",
        host: "generativelanguage.googleapis.com",
        path: "/v1beta/models/gemini-2.5-pro:generateContent",
        content_type: "application/json; charset=UTF-8",
        model: "gemini-2.5-pro",
        input: 1500,
        output: 1500,
        cache_read: 0,
        cache_write: 0,
        cache_write_1h: 0,
        cost_micro_usd: 16875,
    },
    // gemini-2.5-flash-lite: 700×0.10 + 40×0.40 = 70 + 16
    Case {
        file: "gemini_array.json",
        host: "generativelanguage.googleapis.com",
        path: "/v1beta/models/gemini-2.5-flash-lite:streamGenerateContent",
        content_type: "application/json",
        model: "gemini-2.5-flash-lite",
        input: 700,
        output: 40,
        cache_read: 0,
        cache_write: 0,
        cache_write_1h: 0,
        cost_micro_usd: 86,
    },
];

fn config(agent: &str, ledger: Option<&Path>, extra: &str) -> Config {
    let mut text = format!("agent = {agent:?}\n{extra}\n");
    if let Some(l) = ledger {
        text.push_str(&format!(
            "[meter]\nledger = {:?}\n",
            l.display().to_string()
        ));
    }
    Config::parse(&text, "test").unwrap()
}

fn parts(host: &str, path: &str) -> http::request::Parts {
    http::Request::builder()
        .method("POST")
        .uri(format!("https://{host}{path}"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn head(content_type: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
    h
}

/// One call through the public API, `body` in the given pieces.
fn call(meter: &Meter, c: &Case, pieces: &[&[u8]], outcome: Outcome) {
    let provider = meter.provider_for(c.host, c.path).expect(c.file);
    let mut m = meter.begin(provider, &parts(c.host, c.path));
    m.response_head(http::StatusCode::OK, &head(c.content_type));
    for p in pieces {
        m.body_chunk(p);
    }
    m.finish(outcome);
}

fn provider_of(c: &Case) -> Provider {
    Provider::detect(c.host, c.path).unwrap()
}

#[test]
fn every_fixture_in_random_splits_gives_the_documented_usage() {
    for c in CASES {
        let body = fixture(c.file);
        let sse = c.content_type.starts_with("text/event-stream");
        let want = Usage {
            model: Some(c.model.to_string()),
            input: c.input,
            output: c.output,
            cache_read: c.cache_read,
            cache_write: c.cache_write,
            cache_write_1h: c.cache_write_1h,
        };
        // Whole, byte by byte, then 300 random split patterns.
        let mut patterns: Vec<Vec<&[u8]>> = vec![vec![&body[..]], body.chunks(1).collect()];
        patterns.extend((0..300).map(|seed| splits(&body, seed)));
        for (i, pieces) in patterns.iter().enumerate() {
            let mut p = Parser::new(provider_of(c), sse);
            for piece in pieces {
                p.feed(piece);
            }
            let (got, note) = p.finish();
            assert_eq!(got, want, "{} pattern {i}", c.file);
            assert_eq!(note, None, "{} pattern {i}", c.file);
        }
    }
}

#[test]
fn ledger_rows_have_tokens_model_and_cost_from_the_price_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/ax/ledger.sqlite");
    let meter = Meter::open(&config("a1", Some(&db), "")).unwrap();
    for (seed, c) in CASES.iter().enumerate() {
        let body = fixture(c.file);
        call(&meter, c, &splits(&body, seed as u64), Outcome::Complete);
    }
    // Durable: read by another connection, while the Meter still has its own open.
    let reader = Ledger::open_read(&db).unwrap().expect("ledger exists");
    let rows = reader.calls(&Filter::default()).unwrap();
    assert_eq!(rows.len(), CASES.len());
    for (r, c) in rows.iter().zip(CASES) {
        assert_eq!(r.agent, "a1");
        assert_eq!(r.provider, provider_of(c).vendor(), "{}", c.file);
        assert_eq!(r.model, c.model, "{}", c.file);
        assert_eq!(
            (
                r.input_tokens,
                r.output_tokens,
                r.cache_read_tokens,
                r.cache_write_tokens
            ),
            (c.input, c.output, c.cache_read, c.cache_write),
            "{}",
            c.file
        );
        assert_eq!(r.cost_micro_usd, c.cost_micro_usd, "{}", c.file);
        assert!(r.priced);
        assert_eq!(r.status, 200);
        assert_eq!(r.outcome, "complete");
        assert!(!r.path.contains('?'), "query string stored: {}", r.path);
        assert!(r.first_byte_ms.is_some());
    }
    let total: i64 = CASES.iter().map(|c| c.cost_micro_usd).sum();
    assert_eq!(meter.totals().0, total);
}

#[test]
fn unknown_model_is_recorded_unpriced_and_request_model_is_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite");
    let meter = Meter::open(&config("a1", Some(&db), "")).unwrap();
    let p = meter
        .provider_for("api.openai.com", "/v1/chat/completions")
        .unwrap();
    let mut m = meter.begin(p, &parts("api.openai.com", "/v1/chat/completions"));
    m.response_head(http::StatusCode::OK, &head("application/json"));
    m.body_chunk(br#"{"model":"mystery-9","usage":{"prompt_tokens":10,"completion_tokens":5}}"#);
    m.finish(Outcome::Complete);
    // Gemini without modelVersion in the body: the model from the request path.
    let path = "/v1beta/models/gemini-2.5-pro:generateContent";
    let host = "generativelanguage.googleapis.com";
    let mut m = meter.begin(meter.provider_for(host, path).unwrap(), &parts(host, path));
    m.response_head(http::StatusCode::OK, &head("application/json"));
    m.body_chunk(br#"{"usageMetadata":{"promptTokenCount":1000,"candidatesTokenCount":100}}"#);
    m.finish(Outcome::Complete);
    let rows = Ledger::open_read(&db)
        .unwrap()
        .unwrap()
        .calls(&Filter::default())
        .unwrap();
    // Unknown model, `[meter] unknown_model` default "highest": OpenAI's highest prices
    // (o1-pro's $150 / $600 per 1e6): 10×150 + 5×600.
    assert_eq!(
        (
            rows[0].model.as_str(),
            rows[0].priced,
            rows[0].cost_micro_usd
        ),
        ("mystery-9", false, 4500)
    );
    assert_eq!((rows[0].input_tokens, rows[0].output_tokens), (10, 5));
    // 1000×1.25 + 100×10
    assert_eq!(
        (
            rows[1].model.as_str(),
            rows[1].priced,
            rows[1].cost_micro_usd
        ),
        ("gemini-2.5-pro", true, 2250)
    );
}

#[test]
fn unknown_model_zero_only_when_set_and_refuse_refuses_before_forwarding() {
    let zero = Meter::open(&config("z", None, "[meter]\nunknown_model = \"zero\"\n")).unwrap();
    let p = Provider::OpenAiChat;
    let mut m = zero.begin(p, &parts("api.openai.com", "/v1/chat/completions"));
    m.response_head(http::StatusCode::OK, &head("application/json"));
    m.body_chunk(br#"{"model":"mystery-9","usage":{"prompt_tokens":10,"completion_tokens":5}}"#);
    m.finish(Outcome::Complete);
    assert_eq!(zero.totals(), (0, 15));
    let refuse = Meter::open(&config("r", None, "[meter]\nunknown_model = \"refuse\"\n")).unwrap();
    let e = refuse.reserve(p, Some("mystery-9"), 100, 100).unwrap_err();
    assert!(
        matches!(&e, ax_netstack::meter::Refused::UnknownModel(t) if t.contains("mystery-9")),
        "{e:?}"
    );
    assert!(refuse.reserve(p, Some("gpt-4.1"), 100, 100).is_ok());
    assert!(Config::parse("agent = \"x\"\n[meter]\nunknown_model = \"free\"\n", "t").is_err());
}

#[test]
fn reservations_hold_the_cap_for_calls_in_flight_and_are_released() {
    // claude-sonnet-4-5: input-side max 6.0 (1-hour cache writes), output 15.0:
    // 1000 bytes × 6 + 1000 × 15 = 21000 µ$ per reservation.
    let meter = Meter::open(&config("res", None, "[limits]\nmax_usd = 0.04\n")).unwrap();
    let p = Provider::AnthropicMessages;
    let r1 = meter
        .reserve(p, Some("claude-sonnet-4-5"), 1000, 1000)
        .unwrap();
    assert_eq!(r1.micro_usd, 21000);
    let r2 = meter
        .reserve(p, Some("claude-sonnet-4-5"), 1000, 1000)
        .unwrap();
    // 42000 reserved ≥ the $0.04 cap: a third call waits for the others to settle.
    let e = match meter.reserve(p, Some("claude-sonnet-4-5"), 1000, 1000) {
        Err(ax_netstack::meter::Refused::Cap(e)) => e,
        other => panic!("{other:?}"),
    };
    assert!(
        e.to_string().contains("$0.04 reserved by calls in flight"),
        "{e}"
    );
    // Settling a call releases its reservation (the real cost is what counts).
    let body = fixture(CASES[1].file); // haiku-4-5, 4660 µ$
    for r in [r1, r2] {
        let mut m = meter.begin(p, &parts("api.anthropic.com", "/v1/messages"));
        m.hold(r);
        m.response_head(http::StatusCode::OK, &head("application/json"));
        m.body_chunk(&body);
        m.finish(Outcome::Complete);
    }
    assert_eq!(meter.totals().0, 2 * 4660);
    assert!(meter.check_cap().is_ok());
    assert!(meter
        .reserve(p, Some("claude-sonnet-4-5"), 1000, 1000)
        .is_ok());
}

#[test]
fn aborted_stream_records_usage_seen_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite");
    let meter = Meter::open(&config("a1", Some(&db), "")).unwrap();
    let c = &CASES[0];
    let body = fixture(c.file);
    // Cut right after the first message_delta (output_tokens 120).
    let cut = std::str::from_utf8(&body)
        .unwrap()
        .find("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1")
        .unwrap();
    call(
        &meter,
        c,
        &splits(&body[..cut], 7),
        Outcome::Aborted("guest closed the connection".into()),
    );
    let rows = Ledger::open_read(&db)
        .unwrap()
        .unwrap()
        .calls(&Filter::default())
        .unwrap();
    let r = &rows[0];
    assert_eq!(
        (
            r.input_tokens,
            r.output_tokens,
            r.cache_read_tokens,
            r.cache_write_tokens
        ),
        (25, 120, 30000, 1200)
    );
    assert_eq!(r.outcome, "aborted: guest closed the connection");
    // 75 + 1800 + 9000 + 3750 + 1200
    assert_eq!(r.cost_micro_usd, 15825);
}

#[test]
fn error_responses_and_missing_usage_are_recorded_with_zero_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite");
    let meter = Meter::open(&config("a1", Some(&db), "")).unwrap();
    let p = meter
        .provider_for("api.anthropic.com", "/v1/messages")
        .unwrap();
    let mut m = meter.begin(p, &parts("api.anthropic.com", "/v1/messages"));
    m.response_head(
        http::StatusCode::TOO_MANY_REQUESTS,
        &head("application/json"),
    );
    m.body_chunk(br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#);
    m.finish(Outcome::Complete);
    // Chat Completions stream without include_usage: no usage, noted in the outcome.
    let p = meter
        .provider_for("api.openai.com", "/v1/chat/completions")
        .unwrap();
    let mut m = meter.begin(p, &parts("api.openai.com", "/v1/chat/completions"));
    m.response_head(http::StatusCode::OK, &head("text/event-stream"));
    m.body_chunk(b"data: {\"model\":\"gpt-4.1\",\"choices\":[]}\n\ndata: [DONE]\n\n");
    m.finish(Outcome::Complete);
    let rows = Ledger::open_read(&db)
        .unwrap()
        .unwrap()
        .calls(&Filter::default())
        .unwrap();
    assert_eq!(
        (rows[0].status, rows[0].outcome.as_str()),
        (429, "complete")
    );
    assert_eq!(rows[1].model, "gpt-4.1");
    assert!(
        rows[1].outcome.contains("include_usage"),
        "{}",
        rows[1].outcome
    );
    assert_eq!(rows.iter().map(|r| r.cost_micro_usd).sum::<i64>(), 0);
}

fn pathbuf(p: &Path) -> PathBuf {
    p.to_path_buf()
}

#[test]
fn usd_cap_reached_mid_run_fails_check_cap_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = pathbuf(&dir.path().join("ledger.sqlite"));
    // Each Sonnet call of the first fixture costs $0.019155.
    let cfg = config("capped", Some(&db), "[limits]\nmax_usd = 0.05\n");
    let meter = Meter::open(&cfg).unwrap();
    let body = fixture(CASES[0].file);
    let mut calls = 0;
    while meter.check_cap().is_ok() {
        call(&meter, &CASES[0], &splits(&body, calls), Outcome::Complete);
        calls += 1;
        assert!(calls < 10, "cap never reached");
    }
    // 2 calls = $0.03831 < $0.05; the 3rd (under way when the cap was crossed) completes.
    assert_eq!(calls, 3);
    let e = meter.check_cap().unwrap_err();
    assert_eq!(
        e.to_string(),
        "ax: spend cap of $0.05 for agent capped reached ($0.06 spent); raise [limits] max_usd in the agent's config to continue"
    );
    drop(meter);
    // A restarted netstack for the same agent keeps its spend; another agent is not affected.
    assert!(Meter::open(&cfg).unwrap().check_cap().is_err());
    let other = config("other", Some(&db), "[limits]\nmax_usd = 0.05\n");
    assert!(Meter::open(&other).unwrap().check_cap().is_ok());
    // Raising the cap lets it continue.
    let raised = config("capped", Some(&db), "[limits]\nmax_usd = 1.0\n");
    assert!(Meter::open(&raised).unwrap().check_cap().is_ok());
}

#[test]
fn token_cap_counts_all_kinds() {
    let cfg = config("t", None, "[limits]\nmax_tokens = 60000\n");
    let meter = Meter::open(&cfg).unwrap();
    let body = fixture(CASES[0].file); // 25 + 342 + 30000 + 1200 = 31567 tokens
    call(&meter, &CASES[0], &[&body], Outcome::Complete);
    assert!(meter.check_cap().is_ok());
    call(&meter, &CASES[0], &[&body], Outcome::Complete);
    let e = meter.check_cap().unwrap_err().to_string();
    assert!(
        e.contains("token cap of 60000 tokens for agent t reached (63134 tokens used)"),
        "{e}"
    );
    assert!(e.contains("max_tokens"), "{e}");
}
