//! TLS interception end to end without a VM: a real rustls/hyper guest client trusting the
//! agent CA talks through `tls::intercept` (over an in-memory duplex) to a loopback HTTPS
//! upstream with its own test CA (trusted through a `[[route]] ca_pem`).

mod tls_util;

use ax_netstack::ca::Ca;
use ax_netstack::meter::ledger::{Filter, Ledger};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::Version;
use http_body_util::BodyExt;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tls_util::*;

/// A host with a bound secret that is not an LLM provider (no route table: every path passes).
const API: &str = "api.secrets.example";
/// An LLM provider host (metered; the route table applies to substituted credentials).
const LLM: &str = "api.anthropic.com";
const OTHER: &str = "other.example.com";

fn anthropic() -> TestSecret {
    let v = format!("sk-ant-api03-{}-realKEY", "Zq9".repeat(30));
    TestSecret::new("ANTHROPIC_API_KEY", &v, &[API, LLM], false)
}

fn github() -> TestSecret {
    TestSecret::new(
        "GITHUB_TOKEN",
        "ghp_R3alT0kenABCDEFGHIJKLMNOPQRSTUVWXYZ01",
        &[API],
        false,
    )
}

/// A value with characters JSON must escape.
fn quoted() -> TestSecret {
    TestSecret::new(
        "ODD_TOKEN",
        "tok\"with\\back/slash-0123456789abcdefXYZ",
        &[API],
        false,
    )
}

fn ledger_requests(dir: &std::path::Path) -> Vec<ax_netstack::meter::ledger::RequestRow> {
    Ledger::open_read(&dir.join("ledger.sqlite"))
        .unwrap()
        .unwrap()
        .requests("tls-test")
        .unwrap()
}

fn assert_no_leak(text: &str, secrets: &[&TestSecret]) {
    for s in secrets {
        for form in leaked_forms(&s.value) {
            assert!(
                !text.contains(&form),
                "the guest saw {} in the form {form:?}:\n{text}",
                s.name
            );
        }
    }
}

