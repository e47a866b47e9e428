//! A bounded map for the per-process caches of immutable file metadata (segment and part
//! footers): when full, the entry inserted first goes, so a process whose lookups range over
//! more files than the bound keeps the bound's worth of them instead of emptying the cache.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// At most `cap` entries; inserting into a full cache evicts the oldest insertion.
pub struct FifoCache<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> FifoCache<K, V> {
    /// An empty cache of at most `cap` (≥ 1) entries.
    pub fn new(cap: usize) -> Self {
        FifoCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// The value of `k`, if cached.
    pub fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).cloned()
    }

    /// Caches `v` as `k` (replacing an entry of `k` in place), evicting the oldest entries
    /// beyond the bound.
    pub fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Drops `k`.
    pub fn remove(&mut self, k: &K) {
        if self.map.remove(k).is_some() {
            self.order.retain(|o| o != k);
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::FifoCache;

    #[test]
    fn a_full_cache_evicts_the_oldest_insertion_only() {
        let mut c = FifoCache::new(3);
        for k in 0..3 {
            c.insert(k, k * 10);
        }
        c.insert(1, 11); // replaced in place: still the second oldest
        c.insert(3, 30);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&0), None);
        assert_eq!(c.get(&1), Some(11));
        c.insert(4, 40);
        assert_eq!(c.get(&1), None);
        assert_eq!(
            (c.get(&2), c.get(&3), c.get(&4)),
            (Some(20), Some(30), Some(40))
        );
        // A removed key re-inserted counts as new: it is not evicted for its old position.
        c.remove(&2);
        c.insert(2, 21);
        c.insert(5, 50);
        assert_eq!(c.get(&3), None);
        assert_eq!(
            (c.get(&2), c.get(&4), c.get(&5)),
            (Some(21), Some(40), Some(50))
        );
        c.clear();
        assert!(c.is_empty());
    }
}
