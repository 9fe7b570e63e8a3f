//! Streaming multi-pattern search and replace over byte chunks: the engine under secret
//! substitution (requests) and scrubbing (responses).
//!
//! Matching is leftmost-longest. A chunk is emitted at once except for its longest suffix that
//! is a proper prefix of some pattern (at most `max pattern length − 1` bytes, and only when
//! the chunk really ends that way): that tail waits for the next chunk, so a value split
//! across chunks is still found, while ordinary data (an SSE event ending in `\n\n`) flows
//! through without delay.

use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// What to do where a pattern matched.
#[derive(Clone, Debug)]
pub enum Action {
    /// Put these bytes in its place.
    Replace(Vec<u8>),
    /// Refuse the whole message; the string says why (no secret value in it).
    Block(String),
}

/// A compiled pattern set.
#[derive(Debug)]
pub struct Patterns {
    pats: Vec<(Vec<u8>, Action)>,
    /// Pattern indexes by first byte.
    by_first: Vec<Vec<usize>>,
    /// Whether any pattern starts with this byte (the fast skip).
    first: [bool; 256],
}

/// A blocked message: the reason from the matching [`Action::Block`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked(pub String);

impl Patterns {
    /// Compiles `pats`; empty needles are ignored; on duplicate needles the first wins.
    pub fn new(pats: Vec<(Vec<u8>, Action)>) -> Patterns {
        let mut seen = std::collections::HashSet::new();
        let pats: Vec<_> = pats
            .into_iter()
            .filter(|(n, _)| !n.is_empty() && seen.insert(n.clone()))
            .collect();
        let mut by_first = vec![Vec::new(); 256];
        let mut first = [false; 256];
        for (i, (n, _)) in pats.iter().enumerate() {
            by_first[n[0] as usize].push(i);
            first[n[0] as usize] = true;
        }
        Patterns {
            pats,
            by_first,
            first,
        }
    }

    /// No patterns at all (nothing can ever match).
    pub fn is_empty(&self) -> bool {
        self.pats.is_empty()
    }

    /// Rewrites a complete message (a header value, a URL).
    pub fn rewrite_all(&self, data: &[u8]) -> Result<Option<Vec<u8>>, Blocked> {
        let mut out = Vec::new();
        let (changed, _) = self.scan(data, true, &mut out)?;
        Ok(changed.then_some(out))
    }

    /// Scans `buf`; when anything was replaced, writes the rewritten output up to the hold
    /// point into `out` (otherwise `out` stays empty: the output is `buf[..hold]` itself).
    /// Returns whether anything was replaced and where the held-back tail starts
    /// (`buf.len()` when `last` or nothing is held).
    fn scan(&self, buf: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(bool, usize), Blocked> {
        let n = buf.len();
        let mut i = 0;
        let mut copied = 0;
        let mut changed = false;
        while i < n {
            match buf[i..].iter().position(|b| self.first[*b as usize]) {
                Some(k) => i += k,
                None => break,
            }
            let cands = &self.by_first[buf[i] as usize];
            let rest = &buf[i..];
            let mut best: Option<usize> = None;
            let mut partial = false;
            for &c in cands {
                let needle = &self.pats[c].0;
                // Cheap reject on the second byte before comparing whole needles.
                if rest.len() > 1 && needle.len() > 1 && rest[1] != needle[1] {
                    continue;
                }
                if rest.starts_with(needle) {
                    if best.is_none_or(|b| self.pats[b].0.len() < needle.len()) {
                        best = Some(c);
                    }
                } else if !last && needle.len() > rest.len() && needle.starts_with(rest) {
                    partial = true;
                }
            }
            if partial {
                // A longer match may complete with the next chunk: hold from here.
                if changed {
                    out.extend_from_slice(&buf[copied..i]);
                }
                return Ok((changed, i));
            }
            match best {
                Some(b) => {
                    let (needle, action) = &self.pats[b];
                    match action {
                        Action::Block(why) => return Err(Blocked(why.clone())),
                        Action::Replace(with) => {
                            out.extend_from_slice(&buf[copied..i]);
                            out.extend_from_slice(with);
                            changed = true;
                            i += needle.len();
                            copied = i;
                        }
                    }
                }
                None => i += 1,
            }
        }
        if changed {
            out.extend_from_slice(&buf[copied..]);
        }
        Ok((changed, n))
    }
}

/// One direction of one message being rewritten chunk by chunk.
pub struct Stream {
    pats: Arc<Patterns>,
    tail: BytesMut,
}

impl Stream {
    /// A rewriter over `pats`.
    pub fn new(pats: Arc<Patterns>) -> Stream {
        Stream {
            pats,
            tail: BytesMut::new(),
        }
    }

