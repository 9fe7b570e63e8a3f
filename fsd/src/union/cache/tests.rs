//! The resolution cache ([`super`]) on its own (generations, invalidation, the bound), then
//! through the union: it never serves a stale node. Every namespace change (rename of a
//! directory with cached descendants, unlink + create of the same name, copy-up, rmdir + mkdir,
//! rename over an existing name) is followed by lookups, attributes and reads through the
//! union, and checked against what the layers now hold.

use super::{under, ResolveCache};
use crate::union::tests::{ctx, fixture, is_whiteout, names, read_all};
use crate::union::*;

fn state() -> Arc<()> {
    Arc::new(())
}

#[test]
fn generations_invalidation_and_bound() {
    let c = ResolveCache::new(16);
    let g = c.get(b"a").err().unwrap();
    c.insert(b"a", state(), g);
    c.insert(b"a/b", state(), g);
    c.insert(b"ab", state(), g);
    assert!(c.get(b"a/b").is_ok());
    c.invalidate_tree(b"a");
    assert!(c.get(b"a").is_err() && c.get(b"a/b").is_err());
    assert!(c.get(b"ab").is_ok(), "a sibling with a common prefix stays");
    // A reader that started before an invalidation does not store.
    let g = c.get(b"x").err().unwrap();
    c.invalidate(b"y");
    c.insert(b"x", state(), g);
    assert!(c.get(b"x").is_err());
    for i in 0..100 {
        let g = c.get(b"").err().unwrap();
        c.insert(format!("n{i}").as_bytes(), state(), g);
    }
    assert!(c.len() <= 16);
    assert!(under(b"a/b", b"") && under(b"a", b"a") && !under(b"ab", b"a"));
}

const ROOT: u64 = ROOT_ID;

fn enoent<T>(r: io::Result<T>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::ENOENT))
}

fn write_new(fs: &UnionFs, parent: u64, name: &[u8], data: &[u8]) -> Entry {
    let (e, fh, _) = fs
        .create(ctx(), parent, name, 0o644, libc::O_WRONLY as u32, 0)
        .unwrap();
    fs.write(ctx(), e.ino, fh, 0, data, 0).unwrap();
    fs.release(ctx(), e.ino, fh).unwrap();
    e
}

#[test]
fn directory_rename_moves_cached_descendants() {
    let f = fixture();
    // Warm the cache for the whole subtree.
    let d = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    let s = f.fs.lookup(ctx(), d.ino, b"sub").unwrap();
    let c = f.fs.lookup(ctx(), s.ino, b"c.txt").unwrap();
    let b = f.fs.lookup(ctx(), d.ino, b"b.txt").unwrap();
    assert_eq!(read_all(&f.fs, c.ino), b"lower c\n");
    f.fs.rename(ctx(), ROOT, b"dir", ROOT, b"dir2", 0).unwrap();
    // Old names are gone, through the root and through the moved ids.
    assert!(enoent(f.fs.lookup(ctx(), ROOT, b"dir")));
    // The ids moved: attributes and lookups below them come from the new place (upper copy).
    let (st, _) = f.fs.getattr(ctx(), c.ino, None).unwrap();
    assert_eq!(st.st_size, 8);
    assert_eq!(f.fs.lookup(ctx(), s.ino, b"c.txt").unwrap().ino, c.ino);
    assert_eq!(read_all(&f.fs, c.ino), b"lower c\n");
    assert_eq!(read_all(&f.fs, b.ino), b"lower b\n");
    // Writing through the moved id changes the file at the new path only.
    let (fh, _) = f.fs.open(ctx(), c.ino, libc::O_WRONLY as u32).unwrap();
    f.fs.write(ctx(), c.ino, fh, 0, b"UPPER", 0).unwrap();
    f.fs.release(ctx(), c.ino, fh).unwrap();
    assert_eq!(
        std::fs::read(f.upper.join("dir2/sub/c.txt")).unwrap(),
        b"UPPER c\n"
    );
    // A new directory at the old name is empty: the cached lower children must not leak in.
    let nd = f.fs.mkdir(ctx(), ROOT, b"dir", 0o755, 0).unwrap();
    assert!(names(&f.fs, nd.ino).is_empty());
    assert!(enoent(f.fs.lookup(ctx(), nd.ino, b"sub")));
    assert!(enoent(f.fs.lookup(ctx(), nd.ino, b"b.txt")));
    // And a file created in the renamed tree is seen at once.
    let e = write_new(&f.fs, s.ino, b"new.txt", b"n");
    assert_eq!(f.fs.lookup(ctx(), s.ino, b"new.txt").unwrap().ino, e.ino);
    assert!(f.upper.join("dir2/sub/new.txt").exists());
}

