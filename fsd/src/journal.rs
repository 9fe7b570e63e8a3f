//! The change journal: the live set of paths this agent created, modified or deleted, for
//! `axctl diff NAME`.
//!
//! On disk it is an append-only file of JSON lines (format version 1, see docs/fsd.md):
//!
//! ```text
//! {"ax_fsd_journal":1}
//! {"path":"src/main.rs","change":"modified","kind":"file"}
//! {"path":"new","change":"created","kind":"dir"}
//! {"path":"new","change":"unchanged","kind":"dir"}
//! ```
//!
//! A line is appended only when a path's net state changes; a reader folds the lines, the last
//! line for a path wins, and `unchanged` removes the path (created, then deleted again). An entry
//! of kind `dir` covers its subtree (a renamed or deleted directory is one line). Paths are
//! relative to the share root; a path that is not UTF-8 is written as `"path_hex"` instead.
//! Lines are written with one `write(2)` each, so a crash loses at most the line in flight.
//!
//! **Bounded:** when the file grows past [`COMPACT_MIN`] bytes and twice the size its current
//! set needs, it is rewritten in place as the header plus one line per path of the current set
//! (truncate, then one `write(2)`), so it stays within about twice its live size (plus 4 MiB)
//! however often the guest churns the same paths. The live set itself is bounded by the upper
//! layer (one entry per changed path).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::path::Path;
use std::sync::Mutex;

/// Net change of one path since the agent started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Did not exist in the lower layer, exists now.
    Created,
    /// Existed in the lower layer; content or metadata changed.
    Modified,
    /// Existed in the lower layer, gone now.
    Deleted,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Modified => "modified",
            Change::Deleted => "deleted",
        }
    }
}

/// What kind of node a journal line is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Anything but a directory.
    File,
    /// A directory (the line covers its subtree).
    Dir,
}

/// The live journal: an in-memory map plus an optional append-only file.
pub struct Journal {
    inner: Mutex<Inner>,
}

struct Inner {
    file: Option<File>,
    map: HashMap<Vec<u8>, (Change, Kind)>,
    /// Bytes in the file now.
    bytes: u64,
    /// Rewrite the file once it is larger than this.
    compact_at: u64,
}

/// The journal file is never compacted below this size (bytes).
pub const COMPACT_MIN: u64 = 4 << 20;

const HEADER: &[u8] = b"{\"ax_fsd_journal\":1}\n";

impl Journal {
    /// An in-memory journal (no file).
    pub fn memory() -> Self {
        Self {
            inner: Mutex::new(Inner {
                file: None,
                map: HashMap::new(),
                bytes: 0,
                compact_at: COMPACT_MIN,
            }),
        }
    }

    /// A journal appending to `path` (created or truncated; the header line is written now).
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        f.write_all(HEADER)?;
        Ok(Self {
            inner: Mutex::new(Inner {
                file: Some(f),
                map: HashMap::new(),
                bytes: HEADER.len() as u64,
                compact_at: COMPACT_MIN,
            }),
        })
    }

    /// Like [`Self::create`] with another compaction threshold (tests).
    pub fn create_with_compaction(path: &Path, compact_min: u64) -> io::Result<Self> {
        let j = Self::create(path)?;
        j.inner.lock().unwrap_or_else(|p| p.into_inner()).compact_at = compact_min;
        Ok(j)
    }

    /// Records that `path` was created (or re-created after a delete).
    pub fn created(&self, path: &[u8], kind: Kind) {
        self.update(path, kind, |old| match old {
            Some(Change::Deleted) | Some(Change::Modified) => Some(Change::Modified),
            _ => Some(Change::Created),
        });
    }

    /// Records that `path` (content or metadata) changed.
    pub fn modified(&self, path: &[u8], kind: Kind) {
        self.update(path, kind, |old| match old {
            Some(Change::Created) => Some(Change::Created),
            _ => Some(Change::Modified),
        });
    }

    /// Records that `path` was removed.
    pub fn deleted(&self, path: &[u8], kind: Kind) {
        self.update(path, kind, |old| match old {
            Some(Change::Created) => None,
            _ => Some(Change::Deleted),
        });
    }

    /// The current set, sorted by path.
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Change, Kind)> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = g
            .map
            .iter()
            .map(|(p, (c, k))| (p.clone(), *c, *k))
            .collect();
        v.sort();
        v
    }

    fn update(&self, path: &[u8], kind: Kind, f: impl FnOnce(Option<Change>) -> Option<Change>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let old = g.map.get(path).copied();
        let new = f(old.map(|(c, _)| c));
        if new == old.map(|(c, _)| c) && old.map(|(_, k)| k) == Some(kind) {
            return;
        }
        match new {
            Some(c) => {
                g.map.insert(path.to_vec(), (c, kind));
            }
            None => {
                g.map.remove(path);
            }
        }
        let g = &mut *g;
        if let Some(file) = g.file.as_mut() {
            let line = line(path, new, kind);
            match file.write_all(line.as_bytes()) {
                Ok(()) => g.bytes += line.len() as u64,
                Err(e) => log::warn!("journal: cannot append: {e}"),
            }
            if g.bytes > g.compact_at {
                match compact(file, &g.map) {
                    Ok(n) => {
                        g.bytes = n;
                        g.compact_at = g.compact_at.max(2 * n);
                    }
                    Err(e) => log::warn!("journal: cannot compact: {e}"),
                }
            }
        }
    }
}