    /// Whether every replacement has its pattern's length (output length = input length).
    pub fn preserves_length(&self) -> bool {
        self.pats.pats.iter().all(|(n, a)| match a {
            Action::Replace(w) => w.len() == n.len(),
            Action::Block(_) => true,
        })
    }

    /// Feeds the next chunk; returns what can be passed on now (possibly empty: held back).
    /// A chunk without matches and without a held tail is returned as is (no copy).
    pub fn push(&mut self, chunk: Bytes) -> Result<Bytes, Blocked> {
        self.run(chunk, false)
    }

    /// Ends the message: returns the rewritten held-back tail.
    pub fn finish(&mut self) -> Result<Bytes, Blocked> {
        self.run(Bytes::new(), true)
    }

    fn run(&mut self, chunk: Bytes, last: bool) -> Result<Bytes, Blocked> {
        let buf: Bytes = if self.tail.is_empty() {
            chunk
        } else {
            self.tail.extend_from_slice(&chunk);
            self.tail.split().freeze()
        };
        let mut out = Vec::new();
        let (changed, hold) = self.pats.scan(&buf, last, &mut out)?;
        self.tail.extend_from_slice(&buf[hold..]);
        if !changed {
            return Ok(buf.slice(..hold));
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats() -> Arc<Patterns> {
        Arc::new(Patterns::new(vec![
            (b"SECRET".to_vec(), Action::Replace(b"ph".to_vec())),
            (b"SECRETLONG".to_vec(), Action::Replace(b"PH2".to_vec())),
            (b"BAD".to_vec(), Action::Block("no".into())),
        ]))
    }

    fn run(chunks: &[&str]) -> Result<String, Blocked> {
        let mut s = Stream::new(pats());
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(c.as_bytes()))?);
        }
        out.extend_from_slice(&s.finish()?);
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn replaces_across_every_split() {
        let text = "a SECRET b SECRETLONG c SECRE";
        let want = "a ph b PH2 c SECRE";
        for cut1 in 0..=text.len() {
            for cut2 in cut1..=text.len() {
                let got = run(&[&text[..cut1], &text[cut1..cut2], &text[cut2..]]).unwrap();
                assert_eq!(got, want, "cuts {cut1} {cut2}");
            }
        }
    }

    #[test]
    fn holds_only_possible_prefixes() {
        let mut s = Stream::new(pats());
        assert_eq!(
            &s.push(Bytes::from_static(b"data: x\n\n")).unwrap()[..],
            b"data: x\n\n"
        );
        assert_eq!(
            &s.push(Bytes::from_static(b"data: SEC")).unwrap()[..],
            b"data: "
        );
        assert_eq!(
            &s.push(Bytes::from_static(b"RET\n\n")).unwrap()[..],
            b"ph\n\n"
        );
        assert_eq!(&s.push(Bytes::from_static(b"SECRET")).unwrap()[..], b"");
        assert_eq!(&s.finish().unwrap()[..], b"ph");
    }

    #[test]
    fn block_split_across_chunks() {
        assert_eq!(run(&["xxB", "AD"]), Err(Blocked("no".into())));
        assert_eq!(run(&["xxBA", "d"]).unwrap(), "xxBAd");
    }
}
