//! Secrets: placeholders the guest holds, substitution into requests bound for a secret's
//! hosts, blocking of placeholders sent elsewhere, scrubbing of real values out of responses.
//!
//! Placeholder format (docs/network.md, "Secrets"): `<prefix>axph<random>`, where `<prefix>`
//! is the real value's well-known, non-secret prefix (`sk-ant-api03-`, `sk-proj-`, `ghp_`, …;
//! empty if none is known) so that clients checking a key's prefix accept it, and `<random>`
//! is `[A-Za-z0-9]` from the OS random source, at least 32 characters (≥ 190 bits) and as
//! long as needed for the placeholder to be as long as the value. One per secret per agent.
//!
//! Where a placeholder is substituted (requests to one of the secret's `hosts` only): the
//! `Authorization` header (any scheme, incl. `Basic` whose base64 `user:password` is decoded,
//! rewritten and re-encoded, RFC 7617), `x-api-key`, `x-goog-api-key`, and the request body
//! when the secret has `body = true`. Anywhere else (other host, other header, the URL, a body
//! without opt-in; raw or base64) the request is blocked. Exception: request bodies to the
//! known LLM API hosts (`policy::LLM_HOSTS`) are conversation content (messages, token counts)
//! and pass unchanged (an agent that read its own `.env` must not lose its session); the
//! placeholder is worthless to the provider.

pub mod rewrite;

use crate::config;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{HeaderMap, HeaderValue, Uri};
use rewrite::{Action, Blocked, Patterns, Stream};
use std::sync::Arc;

/// Well-known key prefixes kept in placeholders (longest first where they overlap).
const KNOWN_PREFIXES: &[&str] = &[
    "sk-ant-api03-",
    "sk-ant-oat01-",
    "sk-ant-",
    "sk-proj-",
    "sk-svcacct-",
    "sk-",
    "github_pat_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "glpat-",
    "AIza",
    "xoxb-",
    "xoxp-",
    "hf_",
    "npm_",
];
const MARKER: &str = "axph";
const MIN_RANDOM: usize = 32;

/// Headers a bound secret's placeholder is substituted in.
const SUBST_HEADERS: &[&str] = &["authorization", "x-api-key", "x-goog-api-key"];

/// `N` bytes from the OS random source (getrandom(2): the urandom pool, no file to open, so
/// it works inside the jail, docs/jail.md). Panics if it fails (no usable source of
/// randomness: nothing here would be safe).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let mut got = 0;
    while got < N {
        // SAFETY: getrandom(2) writes at most N - got bytes at b[got..].
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), N - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert!(
                e.kind() == std::io::ErrorKind::Interrupted,
                "getrandom failed: {e}; ax-netstack needs the OS random source"
            );
            continue;
        }
        got += n as usize;
    }
    b
}

fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in random_bytes::<64>() {
            // 62 * 4 = 248: reject 248..=255 to stay uniform.
            if b < 248 && out.len() < n {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A fresh placeholder for secret `name` when its value is not at hand: the prefix is guessed
/// from well-known variable names (`ANTHROPIC_API_KEY` → `sk-ant-api03-`, `OPENAI_API_KEY` →
/// `sk-proj-`, `GITHUB_TOKEN`/`GH_TOKEN` → `ghp_`, `GEMINI_API_KEY`/`GOOGLE_API_KEY` → `AIza`),
/// else none. Format: module docs.
pub fn placeholder(name: &str) -> String {
    let prefix = match name {
        "ANTHROPIC_API_KEY" => "sk-ant-api03-",
        "CLAUDE_CODE_OAUTH_TOKEN" => "sk-ant-oat01-",
        "OPENAI_API_KEY" | "CODEX_API_KEY" => "sk-proj-",
        "GITHUB_TOKEN" | "GH_TOKEN" => "ghp_",
        "GEMINI_API_KEY" | "GOOGLE_API_KEY" => "AIza",
        _ => "",
    };
    format!("{prefix}{MARKER}{}", random_alnum(MIN_RANDOM))
}

/// A fresh placeholder for secret `name` with real value `value`: keeps the value's
/// well-known prefix (if any) and its length (when the value is longer than prefix + marker +
/// 32), so that clients checking a key's shape accept it. Format: module docs.
pub fn placeholder_for(name: &str, value: &str) -> String {
    let prefix = KNOWN_PREFIXES
        .iter()
        .find(|p| value.starts_with(**p))
        .copied();
    let Some(prefix) = prefix else {
        return placeholder(name);
    };
    let random = value
        .len()
        .saturating_sub(prefix.len() + MARKER.len())
        .max(MIN_RANDOM);
    format!("{prefix}{MARKER}{}", random_alnum(random))
}

/// The base64 forms of `data` as it appears inside a longer base64 text, for each of the three
/// alignments (0, 1, 2 bytes before it in its 3-byte group), standard and URL-safe alphabets:
/// only the characters that depend on `data` alone (edge characters mixing in neighbouring
/// bytes are left out). Forms shorter than 8 characters are skipped. Returned in a fixed
/// order (alignment, alphabet), so two inputs give pairwise corresponding forms.
fn base64_forms(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for shift in 0..3usize {
        let mut buf = vec![0u8; shift];
        buf.extend_from_slice(data);
        let total = buf.len();
        let skip = [0, 2, 3][shift];
        let keep = total / 3 * 4 + [0, 1, 2][total % 3];
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let enc = engine.encode(&buf).into_bytes();
            out.push(if keep > skip {
                enc[skip..keep].to_vec()
            } else {
                Vec::new()
            });
        }
    }
    out
}

/// JSON-escaped forms of `s` that differ from `s` itself (RFC 8259 §7, plus `\/`).
fn json_forms(s: &str) -> Vec<Vec<u8>> {
    let esc = serde_json::to_string(s).unwrap_or_default();
    let esc = esc[1..esc.len() - 1].to_string();
    let mut out = Vec::new();
    if esc != s {
        out.push(esc.clone().into_bytes());
    }
    let slash = esc.replace('/', "\\/");
    if slash != esc {
        out.push(slash.into_bytes());
    }
    out
}

/// The placeholder ↔ value tables of one agent.
pub struct Secrets {
    entries: Vec<config::Secret>,
    /// Real values (raw, base64 at each alignment, JSON-escaped) → placeholders.
    scrub: Arc<Patterns>,
    /// Every placeholder form (raw, base64) → `Block(index into entries)`.
    detect: Patterns,
}

/// Why a request was refused: a placeholder where it may not go. The text names the secret,
/// the host and the place, never a value; it is the 403 body and the audit reason.
pub type Refusal = Blocked;

impl Secrets {
    /// Builds the tables from the config's `[[secret]]`s.
    pub fn new(secrets: &[config::Secret]) -> Secrets {
        let mut scrub = Vec::new();
        for s in secrets {
            let ph = Action::Replace(s.placeholder.as_bytes().to_vec());
            scrub.push((s.value.as_bytes().to_vec(), ph.clone()));
            let (vj, pj) = (json_forms(&s.value), json_forms(&s.placeholder));
            for (i, v) in vj.into_iter().enumerate() {
                let p = pj
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| s.placeholder.clone().into_bytes());
                scrub.push((v, Action::Replace(p)));
            }
            let pb = base64_forms(s.placeholder.as_bytes());
            for (v, p) in base64_forms(s.value.as_bytes()).into_iter().zip(pb) {
                if v.len() >= 8 {
                    scrub.push((v, Action::Replace(p)));
                }
            }
        }
        let mut detect = Vec::new();
        for (i, s) in secrets.iter().enumerate() {
            detect.push((
                s.placeholder.as_bytes().to_vec(),
                Action::Block(i.to_string()),
            ));
            for f in base64_forms(s.placeholder.as_bytes()) {
                detect.push((f, Action::Block(i.to_string())));
            }
        }
        Secrets {
            entries: secrets.to_vec(),
            scrub: Arc::new(Patterns::new(scrub)),
            detect: Patterns::new(detect),
        }
    }

    /// Host names any secret is bound to (these are intercepted by default).
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .flat_map(|s| s.hosts.iter().map(String::as_str))
    }

    /// No secrets configured: nothing to substitute, block or scrub.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn bound(s: &config::Secret, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        s.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    fn refusal(s: &config::Secret, host: &str, place: &str) -> String {
        let to = if Self::bound(s, host) {
            format!("{host} in {place}; it is only substituted there in the Authorization, x-api-key and x-goog-api-key headers{}", if s.body { " and the request body" } else { " (request bodies need body = true in its [[secret]])" })
        } else {
            format!(
                "{host} ({place}), a host it is not bound to (hosts = {:?})",
                s.hosts
            )
        };
        format!("ax-netstack blocked this request: the placeholder of secret {} was sent to {to}. See docs/network.md, \"Secrets\".", s.name)
    }

    /// Patterns that block every form (raw, base64) of every placeholder.
    fn blockers(&self, host: &str, place: &str) -> Vec<(Vec<u8>, Action)> {
        let mut out = Vec::new();
        for s in &self.entries {
            let why = Action::Block(Self::refusal(s, host, place));
            out.push((s.placeholder.as_bytes().to_vec(), why.clone()));
            for f in base64_forms(s.placeholder.as_bytes()) {
                out.push((f, why.clone()));
            }
        }
        out
    }

    /// Refuses `data` if it holds any form of any placeholder.
    fn check(&self, host: &str, place: &str, data: &[u8]) -> Result<(), Refusal> {
        match self.detect.rewrite_all(data) {
            Ok(_) => Ok(()),
            Err(Blocked(i)) => {
                let s = &self.entries[i.parse::<usize>().unwrap_or(0)];
                Err(Blocked(Self::refusal(s, host, place)))
            }
        }
    }

    /// Raw placeholders: bound secrets → their value, others → blocked. `subst` false: all
    /// blocked (a place where nothing is substituted).
    fn raw_table(
        &self,
        host: &str,
        place: &str,
        subst: impl Fn(&config::Secret) -> bool,
    ) -> Vec<(Vec<u8>, Action)> {
        self.entries
            .iter()
            .map(|s| {
                let a = if Self::bound(s, host) && subst(s) {
                    Action::Replace(s.value.as_bytes().to_vec())
                } else {
                    Action::Block(Self::refusal(s, host, place))
                };
                (s.placeholder.as_bytes().to_vec(), a)
            })
            .collect()
    }

    /// Substitutes placeholders in the request head for `host` (the request's authority, no
    /// port) and checks the URL: see the module docs for where. Errors: a placeholder where it
    /// may not go (the request must not be forwarded).
    pub fn rewrite_request_head(
        &self,
        host: &str,
        uri: &Uri,
        headers: &mut HeaderMap,
    ) -> Result<(), Refusal> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let url = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        self.check(host, "the URL", url.as_bytes())?;
        self.check(host, "the URL", &percent_decode(url.as_bytes()))?;
        let mut edits = Vec::new();
        for (name, value) in headers.iter() {
            let lname = name.as_str();
            let place = format!("header {lname}");
            let new = if SUBST_HEADERS.contains(&lname) {
                self.rewrite_credential_header(host, &place, value.as_bytes())?
            } else {
                self.check(host, &place, value.as_bytes())?;
                None
            };
            if let Some(v) = new {
                edits.push((name.clone(), value.clone(), v));
            }
        }
        for (name, old, new) in edits {
            let new = HeaderValue::from_bytes(&new).map_err(|_| {
                Blocked(format!(
                    "ax-netstack: header {name} is not valid after substitution"
                ))
            })?;
            let all: Vec<HeaderValue> = headers
                .get_all(&name)
                .iter()
                .map(|v| if *v == old { new.clone() } else { v.clone() })
                .collect();
            headers.remove(&name);
            for v in all {
                headers.append(name.clone(), v);
            }
        }
        Ok(())
    }

    /// Refuses request trailers (RFC 9110 §6.5) holding any placeholder form: nothing is
    /// substituted there.
    pub fn check_trailers(&self, host: &str, trailers: &HeaderMap) -> Result<(), Refusal> {
        for (name, value) in trailers {
            self.check(host, &format!("trailer {name}"), value.as_bytes())?;
        }
        Ok(())
    }

    /// One credential header value: `Basic` decoded/rewritten/re-encoded; otherwise raw
    /// placeholders substituted, base64 forms blocked.
    fn rewrite_credential_header(
        &self,
        host: &str,
        place: &str,
        v: &[u8],
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let basic = v.len() > 6 && v[..6].eq_ignore_ascii_case(b"basic ");
        if basic {
            let enc = v[6..].trim_ascii();
            if let Ok(dec) = STANDARD.decode(enc) {
                let table = Patterns::new(self.raw_table(host, place, |_| true));
                return Ok(table.rewrite_all(&dec)?.map(|user_pass| {
                    let mut out = v[..6].to_vec();
                    out.extend_from_slice(STANDARD.encode(user_pass).as_bytes());
                    out
                }));
            }
        }
        // Raw forms first: `Patterns::new` keeps the first entry of a duplicate needle, so the
        // blockers' raw forms do not override substitution.
        let mut table = self.raw_table(host, place, |_| true);
        table.extend(self.blockers(host, place));
        Patterns::new(table).rewrite_all(v)
    }

    /// The request body rewriter for `host`, or `None` when the body can pass unexamined
    /// (no secrets; or a request to an LLM API host (`llm`) with no body-substituted secret
    /// for `host`). Bound secrets with `body = true` are substituted; any other placeholder
    /// form blocks (not for `llm` requests, where they pass unchanged).
    pub fn request_body(&self, host: &str, llm: bool) -> Option<Stream> {
        if self.entries.is_empty() {
            return None;
        }
        let place = "the request body";
        let mut table: Vec<(Vec<u8>, Action)> = Vec::new();
        for s in &self.entries {
            let ph = s.placeholder.as_bytes().to_vec();
            if Self::bound(s, host) && s.body {
                table.push((ph, Action::Replace(s.value.as_bytes().to_vec())));
                for f in json_forms(&s.placeholder) {
                    let v = json_forms(&s.value)
                        .into_iter()
                        .next()
                        .unwrap_or(s.value.as_bytes().to_vec());
                    table.push((f, Action::Replace(v)));
                }
            } else if !llm {
                let why = Action::Block(Self::refusal(s, host, place));
                table.push((ph, why.clone()));
                for f in base64_forms(s.placeholder.as_bytes()) {
                    table.push((f, why.clone()));
                }
            }
        }
        (!table.is_empty()).then(|| Stream::new(Arc::new(Patterns::new(table))))
    }

    /// Scrubs real values out of response headers (in place): raw, JSON-escaped and base64
    /// forms become the placeholder's corresponding form. Values that would no longer be valid
    /// header values are dropped.
    pub fn scrub_headers(&self, headers: &mut HeaderMap) {
        if self.scrub.is_empty() {
            return;
        }
        let mut out = HeaderMap::with_capacity(headers.len());
        let mut changed = false;
        for (name, value) in headers.iter() {
            match self.scrub.rewrite_all(value.as_bytes()) {
                Ok(Some(v)) => {
                    changed = true;
                    if let Ok(v) = HeaderValue::from_bytes(&v) {
                        out.append(name.clone(), v);
                    }
                }
                _ => {
                    out.append(name.clone(), value.clone());
                }
            }
        }
        if changed {
            *headers = out;
        }
    }

    /// A streaming scrubber for a response body (decoded bytes), or `None` without secrets.
    pub fn scrubber(&self) -> Option<Stream> {
        (!self.scrub.is_empty()).then(|| Stream::new(self.scrub.clone()))
    }
}

/// `%XX` decoding (RFC 3986 §2.1); invalid escapes are kept as they are.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if s[i] == b'+' { b' ' } else { s[i] });
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests;
