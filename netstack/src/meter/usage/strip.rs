//! Removal of the usage-only chunk from an OpenAI Chat Completions stream whose
//! `stream_options.include_usage` the proxy added (the client did not ask for it): with the
//! option, the stream ends with one extra chunk whose `choices` is empty and whose `usage` is
//! set (platform.openai.com API reference, "Chat Completions streaming"); a client that did
//! not ask for it may not expect a chunk without choices. Every other event passes unchanged,
//! byte for byte, as soon as its terminating blank line arrives (WHATWG HTML §9.2.6 event
//! stream format: events end at an empty line; CRLF, LF or CR line ends).

use bytes::Bytes;
use serde_json::Value;

/// The longest event held back while waiting for its end: 8 MiB; longer events pass unchanged
/// (a usage-only chunk is small).
pub const MAX_EVENT: usize = 8 << 20;

/// Streaming filter over decoded SSE bytes.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    /// Bytes of the event not yet ended.
    held: Vec<u8>,
    /// Usage-only chunks removed so far.
    removed: u64,
}

/// Where the first event in `b` ends (index just past its blank line), if it does.
fn event_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        // A line end is \r\n, \n or \r; an event ends at a line end followed by another.
        let le = match b[i] {
            b'\r' if b.get(i + 1) == Some(&b'\n') => 2,
            b'\r' | b'\n' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        if b[i] == b'\r' && le == 1 && i + 1 == b.len() {
            return None; // a lone \r at the end may be the start of \r\n
        }
        let j = i + le;
        match b.get(j) {
            Some(b'\n') => return Some(j + 1),
            Some(b'\r') if b.get(j + 1) == Some(&b'\n') => return Some(j + 2),
            Some(b'\r') if j + 1 < b.len() => return Some(j + 1),
            None => return None,
            _ => i = j,
        }
    }
    None
}

/// Whether an event is a usage-only Chat Completions chunk (`choices: []`, `usage` object).
fn usage_only(event: &[u8]) -> bool {
    let text = String::from_utf8_lossy(event);
    if !text.contains("usage") {
        return false;
    }
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    let Ok(v) = serde_json::from_str::<Value>(&data) else {
        return false;
    };
    v.get("choices")
        .and_then(Value::as_array)
        .is_some_and(|c| c.is_empty())
        && v.get("usage").is_some_and(Value::is_object)
}

impl UsageChunkFilter {
    /// A filter with nothing held.
    pub fn new() -> UsageChunkFilter {
        UsageChunkFilter::default()
    }

    /// The next bytes; returns what may go on (whole events, minus usage-only ones).
    pub fn push(&mut self, data: Bytes) -> Bytes {
        if self.held.is_empty() && !data.iter().any(|&b| b == b'\n' || b == b'\r') {
            self.held.extend_from_slice(&data);
            return Bytes::new();
        }
        self.held.extend_from_slice(&data);
        let mut out = Vec::with_capacity(self.held.len());
        let mut start = 0;
        while let Some(n) = event_end(&self.held[start..]) {
            let ev = &self.held[start..start + n];
            if usage_only(ev) {
                self.removed += 1;
            } else {
                out.extend_from_slice(ev);
            }
            start += n;
        }
        self.held.drain(..start);
        if self.held.len() > MAX_EVENT {
            out.append(&mut self.held);
        }
        Bytes::from(out)
    }

    /// The end of the body: whatever is held goes on (an unterminated last event is never a
    /// complete usage chunk for a client either, but it is passed as it came).
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.held);
        if usage_only(&rest) {
            self.removed += 1;
            return Bytes::new();
        }
        Bytes::from(rest)
    }

    /// Usage-only chunks removed so far.
    pub fn removed(&self) -> u64 {
        self.removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\ndata: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

    #[test]
    fn usage_chunk_removed_in_any_split_others_kept() {
        let want = STREAM.replace(
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
            "",
        );
        for crlf in [false, true] {
            let input = if crlf {
                STREAM.replace('\n', "\r\n")
            } else {
                STREAM.to_string()
            };
            let want = if crlf {
                want.replace('\n', "\r\n")
            } else {
                want.clone()
            };
            for size in [1, 2, 3, 7, 64, input.len()] {
                let mut f = UsageChunkFilter::new();
                let mut out = Vec::new();
                for c in input.as_bytes().chunks(size) {
                    out.extend_from_slice(&f.push(Bytes::copy_from_slice(c)));
                }
                out.extend_from_slice(&f.finish());
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    want,
                    "size {size} crlf {crlf}"
                );
                assert_eq!(f.removed(), 1);
            }
        }
    }

    #[test]
    fn non_sse_passes_unchanged() {
        let mut f = UsageChunkFilter::new();
        let body = b"{\"choices\":[],\"usage\":{\"prompt_tokens\":1}}";
        let mut out = f.push(Bytes::from_static(body)).to_vec();
        out.extend_from_slice(&f.finish());
        // A JSON body (not an event stream) is one unterminated "event" without `data:`
        // lines: the filter is only set up for text/event-stream, but loses no bytes here.
        assert_eq!(out, body);
    }
}