/// Rewrites the journal file as the header plus the current set; returns its new size.
fn compact(file: &mut File, map: &HashMap<Vec<u8>, (Change, Kind)>) -> io::Result<u64> {
    let mut buf = HEADER.to_vec();
    let mut paths: Vec<_> = map.iter().collect();
    paths.sort();
    for (p, (c, k)) in paths {
        buf.extend_from_slice(line(p, Some(*c), *k).as_bytes());
    }
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(&buf)?;
    Ok(buf.len() as u64)
}

fn line(path: &[u8], change: Option<Change>, kind: Kind) -> String {
    let mut obj = serde_json::Map::new();
    match std::str::from_utf8(path) {
        Ok(s) => obj.insert("path".into(), s.into()),
        Err(_) => obj.insert(
            "path_hex".into(),
            path.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into(),
        ),
    };
    obj.insert(
        "change".into(),
        change.map_or("unchanged", Change::as_str).into(),
    );
    obj.insert(
        "kind".into(),
        match kind {
            Kind::File => "file",
            Kind::Dir => "dir",
        }
        .into(),
    );
    let mut s = serde_json::Value::Object(obj).to_string();
    s.push('\n');
    s
}

/// Reads a journal file back into its current set (what `axctl diff` does).
pub fn read(path: &Path) -> io::Result<Vec<(Vec<u8>, Change, Kind)>> {
    let text = std::fs::read_to_string(path)?;
    let mut map: HashMap<Vec<u8>, (Change, Kind)> = HashMap::new();
    for l in text.lines().skip(1) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue; // a torn last line after a crash
        };
        let p = if let Some(p) = v.get("path").and_then(|p| p.as_str()) {
            p.as_bytes().to_vec()
        } else if let Some(h) = v.get("path_hex").and_then(|p| p.as_str()) {
            (0..h.len() / 2)
                .filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
                .collect()
        } else {
            continue;
        };
        let kind = match v.get("kind").and_then(|k| k.as_str()) {
            Some("dir") => Kind::Dir,
            _ => Kind::File,
        };
        match v.get("change").and_then(|c| c.as_str()) {
            Some("created") => map.insert(p, (Change::Created, kind)),
            Some("modified") => map.insert(p, (Change::Modified, kind)),
            Some("deleted") => map.insert(p, (Change::Deleted, kind)),
            _ => map.remove(&p),
        };
    }
    let mut v: Vec<_> = map.into_iter().map(|(p, (c, k))| (p, c, k)).collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_to_net_changes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let j = Journal::create(&p).unwrap();
        j.created(b"a", Kind::File);
        j.modified(b"a", Kind::File);
        j.modified(b"b", Kind::File);
        j.deleted(b"c", Kind::Dir);
        j.created(b"c", Kind::Dir);
        j.created(b"tmp", Kind::File);
        j.deleted(b"tmp", Kind::File);
        j.modified(b"\xff", Kind::File);
        let want = vec![
            (b"a".to_vec(), Change::Created, Kind::File),
            (b"b".to_vec(), Change::Modified, Kind::File),
            (b"c".to_vec(), Change::Modified, Kind::Dir),
            (b"\xff".to_vec(), Change::Modified, Kind::File),
        ];
        assert_eq!(j.snapshot(), want);
        assert_eq!(read(&p).unwrap(), want);
        // Only state changes are appended: header + a, b, c(del), c(mod), tmp, tmp(unch), ff.
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 8, "{text}");
    }

    #[test]
    fn churn_is_compacted_to_the_live_set() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let j = Journal::create_with_compaction(&p, 4096).unwrap();
        j.modified(b"keep", Kind::File);
        for i in 0..10_000 {
            let name = format!("tmp{}", i % 50);
            j.created(name.as_bytes(), Kind::File);
            j.deleted(name.as_bytes(), Kind::File);
        }
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= 4096 + 200, "journal is {len} bytes");
        assert_eq!(
            read(&p).unwrap(),
            vec![(b"keep".to_vec(), Change::Modified, Kind::File)]
        );
    }
}
