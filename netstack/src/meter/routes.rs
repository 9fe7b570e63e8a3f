//! The metering route table: what a request to an LLM provider host may do once it carries a
//! substituted provider credential. Fail-closed: every (host, method, path) is either
//! [`Route::Metered`] (a usage parser understands its response and the spend cap applies),
//! [`Route::Free`] (documented to cost nothing: token counting, model listing, retrieval of
//! stored objects, the CLIs' settings requests), or refused with 403 and a reason naming the
//! path. A path not in [`TABLE`] is refused: new provider endpoints are closed until someone
//! decides how to meter them. Reference: `docs/metering.md` (the same table, with reasons).

use super::Provider;

/// What the proxy does with a request that carries a substituted credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// An LLM call: forwarded, capped, metered by this API's usage parser.
    Metered(Provider),
    /// Costs nothing by the provider's documentation: forwarded, not capped, not metered.
    Free,
    /// Refused with 403 before it leaves (costs money we cannot meter, or unknown).
    Refused,
}

/// One row of the table. `pattern` is a path (no query) matched segment by segment: a literal
/// segment matches itself; `*` any one segment; `*:verb` any segment ending in `:verb`; a last
/// `**` any number (≥ 0) of further segments.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Lower-case host name.
    pub host: &'static str,
    /// `GET`, `POST`, … (upper-case).
    pub method: &'static str,
    /// The path pattern.
    pub pattern: &'static str,
    /// What matching requests get.
    pub route: Route,
}

const fn r(host: &'static str, method: &'static str, pattern: &'static str, route: Route) -> Rule {
    Rule {
        host,
        method,
        pattern,
        route,
    }
}

const ANT: &str = "api.anthropic.com";
const OAI: &str = "api.openai.com";
const CGPT: &str = "chatgpt.com";
const GEM: &str = "generativelanguage.googleapis.com";

use Provider::*;
use Route::*;

/// The table (first matching row wins; no row: [`Route::Refused`]). Why each row is what it
/// is: `docs/metering.md`, "The route table".
pub const TABLE: &[Rule] = &[
    // Anthropic (docs.anthropic.com API reference).
    r(ANT, "POST", "/v1/messages", Metered(AnthropicMessages)),
    r(ANT, "POST", "/v1/messages/count_tokens", Free),
    r(ANT, "GET", "/v1/models", Free),
    r(ANT, "GET", "/v1/models/*", Free),
    // Claude Code's startup requests (managed settings and plan limits; GET, no generation).
    r(ANT, "GET", "/api/claude_code/settings", Free),
    r(ANT, "GET", "/api/claude_code/policy_limits", Free),
    // OpenAI (platform.openai.com API reference).
    r(OAI, "POST", "/v1/chat/completions", Metered(OpenAiChat)),
    r(OAI, "POST", "/v1/responses", Metered(OpenAiResponses)),
    r(
        OAI,
        "POST",
        "/v1/responses/compact",
        Metered(OpenAiResponses),
    ),
    r(OAI, "POST", "/v1/responses/input_tokens", Free),
    r(OAI, "GET", "/v1/responses/*", Free),
    r(OAI, "GET", "/v1/responses/*/input_items", Free),
    r(OAI, "POST", "/v1/responses/*/cancel", Free),
    r(OAI, "DELETE", "/v1/responses/*", Free),
    r(OAI, "GET", "/v1/models", Free),
    r(OAI, "GET", "/v1/models/*", Free),
    // Codex with ChatGPT sign-in.
    r(
        CGPT,
        "POST",
        "/backend-api/codex/responses",
        Metered(OpenAiResponses),
    ),
    r(
        CGPT,
        "POST",
        "/backend-api/codex/responses/compact",
        Metered(OpenAiResponses),
    ),
    r(CGPT, "GET", "/backend-api/codex/models", Free),
    r(CGPT, "GET", "/backend-api/wham/usage", Free),
    // Gemini API (ai.google.dev API reference), each version.
    r(GEM, "POST", "/*/models/*:generateContent", Metered(Gemini)),
    r(
        GEM,
        "POST",
        "/*/models/*:streamGenerateContent",
        Metered(Gemini),
    ),
    r(GEM, "POST", "/*/models/*:countTokens", Free),
    r(GEM, "GET", "/*/models", Free),
    r(GEM, "GET", "/*/models/*", Free),
];

/// Whether `host` is governed by the table (one of the LLM provider API hosts).
pub fn is_provider_host(host: &str) -> bool {
    let host = normalize_host(host);
    TABLE.iter().any(|r| r.host == host)
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern.split('/').skip(1);
    let mut segs = path.split('/').skip(1);
    loop {
        match (pat.next(), segs.next()) {
            (Some("**"), _) => return true,
            (None, None) => return true,
            (Some(p), Some(s)) => {
                let ok = match p.strip_prefix('*') {
                    Some("") => !s.is_empty(),
                    Some(verb) => s.len() > verb.len() && s.ends_with(verb),
                    None => p == s,
                };
                if !ok {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The route of a request to `host` (SNI-verified name) with `method` and `path` (a query
/// string is ignored; one trailing `/` too), or `None` when `host` is not a provider host.
pub fn route(host: &str, method: &str, path: &str) -> Option<Route> {
    let host = normalize_host(host);
    if !TABLE.iter().any(|r| r.host == host) {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    // Percent-escapes and dot segments would let one path look like another to the table but
    // not to the provider: such paths are refused outright.
    if path.contains('%') || path.split('/').any(|s| s == "." || s == "..") || path.contains("//") {
        return Some(Refused);
    }
    Some(
        TABLE
            .iter()
            .find(|r| {
                r.host == host && r.method.eq_ignore_ascii_case(method) && matches(r.pattern, path)
            })
            .map(|r| r.route)
            .unwrap_or(Refused),
    )
}

/// The 403 text for a refused request: names the method, host and path and says what to do.
pub fn refusal(host: &str, method: &str, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    format!(
        "ax-netstack refused {method} {path} on {host}: this endpoint would be sent with the real API key but is not metered (batches, legacy completions, images, audio, realtime/WebSocket and unknown endpoints are refused so the spend cap holds). Use a metered endpoint (docs/metering.md lists them)."
    )
}

#[cfg(test)]
mod tests;
