//! Anthropic Messages API usage (docs.anthropic.com "Messages", "Streaming Messages",
//! "Prompt caching").
//!
//! - Non-streaming: the response object `{ "model", "usage": { "input_tokens",
//!   "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens" } }`.
//! - SSE: `message_start` carries `message.model` and `message.usage` (input and cache counts,
//!   a first output count); each `message_delta` carries `usage` with the *cumulative*
//!   `output_tokens` (and, in newer API versions, cumulative input/cache counts too).
//!
//! `input_tokens` excludes cache reads and writes, so the four counts are disjoint.
//! `usage.cache_creation.ephemeral_1h_input_tokens` (the 1-hour part of the cache writes) is
//! kept apart for pricing.

use super::{u64_at, Usage};
use serde_json::Value;

/// Applies one response object or SSE event `v`; returns whether it carried usage.
pub fn apply(u: &mut Usage, v: &Value) -> bool {
    let obj = match v.get("type").and_then(Value::as_str) {
        Some("message_start") => v.get("message").unwrap_or(&Value::Null),
        _ => v,
    };
    if let Some(m) = obj.get("model").and_then(Value::as_str) {
        u.model = Some(m.to_string());
    }
    let Some(usage) = obj.get("usage").filter(|x| x.is_object()) else {
        return false;
    };
    // Fields present override (message_delta counts are cumulative); absent ones are kept.
    if let Some(n) = u64_at(usage, &["input_tokens"]) {
        u.input = n;
    }
    if let Some(n) = u64_at(usage, &["output_tokens"]) {
        u.output = n;
    }
    if let Some(n) = u64_at(usage, &["cache_read_input_tokens"]) {
        u.cache_read = n;
    }
    if let Some(n) = u64_at(usage, &["cache_creation_input_tokens"]) {
        u.cache_write = n;
    }
    if let Some(n) = u64_at(usage, &["cache_creation", "ephemeral_1h_input_tokens"]) {
        u.cache_write_1h = n;
    }
    true
}
