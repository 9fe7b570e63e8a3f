use super::*;

fn secret(name: &str, value: &str, hosts: &[&str], body: bool) -> config::Secret {
    config::Secret {
        name: name.into(),
        value: value.into(),
        placeholder: placeholder_for(name, value),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        body,
    }
}

#[test]
fn placeholder_keeps_prefix_and_length() {
    let v = format!("sk-ant-api03-{}", "x".repeat(95));
    let p = placeholder_for("ANTHROPIC_API_KEY", &v);
    assert!(p.starts_with("sk-ant-api03-axph"), "{p}");
    assert_eq!(p.len(), v.len());
    assert_ne!(p, placeholder_for("ANTHROPIC_API_KEY", &v), "random part");
    let g = placeholder_for("T", "ghp_0123456789abcdefghijklmnopqrstuvwxyz");
    assert!(g.starts_with("ghp_axph") && g.len() >= 40, "{g}");
    let o = placeholder_for("X", "opaque-value");
    assert!(o.starts_with("axph") && o.len() == 36, "{o}");
    assert!(placeholder("OPENAI_API_KEY").starts_with("sk-proj-axph"));
}

#[test]
fn base64_forms_find_value_inside_longer_base64() {
    let v = b"tok_ABCDEFGHIJKLMNOP";
    let forms = base64_forms(v);
    for pre in ["", "u", "us", "user:"] {
        let whole = STANDARD.encode([pre.as_bytes(), v, b"!tail"].concat());
        assert!(
            forms
                .iter()
                .any(|f| whole.as_bytes().windows(f.len()).any(|w| w == f)),
            "{pre:?}"
        );
    }
}

#[test]
fn head_substitution_and_blocking() {
    let s = secret(
        "K",
        "sk-ant-api03-REALVALUE0123456789",
        &["api.example.com"],
        false,
    );
    let ph = s.placeholder.clone();
    let secrets = Secrets::new(&[s]);
    let uri: Uri = "/v1/x?y=1".parse().unwrap();

    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {ph}").parse().unwrap());
    h.insert("x-api-key", ph.parse().unwrap());
    secrets
        .rewrite_request_head("api.example.com", &uri, &mut h)
        .unwrap();
    assert_eq!(
        h["authorization"],
        "Bearer sk-ant-api03-REALVALUE0123456789"
    );
    assert_eq!(h["x-api-key"], "sk-ant-api03-REALVALUE0123456789");

    let mut h = HeaderMap::new();
    let basic = STANDARD.encode(format!("git:{ph}"));
    h.insert("authorization", format!("Basic {basic}").parse().unwrap());
    secrets
        .rewrite_request_head("API.example.com.", &uri, &mut h)
        .unwrap();
    let dec = STANDARD
        .decode(&h["authorization"].as_bytes()[6..])
        .unwrap();
    assert_eq!(dec, b"git:sk-ant-api03-REALVALUE0123456789");

    for (host, name, val, url) in [
        (
            "other.example.com",
            "authorization",
            format!("Bearer {ph}"),
            "/",
        ),
        ("api.example.com", "x-custom", ph.clone(), "/"),
        (
            "api.example.com",
            "cookie",
            format!("a={}", STANDARD.encode(&ph)),
            "/",
        ),
        (
            "api.example.com",
            "accept",
            "x".into(),
            &*format!("/q?key={ph}"),
        ),
    ] {
        let mut h = HeaderMap::new();
        h.insert(name, val.parse().unwrap());
        let e = secrets
            .rewrite_request_head(host, &url.parse().unwrap(), &mut h)
            .unwrap_err();
        assert!(
            e.0.contains("secret K") && !e.0.contains("REALVALUE"),
            "{}",
            e.0
        );
    }
}

#[test]
fn body_rules() {
    let a = secret("A", "value-a-0123456789", &["a.example"], true);
    let b = secret("B", "value-b-0123456789", &["b.example"], false);
    let (pa, pb) = (a.placeholder.clone(), b.placeholder.clone());
    let secrets = Secrets::new(&[a, b]);
    let mut s = secrets.request_body("a.example", false).unwrap();
    let out = s
        .push(bytes::Bytes::from(format!("{{\"k\":\"{pa}\"}}")))
        .unwrap();
    assert_eq!(
        [&out[..], &s.finish().unwrap()[..]].concat(),
        b"{\"k\":\"value-a-0123456789\"}"
    );
    let mut s = secrets.request_body("a.example", false).unwrap();
    assert!(s.push(bytes::Bytes::from(pb.clone())).is_err());
    // An LLM call carries conversation text: B's placeholder passes, A's is substituted.
    let mut s = secrets.request_body("a.example", true).unwrap();
    assert_eq!(
        &s.push(bytes::Bytes::from(pb.clone())).unwrap()[..],
        pb.as_bytes()
    );
    assert!(secrets.request_body("c.example", true).is_none());
}

#[test]
fn scrub_forms() {
    let s = secret("K", "sk-ant-api03-se/cr\"et0123456789", &["h"], false);
    let ph = s.placeholder.clone();
    let secrets = Secrets::new(std::slice::from_ref(&s));
    let json = serde_json::to_string(&s.value).unwrap();
    let text = format!(
        "raw {} json {json} b64 {} url {}",
        s.value,
        STANDARD.encode(&s.value),
        URL_SAFE_NO_PAD.encode(&s.value)
    );
    let mut st = secrets.scrubber().unwrap();
    let mut out = st.push(bytes::Bytes::from(text)).unwrap().to_vec();
    out.extend_from_slice(&st.finish().unwrap());
    let out = String::from_utf8(out).unwrap();
    assert!(
        !out.contains("se/cr") && !out.contains("0123456789"),
        "{out}"
    );
    assert!(out.contains(&format!("raw {ph}")), "{out}");
    let ph64 = base64_forms(ph.as_bytes()).swap_remove(0);
    assert!(out.contains(std::str::from_utf8(&ph64).unwrap()), "{out}");
    let mut h = HeaderMap::new();
    h.insert("x-echo", s.value.parse().unwrap());
    secrets.scrub_headers(&mut h);
    assert_eq!(h["x-echo"], ph.as_str());
}
