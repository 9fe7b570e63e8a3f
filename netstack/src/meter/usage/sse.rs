//! An incremental `text/event-stream` decoder (WHATWG HTML Living Standard §9.2.6
//! "Interpreting an event stream"): lines end in CRLF, LF or CR (also split across chunks);
//! `event:` and `data:` fields (one leading space stripped, several `data:` lines joined with
//! LF); a blank line dispatches; `:` lines are comments. Works on bytes, so a multi-byte UTF-8
//! character split across chunks is reassembled before the event is decoded.
//!
//! Memory is bounded: a line longer than `max_line` bytes is dropped (counted in
//! [`SseDecoder::dropped`]), so a hostile or odd stream cannot make the meter buffer it.

/// Decoder state between chunks.
pub struct SseDecoder {
    max_line: usize,
    line: Vec<u8>,
    line_over: bool,
    /// The previous chunk ended in CR: a LF at the start of the next one ends no new line.
    skip_lf: bool,
    event: String,
    data: Vec<u8>,
    has_data: bool,
    dropped: u64,
    seen_line: bool,
}

impl SseDecoder {
    /// A decoder dropping lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> SseDecoder {
        SseDecoder {
            max_line,
            line: Vec::new(),
            line_over: false,
            skip_lf: false,
            event: String::new(),
            data: Vec::new(),
            has_data: false,
            dropped: 0,
            seen_line: false,
        }
    }

    /// Lines dropped for being longer than the limit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Decodes `chunk`, calling `on_event(event_type, data)` for every complete event
    /// (`event_type` is `message` when the event had no `event:` field).
    pub fn feed(&mut self, mut chunk: &[u8], on_event: &mut dyn FnMut(&str, &str)) {
        if self.skip_lf {
            self.skip_lf = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.push(chunk);
                    return;
                }
                Some(i) => {
                    let (line, cr) = (&chunk[..i], chunk[i] == b'\r');
                    chunk = &chunk[i + 1..];
                    if cr {
                        if chunk.first() == Some(&b'\n') {
                            chunk = &chunk[1..];
                        } else if chunk.is_empty() {
                            self.skip_lf = true;
                        }
                    }
                    self.end_line(line, on_event);
                }
            }
        }
    }

    /// End of stream: a last line or event without its terminating blank line is still
    /// dispatched (lenient: servers that close right after the last `data:` line).
    pub fn finish(&mut self, on_event: &mut dyn FnMut(&str, &str)) {
        if !self.line.is_empty() || self.line_over {
            self.end_line(&[], on_event);
        }
        self.end_line(&[], on_event);
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.line_over {
            return;
        }
        if self.line.len() + bytes.len() > self.max_line {
            self.line_over = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// A line ended; `tail` is its part in the current chunk (the start, if any, is buffered).
    /// Lines wholly inside one chunk are decoded in place, without a copy.
    fn end_line(&mut self, tail: &[u8], on_event: &mut dyn FnMut(&str, &str)) {
        if self.line_over || self.line.len() + tail.len() > self.max_line {
            self.line_over = false;
            self.line.clear();
            self.dropped += 1;
            return;
        }
        if self.line.is_empty() {
            self.decode_line(tail, on_event);
        } else {
            let mut line = std::mem::take(&mut self.line);
            line.extend_from_slice(tail);
            self.decode_line(&line, on_event);
            // Keep the allocation for the next partial line.
            line.clear();
            self.line = line;
        }
    }

    fn decode_line(&mut self, mut line: &[u8], on_event: &mut dyn FnMut(&str, &str)) {
        if !self.seen_line {
            // A UTF-8 byte order mark at the start of the stream is skipped (§9.2.6).
            self.seen_line = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            if self.has_data {
                if self.data.last() == Some(&b'\n') {
                    self.data.pop();
                }
                let data = String::from_utf8_lossy(&self.data);
                let event = if self.event.is_empty() {
                    "message"
                } else {
                    self.event.as_str()
                };
                on_event(event, &data);
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => {
                if self.data.len() + value.len() <= self.max_line {
                    self.data.extend_from_slice(value);
                    self.data.push(b'\n');
                } else {
                    self.dropped += 1;
                }
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut d = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        let mut f = |e: &str, data: &str| out.push((e.to_string(), data.to_string()));
        for c in chunks {
            d.feed(c, &mut f);
        }
        d.finish(&mut f);
        out
    }

    #[test]
    fn line_endings_and_fields() {
        let want = vec![
            ("message_start".to_string(), "{\"a\":1}".to_string()),
            ("message".to_string(), "x\ny".to_string()),
        ];
        for text in [
            &b"event: message_start\ndata: {\"a\":1}\n\n: ping\ndata:x\ndata: y\n\n"[..],
            b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n: ping\r\ndata:x\r\ndata: y\r\n\r\n",
            b"event: message_start\rdata: {\"a\":1}\r\r: ping\rdata:x\rdata: y\r\r",
        ] {
            // Every split point, incl. between CR and LF.
            for i in 0..text.len() {
                assert_eq!(decode(&[&text[..i], &text[i..]]), want, "split at {i}");
            }
        }
    }

    #[test]
    fn a_leading_bom_is_skipped_even_when_split() {
        let text = "\u{FEFF}data: {\"u\":1}\n\n".as_bytes();
        for i in 0..text.len() {
            assert_eq!(
                decode(&[&text[..i], &text[i..]]),
                vec![("message".to_string(), "{\"u\":1}".to_string())],
                "split at {i}"
            );
        }
    }

    #[test]
    fn utf8_split_is_reassembled() {
        let text = "data: {\"t\":\"héllo — ✓\"}\n\n".as_bytes();
        for i in 0..text.len() {
            let got = decode(&[&text[..i], &text[i..]]);
            assert_eq!(got[0].1, "{\"t\":\"héllo — ✓\"}", "split at {i}");
        }
    }

    #[test]
    fn long_lines_are_dropped_not_buffered() {
        let mut d = SseDecoder::new(16);
        let mut n = 0;
        let mut f = |_: &str, data: &str| {
            assert_eq!(data, "ok");
            n += 1
        };
        d.feed(b"data: ", &mut f);
        for _ in 0..1000 {
            d.feed(b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", &mut f);
        }
        d.feed(b"\n\ndata: ok\n\n", &mut f);
        assert_eq!(n, 1);
        assert_eq!(d.dropped(), 1);
        assert!(d.line.capacity() <= 64);
    }

    #[test]
    fn unterminated_last_event_is_dispatched_at_finish() {
        assert_eq!(
            decode(&[b"data: {\"u\":1}"]),
            vec![("message".to_string(), "{\"u\":1}".to_string())]
        );
    }
}
