//! Tombstones: what re-scans (`REPLACE_BLOCKS`) and `pocaduck_delete` hide.
//!
//! A commit may carry a **hide** ([`Hides`]): whole blocks (a commit written with
//! `REPLACE_BLOCKS`: every block it writes), labels, or the labels within some blocks
//! (`pocaduck_delete`). Consolidate applies it in two places:
//! - to the other commits it merges in the same call that are older than the hiding commit
//!   (storage time, then worker and sequence number): their hidden entries are dropped before
//!   they are written;
//! - to everything the index already holds: the manifest gets a [`Tombstone`] whose `run` is the
//!   run of the new entries; it hides the matching entries of every segment of a lower run.
//!
//! Readers drop hidden entries as they decode a segment ([`Tombstones::filter`]); merges and
//! optimize write only visible entries into a run numbered above every tombstone, so a tombstone
//! is dropped from the manifest once no segment of a lower run is left ([`Tombstones::gc`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, BooleanArray};
use serde::{Deserialize, Serialize};

use crate::entry_chunks::Blocks;
use crate::error::Result;
use crate::index::BlockId;

/// A block id as JSON: a number (BIGINT blocks) or a string (VARCHAR blocks).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Block {
    /// An integer block id.
    Int(i64),
    /// A string block id.
    Str(String),
}

impl From<&BlockId> for Block {
    fn from(b: &BlockId) -> Block {
        match b {
            BlockId::Int(i) => Block::Int(*i),
            BlockId::Str(s) => Block::Str(s.clone()),
        }
    }
}

/// What one commit hides: entries whose label is in `labels` (any label when absent) and whose
/// block is in `blocks` (any block when absent). At least one of the two is present.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hides {
    /// Labels hidden (all labels of the blocks when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<u64>>,
    /// Blocks hidden (all blocks of the labels when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<Block>>,
}

impl Hides {
    /// Parses the `pocaduck.hides` value of a commit segment.
    pub fn from_json(s: &str) -> std::result::Result<Hides, String> {
        let h: Hides = serde_json::from_str(s).map_err(|e| e.to_string())?;
        if h.labels.is_none() && h.blocks.is_none() {
            return Err("hides neither labels nor blocks".into());
        }
        Ok(h)
    }

    /// The commit-segment metadata value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.labels.as_ref().is_some_and(|l| l.is_empty())
            || self.blocks.as_ref().is_some_and(|b| b.is_empty())
    }
}

/// A manifest's tombstone: hides the matching entries of every segment whose run is below `run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Entries of runs below this one are hidden.
    pub run: u64,
    /// What is hidden.
    #[serde(flatten)]
    pub hides: Hides,
}

/// Merges hides into as few as possible (all block-only hides into one, all label-only into
/// one, label-within-block hides as they are), values sorted and deduplicated.
pub fn combine(hides: impl IntoIterator<Item = Hides>) -> Vec<Hides> {
    let mut labels: Vec<u64> = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut pairs: Vec<Hides> = Vec::new();
    for h in hides {
        if h.is_empty() {
            continue;
        }
        match (h.labels, h.blocks) {
            (Some(l), None) => labels.extend(l),
            (None, Some(b)) => blocks.extend(b),
            (Some(mut l), Some(mut b)) => {
                l.sort_unstable();
                l.dedup();
                b.sort();
                b.dedup();
                pairs.push(Hides {
                    labels: Some(l),
                    blocks: Some(b),
                });
            }
            (None, None) => {}
        }
    }
    let mut out = Vec::new();
    if !labels.is_empty() {
        labels.sort_unstable();
        labels.dedup();
        out.push(Hides {
            labels: Some(labels),
            blocks: None,
        });
    }
    if !blocks.is_empty() {
        blocks.sort();
        blocks.dedup();
        out.push(Hides {
            labels: None,
            blocks: Some(blocks),
        });
    }
    out.extend(pairs);
    out
}

#[derive(Default)]
struct BlockSet {
    ints: HashSet<i64>,
    strs: HashSet<String>,
}

impl BlockSet {
    fn add(&mut self, b: &Block) {
        match b {
            Block::Int(i) => {
                self.ints.insert(*i);
            }
            Block::Str(s) => {
                self.strs.insert(s.clone());
            }
        }
    }

    fn has(&self, b: &BlockId) -> bool {
        match b {
            BlockId::Int(i) => self.ints.contains(i),
            BlockId::Str(s) => self.strs.contains(s.as_str()),
        }
    }
}

