//! The resolution cache: share-relative path → the node's state in both layers
//! ([`super::layers::Layered`]: the upper `O_PATH` fd, the lower node, whether lower has the
//! name, the attributes), so an op on a known node costs no walk from the layer roots (the
//! latency bench, fsd/tests/bench.rs). The cache itself does not look inside the state: it is
//! generic over it.
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

use super::path::under;

/// The cache of `T`s (the union's: [`super::layers::Layered`]); see the module docs.
pub struct ResolveCache<T> {
    inner: Mutex<Inner<T>>,
    cap: usize,
}

struct Inner<T> {
    map: HashMap<Vec<u8>, Arc<T>>,
    gen: u64,
}

impl<T> ResolveCache<T> {
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

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `path`, or on a miss the current generation (pass it to [`Self::insert`]).
    pub fn get(&self, path: &[u8]) -> Result<Arc<T>, u64> {
        let g = self.lock();
        g.map.get(path).cloned().ok_or(g.gen)
    }

    /// Stores `state` for `path` unless an invalidation happened since generation `gen`.
    pub fn insert(&self, path: &[u8], state: Arc<T>, gen: u64) {
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
mod tests;
