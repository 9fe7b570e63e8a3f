//! RENAME2 with `RENAME_EXCHANGE` (renameat2(2)): two existing names swap atomically, in the
//! upper layer. Both sides are first made complete in the upper layer (a directory with its
//! whole merged subtree, as for a plain directory rename), then swapped with one
//! `renameat2(RENAME_EXCHANGE)`; a directory that moved is marked opaque (nothing from the lower
//! layer may merge into it at its new place). No name disappears, so no whiteouts are needed:
//! each name stays occupied by an upper node, which hides whatever the lower layer has there.

use std::io;

use super::path::{split, under};
use super::sys::{self, err};
use super::{kind_of, lock, UnionFs};

impl UnionFs {
    /// Swaps `opath` (`oldname` in its parent) and `npath` (`newname`). ENOENT when either is
    /// missing; EINVAL when one contains the other.
    pub(super) fn exchange_paths(
        &self,
        opath: &[u8],
        oldname: &[u8],
        npath: &[u8],
        newname: &[u8],
    ) -> io::Result<()> {
        if under(npath, opath) || under(opath, npath) {
            return Err(err(libc::EINVAL));
        }
        let src = self.layers.resolve(opath)?;
        let dst = self.layers.resolve(npath)?;
        for (p, r) in [(opath, &src), (npath, &dst)] {
            if r.is_dir() {
                self.layers.copy_up_tree(p)?;
            } else {
                self.layers.copy_up(p)?;
            }
        }
        let (op, _) = split(opath).ok_or_else(|| err(libc::EBUSY))?;
        let (np, _) = split(npath).ok_or_else(|| err(libc::EBUSY))?;
        let oup = self.layers.upper_dir(op)?;
        let nup = self.layers.upper_dir(np)?;
        sys::renameat2(&oup, oldname, &nup, newname, libc::RENAME_EXCHANGE)?;
        // The caller invalidates both subtrees in the cache; the ids swap with the nodes.
        if src.is_dir() {
            let d = sys::openat(&nup, newname, libc::O_PATH, 0)?;
            self.layers.marks.set_opaque(&d)?;
        }
        if dst.is_dir() {
            let d = sys::openat(&oup, oldname, libc::O_PATH, 0)?;
            self.layers.marks.set_opaque(&d)?;
        }
        lock(&self.inodes).exchange_trees(opath, npath);
        // Each name now holds the other node: a replacement (created after deleted folds to
        // "modified" for a lower name and stays "created" for a new one).
        for (p, old, new) in [(opath, &src, &dst), (npath, &dst, &src)] {
            self.journal.deleted(p, kind_of(&old.st));
            self.journal.created(p, kind_of(&new.st));
        }
        Ok(())
    }
}
