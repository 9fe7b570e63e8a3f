//! ax-netstack's usage parsers (docs/metering.md): the response bodies of LLM providers,
//! JSON or SSE, as the upstream (or a guest-chosen upstream) sends them.

use ax_netstack::meter::usage::Parser;
use ax_netstack::meter::Provider;

use crate::Chunks;

/// Input: a flags byte (bit 0: SSE), a chunking seed, the body. The usage and note do not
/// depend on how the body was split.
fn meter(provider: Provider, data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let sse = flags & 1 != 0;
    let chunks = Chunks::new(rest);
    let whole = chunks.stream();
    let mut p = Parser::new(provider, sse);
    for c in chunks {
        p.feed(c);
    }
    let streamed = p.finish();
    let mut p = Parser::new(provider, sse);
    p.feed(whole);
    let single = p.finish();
    assert_eq!(streamed.0, single.0, "chunking changed the usage");
    assert_eq!(
        streamed.1.is_some(),
        single.1.is_some(),
        "chunking changed the note"
    );
}

/// Anthropic Messages (`/v1/messages`).
pub fn anthropic(data: &[u8]) {
    meter(Provider::AnthropicMessages, data)
}

/// OpenAI Chat Completions.
pub fn openai_chat(data: &[u8]) {
    meter(Provider::OpenAiChat, data)
}

/// OpenAI Responses.
pub fn openai_responses(data: &[u8]) {
    meter(Provider::OpenAiResponses, data)
}

/// Gemini generateContent / streamGenerateContent.
pub fn gemini(data: &[u8]) {
    meter(Provider::Gemini, data)
}
