//! ax-netstack: the DNS query parser (guest UDP/TCP port 53), credential substitution in
//! request heads and bodies, and the response scrubber (docs/network.md, "Secrets").

use std::net::Ipv4Addr;

use ax_netstack::config::Secret;
use ax_netstack::secrets::rewrite::Stream;
use ax_netstack::secrets::Secrets;
use ax_netstack::stack::dns;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::Chunks;

/// The DNS query parser: a query that parses has a short lower-case name, and the response
/// built for it (A record, or PTR) carries the same question: with its QR bit cleared it
/// parses back to the same query.
pub fn dns(data: &[u8]) {
    let Ok(q) = dns::parse_query(data) else {
        return;
    };
    // At most 253 octets on the wire (RFC 1035 §2.3.4); the presentation form escapes a
    // non-hostname byte as `\DDD`, up to four characters per octet.
    assert!(
        q.name.len() <= 253 * 4,
        "name longer than 253 escaped octets: {}",
        q.name.len()
    );
    // Names with escaped (non-hostname) octets are kept as the guest sent them, to be
    // refused by policy; only plain names are lower-cased.
    assert!(
        q.name.contains('\\') || !q.name.bytes().any(|b| b.is_ascii_uppercase()),
        "name not lower case: {:?}",
        q.name
    );
    for resp in [
        dns::response(&q, 0, &[Ipv4Addr::new(198, 18, 0, 1)], None),
        dns::response(&q, 0, &[], Some("example.com")),
        dns::response(&q, 3, &[], None),
    ] {
        assert_eq!(
            dns::parse_query(&resp),
            Err((None, 1)),
            "a response is not a query"
        );
        let mut back = resp.clone();
        back[2] &= 0x7f;
        let q2 = dns::parse_query(&back).expect("the echoed question parses");
        assert_eq!(
            (q2.id, q2.rd, &q2.name, q2.qtype, q2.qclass),
            (q.id, q.rd, &q.name, q.qtype, q.qclass)
        );
    }
}

/// Two secrets with fixed placeholders (the real ones are random): one bound to
/// `api.anthropic.com` (headers only), one to `github.com` (headers and bodies).
pub fn secrets() -> Vec<Secret> {
    vec![
        Secret {
            name: "ANTHROPIC_API_KEY".into(),
            value: "sk-ant-api03-REALvalue0123456789abcdefXYZ".into(),
            placeholder: "sk-ant-api03-axPLACEHOLDERqrstuvw987654".into(),
            hosts: vec!["api.anthropic.com".into()],
            body: false,
        },
        Secret {
            name: "GH_TOKEN".into(),
            value: "ghp_REALtokenVALUE9876543210zyxw".into(),
            placeholder: "ghp_axPLACEHOLDERabcdefghijklmn".into(),
            hosts: vec!["github.com".into()],
            body: true,
        },
    ]
}

fn bound(s: &Secret, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    s.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Hosts the targets pick from with the first input byte (bound, unbound, look-alikes).
const HOSTS: &[&str] = &[
    "api.anthropic.com",
    "github.com",
    "evil.example",
    "API.ANTHROPIC.COM.",
    "api.anthropic.com.evil.example",
    "",
];

/// Request head substitution ([`Secrets::rewrite_request_head`]). Input: a host selector
/// byte, then lines: the request target, then `name: value` header lines. Accepted requests
/// carry no placeholder anywhere in their headers, and a real value appears only in a
/// request to a host its secret is bound to.
pub fn http_head(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let host = HOSTS[sel as usize % HOSTS.len()];
    let mut lines = rest.split(|&b| b == b'\n');
    let target = lines.next().unwrap_or_default();
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(n, v);
    }
    let before: Vec<Vec<u8>> = headers.values().map(|v| v.as_bytes().to_vec()).collect();
    let all = secrets();
    let s = Secrets::new(&all);
    if s.rewrite_request_head(host, &uri, &mut headers).is_err() {
        return;
    }
    for v in headers.values() {
        for sec in &all {
            assert!(
                !contains(v.as_bytes(), sec.placeholder.as_bytes()),
                "placeholder of {} left in an accepted head for {host:?}",
                sec.name
            );
            let was = before.iter().any(|b| contains(b, sec.value.as_bytes()));
            if contains(v.as_bytes(), sec.value.as_bytes()) && !was {
                assert!(
                    bound(sec, host),
                    "{} substituted for unbound host {host:?}",
                    sec.name
                );
            }
        }
    }
    assert!(
        !all.iter()
            .any(|sec| contains(target, sec.placeholder.as_bytes())),
        "placeholder in an accepted URL"
    );
}

/// Runs a stream over chunks; `None` when blocked.
fn run(mut st: Stream, chunks: Chunks<'_>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&st.push(Bytes::copy_from_slice(c)).ok()?);
    }
    out.extend_from_slice(&st.finish().ok()?);
    Some(out)
}

/// Request body substitution ([`Secrets::request_body`]). Input: a selector byte (host,
/// LLM flag), a chunking seed, the body. The result does not depend on the chunking; an
/// accepted non-LLM body holds no placeholder; a real value appears only for a bound host.
pub fn request_body(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let host = HOSTS[sel as usize % HOSTS.len()];
    let llm = sel & 0x80 != 0;
    let all = secrets();
    let s = Secrets::new(&all);
    let Some(st) = s.request_body(host, llm) else {
        return;
    };
    let chunks = Chunks::new(rest);
    let whole = chunks.stream();
    let streamed = run(st, chunks);
    let mut st2 = s.request_body(host, llm).expect("same table");
    let single = st2
        .push(Bytes::copy_from_slice(whole))
        .and_then(|a| st2.finish().map(|b| [a, b].concat()));
    assert_eq!(streamed, single.ok(), "chunking changed the rewritten body");
    let Some(out) = streamed else { return };
    for sec in &all {
        if !llm {
            assert!(
                !contains(&out, sec.placeholder.as_bytes()),
                "placeholder of {} left in an accepted body for {host:?}",
                sec.name
            );
        }
        if contains(&out, sec.value.as_bytes()) && !contains(whole, sec.value.as_bytes()) {
            assert!(
                bound(sec, host) && sec.body,
                "{} substituted into a body for {host:?}",
                sec.name
            );
        }
    }
}

/// The response scrubber ([`Secrets::scrubber`], [`Secrets::scrub_headers`]): the output does
/// not depend on the chunking and holds no real value in raw form.
pub fn scrubber(data: &[u8]) {
    let all = secrets();
    let s = Secrets::new(&all);
    let chunks = Chunks::new(data);
    let whole = chunks.stream();
    let streamed = run(s.scrubber().expect("secrets"), chunks).expect("the scrubber never blocks");
    let mut st = s.scrubber().expect("secrets");
    let mut single = st
        .push(Bytes::copy_from_slice(whole))
        .expect("never blocks")
        .to_vec();
    single.extend_from_slice(&st.finish().expect("never blocks"));
    assert_eq!(streamed, single, "chunking changed the scrubbed body");
    for sec in &all {
        assert!(
            !contains(&streamed, sec.value.as_bytes()),
            "real value of {} in a scrubbed body",
            sec.name
        );
    }
    let mut headers = HeaderMap::new();
    for line in whole.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append("x-echo", v);
        }
    }
    s.scrub_headers(&mut headers);
    for v in headers.values() {
        for sec in &all {
            assert!(
                !contains(v.as_bytes(), sec.value.as_bytes()),
                "real value of {} in a scrubbed header",
                sec.name
            );
        }
    }
}
