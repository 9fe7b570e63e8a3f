//! Share-relative paths: byte strings built only from names the guest sent through
//! LOOKUP/CREATE/... after [`validate_name`] (no `/`, no `.`/`..`, no NUL), joined with `/`;
//! the root is the empty path. Pure functions, no I/O.

use std::io;

use super::sys::err;

/// Checks one name from the guest: not empty (EINVAL), not `.` or `..` and no `/` (EACCES: path
/// traversal is refused), at most 255 bytes (ENAMETOOLONG).
pub fn validate_name(name: &[u8]) -> io::Result<()> {
    if name.is_empty() {
        return Err(err(libc::EINVAL));
    }
    if name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(err(libc::EACCES));
    }
    if name.len() > 255 {
        return Err(err(libc::ENAMETOOLONG));
    }
    Ok(())
}

/// `parent/name` (the root is the empty path).
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
        p.extend_from_slice(parent);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// Splits `a/b/c` into (`a/b`, `c`); the root has no parent.
pub fn split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.is_empty() {
        return None;
    }
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => Some((&path[..i], &path[i + 1..])),
        None => Some((&b""[..], path)),
    }
}

/// The components of a path, in order.
pub(super) fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

/// Is `path` equal to `prefix` or below it? (The root, `""`, is above everything.)
pub(super) fn under(path: &[u8], prefix: &[u8]) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert!(validate_name(b"a.txt").is_ok());
        for bad in [&b".."[..], b".", b"a/b", b"/", b"a\0b"] {
            assert_eq!(
                validate_name(bad).unwrap_err().raw_os_error(),
                Some(libc::EACCES)
            );
        }
        assert_eq!(
            validate_name(b"").unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            validate_name(&[b'x'; 256]).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a", b"b"), b"a/b");
        assert_eq!(split(b"a/b/c"), Some((&b"a/b"[..], &b"c"[..])));
        assert_eq!(split(b"c"), Some((&b""[..], &b"c"[..])));
        assert_eq!(split(b""), None);
    }
}
