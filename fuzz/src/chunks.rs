//! Splitting one fuzz input into chunks (a stream arriving in pieces).

/// Splits `data` into chunks: the first byte is a seed for the chunk lengths (1..=64 bytes,
/// varying), the rest is the stream. Yields nothing for empty input.
pub struct Chunks<'a> {
    rest: &'a [u8],
    seed: u32,
}

impl<'a> Chunks<'a> {
    /// Chunks of `data` (see the type).
    pub fn new(data: &'a [u8]) -> Self {
        match data.split_first() {
            Some((&s, rest)) => Chunks {
                rest,
                seed: u32::from(s) | 1,
            },
            None => Chunks { rest: &[], seed: 1 },
        }
    }

    /// The whole stream (without the seed byte).
    pub fn stream(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        // xorshift32: deterministic lengths from the seed.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 17;
        self.seed ^= self.seed << 5;
        let n = (self.seed % 64 + 1) as usize;
        let (a, b) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = b;
        Some(a)
    }
}
