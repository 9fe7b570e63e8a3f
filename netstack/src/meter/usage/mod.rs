//! Usage parsing from LLM responses, on the side of the relayed stream: the proxy hands every
//! decoded body chunk to a [`Parser`] and forwards it unchanged; nothing here holds the stream
//! back. SSE bodies are decoded event by event ([`sse`]); only events that can carry usage (or
//! the first one, for the model) are parsed as JSON. Non-streaming JSON bodies are kept up to
//! [`MAX_JSON_BODY`] and parsed at the end.
//!
//! Provider formats: [`anthropic`], [`openai`], [`gemini`].

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod sse;
pub mod strip;

use super::Provider;
use serde_json::Value;

/// The most a non-streaming (JSON) response body is kept for parsing: 8 MiB. Past it the call
/// is not metered (logged with the reason) while the bytes still flow to the guest untouched.
pub const MAX_JSON_BODY: usize = 8 << 20;

/// The longest SSE line (one event's `data:`) that is decoded: 8 MiB; longer lines are
/// skipped (usage-bearing events are small).
pub const MAX_SSE_LINE: usize = 8 << 20;

/// Token counts of one call, by kind. Disjoint: `input` excludes cache reads and writes, and
/// `output` includes reasoning/thinking tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// The model the response names, if seen.
    pub model: Option<String>,
    /// Uncached input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write: u64,
    /// The part of `cache_write` that went to a 1-hour cache (Anthropic), priced apart.
    pub cache_write_1h: u64,
}

impl Usage {
    /// All tokens of all kinds (what `[limits] max_tokens` counts).
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }
}

/// The number at `path` in `v`, if it is a non-negative integer.
pub(crate) fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_u64()
}

/// The model a request names in its path (Gemini `…/models/{model}:generateContent`), if any.
/// Used when the response names none.
pub fn model_from_path(provider: Provider, path: &str) -> Option<String> {
    if provider != Provider::Gemini {
        return None;
    }
    let path = path.split('?').next().unwrap_or("");
    let tail = &path[path.rfind("/models/")? + "/models/".len()..];
    let model = tail.split(':').next().unwrap_or("");
    (!model.is_empty()).then(|| model.to_string())
}

fn apply(provider: Provider, u: &mut Usage, v: &Value) -> bool {
    match provider {
        Provider::AnthropicMessages => anthropic::apply(u, v),
        Provider::OpenAiChat => openai::apply_chat(u, v),
        Provider::OpenAiResponses => openai::apply_responses(u, v),
        Provider::Gemini => gemini::apply(u, v),
    }
}

enum Body {
    Sse(sse::SseDecoder),
    /// The body so far; `None` once it grew past [`MAX_JSON_BODY`].
    Json(Option<Vec<u8>>),
}

/// Incremental usage parser of one response body.
pub struct Parser {
    provider: Provider,
    body: Body,
    usage: Usage,
    found: bool,
    events: u64,
    bad_events: u64,
}

impl Parser {
    /// A parser for `provider`'s format; `sse`: the body is `text/event-stream`.
    pub fn new(provider: Provider, sse: bool) -> Parser {
        Parser {
            provider,
            body: if sse {
                Body::Sse(sse::SseDecoder::new(MAX_SSE_LINE))
            } else {
                Body::Json(Some(Vec::new()))
            },
            usage: Usage::default(),
            found: false,
            events: 0,
            bad_events: 0,
        }
    }

    /// Feeds the next decoded body bytes (any split).
    pub fn feed(&mut self, chunk: &[u8]) {
        let provider = self.provider;
        let (usage, found, events, bad) = (
            &mut self.usage,
            &mut self.found,
            &mut self.events,
            &mut self.bad_events,
        );
        match &mut self.body {
            Body::Sse(d) => d.feed(chunk, &mut |_event, data| {
                on_event(provider, usage, found, events, bad, data)
            }),
            Body::Json(buf) => {
                if let Some(b) = buf {
                    if b.len() + chunk.len() > MAX_JSON_BODY {
                        *buf = None;
                    } else {
                        b.extend_from_slice(chunk);
                    }
                }
            }
        }
    }

    /// The usage seen, and a note when the body could not be (fully) metered: no usage in it,
    /// too large, not JSON. Usage seen before a problem is kept.
    pub fn finish(mut self) -> (Usage, Option<String>) {
        let provider = self.provider;
        let note = match &mut self.body {
            Body::Sse(d) => {
                let (usage, found, events, bad) = (
                    &mut self.usage,
                    &mut self.found,
                    &mut self.events,
                    &mut self.bad_events,
                );
                d.finish(&mut |_event, data| on_event(provider, usage, found, events, bad, data));
                if d.dropped() > 0 {
                    Some(format!(
                        "{} SSE line(s) longer than {MAX_SSE_LINE} bytes skipped",
                        d.dropped()
                    ))
                } else if !self.found {
                    Some(format!(
                        "no usage in {} SSE event(s){}",
                        self.events,
                        if self.provider == Provider::OpenAiChat {
                            " (the client did not ask for stream_options.include_usage)"
                        } else {
                            ""
                        }
                    ))
                } else if self.bad_events > 0 {
                    Some(format!("{} SSE event(s) were not JSON", self.bad_events))
                } else {
                    None
                }
            }
            Body::Json(None) => Some(format!(
                "response body larger than {} MiB; not parsed",
                MAX_JSON_BODY >> 20
            )),
            Body::Json(Some(b)) => match serde_json::from_slice::<Value>(b) {
                Ok(v) => {
                    self.found = apply(provider, &mut self.usage, &v);
                    (!self.found).then(|| "no usage in the response body".to_string())
                }
                Err(e) => Some(format!("response body is not JSON ({e})")),
            },
        };
        (self.usage, note)
    }
}

fn on_event(
    provider: Provider,
    usage: &mut Usage,
    found: &mut bool,
    events: &mut u64,
    bad: &mut u64,
    data: &str,
) {
    *events += 1;
    // Cheap filter: only the first event (model) and events mentioning usage are parsed;
    // content deltas are skipped without a JSON parse.
    if *events > 1 && !data.contains("sage") {
        return;
    }
    let data = data.trim();
    if data.is_empty() || data == "[DONE]" {
        return;
    }
    match serde_json::from_str::<Value>(data) {
        Ok(v) => *found |= apply(provider, usage, &v),
        Err(_) => *bad += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_model_from_path() {
        assert_eq!(
            model_from_path(
                Provider::Gemini,
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
            )
            .as_deref(),
            Some("gemini-2.5-flash")
        );
        assert_eq!(
            model_from_path(Provider::OpenAiChat, "/v1/models/x:y"),
            None
        );
    }

    #[test]
    fn oversized_json_is_not_buffered() {
        let mut p = Parser::new(Provider::AnthropicMessages, false);
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..9 {
            p.feed(&chunk);
        }
        assert!(matches!(p.body, Body::Json(None)));
        let (u, note) = p.finish();
        assert_eq!(u, Usage::default());
        assert!(note.unwrap().contains("larger than 8 MiB"));
    }
}
