use super::*;

#[test]
fn table_decides_each_known_path() {
    for (host, method, path, want) in [
        (
            ANT,
            "POST",
            "/v1/messages",
            Some(Metered(AnthropicMessages)),
        ),
        (
            ANT,
            "POST",
            "/v1/messages?beta=true",
            Some(Metered(AnthropicMessages)),
        ),
        (
            "API.Anthropic.com.",
            "POST",
            "/v1/messages/",
            Some(Metered(AnthropicMessages)),
        ),
        (ANT, "POST", "/v1/messages/count_tokens", Some(Free)),
        (ANT, "GET", "/v1/models", Some(Free)),
        (ANT, "GET", "/api/claude_code/settings", Some(Free)),
        (ANT, "POST", "/v1/messages/batches", Some(Refused)),
        (
            ANT,
            "GET",
            "/v1/messages/batches/msgbatch_1/results",
            Some(Refused),
        ),
        (ANT, "GET", "/v1/messages", Some(Refused)),
        (ANT, "POST", "/v1/complete", Some(Refused)),
        (
            OAI,
            "POST",
            "/v1/chat/completions",
            Some(Metered(OpenAiChat)),
        ),
        (OAI, "POST", "/v1/responses", Some(Metered(OpenAiResponses))),
        (OAI, "GET", "/v1/responses/resp_123", Some(Free)),
        (OAI, "POST", "/v1/responses/resp_123", Some(Refused)),
        (OAI, "POST", "/v1/completions", Some(Refused)),
        (OAI, "POST", "/v1/batches", Some(Refused)),
        (OAI, "POST", "/v1/images/generations", Some(Refused)),
        (OAI, "POST", "/v1/audio/speech", Some(Refused)),
        (OAI, "POST", "/v1/audio/transcriptions", Some(Refused)),
        (OAI, "GET", "/v1/realtime", Some(Refused)),
        (OAI, "POST", "/v1/embeddings", Some(Refused)),
        (
            CGPT,
            "POST",
            "/backend-api/codex/responses",
            Some(Metered(OpenAiResponses)),
        ),
        (CGPT, "GET", "/backend-api/conversation", Some(Refused)),
        (
            GEM,
            "POST",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            Some(Metered(Gemini)),
        ),
        (
            GEM,
            "POST",
            "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            Some(Metered(Gemini)),
        ),
        (
            GEM,
            "POST",
            "/v1beta/models/gemini-2.5-pro:countTokens",
            Some(Free),
        ),
        (GEM, "GET", "/v1beta/models", Some(Free)),
        (
            GEM,
            "POST",
            "/v1beta/models/gemini-2.5-pro:batchGenerateContent",
            Some(Refused),
        ),
        (
            GEM,
            "POST",
            "/v1beta/models/imagen-4:predict",
            Some(Refused),
        ),
        (
            GEM,
            "GET",
            "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
            Some(Refused),
        ),
        // Tricks that look like a metered path to a naive matcher.
        (
            ANT,
            "POST",
            "/v1/messages/../messages/batches",
            Some(Refused),
        ),
        (ANT, "POST", "/v1/%6dessages/batches", Some(Refused)),
        (ANT, "POST", "//v1/messages", Some(Refused)),
        ("example.com", "POST", "/v1/messages/batches", None),
    ] {
        assert_eq!(route(host, method, path), want, "{method} {host}{path}");
    }
}

#[test]
fn provider_hosts_are_those_of_the_table() {
    assert!(is_provider_host("api.openai.com."));
    assert!(!is_provider_host("api.github.com"));
    for h in crate::policy::LLM_HOSTS {
        assert!(is_provider_host(h), "{h} has no rows");
    }
}

#[test]
fn refusal_names_the_path_without_query() {
    let t = refusal(OAI, "POST", "/v1/completions?key=x");
    assert!(t.contains("POST /v1/completions on api.openai.com"), "{t}");
    assert!(!t.contains("key=x"));
}
