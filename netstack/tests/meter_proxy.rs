//! Fail-closed metering through the real proxy (`tls::intercept`, hyper on both sides) against
//! a loopback HTTPS provider: requests that carry a substituted provider credential are
//! metered, free, or refused with 403 naming the path (docs/metering.md); the credential only
//! goes out with the verified Host; parallel calls stay within the cap plus one call.

mod tls_util;

use bytes::Bytes;
use http_body_util::Full;
use tls_util::*;

const ANT: &str = "api.anthropic.com";
const OAI: &str = "api.openai.com";

fn anthropic_key() -> TestSecret {
    let v = format!("sk-ant-api03-{}-realKEY", "Mt7".repeat(30));
    TestSecret::new("ANTHROPIC_API_KEY", &v, &[ANT], false)
}

fn openai_key() -> TestSecret {
    let v = format!("sk-proj-{}-realKEY", "Qw4".repeat(30));
    TestSecret::new("OPENAI_API_KEY", &v, &[OAI], false)
}

fn forwarded_with(up: &Upstream, value: &str) -> Vec<Seen> {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            s.headers
                .values()
                .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(value))
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmetered_paths_with_the_key_are_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[ANT, OAI], &["h2", "http/1.1"]).await;
    let keys = [anthropic_key(), openai_key()];
    let ctx = context(dir.path(), &up, &[ANT, OAI], true, &keys, "");
    let (ak, ok) = (&keys[0], &keys[1]);
    for alpn in [&["h2"][..], &["http/1.1"][..]] {
        let mut a = guest(&ctx, &up, ANT, alpn).await;
        let key = [("x-api-key", ak.placeholder.clone())];
        for (method, path) in [
            ("POST", "/v1/messages/batches"),
            ("GET", "/v1/messages/batches/msgbatch_01/results"),
            ("POST", "/v1/complete"),
            ("POST", "/v1/messages/../messages/batches"),
        ] {
            let (status, _, text) = a.text(method, path, &key, "{}").await;
            assert_eq!(status, 403, "{method} {path}: {text}");
            assert!(
                text.contains(&format!("{method} {path} on {ANT}")),
                "{text}"
            );
        }
        // Free: forwarded with the key, not metered.
        let (status, _, text) = a
            .text("POST", "/v1/messages/count_tokens", &key, "{}")
            .await;
        assert_eq!(status, 200, "{text}");
        // No credential: nothing to protect, forwarded (the provider refuses it).
        let (status, _, _) = a.text("POST", "/v1/messages/batches", &[], "{}").await;
        assert_eq!(status, 200);

        let mut o = guest(&ctx, &up, OAI, alpn).await;
        let bearer = [("authorization", format!("Bearer {}", ok.placeholder))];
        for (method, path) in [
            ("POST", "/v1/completions"),
            ("POST", "/v1/batches"),
            ("POST", "/v1/images/generations"),
            ("POST", "/v1/audio/speech"),
            ("POST", "/v1/embeddings"),
        ] {
            let (status, _, text) = o.text(method, path, &bearer, "{}").await;
            assert_eq!(status, 403, "{method} {path}: {text}");
            assert!(
                text.contains(&format!("{method} {path} on {OAI}")),
                "{text}"
            );
        }
        let (status, _, text) = o.text("GET", "/v1/responses/resp_1", &bearer, "").await;
        assert_eq!(status, 200, "{text}");
    }
    // WebSocket on an unmetered path (Realtime): refused, HTTP/1.1 Upgrade.
    let mut o = guest(&ctx, &up, OAI, &["http/1.1"]).await;
    let hdrs = [
        ("connection", "upgrade".to_string()),
        ("upgrade", "websocket".to_string()),
        ("authorization", format!("Bearer {}", ok.placeholder)),
    ];
    let resp = o
        .send("GET", "/v1/realtime?model=gpt-realtime", &hdrs, "")
        .await;
    assert_eq!(resp.status(), 403);
    let refused_paths = [
        "/v1/messages/batches",
        "/v1/completions",
        "/v1/realtime",
        "/v1/complete",
    ];
    for s in up.seen.lock().unwrap().iter() {
        let path = s.target.split('?').next().unwrap();
        let has_key = s.headers.values().any(|v| {
            let v = String::from_utf8_lossy(v.as_bytes());
            v.contains(&ak.value) || v.contains(&ok.value)
        });
        assert!(
            !(has_key && refused_paths.iter().any(|p| path.ends_with(p))),
            "{path} reached the provider with the real key"
        );
    }
    assert_eq!(
        forwarded_with(&up, &ak.value).len(),
        2,
        "count_tokens twice"
    );
    assert_eq!(
        forwarded_with(&up, &ok.value).len(),
        2,
        "GET response twice"
    );
}

