//! A directory lower frozen at a point in time (`--lower-freeze FILE`, docs/fsd.md "The
//! objects share"): only nodes that existed **unchanged** when the freeze was taken are
//! visible; anything added or rewritten later is ENOENT on lookup and absent from listings.
//!
//! The agent's objects share serves the live host object store (`.git/objects`), into which
//! every branch build of every agent writes. Frozen at the agent's first start, the share shows
//! the store as it was then: later blobs of other agents stay invisible.
//!
//! A node's identity is `(st_dev, st_ino)`; for a non-directory also `st_size` and `st_mtime`
//! (seconds and nanoseconds), so a file rewritten in place (or a name reused by a new inode)
//! drops out. Directories are matched by identity only (their mtime changes whenever a loose
//! object is added to them). Taking the freeze is one `fstatat` per node (no data read, no
//! copy): loose objects plus pack files, fast for big (mostly packed) repositories.
//!
//! The file keeps the freeze across restarts of the agent: it is taken and written when
//! absent, read when present. Format (text): a first line `ax-fsd-freeze 1`, then one line per
//! node, `d <dev> <ino>` or `f <dev> <ino> <size> <mtime_s> <mtime_ns>`.

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use super::sys;

const HEADER: &str = "ax-fsd-freeze 1";

/// Identities of a directory tree's nodes at freeze time.
#[derive(Debug, Default)]
pub struct Frozen {
    dirs: HashSet<(u64, u64)>,
    files: HashSet<(u64, u64, i64, i64, i64)>,
}

impl Frozen {
    /// Was this node (current attributes) there, unchanged, when the freeze was taken?
    pub fn admits(&self, st: &libc::stat64) -> bool {
        if sys::is_dir(st) {
            self.dirs.contains(&(st.st_dev, st.st_ino))
        } else {
            self.files.contains(&file_key(st))
        }
    }

    /// Number of nodes recorded.
    pub fn len(&self) -> usize {
        self.dirs.len() + self.files.len()
    }

    /// Nothing recorded?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add(&mut self, st: &libc::stat64) {
        if sys::is_dir(st) {
            self.dirs.insert((st.st_dev, st.st_ino));
        } else {
            self.files.insert(file_key(st));
        }
    }

    /// Records every node below (and including) `root` (iterative, never following symlinks).
    pub fn take(root: &OwnedFd) -> io::Result<Self> {
        let mut me = Self::default();
        let top = sys::openat(root, b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        me.add(&sys::fstat(&top)?);
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            for (name, _) in sys::list_dir(&d)? {
                let st = match sys::statat(&d, &name) {
                    Ok(st) => st,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(e) => return Err(e),
                };
                me.add(&st);
                if sys::is_dir(&st) {
                    stack.push(sys::openat(
                        &d,
                        &name,
                        libc::O_RDONLY | libc::O_DIRECTORY,
                        0,
                    )?);
                }
            }
        }
        Ok(me)
    }

    /// The freeze in `file` when it exists, else one taken of `root` now and written to
    /// `file` (atomically: a temporary file renamed into place). Returns it and whether it
    /// was taken now.
    pub fn load_or_take(file: &Path, root: &OwnedFd) -> io::Result<(Self, bool)> {
        match std::fs::read_to_string(file) {
            Ok(text) => return Ok((Self::parse(&text)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let me = Self::take(root)?;
        let tmp = file.with_extension("tmp");
        let mut out = io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(out, "{HEADER}")?;
        for (dev, ino) in &me.dirs {
            writeln!(out, "d {dev} {ino}")?;
        }
        for (dev, ino, size, s, ns) in &me.files {
            writeln!(out, "f {dev} {ino} {size} {s} {ns}")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, file)?;
        Ok((me, true))
    }

    /// Parses the file format above.
    pub fn parse(text: &str) -> io::Result<Self> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(bad(format!(
                "not a freeze file (first line is not {HEADER:?})"
            )));
        }
        let mut me = Self::default();
        for (i, l) in lines.enumerate() {
            let f: Vec<&str> = l.split(' ').collect();
            let num = |s: &str| {
                s.parse::<i64>()
                    .map_err(|_| bad(format!("line {}: bad number {s:?}", i + 2)))
            };
            match f.as_slice() {
                ["d", dev, ino] => {
                    me.dirs.insert((num(dev)? as u64, num(ino)? as u64));
                }
                ["f", dev, ino, size, s, ns] => {
                    me.files.insert((
                        num(dev)? as u64,
                        num(ino)? as u64,
                        num(size)?,
                        num(s)?,
                        num(ns)?,
                    ));
                }
                _ => return Err(bad(format!("line {}: {l:?}", i + 2))),
            }
        }
        Ok(me)
    }
}

fn file_key(st: &libc::stat64) -> (u64, u64, i64, i64, i64) {
    (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_and_rewritten_nodes_are_not_admitted_and_the_file_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let lower = d.path().join("objects");
        std::fs::create_dir_all(lower.join("ab")).unwrap();
        std::fs::write(lower.join("ab/cdef"), b"old").unwrap();
        std::fs::write(lower.join("mutable"), b"1").unwrap();
        let root = sys::open_root(&lower).unwrap();
        let file = d.path().join("freeze");
        let (f, taken) = Frozen::load_or_take(&file, &root).unwrap();
        assert!(taken);
        assert_eq!(f.len(), 4);
        std::fs::create_dir(lower.join("12")).unwrap();
        std::fs::write(lower.join("ab/new"), b"new").unwrap();
        std::fs::write(lower.join("mutable"), b"22").unwrap();
        let (g, taken) = Frozen::load_or_take(&file, &root).unwrap();
        assert!(!taken, "read back, not taken again");
        for fz in [&f, &g] {
            let st = |p: &str| sys::statat(&root, p.as_bytes()).unwrap();
            let ab = sys::openat(&root, b"ab", libc::O_PATH, 0).unwrap();
            assert!(fz.admits(&sys::fstat(&ab).unwrap()), "dir with new entries");
            assert!(fz.admits(&sys::statat(&ab, b"cdef").unwrap()));
            assert!(!fz.admits(&sys::statat(&ab, b"new").unwrap()));
            assert!(!fz.admits(&st("12")));
            assert!(!fz.admits(&st("mutable")), "rewritten");
        }
        assert!(Frozen::parse("nope").is_err());
        assert!(Frozen::parse("ax-fsd-freeze 1\nx 1 2").is_err());
    }
}