#[test]
fn leaf_per_sni_signed_by_the_agent_ca_and_backdated() {
    let ca = Ca::generate("agent-7").unwrap();
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let der = ca.cert_der().to_vec();
    assert!(
        der.windows(19).any(|w| w == b"ax agent agent-7 CA"),
        "CA subject names the agent"
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let at = |ago_h: u64| {
        UnixTime::since_unix_epoch(
            (SystemTime::now() - Duration::from_secs(ago_h * 3600))
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap(),
        )
    };
    let verify = |leaf: &rustls::sign::CertifiedKey, name: &str, when: UnixTime| {
        verifier.verify_server_cert(
            &leaf.cert[0],
            &leaf.cert[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            when,
        )
    };

    let a = ca.leaf("api.example.com").unwrap();
    assert!(
        Arc::ptr_eq(&a, &ca.leaf("API.example.com.").unwrap()),
        "cached per name"
    );
    let b = ca.leaf("b.example.com").unwrap();
    assert_ne!(a.cert[0], b.cert[0], "one leaf per SNI");
    assert_eq!(a.cert[1], *ca.cert_der(), "chain: leaf + CA");

    verify(&a, "api.example.com", at(0)).expect("valid now for its name");
    verify(&a, "api.example.com", at(23)).expect("valid 23 h ago: backdated a day");
    let e = verify(&a, "api.example.com", at(25)).unwrap_err();
    assert!(
        format!("{e:?}").contains("NotValidYet"),
        "not valid 25 h ago: {e:?}"
    );
    let e = verify(&a, "b.example.com", at(0)).unwrap_err();
    assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");
    let ip = ca.leaf("10.1.2.3").unwrap();
    verify(&ip, "10.1.2.3", at(0)).expect("IP SAN");

    // Another agent's CA does not vouch for this one's leaves.
    let other = Ca::generate("agent-8").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(other.cert_der().clone()).unwrap();
    let v2 = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    assert!(v2
        .verify_server_cert(
            &a.cert[0],
            &[],
            &ServerName::try_from("api.example.com").unwrap(),
            &[],
            at(0)
        )
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_on_both_sides_with_the_real_key_upstream_only() {
    for up_alpn in [&["h2", "http/1.1"][..], &["http/1.1"][..]] {
        for guest_alpn in [&["h2", "http/1.1"][..], &["http/1.1"][..]] {
            let dir = tempfile::tempdir().unwrap();
            let up = upstream(&[API], up_alpn).await;
            let key = anthropic();
            let ctx = context(dir.path(), &up, &[API], true, &[key_clone(&key)], "");
            let mut g = guest(&ctx, &up, API, guest_alpn).await;
            assert_eq!(
                g.leaf,
                ctx.ca.leaf(API).unwrap().cert[0],
                "the guest got the agent's leaf for its SNI"
            );
            let both_h2 = up_alpn.contains(&"h2") && guest_alpn.contains(&"h2");
            let want = if both_h2 {
                &b"h2"[..]
            } else {
                &b"http/1.1"[..]
            };
            assert_eq!(
                g.alpn.as_deref(),
                Some(want),
                "guest ALPN mirrors the upstream's choice ({up_alpn:?} / {guest_alpn:?})"
            );
            for i in 0..2 {
                let (status, headers, text) = g
                    .text(
                        "GET",
                        "/echo?n=1",
                        &[("authorization", format!("Bearer {}", key.placeholder))],
                        "",
                    )
                    .await;
                assert_eq!(status, 200, "{text}");
                assert!(
                    text.contains(&format!("Bearer {}", key.placeholder)),
                    "echo scrubbed back to the placeholder: {text}"
                );
                assert_eq!(
                    headers["x-echo-auth"],
                    format!("Bearer {}", key.placeholder).as_str()
                );
                assert_no_leak(&text, &[&key]);
                let seen = up.seen.lock().unwrap()[i].clone();
                assert_eq!(
                    seen.headers["authorization"],
                    format!("Bearer {}", key.value).as_str(),
                    "the upstream got the real key"
                );
                assert_eq!(
                    seen.version,
                    if both_h2 {
                        Version::HTTP_2
                    } else {
                        Version::HTTP_11
                    }
                );
                assert!(seen.target.ends_with("/echo?n=1"), "{}", seen.target);
            }
            let rows = ledger_requests(dir.path());
            assert_eq!(rows.len(), 2, "one audit record per request");
            assert_eq!(
                (rows[0].host.as_str(), rows[0].path.as_str(), rows[0].status),
                (API, "/echo", 200)
            );
            assert!(rows[0].bytes_down > 0 && rows[0].blocked.is_none());
        }
    }
}

fn key_clone(s: &TestSecret) -> TestSecret {
    TestSecret {
        name: s.name,
        value: s.value.clone(),
        placeholder: s.placeholder.clone(),
        hosts: s.hosts.clone(),
        body: s.body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substitution_in_bearer_x_api_key_and_basic() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[API], &["h2", "http/1.1"]).await;
    let (key, gh, odd) = (anthropic(), github(), quoted());
    let ctx = context(
        dir.path(),
        &up,
        &[API],
        true,
        &[key_clone(&key), key_clone(&gh), key_clone(&odd)],
        "",
    );
    for alpn in [&["h2"][..], &["http/1.1"][..]] {
        up.seen.lock().unwrap().clear();
        let mut g = guest(&ctx, &up, API, alpn).await;
        let basic = STANDARD.encode(format!("x-access-token:{}", gh.placeholder));
        let (status, _, text) = g
            .text(
                "POST",
                "/echo",
                &[
                    ("authorization", format!("Basic {basic}")),
                    ("x-api-key", key.placeholder.clone()),
                ],
                "{}",
            )
            .await;
        assert_eq!(status, 200, "{text}");
        let (status, headers, text2) = g
            .text(
                "GET",
                "/echo",
                &[("x-api-key", odd.placeholder.clone())],
                "",
            )
            .await;
        assert_eq!(status, 200, "{text2}");
        let seen = up.seen.lock().unwrap().clone();
        let auth = seen[0].headers["authorization"].to_str().unwrap();
        let decoded = STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            decoded,
            format!("x-access-token:{}", gh.value).as_bytes(),
            "git-style Basic user:token substituted"
        );
        assert_eq!(seen[0].headers["x-api-key"], key.value.as_str());
        assert_eq!(
            seen[1].headers["x-api-key"].as_bytes(),
            odd.value.as_bytes()
        );
        let all = format!("{text}\n{text2}\n{headers:?}");
        assert_no_leak(&all, &[&key, &gh, &odd]);
        assert!(text.contains(&key.placeholder), "{text}");
        assert!(
            text2.contains(&odd.placeholder),
            "JSON-escaped value scrubbed: {text2}"
        );
        assert_eq!(headers["x-echo-key"], odd.placeholder.as_str());
        // The echoed Basic credentials decode to the placeholder again (all but the edge bits).
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let echoed = v["authorization"]
            .as_str()
            .unwrap()
            .strip_prefix("Basic ")
            .unwrap()
            .to_string();
        let dec = String::from_utf8_lossy(&STANDARD.decode(&echoed).unwrap()).into_owned();
        assert!(
            dec.starts_with(&format!(
                "x-access-token:{}",
                &gh.placeholder[..gh.placeholder.len() - 1]
            )),
            "{dec}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_anywhere_else_are_blocked_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[API, OTHER], &["h2", "http/1.1"]).await;
    let key = anthropic();
    // Bound to a host that is not an LLM API: request bodies there are checked.
    let gh = TestSecret::new("GITHUB_TOKEN", &github().value, &[OTHER], false);
    let secrets = [key_clone(&key), key_clone(&gh)];
    let ctx = context(dir.path(), &up, &[API, OTHER], true, &secrets, "");
    let (ph, gph) = (key.placeholder.clone(), gh.placeholder.clone());
    let echo = || "/echo".to_string();
    // (host, path, headers, body, what the refusal says)
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, String, &'a str);
    let cases: Vec<Case> = vec![
        (
            OTHER,
            echo(),
            vec![("authorization", format!("Bearer {ph}"))],
            String::new(),
            "not bound",
        ),
        (
            OTHER,
            echo(),
            vec![("x-api-key", ph.clone())],
            String::new(),
            "not bound",
        ),
        (
            API,
            echo(),
            vec![("x-custom", ph.clone())],
            String::new(),
            "header x-custom",
        ),
        (
            API,
            echo(),
            vec![("cookie", format!("t={}", STANDARD.encode(&ph)))],
            String::new(),
            "header cookie",
        ),
        (
            API,
            format!("/echo?key={ph}"),
            vec![],
            String::new(),
            "the URL",
        ),
        (
            OTHER,
            echo(),
            vec![],
            format!("{{\"k\":\"{gph}\"}}"),
            "request body",
        ),
        (OTHER, echo(), vec![], format!("token={ph}"), "not bound"),
    ];
    for alpn in [&["h2"][..], &["http/1.1"][..]] {
        for (host, path, headers, body, why) in &cases {
            let mut g = guest(&ctx, &up, host, alpn).await;
            let (status, _, text) = g.text("POST", path, headers, body).await;
            assert_eq!(status, 403, "{host} {path} {headers:?} {body}: {text}");
            assert!(
                (text.contains("ANTHROPIC_API_KEY") || text.contains("GITHUB_TOKEN"))
                    && text.contains(why),
                "explains: {text}"
            );
            assert_no_leak(&text, &[&key, &gh]);
            // The connection still works for a clean request.
            let (status, _, _) = g.text("GET", "/plain", &[], "").await;
            assert_eq!(status, 200);
        }
    }
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| s.target.ends_with("/plain")),
        "blocked requests never reached the upstream: {seen:?}"
    );
    let blocked: Vec<_> = ledger_requests(dir.path())
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert_eq!(blocked.len(), 2 * cases.len(), "every block is audited");
    assert!(blocked.iter().all(|r| r
        .blocked
        .as_deref()
        .is_some_and(|b| b.contains("placeholder of secret"))));
    assert!(
        blocked.iter().all(|r| !r.path.contains('?')),
        "no query strings in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_substitution_only_with_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[API], &["h2", "http/1.1"]).await;
    let mut key = anthropic();
    key.body = true;
    let ctx = context(dir.path(), &up, &[API], true, &[key_clone(&key)], "");
    for alpn in [&["h2"][..], &["http/1.1"][..]] {
        up.seen.lock().unwrap().clear();
        let mut g = guest(&ctx, &up, API, alpn).await;
        let body = format!(
            "{{\"token\":\"{}\",\"pad\":\"{}\"}}",
            key.placeholder,
            "x".repeat(100_000)
        );
        let (status, _, text) = g
            .text(
                "POST",
                "/echo",
                &[("content-type", "application/json".into())],
                &body,
            )
            .await;
        assert_eq!(status, 200);
        let seen = up.seen.lock().unwrap()[0].clone();
        assert!(
            String::from_utf8_lossy(&seen.body).contains(&format!("\"token\":\"{}\"", key.value))
        );
        assert_eq!(
            seen.body.len(),
            body.len() - key.placeholder.len() + key.value.len()
        );
        assert_no_leak(&text, &[&key]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_values_are_scrubbed_split_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[API], &["h2", "http/1.1"]).await;
    let (key, odd) = (anthropic(), quoted());
    let ctx = context(
        dir.path(),
        &up,
        &[API],
        true,
        &[key_clone(&key), key_clone(&odd)],
        "",
    );
    for alpn in [&["h2"][..], &["http/1.1"][..]] {
        let mut g = guest(&ctx, &up, API, alpn).await;
        for (split, gzip) in [(0, false), (1, false), (7, false), (0, true), (5, true)] {
            let mut headers = vec![
                ("x-api-key", key.placeholder.clone()),
                ("accept-encoding", "gzip, zstd".into()),
            ];
            if split > 0 {
                headers.push(("x-split", split.to_string()));
            }
            if gzip {
                headers.push(("x-gzip", "1".into()));
            }
            let (status, h, text) = g.text("GET", "/echo", &headers, "").await;
            assert_eq!(status, 200, "{text}");
            assert!(h.get("content-encoding").is_none(), "decoded for the guest");
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(
                v["x_api_key"],
                key.placeholder.as_str(),
                "split {split} gzip {gzip}"
            );
            let b64 = STANDARD
                .decode(v["x_api_key_b64"].as_str().unwrap())
                .unwrap();
            assert!(String::from_utf8_lossy(&b64)
                .starts_with(&key.placeholder[..key.placeholder.len() - 1]));
            assert_no_leak(&text, &[&key]);
        }
        let seen = up.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            seen.headers["accept-encoding"], "gzip",
            "the upstream is only offered codings the proxy can decode"
        );
        // A JSON-escaped value split in one-byte chunks.
        let (_, _, text) = g
            .text(
                "GET",
                "/echo",
                &[
                    ("x-api-key", odd.placeholder.clone()),
                    ("x-split", "1".into()),
                    ("x-gzip", "1".into()),
                ],
                "",
            )
            .await;
        assert_no_leak(&text, &[&odd]);
        assert!(text.contains(&odd.placeholder));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_flows_event_by_event_and_is_metered() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[LLM], &["h2", "http/1.1"]).await;
    let key = anthropic();
    let ctx = context(dir.path(), &up, &[LLM], true, &[key_clone(&key)], "");
    for (i, alpn) in [&["h2"][..], &["http/1.1"][..]].into_iter().enumerate() {
        let mut g = guest(&ctx, &up, LLM, alpn).await;
        let resp = g
            .send(
                "POST",
                "/v1/messages",
                &[
                    ("x-api-key", key.placeholder.clone()),
                    ("content-type", "application/json".into()),
                ],
                r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":10}"#,
            )
            .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        // The upstream holds the rest of the stream until released: the first event must
        // arrive on its own (a buffering proxy would never deliver it).
        let first = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .expect("the first SSE event did not arrive while the upstream was still streaming")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert!(first.starts_with(b"event: message_start"), "{first:?}");
        assert_eq!(ctx.meter.totals().1, 150 * i as u64, "not finished yet");
        up.release.add_permits(1);
        let rest = body.collect().await.unwrap().to_bytes();
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.contains("message_delta") && rest.ends_with("{\"type\":\"message_stop\"}\n\n"),
            "{rest}"
        );
        // finish() ran before the end of the stream reached the guest.
        assert_eq!(
            ctx.meter.totals().1,
            150 * (i as u64 + 1),
            "input 120 + output 30"
        );
    }
    let calls = Ledger::open_read(&dir.path().join("ledger.sqlite"))
        .unwrap()
        .unwrap()
        .calls(&Filter::default())
        .unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (
            calls[0].input_tokens,
            calls[0].output_tokens,
            calls[0].model.as_str()
        ),
        (120, 30, "claude-sonnet-4-5-20250929")
    );
    assert!(calls[0].cost_micro_usd > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_cap_answers_429_without_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[LLM], &["http/1.1"]).await;
    let key = anthropic();
    let ctx = context(
        dir.path(),
        &up,
        &[LLM],
        true,
        &[key_clone(&key)],
        "[limits]\nmax_tokens = 100\n",
    );
    let mut g = guest(&ctx, &up, LLM, &["http/1.1"]).await;
    let hdr = [("x-api-key", key.placeholder.clone())];
    let (status, _, text) = g
        .text(
            "POST",
            "/v1/messages",
            &hdr,
            r#"{"model":"claude-sonnet-4-5"}"#,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = g
        .text(
            "POST",
            "/v1/messages",
            &hdr,
            r#"{"model":"claude-sonnet-4-5"}"#,
        )
        .await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("max_tokens"), "{text}");
    assert_eq!(
        up.seen.lock().unwrap().len(),
        1,
        "the capped call never left"
    );
    let (status, _, _) = g.text("GET", "/plain", &[], "").await;
    assert_eq!(status, 200, "non-LLM requests still pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_upstream_certificate_gives_502() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[API], &["h2", "http/1.1"]).await;
    let key = anthropic();
    // The route sends the host to the loopback upstream but does not trust its CA.
    let ctx = context(dir.path(), &up, &[API], false, &[key_clone(&key)], "");
    for alpn in [&["h2", "http/1.1"][..], &["http/1.1"][..]] {
        let mut g = guest(&ctx, &up, API, alpn).await;
        let (status, _, text) = g
            .text(
                "GET",
                "/echo",
                &[("x-api-key", key.placeholder.clone())],
                "",
            )
            .await;
        assert_eq!(status, 502, "{text}");
        assert!(text.contains("not trusted") && text.contains(API), "{text}");
    }
    assert!(up.seen.lock().unwrap().is_empty());
    let rows = ledger_requests(dir.path());
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == 502
        && r.blocked
            .as_deref()
            .is_some_and(|b| b.contains("not trusted"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upgrade_is_spliced_after_substitution() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[API], &["http/1.1"]).await;
    let key = anthropic();
    let ctx = context(dir.path(), &up, &[API], true, &[key_clone(&key)], "");
    let mut g = guest(&ctx, &up, API, &["h2", "http/1.1"]).await;
    let hdrs = [
        ("connection", "upgrade".to_string()),
        ("upgrade", "ax-echo".to_string()),
        ("authorization", format!("Bearer {}", key.placeholder)),
    ];
    let resp = g.send("GET", "/ws", &hdrs, "").await;
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["upgrade"], "ax-echo");
    let mut io = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"ping over the upgraded connection")
        .await
        .unwrap();
    let mut buf = [0u8; 33];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping over the upgraded connection");
    let seen = up.seen.lock().unwrap()[0].clone();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {}", key.value).as_str()
    );
    assert_eq!(seen.headers["upgrade"], "ax-echo");
}

/// A WebSocket upgrade to an LLM API path would bypass metering: refused with 404 (clients
/// fall back to HTTPS), never forwarded, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_llm_api_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[LLM], &["http/1.1"]).await;
    let key = anthropic();
    let ctx = context(dir.path(), &up, &[LLM], true, &[key_clone(&key)], "");
    let mut g = guest(&ctx, &up, LLM, &["http/1.1"]).await;
    let hdrs = [
        ("connection", "upgrade".to_string()),
        ("upgrade", "websocket".to_string()),
        ("x-api-key", key.placeholder.clone()),
    ];
    let resp = g.send("GET", "/v1/messages", &hdrs, "").await;
    assert_eq!(resp.status(), 404);
    assert!(up.seen.lock().unwrap().is_empty(), "forwarded upstream");
    let rows = ledger_requests(dir.path());
    assert!(
        rows.iter().any(|r| r.status == 404
            && r.blocked
                .as_deref()
                .is_some_and(|b| b.contains("WebSocket"))),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_http1_is_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[API], &["http/1.1"]).await;
    let key = anthropic();
    let ctx = context(dir.path(), &up, &[API], true, &[key_clone(&key)], "");
    let mut g = guest(&ctx, &up, API, &["http/1.1"]).await;
    for _ in 0..3 {
        let (status, _, text) = g
            .text(
                "GET",
                "/close",
                &[("x-api-key", key.placeholder.clone())],
                "",
            )
            .await;
        assert_eq!((status.as_u16(), text.as_str()), (200, "closing"));
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|s| s.headers["x-api-key"] == key.value.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_request_bodies_carry_placeholders_as_text() {
    // An agent that read its own environment sends the placeholders to the model as
    // conversation text: forwarded unchanged (not substituted, not blocked).
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[LLM], &["h2", "http/1.1"]).await;
    let (key, gh) = (anthropic(), github());
    let ctx = context(
        dir.path(),
        &up,
        &[LLM],
        true,
        &[key_clone(&key), key_clone(&gh)],
        "",
    );
    let mut g = guest(&ctx, &up, LLM, &["h2"]).await;
    let body = format!("{{\"model\":\"claude-sonnet-4-5\",\"messages\":[{{\"role\":\"user\",\"content\":\"env: GITHUB_TOKEN={} ANTHROPIC_API_KEY={}\"}}]}}", gh.placeholder, key.placeholder);
    let (status, _, text) = g
        .text(
            "POST",
            "/v1/messages",
            &[("x-api-key", key.placeholder.clone())],
            &body,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let seen = up.seen.lock().unwrap()[0].clone();
    assert_eq!(
        seen.body,
        body.as_bytes(),
        "body forwarded as the guest wrote it"
    );
    assert_eq!(seen.headers["x-api-key"], key.value.as_str());
    // Other paths of an LLM LLM host too (token counting is not metered).
    let (status, _, _) = g
        .text("POST", "/v1/messages/count_tokens", &[], &body)
        .await;
    assert_eq!(status, 200);
    assert_eq!(up.seen.lock().unwrap()[1].body, body.as_bytes());
    // The same body to a host that is not an LLM LLM is blocked.
    let up2 = upstream(&[OTHER], &["h2"]).await;
    let ctx2 = context(
        dir.path(),
        &up2,
        &[OTHER],
        true,
        &[key_clone(&key), key_clone(&gh)],
        "",
    );
    let mut g2 = guest(&ctx2, &up2, OTHER, &["h2"]).await;
    let (status, _, text) = g2.text("POST", "/echo", &[], &body).await;
    assert_eq!(status, 403, "{text}");
    assert!(up2.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_are_scrubbed() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[API], &["h2"]).await;
    let key = anthropic();
    let ctx = context(dir.path(), &up, &[API], true, &[key_clone(&key)], "");
    let mut g = guest(&ctx, &up, API, &["h2"]).await;
    let resp = g
        .send(
            "GET",
            "/trailers",
            &[
                ("x-api-key", key.placeholder.clone()),
                ("te", "trailers".into()),
            ],
            "",
        )
        .await;
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers forwarded");
    assert_eq!(trailers["x-echo-key"], key.placeholder.as_str());
    assert_eq!(&collected.to_bytes()[..], b"body");
    assert_eq!(
        up.seen.lock().unwrap()[0].headers["x-api-key"],
        key.value.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_h2_goaway_is_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream(&[API], &["h2"]).await;
    let key = anthropic();
    let ctx = context(dir.path(), &up, &[API], true, &[key_clone(&key)], "");
    let mut g = guest(&ctx, &up, API, &["h2"]).await;
    let hdr = [("x-api-key", key.placeholder.clone())];
    let (status, _, text) = g.text("GET", "/goaway", &hdr, "").await;
    assert_eq!(status, 200, "{text}");
    for _ in 0..2 {
        let (status, _, text) = g.text("GET", "/plain", &hdr, "").await;
        assert_eq!(status, 200, "{text}");
    }
    let conns = up.connections.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        conns >= 2,
        "a new upstream connection after GOAWAY ({conns})"
    );
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        seen.iter().filter(|s| s.target.ends_with("/plain")).count() == 2,
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .all(|s| s.version == Version::HTTP_2 && s.headers["x-api-key"] == key.value.as_str()));
}
