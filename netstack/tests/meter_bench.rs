//! Benchmark (ignored by default): what parsing usage on the side costs the proxy per byte.
//! Feeds a 64 MiB Anthropic SSE stream (text deltas, as Claude Code receives them) in 16 KiB
//! chunks through a `CallMeter`, against an anchor measured in the same run: copying the same
//! chunks into a buffer (the least the proxy does with every byte), and the naive parser that
//! JSON-parses every event (what the usage pre-filter saves). Run:
//!
//!     cargo test --config 'profile.dev.package.ax-netstack.opt-level=3' -p ax-netstack \
//!         --test meter_bench -- --ignored --nocapture
//!
//! (ax-netstack optimised, its dependencies as in debug builds: serde_json is only in the naive
//! anchor's hot path, so that anchor is pessimistic.)
//!
//! Results: docs/benchmarks.md, "ax-netstack metering".

use ax_netstack::config::Config;
use ax_netstack::meter::usage::{sse::SseDecoder, MAX_SSE_LINE};
use ax_netstack::meter::{Meter, Outcome};
use std::time::Instant;

fn stream(total: usize) -> Vec<u8> {
    let mut s = String::new();
    s.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n");
    let mut i = 0u64;
    while s.len() < total {
        s.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} of a fairly ordinary sentence — ✓\"}}}}\n\n"
        ));
        i += 1;
    }
    s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1000}}\n\n");
    s.into_bytes()
}

#[test]
#[ignore]
fn meter_parse_throughput() {
    let body = stream(64 << 20);
    let meter = Meter::open(&Config::parse("agent = \"bench\"\n", "bench").unwrap()).unwrap();
    let parts = http::Request::builder()
        .method("POST")
        .uri("https://api.anthropic.com/v1/messages")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut head = http::HeaderMap::new();
    head.insert(
        http::header::CONTENT_TYPE,
        "text/event-stream".parse().unwrap(),
    );
    let mut best_anchor = f64::MAX;
    let mut best_meter = f64::MAX;
    let mut best_naive = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut sink = Vec::with_capacity(16 << 10);
        for c in body.chunks(16 << 10) {
            sink.clear();
            sink.extend_from_slice(c);
            std::hint::black_box(&sink);
        }
        best_anchor = best_anchor.min(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut m = meter.begin(
            meter
                .provider_for("api.anthropic.com", "/v1/messages")
                .unwrap(),
            &parts,
        );
        m.response_head(http::StatusCode::OK, &head);
        for c in body.chunks(16 << 10) {
            m.body_chunk(c);
        }
        m.finish(Outcome::Complete);
        best_meter = best_meter.min(t.elapsed().as_secs_f64());

        // Second anchor: the naive parser, a JSON parse of every SSE event.
        let t = Instant::now();
        let mut d = SseDecoder::new(MAX_SSE_LINE);
        let mut n = 0u64;
        let mut f = |_: &str, data: &str| {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                n += u64::from(v.get("usage").is_some());
            }
        };
        for c in body.chunks(16 << 10) {
            d.feed(c, &mut f);
        }
        d.finish(&mut f);
        assert_eq!(n, 1);
        best_naive = best_naive.min(t.elapsed().as_secs_f64());
    }
    assert_eq!(meter.totals().1, 5 * 1010);
    let mb = body.len() as f64 / 1e6;
    println!(
        "meter parse: {:.0} MB/s; anchors: copy {:.0} MB/s, JSON-parse-every-event {:.0} MB/s; time ratios meter/copy {:.1}, meter/naive {:.2}",
        mb / best_meter,
        mb / best_anchor,
        mb / best_naive,
        best_meter / best_anchor,
        best_meter / best_naive
    );
}