#[test]
fn unlink_then_create_same_name() {
    let f = fixture();
    let a = f.fs.lookup(ctx(), ROOT, b"a.txt").unwrap();
    assert_eq!(read_all(&f.fs, a.ino), b"lower a\n");
    f.fs.unlink(ctx(), ROOT, b"a.txt").unwrap();
    assert!(enoent(f.fs.lookup(ctx(), ROOT, b"a.txt")));
    assert!(enoent(f.fs.getattr(ctx(), a.ino, None)));
    let e = write_new(&f.fs, ROOT, b"a.txt", b"new");
    assert_ne!(e.ino, a.ino, "ids are never reused");
    let l = f.fs.lookup(ctx(), ROOT, b"a.txt").unwrap();
    assert_eq!((l.ino, l.attr.st_size), (e.ino, 3));
    assert_eq!(read_all(&f.fs, l.ino), b"new");
    // Again for an upper-only file (no whiteout involved).
    f.fs.unlink(ctx(), ROOT, b"a.txt").unwrap();
    assert!(is_whiteout(&f.upper.join("a.txt")));
    let e2 = write_new(&f.fs, ROOT, b"a.txt", b"third!");
    assert_eq!(f.fs.getattr(ctx(), e2.ino, None).unwrap().0.st_size, 6);
    assert_eq!(read_all(&f.fs, e2.ino), b"third!");
}

#[test]
fn copy_up_then_read_and_attributes() {
    let f = fixture();
    let d = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    let b = f.fs.lookup(ctx(), d.ino, b"b.txt").unwrap();
    let (st0, _) = f.fs.getattr(ctx(), b.ino, None).unwrap();
    assert_eq!(st0.st_size, 8);
    // Open for write: copy-up of dir/ and dir/b.txt while both are cached as lower-only.
    let (fh, _) = f.fs.open(ctx(), b.ino, libc::O_WRONLY as u32).unwrap();
    f.fs.write(ctx(), b.ino, fh, 8, b"appended", 0).unwrap();
    // Attributes follow writes made through an open handle.
    assert_eq!(f.fs.getattr(ctx(), b.ino, None).unwrap().0.st_size, 16);
    f.fs.release(ctx(), b.ino, fh).unwrap();
    assert_eq!(read_all(&f.fs, b.ino), b"lower b\nappended");
    assert_eq!(
        f.fs.lookup(ctx(), d.ino, b"b.txt").unwrap().attr.st_size,
        16
    );
    // chmod of the copied-up directory shows at once.
    let set = SetAttr {
        mode: Some(0o700),
        ..Default::default()
    };
    f.fs.setattr(ctx(), d.ino, set).unwrap();
    let (st, _) = f.fs.getattr(ctx(), d.ino, None).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o700);
    // A create in a cached lower-only directory copies it up and is visible in its listing.
    let s = f.fs.lookup(ctx(), d.ino, b"sub").unwrap();
    assert_eq!(names(&f.fs, s.ino), ["c.txt"]);
    write_new(&f.fs, s.ino, b"x", b"x");
    assert_eq!(names(&f.fs, s.ino), ["c.txt", "x"]);
    assert_eq!(
        std::fs::read(f.lower.join("dir/b.txt")).unwrap(),
        b"lower b\n"
    );
}

#[test]
fn rename_over_cached_target_and_rmdir_mkdir() {
    let f = fixture();
    let a = f.fs.lookup(ctx(), ROOT, b"a.txt").unwrap();
    let r = f.fs.lookup(ctx(), ROOT, b"run.sh").unwrap();
    assert_eq!(read_all(&f.fs, r.ino), b"#!/bin/sh\n");
    f.fs.rename(ctx(), ROOT, b"a.txt", ROOT, b"run.sh", 0)
        .unwrap();
    assert!(enoent(f.fs.lookup(ctx(), ROOT, b"a.txt")));
    let n = f.fs.lookup(ctx(), ROOT, b"run.sh").unwrap();
    assert_eq!(n.ino, a.ino, "the source id moves");
    assert_eq!(read_all(&f.fs, n.ino), b"lower a\n");
    assert!(
        enoent(f.fs.getattr(ctx(), r.ino, None)),
        "the target id is retired"
    );
    // rmdir of a cached lower directory, then mkdir: empty, opaque.
    let d = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    let s = f.fs.lookup(ctx(), d.ino, b"sub").unwrap();
    f.fs.lookup(ctx(), s.ino, b"c.txt").unwrap();
    f.fs.unlink(ctx(), s.ino, b"c.txt").unwrap();
    f.fs.rmdir(ctx(), d.ino, b"sub").unwrap();
    assert!(enoent(f.fs.lookup(ctx(), d.ino, b"sub")));
    let ns = f.fs.mkdir(ctx(), d.ino, b"sub", 0o755, 0).unwrap();
    assert!(enoent(f.fs.lookup(ctx(), ns.ino, b"c.txt")));
    assert!(names(&f.fs, ns.ino).is_empty());
}

