//! The resolution cache: share-relative path → the node's state in both layers
//! ([`Layered`]: the upper `O_PATH` fd, the lower node, whether lower has the name, the
//! attributes), so an op on a known node costs no walk from the layer roots (issue #4 bench).
//!
//! Only positive entries are kept. An entry is the truth as long as nothing changes the layers
//! under it, and every change goes through the union, which invalidates what it touched
//! *after* touching it: the path itself (copy-up, create), or the path and everything below it
//! (remove, rename, whiteouts, opaque marks). Attributes of a node with an upper copy are not
//! taken from the entry (writes change them): the union `fstat`s the cached fd.
//!
//! Readers fill the cache without the union's metadata lock, so a reader could compute a state
//! just before a change and store it just after the invalidation. A generation counter closes
//! that window: a reader notes the generation before it looks at the layers and stores only if
//! no invalidation happened since.
//!
//! Each entry may hold two file descriptors (upper and directory-lower `O_PATH` fds); the cache
//! is bounded (see [`ResolveCache::new`]) and evicts arbitrary entries when full — a miss only
//! costs a walk from the nearest cached ancestor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::layers::Layered;

/// The cache; see the module docs.
pub struct ResolveCache {
    inner: Mutex<Inner>,
    cap: usize,
}

struct Inner {
    map: HashMap<Vec<u8>, Arc<Layered>>,
    gen: u64,
}

/// Is `path` equal to `prefix` or below it? (The root, `""`, is above everything.)
pub(super) fn under(path: &[u8], prefix: &[u8]) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.get(prefix.len()) == Some(&b'/'))
}

impl ResolveCache {
    /// A cache of at most `cap` entries (≥ 16).
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                gen: 0,
            }),
            cap: cap.max(16),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `path`, or on a miss the current generation (pass it to [`Self::insert`]).
    pub fn get(&self, path: &[u8]) -> Result<Arc<Layered>, u64> {
        let g = self.lock();
        g.map.get(path).cloned().ok_or(g.gen)
    }

    /// Stores `state` for `path` unless an invalidation happened since generation `gen`.
    pub fn insert(&self, path: &[u8], state: Arc<Layered>, gen: u64) {
        let mut g = self.lock();
        if g.gen != gen {
            return;
        }
        if g.map.len() >= self.cap && !g.map.contains_key(path) {
            // Evict a quarter, arbitrary entries (HashMap order); misses are cheap.
            let drop_n = self.cap / 4;
            let victims: Vec<Vec<u8>> = g.map.keys().take(drop_n).cloned().collect();
            for v in victims {
                g.map.remove(&v);
            }
        }
        g.map.insert(path.to_vec(), state);
    }

    /// Forgets `path` (its state changed; children are unaffected).
    pub fn invalidate(&self, path: &[u8]) {
        let mut g = self.lock();
        g.gen += 1;
        g.map.remove(path);
    }

    /// Forgets `path` and everything below it (removed, renamed, or made opaque).
    pub fn invalidate_tree(&self, path: &[u8]) {
        let mut g = self.lock();
        g.gen += 1;
        if path.is_empty() {
            g.map.clear();
        } else {
            g.map.retain(|p, _| !under(p, path));
        }
    }

    /// Number of entries (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Arc<Layered> {
        Arc::new(Layered {
            upper: None,
            lower: None,
            lower_exists: false,
            // SAFETY: stat64 is plain data; all-zero is a valid value.
            st: unsafe { std::mem::zeroed() },
            lower_list: Default::default(),
        })
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
}
