//! Quoting of file names the guest chose, for terminals: git's `quote_c_style` with
//! `core.quotePath = true` (git's `quote.c`), so `axctl diff` prints what `git diff
//! --name-status` would and a name cannot move the cursor, clear the screen or fake a line.

use std::borrow::Cow;

/// `name` as git prints a path: unchanged when every byte is printable ASCII other than `"`
/// and `\`; otherwise in double quotes with `\a \b \t \n \v \f \r \" \\` for those bytes and
/// a three-digit octal escape (`\033`) for every other control byte, DEL and every byte
/// ≥ 0x80 (so UTF-8 names are escaped too, as with git's default `core.quotePath`).
pub fn quote_path(name: &[u8]) -> Cow<'_, str> {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    if name.iter().all(|&b| plain(b)) {
        // All printable ASCII: valid UTF-8.
        return Cow::Borrowed(std::str::from_utf8(name).unwrap_or_default());
    }
    let mut out = String::with_capacity(name.len() + 8);
    out.push('"');
    for &b in name {
        match b {
            0x07 => out.push_str("\\a"),
            0x08 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0b => out.push_str("\\v"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b if plain(b) => out.push(b as char),
            b => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out.push('"');
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::quote_path;

    #[test]
    fn plain_names_are_unchanged() {
        assert_eq!(quote_path(b"src/main.rs"), "src/main.rs");
        assert_eq!(quote_path(b"a b/c-d_e.txt"), "a b/c-d_e.txt");
    }

    #[test]
    fn control_bytes_quotes_and_high_bytes_are_escaped_as_git_does() {
        // Expected strings are what `git -c core.quotePath=true diff --name-only` prints.
        assert_eq!(quote_path(b"a\x1b[2Jb"), "\"a\\033[2Jb\"");
        assert_eq!(quote_path(b"line\nD\tfake"), "\"line\\nD\\tfake\"");
        assert_eq!(quote_path(b"q\"uote\\"), "\"q\\\"uote\\\\\"");
        assert_eq!(quote_path("é".as_bytes()), "\"\\303\\251\"");
        assert_eq!(quote_path(b"\x7f\x00\x07\r"), "\"\\177\\000\\a\\r\"");
    }
}
