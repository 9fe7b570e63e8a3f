//! A reproducible writer for the "newc" cpio format (SVR4 without CRC, magic `070701`), the
//! format the kernel unpacks an initramfs from (Documentation/driver-api/early-userspace/
//! buffer-format.rst).
//!
//! Reproducible by construction: entries are written sorted by path (so every parent directory
//! comes before its children), inode numbers are assigned 1, 2, 3… in that order, every mtime
//! is the given epoch, and every owner is 0:0. Missing parent directories are added (mode 0755).

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with permission bits `mode`.
    Dir { mode: u32 },
    /// A regular file with permission bits `mode`.
    File { mode: u32, data: Vec<u8> },
    /// A symbolic link to `target`.
    Symlink { target: String },
    /// A character device node.
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An in-memory archive; paths are relative (`init`, `lib/modules/…`), without a leading `/`.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `path`, creating missing parent directories.
    pub fn insert(&mut self, path: &str, node: Node) {
        let path = clean(path);
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries
                .entry(parent.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        self.entries.insert(path, node);
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, Node::Dir { mode });
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.insert(path, Node::File { mode, data });
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&clean(path))
    }

    /// Paths in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the archive, every mtime set to `mtime`, ending with the `TRAILER!!!` entry, padded
    /// to a 512-byte multiple like cpio(1) does.
    pub fn write_to<W: Write>(&self, w: &mut W, mtime: u32) -> io::Result<u64> {
        let mut n = 0u64;
        for (i, (path, node)) in self.entries.iter().enumerate() {
            let ino = i as u32 + 1;
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
                Node::Dir { mode } => (S_IFDIR | (mode & 0o7777), 2, &[], (0, 0)),
                Node::File { mode, data } => (S_IFREG | (mode & 0o7777), 1, data, (0, 0)),
                Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
                Node::CharDev { mode, major, minor } => {
                    (S_IFCHR | (mode & 0o7777), 1, &[], (*major, *minor))
                }
            };
            n += write_entry(w, path, ino, mode, nlink, mtime, data, rdev)?;
        }
        n += write_entry(w, "TRAILER!!!", 0, 0, 1, 0, &[], (0, 0))?;
        let pad = (512 - (n % 512)) % 512;
        w.write_all(&vec![0u8; pad as usize])?;
        Ok(n + pad)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self, mtime: u32) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v, mtime)
            .expect("writing to a Vec cannot fail");
        v
    }
}

fn pad4(len: u64) -> usize {
    ((4 - (len % 4)) % 4) as usize
}

#[allow(clippy::too_many_arguments)]
fn write_entry<W: Write>(
    w: &mut W,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> io::Result<u64> {
    let namesize = name.len() as u32 + 1;
    // c_magic, then 13 fields of 8 hex digits: ino mode uid gid nlink mtime filesize
    // devmajor devminor rdevmajor rdevminor namesize check.
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, 0
    );
    debug_assert_eq!(header.len(), 110);
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let hlen = 110 + namesize as u64;
    let p1 = pad4(hlen);
    w.write_all(&[0u8; 3][..p1])?;
    w.write_all(data)?;
    let p2 = pad4(data.len() as u64);
    w.write_all(&[0u8; 3][..p2])?;
    Ok(hlen + p1 as u64 + data.len() as u64 + p2 as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_layout_of_one_file() {
        let mut a = Archive::new();
        a.file("/init", 0o755, b"hello".to_vec());
        let b = a.to_bytes(0x5f5e1000);
        let h = std::str::from_utf8(&b[..110]).unwrap();
        assert_eq!(
            h,
            "070701\
             00000001\
             000081ed\
             00000000\
             00000000\
             00000001\
             5f5e1000\
             00000005\
             00000000\
             00000000\
             00000000\
             00000000\
             00000005\
             00000000"
        );
        // name "init\0" (5 bytes): header+name = 115, padded to 116.
        assert_eq!(&b[110..116], b"init\0\0");
        // data "hello" padded to 8.
        assert_eq!(&b[116..124], b"hello\0\0\0");
        // trailer follows; total padded to 512.
        assert_eq!(&b[124..130], b"070701");
        assert_eq!(&b[124 + 110..124 + 110 + 11], b"TRAILER!!!\0");
        assert_eq!(b.len(), 512);
        assert!(b[124 + 121..].iter().all(|&x| x == 0));
    }

    #[test]
    fn parents_first_sorted_and_reproducible() {
        let build = |order: &[&str]| {
            let mut a = Archive::new();
            for p in order {
                a.file(p, 0o644, p.as_bytes().to_vec());
            }
            a.dir("proc", 0o555);
            a.insert(
                "dev/console",
                Node::CharDev {
                    mode: 0o600,
                    major: 5,
                    minor: 1,
                },
            );
            a
        };
        let a = build(&["lib/x86_64-linux-gnu/libc.so.6", "etc/ax/modules", "init"]);
        let b = build(&["init", "etc/ax/modules", "lib/x86_64-linux-gnu/libc.so.6"]);
        assert_eq!(a.to_bytes(1), b.to_bytes(1));
        assert_ne!(a.to_bytes(1), a.to_bytes(2));
        let paths: Vec<&str> = a.paths().collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "etc",
                "etc/ax",
                "etc/ax/modules",
                "init",
                "lib",
                "lib/x86_64-linux-gnu",
                "lib/x86_64-linux-gnu/libc.so.6",
                "proc"
            ]
        );
    }

    /// The host's cpio(1) reads our archive back: names, modes, contents.
    #[test]
    fn cpio_tool_reads_it() {
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("cpio not installed; skipped");
            return;
        }
        let mut a = Archive::new();
        a.file("init", 0o755, b"#!/bin/true\n".to_vec());
        a.file("lib/modules/x/kernel/a.ko", 0o644, vec![7u8; 1001]);
        a.insert(
            "lib64/ld.so",
            Node::Symlink {
                target: "../lib/ld.so".into(),
            },
        );
        a.dir("tmp", 0o1777);
        let bytes = a.to_bytes(1_700_000_000);
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(listing.contains("-rwxr-xr-x"), "{listing}");
        assert!(listing.contains("lib/modules/x/kernel/a.ko"), "{listing}");
        assert!(listing.contains("lib64/ld.so -> ../lib/ld.so"), "{listing}");
        assert!(listing.contains("drwxrwxrwt"), "{listing}");
        assert!(listing.contains("1001"), "{listing}");
    }
}
