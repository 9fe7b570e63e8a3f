//! Metering and audit: usage parsed from provider responses (Anthropic Messages, OpenAI Chat
//! Completions and Responses, Gemini), priced from the price table, checked against the spend
//! cap, and recorded in the ledger; plus per-connection and per-request audit records.
//!
//! The TLS proxy drives it per intercepted HTTP request:
//! 1. [`Meter::provider_for`] (host, path) — `None`: not an LLM call, nothing is metered;
//! 2. [`Meter::check_cap`] — `Err`: answer 429 with the error's `Display` as the body;
//! 3. [`Meter::begin`] → [`CallMeter`]; then [`CallMeter::response_head`], every decoded body
//!    chunk through [`CallMeter::body_chunk`] (parsed on the side, never held back), and
//!    [`CallMeter::finish`] which writes the ledger row durably.
//!
//! Ledger and audit schema: `docs/ledger.md`.

mod audit;
mod calls;
pub mod ledger;
pub mod prices;
pub mod request;
pub mod routes;
pub mod usage;

pub use audit::{Audit, ConnRecord, RequestRecord};
pub use calls::{CallMeter, CapExceeded, Meter, Outcome, Refused, Reservation};

/// The API format of an LLM call, decided from the host and path of the request
/// ([`Meter::provider_for`]). It selects the usage parser; [`Provider::vendor`] is the
/// `provider` column of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Anthropic Messages API, `POST /v1/messages` (JSON or SSE).
    AnthropicMessages,
    /// OpenAI Chat Completions, `POST /v1/chat/completions` (JSON or SSE).
    OpenAiChat,
    /// OpenAI Responses, `POST /v1/responses` (also Codex on chatgpt.com
    /// `/backend-api/codex/responses`), JSON or SSE.
    OpenAiResponses,
    /// Gemini `models/{model}:generateContent` / `:streamGenerateContent` (JSON, JSON array, or
    /// SSE with `alt=sse`).
    Gemini,
}

impl Provider {
    /// The vendor name recorded in the ledger: `anthropic`, `openai` or `gemini`.
    pub fn vendor(self) -> &'static str {
        match self {
            Provider::AnthropicMessages => "anthropic",
            Provider::OpenAiChat | Provider::OpenAiResponses => "openai",
            Provider::Gemini => "gemini",
        }
    }

    /// The API name (log lines): `messages`, `chat.completions`, `responses`, `gemini`.
    pub fn api(self) -> &'static str {
        match self {
            Provider::AnthropicMessages => "messages",
            Provider::OpenAiChat => "chat.completions",
            Provider::OpenAiResponses => "responses",
            Provider::Gemini => "generateContent",
        }
    }

    /// Which API a request to `host` + `path` (no query string) is, if it is a metered LLM call.
    /// Hosts are the known public API hosts (case-insensitive): api.anthropic.com,
    /// api.openai.com, chatgpt.com (Codex), generativelanguage.googleapis.com.
    pub fn detect(host: &str, path: &str) -> Option<Provider> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let path = path.split('?').next().unwrap_or("");
        let path = path.trim_end_matches('/');
        match host.as_str() {
            "api.anthropic.com" => (path == "/v1/messages").then_some(Provider::AnthropicMessages),
            "api.openai.com" => match path {
                "/v1/chat/completions" => Some(Provider::OpenAiChat),
                "/v1/responses" => Some(Provider::OpenAiResponses),
                _ => None,
            },
            "chatgpt.com" => {
                (path == "/backend-api/codex/responses").then_some(Provider::OpenAiResponses)
            }
            "generativelanguage.googleapis.com" => {
                let last = path.rsplit('/').next().unwrap_or("");
                (path.contains("/models/")
                    && (last.ends_with(":generateContent")
                        || last.ends_with(":streamGenerateContent")))
                .then_some(Provider::Gemini)
            }
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch (ledger `time_ms`).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_known_apis() {
        use Provider::*;
        for (host, path, want) in [
            ("api.anthropic.com", "/v1/messages", Some(AnthropicMessages)),
            (
                "API.Anthropic.com.",
                "/v1/messages?beta=true",
                Some(AnthropicMessages),
            ),
            ("api.anthropic.com", "/v1/messages/count_tokens", None),
            ("api.anthropic.com", "/v1/models", None),
            ("api.openai.com", "/v1/chat/completions", Some(OpenAiChat)),
            ("api.openai.com", "/v1/responses", Some(OpenAiResponses)),
            ("api.openai.com", "/v1/embeddings", None),
            (
                "chatgpt.com",
                "/backend-api/codex/responses",
                Some(OpenAiResponses),
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                Some(Gemini),
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.5-pro:generateContent",
                Some(Gemini),
            ),
            ("generativelanguage.googleapis.com", "/v1beta/models", None),
            ("example.com", "/v1/messages", None),
        ] {
            assert_eq!(Provider::detect(host, path), want, "{host}{path}");
        }
    }
}