/// The union of some tombstones' hides, ready to test entries.
#[derive(Default)]
pub struct Filter {
    labels: HashSet<u64>,
    blocks: BlockSet,
    /// Label-within-block hides: per label, the blocks it is hidden in.
    pairs: HashMap<u64, BlockSet>,
}

impl Filter {
    fn build<'a>(hides: impl Iterator<Item = &'a Hides>) -> Filter {
        let mut f = Filter::default();
        for h in hides {
            match (&h.labels, &h.blocks) {
                (Some(l), None) => f.labels.extend(l.iter().copied()),
                (None, Some(b)) => b.iter().for_each(|b| f.blocks.add(b)),
                (Some(l), Some(b)) => {
                    for l in l {
                        let s = f.pairs.entry(*l).or_default();
                        b.iter().for_each(|b| s.add(b));
                    }
                }
                (None, None) => {}
            }
        }
        f
    }

    /// Whether the entry of (`label`, `block`) is hidden.
    pub fn hides(&self, label: u64, block: &BlockId) -> bool {
        self.labels.contains(&label)
            || self.blocks.has(block)
            || self.pairs.get(&label).is_some_and(|b| b.has(block))
    }

    /// The rows of (`labels`, `blocks`) columns to keep (`None`: all of them).
    pub(crate) fn keep(&self, labels: &[u64], blocks: &ArrayRef) -> Result<Option<BooleanArray>> {
        let blocks = Blocks::of(blocks)?;
        let in_set = |s: &BlockSet, i: usize| match &blocks {
            Blocks::Int(v) => s.ints.contains(&v[i]),
            Blocks::Str(a) => s.strs.contains(a.value(i)),
        };
        let keep: Vec<bool> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                !(self.labels.contains(l)
                    || in_set(&self.blocks, i)
                    || self.pairs.get(l).is_some_and(|s| in_set(s, i)))
            })
            .collect();
        Ok(keep.contains(&false).then(|| BooleanArray::from(keep)))
    }
}

/// A generation's tombstones, with the filter of each run built on first use.
#[derive(Default)]
pub struct Tombstones {
    list: Vec<Tombstone>,
    per_run: Mutex<HashMap<u64, Option<Arc<Filter>>>>,
}

impl Tombstones {
    /// The tombstones of a manifest.
    pub fn new(list: &[Tombstone]) -> Tombstones {
        Tombstones {
            list: list.to_vec(),
            per_run: Default::default(),
        }
    }

    /// What hides entries of a segment of run `run` (`None`: nothing does).
    pub fn filter(&self, run: u64) -> Option<Arc<Filter>> {
        if self.list.iter().all(|t| t.run <= run) {
            return None;
        }
        let mut m = self.per_run.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(run)
            .or_insert_with(|| {
                Some(Arc::new(Filter::build(
                    self.list.iter().filter(|t| t.run > run).map(|t| &t.hides),
                )))
            })
            .clone()
    }

    /// Drops the tombstones no segment run is below any more.
    pub fn gc(list: &mut Vec<Tombstone>, runs: impl Iterator<Item = u64>) {
        match runs.min() {
            Some(lowest) => list.retain(|t| t.run > lowest),
            None => list.clear(),
        }
    }
}

/// The order of commits merged in one consolidate: storage time (milliseconds; whole seconds on
/// S3), then the writer's clock at the commit (`pocaduck.committed_ms`; 0 for commits written
/// before it existed), then worker, then sequence.
pub type CommitOrder = (i64, u64, String, u64);

/// The hides of the commits one consolidate merges, to drop the entries of older commits of the
/// same call: per block and per label, the newest hiding commit.
#[derive(Default)]
pub struct BatchHides {
    by_label: HashMap<u64, CommitOrder>,
    by_block: HashMap<BlockId, CommitOrder>,
    /// Label-within-block hides: per label and block, the newest hiding commit.
    pairs: HashMap<u64, HashMap<BlockId, CommitOrder>>,
}

