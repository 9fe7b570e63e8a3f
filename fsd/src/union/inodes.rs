//! Node ids per share-relative path, stable for the session (FUSE `nodeid`,
//! include/uapi/linux/fuse.h). Ids are never reused: a removed path's id is retired, so a guest
//! kernel never sees one id change identity.

use std::collections::HashMap;

use crate::fuse::abi::ROOT_ID;

pub(super) struct Inodes {
    paths: HashMap<u64, Vec<u8>>,
    ids: HashMap<Vec<u8>, u64>,
    next: u64,
}

fn under(path: &[u8], prefix: &[u8]) -> bool {
    path == prefix || (path.starts_with(prefix) && path.get(prefix.len()) == Some(&b'/'))
}

impl Inodes {
    pub(super) fn new() -> Self {
        let mut s = Self {
            paths: HashMap::new(),
            ids: HashMap::new(),
            next: ROOT_ID + 1,
        };
        s.paths.insert(ROOT_ID, Vec::new());
        s.ids.insert(Vec::new(), ROOT_ID);
        s
    }

    /// The path of a node id, `None` when unknown or retired.
    pub(super) fn path(&self, ino: u64) -> Option<Vec<u8>> {
        self.paths.get(&ino).cloned()
    }

    /// The id of `path`, assigned on first sight.
    pub(super) fn ino_for(&mut self, path: &[u8]) -> u64 {
        if let Some(&i) = self.ids.get(path) {
            return i;
        }
        let i = self.next;
        self.next += 1;
        self.ids.insert(path.to_vec(), i);
        self.paths.insert(i, path.to_vec());
        i
    }

    /// Retires the ids of `path` and everything below it.
    pub(super) fn remove_tree(&mut self, path: &[u8]) {
        if path.is_empty() {
            return;
        }
        let gone: Vec<Vec<u8>> = self
            .ids
            .keys()
            .filter(|p| under(p, path))
            .cloned()
            .collect();
        for p in gone {
            if let Some(i) = self.ids.remove(&p) {
                self.paths.remove(&i);
            }
        }
    }

    /// Swaps the ids of `a` and `b` with their subtrees (after RENAME_EXCHANGE; neither may
    /// contain the other).
    pub(super) fn exchange_trees(&mut self, a: &[u8], b: &[u8]) {
        let moved: Vec<(Vec<u8>, u64)> = self
            .ids
            .iter()
            .filter(|(p, _)| under(p, a) || under(p, b))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (p, _) in &moved {
            self.ids.remove(p);
        }
        for (p, i) in moved {
            let (from, to) = if under(&p, a) { (a, b) } else { (b, a) };
            let mut np = to.to_vec();
            np.extend_from_slice(&p[from.len()..]);
            self.paths.insert(i, np.clone());
            self.ids.insert(np, i);
        }
    }

    /// Moves the ids of `from` and everything below it to `to` (after a rename).
    pub(super) fn rename_tree(&mut self, from: &[u8], to: &[u8]) {
        let moved: Vec<(Vec<u8>, u64)> = self
            .ids
            .iter()
            .filter(|(p, _)| under(p, from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (p, i) in moved {
            self.ids.remove(&p);
            let mut np = to.to_vec();
            np.extend_from_slice(&p[from.len()..]);
            self.paths.insert(i, np.clone());
            self.ids.insert(np, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_ids_rename_and_retire() {
        let mut n = Inodes::new();
        assert_eq!(n.ino_for(b""), ROOT_ID);
        let a = n.ino_for(b"a");
        let ab = n.ino_for(b"a/b");
        let ax = n.ino_for(b"ax");
        assert_eq!(n.ino_for(b"a"), a);
        n.rename_tree(b"a", b"c");
        assert_eq!(n.path(a).unwrap(), b"c");
        assert_eq!(n.path(ab).unwrap(), b"c/b");
        assert_eq!(
            n.path(ax).unwrap(),
            b"ax",
            "a sibling with a common prefix stays"
        );
        n.remove_tree(b"c");
        assert!(n.path(a).is_none() && n.path(ab).is_none());
        assert_ne!(n.ino_for(b"c"), a, "ids are never reused");
    }
}