/// Sends a request whose Host (HTTP/1.1) or `:authority` (HTTP/2) is `host`, not the SNI.
async fn send_with_host(g: &mut Guest, host: &str, path: &str, key: &str) -> http::StatusCode {
    let h2 = matches!(g.sender, Sender::H2(_));
    let mut b = http::Request::builder().method("POST");
    b = if h2 {
        b.uri(format!("https://{host}{path}"))
    } else {
        b.uri(path).header("host", host)
    };
    let req = b
        .header("x-api-key", key)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    match &mut g.sender {
        Sender::H1(s) => {
            s.ready().await.unwrap();
            s.send_request(req).await.unwrap().status()
        }
        Sender::H2(s) => {
            s.ready().await.unwrap();
            s.send_request(req).await.unwrap().status()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_only_goes_out_with_the_verified_host() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[ANT, "other.example"], &["h2", "http/1.1"]).await;
    let keys = [anthropic_key()];
    let ctx = context(dir.path(), &up, &[ANT], true, &keys, "");
    let ph = keys[0].placeholder.clone();
    for alpn in [&["h2"][..], &["http/1.1"][..]] {
        let mut g = guest(&ctx, &up, ANT, alpn).await;
        for host in [
            "other.example",
            "other.example:443",
            "api.anthropic.com.evil",
        ] {
            let status = send_with_host(&mut g, host, "/v1/messages", &ph).await;
            assert_eq!(status, 403, "{alpn:?} Host {host}");
        }
        // The verified name (any case, with its port) passes.
        let status = send_with_host(&mut g, "API.anthropic.com:443", "/v1/messages", &ph).await;
        assert_eq!(status, 200, "{alpn:?}");
    }
    for s in up.seen.lock().unwrap().iter() {
        let host = s
            .headers
            .get("host")
            .map(|h| h.to_str().unwrap().to_string())
            .unwrap_or_else(|| s.target.clone());
        assert!(
            host.to_ascii_lowercase().contains(ANT) && !host.contains("evil"),
            "the key went out with host {host}"
        );
    }
    assert_eq!(up.seen.lock().unwrap().len(), 2);
}

/// N calls in parallel against a $0.004 cap: each reserves its worst case, so only those
/// that fit are let through while the others are in flight (429), and the spend ends within
/// the cap plus one call. The loopback provider holds every stream open after its first
/// event until released, so all admitted calls are truly in flight at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_calls_stay_within_the_cap_plus_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[ANT], &["h2", "http/1.1"]).await;
    let keys = [anthropic_key()];
    let ctx = context(
        dir.path(),
        &up,
        &[ANT],
        true,
        &keys,
        "[limits]\nmax_usd = 0.004\n",
    );
    let key = keys[0].placeholder.clone();
    // The provider answers 120 input + 30 output tokens of claude-sonnet-4-5 ($3 / $15 per
    // 1e6): 810 µ$ per call. The request (200 bytes, max_tokens 40) reserves at most
    // 200 × 6 + 40 × 15 = 1800 µ$ (6 = the 1-hour cache-write price, the highest input side).
    let body = format!(
        r#"{{"model":"claude-sonnet-4-5","stream":true,"max_tokens":40,"pad":"{}"}}"#,
        "x".repeat(200 - 68)
    );
    assert_eq!(body.len(), 200);
    const N: usize = 10;
    let mut tasks = Vec::new();
    for _ in 0..N {
        let (ctx, key, body) = (ctx.clone(), key.clone(), body.clone());
        let mut g = guest(&ctx, &up, ANT, &["h2"]).await;
        tasks.push(tokio::spawn(async move {
            let resp = g
                .send("POST", "/v1/messages", &[("x-api-key", key)], &body)
                .await;
            (resp, g)
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (resp, g) = t.await.unwrap();
        match resp.status().as_u16() {
            200 => admitted.push((resp, g)),
            429 => refused += 1,
            s => panic!("status {s}"),
        }
    }
    // 0, 1800, 3600 < 4000 are admitted; the 4th would see 5400 ≥ 4000.
    assert_eq!(
        admitted.len(),
        3,
        "{} admitted, {refused} refused",
        admitted.len()
    );
    up.release.add_permits(admitted.len());
    for (resp, _g) in admitted {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap();
    }
    // Then one at a time until the cap answers 429.
    let mut g = guest(&ctx, &up, ANT, &["h2"]).await;
    for _ in 0..N {
        up.release.add_permits(1);
        let (status, _, _) = g
            .text("POST", "/v1/messages", &[("x-api-key", key.clone())], &body)
            .await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
    }
    let (spent, _) = ctx.meter.totals();
    let calls = up.seen.lock().unwrap().len() as i64;
    assert_eq!(spent, calls * 810, "every forwarded call was metered");
    assert!(spent <= 4000 + 810, "spent {spent} µ$ > cap + one call");
}