impl BatchHides {
    /// Records the hides of the commit ordered `at`.
    pub fn add(&mut self, at: &CommitOrder, h: &Hides) {
        let newer = |slot: &mut CommitOrder| {
            if *slot < *at {
                *slot = at.clone();
            }
        };
        let block_id = |b: &Block| match b {
            Block::Int(i) => BlockId::Int(*i),
            Block::Str(s) => BlockId::Str(s.clone()),
        };
        match (&h.labels, &h.blocks) {
            (Some(l), None) => l
                .iter()
                .for_each(|l| newer(self.by_label.entry(*l).or_insert_with(|| at.clone()))),
            (None, Some(b)) => b.iter().for_each(|b| {
                newer(
                    self.by_block
                        .entry(block_id(b))
                        .or_insert_with(|| at.clone()),
                )
            }),
            (Some(l), Some(b)) => {
                for l in l {
                    let per = self.pairs.entry(*l).or_default();
                    for b in b {
                        newer(per.entry(block_id(b)).or_insert_with(|| at.clone()));
                    }
                }
            }
            (None, None) => {}
        }
    }

    /// Whether an entry of the commit ordered `at` is hidden by a newer commit of the batch.
    pub fn hides(&self, at: &CommitOrder, label: u64, block: &BlockId) -> bool {
        self.by_label.get(&label).is_some_and(|t| t > at)
            || self.by_block.get(block).is_some_and(|t| t > at)
            || self
                .pairs
                .get(&label)
                .and_then(|b| b.get(block))
                .is_some_and(|t| t > at)
    }

    /// Whether no commit of the batch hides anything.
    pub fn is_empty(&self) -> bool {
        self.by_label.is_empty() && self.by_block.is_empty() && self.pairs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(v: &[i64]) -> Option<Vec<Block>> {
        Some(v.iter().map(|b| Block::Int(*b)).collect())
    }

    #[test]
    fn tombstones_hide_lower_runs_only() {
        let t = Tombstones::new(&[
            Tombstone {
                run: 5,
                hides: Hides {
                    labels: None,
                    blocks: blocks(&[1, 2]),
                },
            },
            Tombstone {
                run: 8,
                hides: Hides {
                    labels: Some(vec![7]),
                    blocks: blocks(&[3]),
                },
            },
        ]);
        assert!(t.filter(8).is_none());
        let f = t.filter(6).unwrap();
        assert!(f.hides(7, &BlockId::Int(3)));
        assert!(!f.hides(7, &BlockId::Int(1)), "run 6 is not below 5");
        assert!(!f.hides(6, &BlockId::Int(3)), "label 6 is not in the pair");
        let f = t.filter(4).unwrap();
        assert!(f.hides(99, &BlockId::Int(1)) && f.hides(7, &BlockId::Int(3)));
        assert!(!f.hides(99, &BlockId::Int(4)));
        let cols: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![1, 3, 4, 3]));
        let keep = f.keep(&[9, 7, 7, 8], &cols).unwrap().unwrap();
        assert_eq!(
            keep.iter().map(|x| x.unwrap()).collect::<Vec<_>>(),
            vec![false, false, true, true]
        );
        let mut list = t.list.clone();
        Tombstones::gc(&mut list, [5u64, 9].into_iter());
        assert_eq!(list.iter().map(|t| t.run).collect::<Vec<_>>(), vec![8]);
    }

    #[test]
    fn batch_hides_follow_commit_order() {
        let mut b = BatchHides::default();
        let at = |t: i64, w: &str, s: u64| (t, 0, w.to_string(), s);
        b.add(
            &at(10, "b", 1),
            &Hides {
                labels: None,
                blocks: Some(vec![Block::Str("x".into())]),
            },
        );
        let x = BlockId::Str("x".into());
        assert!(b.hides(&at(9, "z", 4), 1, &x));
        assert!(b.hides(&at(10, "a", 4), 1, &x));
        assert!(!b.hides(&at(10, "b", 1), 1, &x), "its own entries stay");
        assert!(!b.hides(&at(11, "a", 1), 1, &x));
        assert!(!b.hides(&at(9, "a", 1), 1, &BlockId::Str("y".into())));
        // Same storage time: the writer's clock decides, then the worker.
        let y = BlockId::Str("y".into());
        b.add(
            &(20, 5, "m".into(), 1),
            &Hides {
                labels: None,
                blocks: Some(vec![Block::Str("y".into())]),
            },
        );
        assert!(b.hides(&(20, 4, "z".into(), 9), 1, &y));
        assert!(!b.hides(&(20, 6, "a".into(), 1), 1, &y));
        assert!(b.hides(&(20, 5, "a".into(), 1), 1, &y));
        let json = Hides {
            labels: Some(vec![3]),
            blocks: Some(vec![Block::Str("x".into()), Block::Int(4)]),
        }
        .to_json();
        assert_eq!(json, r#"{"labels":[3],"blocks":["x",4]}"#);
        assert!(Hides::from_json("{}").is_err());
    }
}
