//! Host names as the policy sees them: one normal form for every place a name enters the
//! netstack (DNS questions, the TLS SNI, the HTTP `Host`, `[[route]]` / `[[policy.rule]]` /
//! `[[secret]]` hosts, the authority of a `CONNECT` to the upstream proxy), and a refusal for
//! everything that is not a host name. docs/network.md ("Host names") has the table.
//!
//! Why refuse rather than pass through: the host's resolver (glibc getaddrinfo(3)) reads a name
//! in *presentation format* (RFC 1035 §5.1): `exampl\101.com` is looked up as `example.com`,
//! so a name that the policy compared byte for byte would reach a host a rule denies. Every
//! byte that a resolver or a proxy could read differently is refused instead of decoded, so
//! the policy, the resolver and the proxy all see the same name.
//!
//! The normal form: ASCII lower case, one trailing dot removed, labels of 1..=63 bytes from
//! letters, digits, `-` and `_` (LDH, RFC 952 / RFC 1123 §2.1, plus the underscore of service
//! names such as `_dmarc`, RFC 8552), at most 253 bytes in all. IDNA names pass in their
//! A-label form (`xn--…`, RFC 5890), which is LDH; U-labels (non-ASCII) are refused. A name
//! whose last label is numeric (`127.1`, `2130706433`, `0x7f.1`) is refused: resolvers and
//! proxies read such names as IPv4 addresses (inet_aton(3)), and no top-level domain is
//! numeric (RFC 3696 §2).

use std::fmt;
use std::net::IpAddr;

/// Longest name in text form without the trailing dot (RFC 1035 §2.3.4: 255 bytes on the
/// wire, i.e. 253 characters).
pub const MAX_NAME: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;

/// Why a name was refused; `Display` gives a sentence with the name escaped (`\xNN` for
/// non-printable bytes) for log lines, audit reasons and DNS refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    /// The name as given, escaped for printing.
    pub name: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\" is not a host name: {}", self.name, self.why)
    }
}

impl std::error::Error for InvalidName {}

/// Is `b` allowed in a label (before lower-casing)?
fn label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn escape(raw: &[u8]) -> String {
    raw.iter()
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect()
}

/// Normalises a name given as text (SNI, `Host`, a config entry, a CONNECT target): removes
/// one trailing dot, lower-cases ASCII and checks every label as described in the module docs.
///
/// Errors: an empty name or label, a label over 63 bytes, a name over 253, a byte outside
/// letters, digits, `-` and `_` (including `\`, space, CR, LF, `[`, `:`, `%`, non-ASCII), a
/// numeric last label.
pub fn normalize(name: &str) -> Result<String, InvalidName> {
    let bytes = name.as_bytes();
    let trimmed = bytes.strip_suffix(b".").unwrap_or(bytes);
    from_labels(trimmed.split(|&b| b == b'.')).map_err(|why| InvalidName {
        name: escape(bytes),
        why,
    })
}

/// Normalises a name given as DNS wire labels (RFC 1035 §3.1; the root label excluded): each
/// label's bytes are checked as they are (a `.` or `\` byte inside a label is refused, never
/// read as a separator or an escape), then joined with dots and lower-cased.
///
/// Errors: as [`normalize`]; `name` in the error is the labels joined by `.`, escaped.
pub fn from_wire<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Result<String, InvalidName> {
    let labels: Vec<&[u8]> = labels.into_iter().collect();
    from_labels(labels.iter().copied()).map_err(|why| InvalidName {
        name: escape(&labels.join(&b'.')),
        why,
    })
}

/// Checks a `[[policy.rule]]` host: `*`, `*.name`, an IP address, a CIDR (`addr/len`, the
/// length within the family's bits) or a name. Errors: a name part that [`normalize`] refuses.
pub fn check_rule_host(host: &str) -> Result<(), InvalidName> {
    let h = host.trim();
    if h == "*" || h.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if let Some(s) = h.strip_prefix("*.") {
        return normalize(s).map(drop);
    }
    if let Some((a, l)) = h.split_once('/') {
        if let (Ok(ip), Ok(len)) = (a.parse::<IpAddr>(), l.parse::<u8>()) {
            if len <= if ip.is_ipv4() { 32 } else { 128 } {
                return Ok(());
            }
        }
        return Err(InvalidName {
            name: escape(h.as_bytes()),
            why: "not an IP address with a prefix length of at most 32 (IPv4) or 128 (IPv6)",
        });
    }
    normalize(h).map(drop)
}

fn from_labels<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Result<String, &'static str> {
    let mut out = String::new();
    let mut last: &[u8] = &[];
    for l in labels {
        if l.is_empty() {
            return Err("empty label");
        }
        if l.len() > MAX_LABEL {
            return Err("label longer than 63 bytes");
        }
        if !l.iter().all(|&b| label_byte(b)) {
            return Err("only letters, digits, '-' and '_' may appear in a label (IDNA names in their xn-- form)");
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.extend(l.iter().map(|b| b.to_ascii_lowercase() as char));
        last = l;
    }
    if out.is_empty() {
        return Err("empty name");
    }
    if out.len() > MAX_NAME {
        return Err("longer than 253 bytes");
    }
    let hex = last.len() > 2 && last[..2].eq_ignore_ascii_case(b"0x");
    if last.iter().all(u8::is_ascii_digit) || (hex && last[2..].iter().all(u8::is_ascii_hexdigit)) {
        return Err("a numeric last label reads as an IPv4 address");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_forms() {
        for (given, want) in [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("_dmarc.example.com", "_dmarc.example.com"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com"),
            ("localhost", "localhost"),
            ("1.example.com", "1.example.com"),
        ] {
            assert_eq!(normalize(given).as_deref(), Ok(want), "{given:?}");
        }
    }

    #[test]
    fn refused_names() {
        for bad in [
            "exampl\\101.com", // presentation-format escape: glibc would look up example.com
            "example\\.com",
            "a..b",
            "example.com..",
            ".",
            "",
            "[::1]",
            "::1",
            "127.0.0.1",
            "127.1",
            "2130706433",
            "0x7f.0x1",
            "a b.com",
            "evil.com\r\nX-Injected: 1",
            "bücher.example",
            "a%2ecom",
            "*.example.com",
            "host:443",
        ] {
            let e = normalize(bad).unwrap_err();
            assert!(e.to_string().contains("is not a host name"), "{bad:?}: {e}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(normalize(&long).is_err());
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(long.len() > MAX_NAME && normalize(&long).is_err());
    }

    #[test]
    fn wire_labels_are_never_split_or_unescaped() {
        assert_eq!(
            from_wire([&b"API"[..], b"Example", b"com"]).as_deref(),
            Ok("api.example.com")
        );
        // One label holding a dot would print as two labels: refused.
        let e = from_wire([&b"example.com"[..], b"evil"]).unwrap_err();
        assert_eq!(e.name, "example.com.evil");
        // A label holding a backslash escape: refused, shown escaped.
        let e = from_wire([&b"exampl\\101"[..], b"com"]).unwrap_err();
        assert_eq!(e.name, "exampl\\\\101.com");
        let e = from_wire([&b"a\r\nb"[..], b"com"]).unwrap_err();
        assert!(e.to_string().contains("a\\r\\nb.com"), "{e}");
        assert!(from_wire([&b"a\0"[..], b"com"]).is_err());
    }
}
