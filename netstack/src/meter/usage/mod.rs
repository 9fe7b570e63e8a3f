//! Usage parsing from LLM responses, on the side of the relayed stream.
//! SKELETON: parsers land next.

use super::Provider;

/// The most a non-streaming (JSON) response body is kept for parsing; past it the call is not
/// metered (logged with the reason) while the bytes still flow to the guest untouched.
pub const MAX_JSON_BODY: usize = 8 << 20;

/// Token counts of one call, by kind (disjoint: `input` excludes cached tokens).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub model: Option<String>,
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Usage {
    /// All tokens of all kinds (what `[limits] max_tokens` counts).
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }
}

/// The model a request names in its path (Gemini `…/models/{model}:…`), if any.
pub fn model_from_path(provider: Provider, path: &str) -> Option<String> {
    let _ = (provider, path);
    None
}

/// Incremental parser of one response body.
pub struct Parser {}

impl Parser {
    /// A parser for `provider`'s format; `sse`: the body is `text/event-stream`.
    pub fn new(provider: Provider, sse: bool) -> Parser {
        let _ = (provider, sse);
        Parser {}
    }

    /// Feeds the next bytes.
    pub fn feed(&mut self, chunk: &[u8]) {
        let _ = chunk;
    }

    /// The usage seen, and a note if the body could not be (fully) metered.
    pub fn finish(self) -> (Usage, Option<String>) {
        (Usage::default(), None)
    }
}