#[test]
fn rename_exchange_swaps_nodes_ids_and_subtrees() {
    let f = fixture();
    let x = libc::RENAME_EXCHANGE;
    // A lower file and a file created in the upper layer.
    let a = f.fs.lookup(ctx(), ROOT, b"a.txt").unwrap();
    let n = write_new(&f.fs, ROOT, b"new.txt", b"upper only");
    f.fs.rename(ctx(), ROOT, b"a.txt", ROOT, b"new.txt", x)
        .unwrap();
    assert_eq!(
        read_all(&f.fs, a.ino),
        b"lower a\n",
        "the id moved with the node"
    );
    let la = f.fs.lookup(ctx(), ROOT, b"a.txt").unwrap();
    let ln = f.fs.lookup(ctx(), ROOT, b"new.txt").unwrap();
    assert_eq!((la.ino, ln.ino), (n.ino, a.ino));
    assert_eq!(read_all(&f.fs, la.ino), b"upper only");
    assert_eq!(
        std::fs::read(f.upper.join("new.txt")).unwrap(),
        b"lower a\n"
    );
    assert_eq!(std::fs::read(f.lower.join("a.txt")).unwrap(), b"lower a\n");
    // A directory (children cached) and a file swap: the directory is complete and opaque at
    // its new name, the file hides the lower directory at the old one.
    let d = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    let s = f.fs.lookup(ctx(), d.ino, b"sub").unwrap();
    let c = f.fs.lookup(ctx(), s.ino, b"c.txt").unwrap();
    f.fs.rename(ctx(), ROOT, b"dir", ROOT, b"run.sh", x)
        .unwrap();
    let nd = f.fs.lookup(ctx(), ROOT, b"run.sh").unwrap();
    assert_eq!(nd.ino, d.ino);
    assert_eq!(nd.attr.st_mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(names(&f.fs, nd.ino), ["b.txt", "sub"]);
    assert_eq!(f.fs.lookup(ctx(), s.ino, b"c.txt").unwrap().ino, c.ino);
    assert_eq!(read_all(&f.fs, c.ino), b"lower c\n");
    let nf = f.fs.lookup(ctx(), ROOT, b"dir").unwrap();
    assert_eq!(nf.attr.st_mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(read_all(&f.fs, nf.ino), b"#!/bin/sh\n");
    assert_eq!(
        f.fs.lookup(ctx(), nf.ino, b"b.txt")
            .err()
            .unwrap()
            .raw_os_error(),
        Some(libc::ENOTDIR),
        "a file now, not the lower dir"
    );
    assert_eq!(
        names(&f.fs, ROOT),
        ["a.txt", "dir", "escape", "new.txt", "run.sh"]
    );
    // Errors: a missing side, a side inside the other, EXCHANGE with NOREPLACE.
    let e = f.fs.rename(ctx(), ROOT, b"a.txt", ROOT, b"missing", x);
    assert_eq!(e.err().unwrap().raw_os_error(), Some(libc::ENOENT));
    let e = f.fs.rename(ctx(), ROOT, b"run.sh", s.ino, b"c.txt", x);
    assert_eq!(e.err().unwrap().raw_os_error(), Some(libc::EINVAL));
    let e = f.fs.rename(
        ctx(),
        ROOT,
        b"a.txt",
        ROOT,
        b"new.txt",
        x | libc::RENAME_NOREPLACE,
    );
    assert_eq!(e.err().unwrap().raw_os_error(), Some(libc::EINVAL));
    // Journal: both lower names modified, the new file still created (now with other content).
    let j = f.fs.journal().snapshot();
    let get = |p: &[u8]| j.iter().find(|(q, _, _)| q == p).map(|(_, c, k)| (*c, *k));
    use crate::journal::Change;
    assert_eq!(get(b"a.txt"), Some((Change::Modified, Kind::File)));
    assert_eq!(get(b"new.txt"), Some((Change::Created, Kind::File)));
    assert_eq!(get(b"dir"), Some((Change::Modified, Kind::File)));
    assert_eq!(get(b"run.sh"), Some((Change::Modified, Kind::Dir)));
}
