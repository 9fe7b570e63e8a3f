//! OpenAI usage: Chat Completions and Responses (platform.openai.com API reference,
//! "Chat Completions object", "Chat Completions streaming" with
//! `stream_options.include_usage`, "Responses object", "Responses streaming events").
//!
//! - Chat Completions: `usage { prompt_tokens, completion_tokens,
//!   prompt_tokens_details.cached_tokens }`; in SSE every chunk has `usage: null` except a final
//!   chunk (empty `choices`) when `include_usage` was requested; `data: [DONE]` ends the stream.
//! - Responses: `usage { input_tokens, output_tokens, input_tokens_details.cached_tokens,
//!   output_tokens_details.reasoning_tokens }`; in SSE the `response.completed` (or
//!   `response.incomplete` / `response.failed`) event carries the final `response.usage`.
//!
//! Cached tokens are part of the prompt/input count: recorded as `input - cached` uncached input
//! plus `cached` cache reads. Reasoning tokens are part of the output count. OpenAI reports no
//! cache writes.

use super::{u64_at, Usage};
use serde_json::Value;

/// Applies a Chat Completions response or SSE chunk; returns whether it carried usage.
pub fn apply_chat(u: &mut Usage, v: &Value) -> bool {
    if let Some(m) = v.get("model").and_then(Value::as_str) {
        u.model = Some(m.to_string());
    }
    let Some(usage) = v.get("usage").filter(|x| x.is_object()) else {
        return false;
    };
    let prompt = u64_at(usage, &["prompt_tokens"]).unwrap_or(0);
    let cached = u64_at(usage, &["prompt_tokens_details", "cached_tokens"]).unwrap_or(0);
    u.input = prompt.saturating_sub(cached);
    u.cache_read = cached;
    u.output = u64_at(usage, &["completion_tokens"]).unwrap_or(0);
    u.cache_write = 0;
    true
}

/// Applies a Responses object or SSE event (`response.*` events wrap it in `response`);
/// returns whether it carried usage.
pub fn apply_responses(u: &mut Usage, v: &Value) -> bool {
    let obj = match v.get("response") {
        Some(r) if r.is_object() => r,
        _ => v,
    };
    if let Some(m) = obj.get("model").and_then(Value::as_str) {
        u.model = Some(m.to_string());
    }
    let Some(usage) = obj.get("usage").filter(|x| x.is_object()) else {
        return false;
    };
    let input = u64_at(usage, &["input_tokens"]).unwrap_or(0);
    let cached = u64_at(usage, &["input_tokens_details", "cached_tokens"]).unwrap_or(0);
    u.input = input.saturating_sub(cached);
    u.cache_read = cached;
    u.output = u64_at(usage, &["output_tokens"]).unwrap_or(0);
    u.cache_write = 0;
    true
}
