//! Streaming decoders for HTTP content codings (RFC 9110 §8.4.1): `gzip` (RFC 1952, also
//! concatenated members), `deflate` (zlib, RFC 1950; raw RFC 1951 streams as some servers send
//! them are accepted too), `br` (RFC 7932). Each compressed chunk yields the decoded bytes
//! available so far, so a compressed SSE stream still flows event by event.

use std::io::Write;

/// The codings [`Decoder`] handles, as an `Accept-Encoding` value.
pub const SUPPORTED: &str = "gzip, deflate, br";

/// A content decoder fed chunk by chunk.
pub enum Decoder {
    /// gzip (multi-member).
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    /// zlib-wrapped deflate.
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    /// raw deflate.
    Raw(flate2::write::DeflateDecoder<Vec<u8>>),
    /// deflate whose wrapping is not known yet (the first two bytes decide; held here).
    Deflate(Vec<u8>),
    /// Brotli.
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

/// Whether `coding` (one token of `Content-Encoding`, any case) can be decoded.
pub fn supported(coding: &str) -> bool {
    matches!(
        coding.trim().to_ascii_lowercase().as_str(),
        "gzip" | "x-gzip" | "deflate" | "br"
    )
}

/// Filters an `Accept-Encoding` value down to the codings [`Decoder`] handles (keeping
/// `identity` and q-values); `None` when nothing is left (send no header: identity).
pub fn filter_accept_encoding(v: &str) -> Option<String> {
    let kept: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|t| {
            let coding = t.split(';').next().unwrap_or("").trim();
            supported(coding) || coding.eq_ignore_ascii_case("identity")
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

impl Decoder {
    /// A decoder for `coding`; `None` if it is not supported.
    pub fn new(coding: &str) -> Option<Decoder> {
        Some(match coding.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Decoder::Gzip(flate2::write::MultiGzDecoder::new(Vec::new())),
            "deflate" => Decoder::Deflate(Vec::new()),
            "br" => Decoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 8192))),
            _ => return None,
        })
    }

    /// Decodes the next chunk; returns the bytes decoded so far that were not returned yet.
    /// Errors: corrupt data.
    pub fn push(&mut self, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
        let held;
        let chunk = if let Decoder::Deflate(head) = self {
            head.extend_from_slice(chunk);
            if head.len() < 2 {
                return Ok(Vec::new());
            }
            held = std::mem::take(head);
            // A zlib header: CM = 8 and (CMF·256 + FLG) divisible by 31 (RFC 1950 §2.2).
            let zlib =
                held[0] & 0x0f == 8 && (u16::from(held[0]) << 8 | u16::from(held[1])) % 31 == 0;
            *self = if zlib {
                Decoder::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))
            } else {
                Decoder::Raw(flate2::write::DeflateDecoder::new(Vec::new()))
            };
            &held[..]
        } else {
            chunk
        };
        match self {
            Decoder::Gzip(d) => drain(d, chunk, |d| d.get_mut()),
            Decoder::Zlib(d) => drain(d, chunk, |d| d.get_mut()),
            Decoder::Raw(d) => drain(d, chunk, |d| d.get_mut()),
            Decoder::Br(d) => drain(&mut **d, chunk, |d| d.get_mut()),
            Decoder::Deflate(_) => unreachable!(),
        }
    }

    /// Ends the stream; returns the last decoded bytes. Errors: truncated data.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Zlib(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Raw(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Br(d) => {
                d.close()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Deflate(head) if head.is_empty() => Ok(Vec::new()),
            Decoder::Deflate(_) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "truncated deflate stream",
            )),
        }
    }
}

fn drain<W: Write>(
    w: &mut W,
    chunk: &[u8],
    inner: impl Fn(&mut W) -> &mut Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    w.write_all(chunk)?;
    w.flush()?;
    Ok(std::mem::take(inner(w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(coding: &str, compressed: Vec<u8>, want: &[u8]) {
        for step in [1, 7, 4096] {
            let mut d = Decoder::new(coding).unwrap();
            let mut out = Vec::new();
            for c in compressed.chunks(step) {
                out.extend(d.push(c).unwrap());
            }
            out.extend(d.finish().unwrap());
            assert_eq!(out, want, "{coding} step {step}");
        }
    }

    #[test]
    fn decodes_each_coding_in_pieces() {
        let data: Vec<u8> = (0..20000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        roundtrip("gzip", gz.finish().unwrap(), &data);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&data).unwrap();
        roundtrip("deflate", z.finish().unwrap(), &data);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&data).unwrap();
        roundtrip("deflate", raw.finish().unwrap(), &data);
        let mut br = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        br.write_all(&data).unwrap();
        roundtrip("br", br.into_inner(), &data);
    }

    #[test]
    fn accept_encoding_filter() {
        assert_eq!(
            filter_accept_encoding("gzip, deflate, br, zstd").as_deref(),
            Some("gzip, deflate, br")
        );
        assert_eq!(
            filter_accept_encoding("zstd;q=1.0, br;q=0.5").as_deref(),
            Some("br;q=0.5")
        );
        assert_eq!(filter_accept_encoding("zstd"), None);
    }
}
