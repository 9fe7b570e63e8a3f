//! Gemini API usage (ai.google.dev API reference, "Generating content":
//! `GenerateContentResponse.usageMetadata`, `modelVersion`; `streamGenerateContent` returns a
//! JSON array of such responses, or with `?alt=sse` one SSE `data:` event each).
//!
//! `usageMetadata { promptTokenCount, candidatesTokenCount, cachedContentTokenCount,
//! thoughtsTokenCount, toolUsePromptTokenCount }`: the prompt count includes the cached
//! content, so input = prompt + tool-use prompt − cached, cache reads = cached; output =
//! candidates + thoughts (thinking is billed as output). In a stream each chunk carries the
//! running totals, so the last one wins.

use super::{u64_at, Usage};
use serde_json::Value;

/// Applies one `GenerateContentResponse` (or an array of them); returns whether usage was seen.
pub fn apply(u: &mut Usage, v: &Value) -> bool {
    if let Some(items) = v.as_array() {
        let mut any = false;
        for item in items {
            any |= apply(u, item);
        }
        return any;
    }
    if let Some(m) = v.get("modelVersion").and_then(Value::as_str) {
        u.model = Some(m.to_string());
    }
    let Some(meta) = v.get("usageMetadata").filter(|x| x.is_object()) else {
        return false;
    };
    let prompt = u64_at(meta, &["promptTokenCount"]).unwrap_or(0)
        + u64_at(meta, &["toolUsePromptTokenCount"]).unwrap_or(0);
    let cached = u64_at(meta, &["cachedContentTokenCount"]).unwrap_or(0);
    u.input = prompt.saturating_sub(cached);
    u.cache_read = cached;
    u.output = u64_at(meta, &["candidatesTokenCount"]).unwrap_or(0)
        + u64_at(meta, &["thoughtsTokenCount"]).unwrap_or(0);
    u.cache_write = 0;
    true
}
