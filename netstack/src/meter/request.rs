//! What the meter reads from an LLM request body before it is forwarded: the model, the most
//! output it may produce (for the worst-case reservation, `docs/metering.md`, "Reservations"),
//! and the OpenAI Chat streaming option that makes a stream report usage, which the proxy adds
//! when the client left it out.
//!
//! Fields (each provider's API reference): Anthropic Messages `model`, `max_tokens`; OpenAI
//! Chat `model`, `max_completion_tokens` (else the older `max_tokens`), `n`, `stream`,
//! `stream_options.include_usage`; OpenAI Responses `model`, `max_output_tokens`,
//! `background`; Gemini `generationConfig.maxOutputTokens`, `generationConfig.candidateCount`
//! (the model is in the path).

use super::Provider;
use serde_json::Value;

/// The most a metered request body may be (it is held whole to read these fields, and its
/// size bounds the input estimate): 32 MiB, Anthropic's documented request size limit. A
/// larger body is refused with 413.
pub const MAX_REQUEST_BODY: usize = 32 << 20;

/// The output tokens reserved for a request that sets no limit: 128,000, the largest output
/// limit of the current models in the price table (a request that sets one is reserved at its
/// own limit).
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 128_000;

/// The fields of one request the meter uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// The `model` field (Gemini: `None`; the path names it).
    pub model: Option<String>,
    /// The output limit the request sets × the number of choices/candidates; `None`: none set.
    pub max_output: Option<u64>,
    /// OpenAI Chat: `stream` is true and `stream_options.include_usage` is not.
    pub chat_stream_without_usage: bool,
    /// OpenAI Responses: `background` is true (the response is produced after the request
    /// returns, with nothing left to meter).
    pub background: bool,
    /// The body is a JSON object.
    pub json: bool,
}

impl RequestInfo {
    /// Reads `body` (any bytes: a body that is not a JSON object gives the defaults).
    pub fn parse(provider: Provider, body: &[u8]) -> RequestInfo {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return RequestInfo::default();
        };
        if !v.is_object() {
            return RequestInfo::default();
        }
        let num = |p: &[&str]| super::usage::u64_at(&v, p);
        let (limit, count) = match provider {
            Provider::AnthropicMessages => (num(&["max_tokens"]), None),
            Provider::OpenAiChat => (
                num(&["max_completion_tokens"]).or(num(&["max_tokens"])),
                num(&["n"]),
            ),
            Provider::OpenAiResponses => (num(&["max_output_tokens"]), None),
            Provider::Gemini => (
                num(&["generationConfig", "maxOutputTokens"]),
                num(&["generationConfig", "candidateCount"]),
            ),
        };
        let count = count.unwrap_or(1).max(1);
        let stream = v.get("stream").and_then(Value::as_bool) == Some(true);
        let include = v
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        RequestInfo {
            model: v.get("model").and_then(Value::as_str).map(str::to_string),
            max_output: limit.map(|l| l.saturating_mul(count)),
            chat_stream_without_usage: provider == Provider::OpenAiChat && stream && !include,
            background: provider == Provider::OpenAiResponses
                && v.get("background").and_then(Value::as_bool) == Some(true),
            json: true,
        }
    }

    /// The output tokens to reserve: the request's limit, else [`DEFAULT_MAX_OUTPUT_TOKENS`]
    /// × the number of choices.
    pub fn reserve_output(&self) -> u64 {
        self.max_output.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)
    }
}

/// An OpenAI Chat request body with `stream_options.include_usage = true` set (other
/// `stream_options` kept), re-serialised; `None` when `body` is not a JSON object. The
/// stream then ends with one extra chunk (empty `choices`, the `usage`), which the proxy
/// removes before the guest sees it ([`UsageChunkFilter`](super::usage::strip::UsageChunkFilter)).
pub fn add_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut v = serde_json::from_slice::<Value>(body).ok()?;
    let obj = v.as_object_mut()?;
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    if !opts.is_object() {
        *opts = Value::Object(Default::default());
    }
    opts.as_object_mut()?
        .insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_provider() {
        let a = RequestInfo::parse(
            Provider::AnthropicMessages,
            br#"{"model":"claude-opus-5-5","max_tokens":32000,"stream":true}"#,
        );
        assert_eq!(a.model.as_deref(), Some("claude-opus-5-5"));
        assert_eq!(
            (a.max_output, a.chat_stream_without_usage),
            (Some(32000), false)
        );
        let c = RequestInfo::parse(
            Provider::OpenAiChat,
            br#"{"model":"gpt-4.1","max_tokens":100,"max_completion_tokens":300,"n":3,"stream":true}"#,
        );
        assert_eq!(
            (c.max_output, c.chat_stream_without_usage),
            (Some(900), true)
        );
        let c = RequestInfo::parse(
            Provider::OpenAiChat,
            br#"{"model":"gpt-4.1","stream":true,"stream_options":{"include_usage":true}}"#,
        );
        assert!(!c.chat_stream_without_usage);
        assert_eq!(c.reserve_output(), DEFAULT_MAX_OUTPUT_TOKENS);
        let r = RequestInfo::parse(
            Provider::OpenAiResponses,
            br#"{"model":"gpt-5","background":true,"max_output_tokens":50}"#,
        );
        assert_eq!((r.background, r.max_output), (true, Some(50)));
        let g = RequestInfo::parse(
            Provider::Gemini,
            br#"{"generationConfig":{"maxOutputTokens":2048,"candidateCount":2}}"#,
        );
        assert_eq!((g.model, g.max_output), (None, Some(4096)));
        let junk = RequestInfo::parse(Provider::OpenAiChat, b"\x00not json");
        assert_eq!(junk, RequestInfo::default());
    }

    #[test]
    fn include_usage_is_added_and_other_options_kept() {
        let out = add_include_usage(
            br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false}}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
        assert_eq!(v["model"], "m");
        let v: Value =
            serde_json::from_slice(&add_include_usage(br#"{"stream":true}"#).unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(add_include_usage(b"[1,2]").is_none());
        assert!(add_include_usage(b"data").is_none());
    }
}
