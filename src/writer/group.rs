//! Ordering a job's rows by (label, block) without sorting the rows.
//!
//! A job's rows fall into far fewer (label, block) *groups* than rows: 9 rows a group on the
//! benchmark's synthetic rows, hundreds to thousands on a real segmentation's blocks. Each row's
//! group is found in a hash table of its block's run of rows (consecutive rows of one group skip
//! it), only the groups are
//! sorted, and a counting pass places every row: O(rows) work plus a sort of the groups, where
//! sorting packed row keys cost O(rows log rows) (and a third of an encoder's time). Rows of one
//! group keep their arrival order, so the order is that of a stable sort by (label, block).
//!
//! The workspace is kept by each encoder from job to job: 4 bytes a row (each row's group, then
//! its position), 4 more when the order itself is asked for, and 20 bytes a group (key, end),
//! plus one run's hash table (4-byte slots, 4 to 8 per group of the run before, more as it grows).

use arrow::array::RecordBatch;

use crate::entry_chunks::Blocks;
use crate::error::{Error, Result};
use crate::schema::col;

/// The distinct blocks of a job in ascending order: a row's block *rank* is its block's position
/// here.
pub(super) enum Distinct<'a> {
    /// BIGINT blocks.
    Int(Vec<i64>),
    /// VARCHAR blocks.
    Str(Vec<&'a str>),
}

/// A job's rows in (label, block, arrival) order, and its groups in that order.
#[derive(Default)]
pub(super) struct Grouping {
    /// Each row's group (rows numbered on across the job's batches; groups numbered as first
    /// seen); then, once the groups are sorted, each row's position in the order.
    row_group: Vec<u32>,
    /// Each group's packed `label << 64 | rank << 32 | group` key; sorted once all rows are in.
    keys: Vec<u128>,
    /// Each group's rows; then, once the rows are placed, the end of its rows in `order`.
    ends: Vec<u32>,
    /// Open addressing over the current run's groups, by label: group + 1 in a slot, 0 when
    /// empty; at most half full.
    table: Vec<u32>,
    /// The first group of the current run of rows of one block.
    run_start: usize,
    /// The job's rows (numbered as in `row_group`) in order, made on demand ([`Grouping::order`]).
    order: Vec<u32>,
    /// Whether `order` is that of the current job.
    has_order: bool,
}

/// A well-mixed 64-bit hash of a label: low bits index the table.
fn hash(label: u64) -> usize {
    let m = (label as u128).wrapping_mul(0xA076_1D64_78BD_642F);
    ((m >> 64) as u64 ^ m as u64) as usize
}

impl Grouping {
    /// Orders the rows of `batches` (all of one schema: a u64 label and a BIGINT or VARCHAR
    /// block column) by (label, block); returns the job's distinct blocks. Afterwards
    /// [`Grouping::positions`] holds each row's position in the order, [`Grouping::order`] the
    /// rows in order and [`Grouping::groups`] the groups.
    pub(super) fn build<'a>(&mut self, batches: &'a [RecordBatch]) -> Result<Distinct<'a>> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows > u32::MAX as usize {
            return Err(Error::Internal(format!("a job of {rows} rows")));
        }
        self.row_group.clear();
        self.row_group.reserve(rows);
        self.keys.clear();
        self.ends.clear();
        self.run_start = 0;
        let blocks = batches
            .iter()
            .map(|b| Blocks::of(b.column(col::BLOCK)))
            .collect::<Result<Vec<_>>>()?;
        let distinct = match blocks.first() {
            None => Distinct::Int(Vec::new()),
            Some(Blocks::Int(_)) => Distinct::Int(ranks(
                batches,
                |b, i| match &blocks[b] {
                    Blocks::Int(v) => Some(v[i]),
                    Blocks::Str(_) => None,
                },
                |l, r, first| self.add_run(l, r, first),
            )?),
            Some(Blocks::Str(_)) => Distinct::Str(ranks(
                batches,
                |b, i| match &blocks[b] {
                    Blocks::Str(a) => Some(a.value(i)),
                    Blocks::Int(_) => None,
                },
                |l, r, first| self.add_run(l, r, first),
            )?),
        };
        self.keys.sort_unstable();
        // Each group's first position, then (as its rows are placed) its next one.
        let mut at = 0u32;
        for k in &self.keys {
            let g = *k as u32 as usize;
            let n = self.ends[g];
            self.ends[g] = at;
            at += n;
        }
        // Each row's position: its group's next one (a sequential pass; rows of a group keep
        // their arrival order).
        for g in self.row_group.iter_mut() {
            let p = &mut self.ends[*g as usize];
            *g = *p;
            *p += 1;
        }
        self.has_order = false;
        Ok(distinct)
    }

    /// Each row's position in the order (rows numbered on across the job's batches).
    pub(super) fn positions(&self) -> &[u32] {
        &self.row_group
    }

    /// Makes [`Grouping::order`] (the inverse of [`Grouping::positions`]; 4 bytes a row).
    pub(super) fn make_order(&mut self) {
        if !self.has_order {
            self.order.clear();
            self.order.resize(self.row_group.len(), 0);
            for (row, &p) in self.row_group.iter().enumerate() {
                self.order[p as usize] = row as u32;
            }
            self.has_order = true;
        }
    }

    /// The rows in order, once made by [`Grouping::make_order`].
    pub(super) fn order(&self) -> Option<&[u32]> {
        self.has_order.then_some(self.order.as_slice())
    }

    /// Counts rows of one block rank into their groups; `first`: they start a run of the block
    /// (a run's rows may come in several calls, one per batch).
    ///
    /// Each run has a table of its own, keyed by label (the rank is the run's): a run holds the
    /// rows of one block, so its table holds its block's labels only, small enough to stay in
    /// the cache (a table of the job's groups would miss it on every row). A block that comes
    /// back in a later run of the job gets groups of its own there: groups of equal (label,
    /// rank) sort next to each other in the order they were made, which keeps the rows' arrival
    /// order, and their index entries merge as they are written.
    fn add_run(&mut self, labels: &[u64], rank: u32, first: bool) {
        if first {
            // Sized for the last run's groups (runs of a job are alike); it grows if need be.
            let made = self.keys.len() - self.run_start;
            let slots = (4 * made).next_power_of_two().max(16);
            self.table.clear();
            self.table.resize(slots, 0);
            self.run_start = self.keys.len();
        }
        for &label in labels {
            // Consecutive rows of one group (a label's run within a block) skip the table.
            if let Some(&g) = self.row_group.last() {
                let g = g as usize;
                if g >= self.run_start && (self.keys[g] >> 64) as u64 == label {
                    self.ends[g] += 1;
                    self.row_group.push(g as u32);
                    continue;
                }
            }
            let mask = self.table.len() - 1;
            let mut s = hash(label) & mask;
            let g = loop {
                match self.table[s] {
                    0 => {
                        let g = self.keys.len() as u32;
                        self.keys
                            .push((label as u128) << 64 | (rank as u128) << 32 | g as u128);
                        self.ends.push(0);
                        self.table[s] = g + 1;
                        break g;
                    }
                    t => {
                        if (self.keys[t as usize - 1] >> 64) as u64 == label {
                            break t - 1;
                        }
                        s = (s + 1) & mask;
                    }
                }
            };
            if (self.keys.len() - self.run_start) * 2 > self.table.len() {
                self.grow();
            }
            self.ends[g as usize] += 1;
            self.row_group.push(g);
        }
    }

    /// Doubles the table and re-inserts the run's groups.
    fn grow(&mut self) {
        let slots = self.table.len() * 2;
        self.table.clear();
        self.table.resize(slots, 0);
        let mask = slots - 1;
        for k in &self.keys[self.run_start..] {
            let mut s = hash((k >> 64) as u64) & mask;
            while self.table[s] != 0 {
                s = (s + 1) & mask;
            }
            self.table[s] = *k as u32 + 1;
        }
    }

    /// The groups in order: (label, block rank, rows).
    pub(super) fn groups(&self) -> impl Iterator<Item = (u64, u32, u32)> + '_ {
        let mut start = 0u32;
        self.keys.iter().map(move |k| {
            let end = self.ends[*k as u32 as usize];
            let n = end - start;
            start = end;
            ((k >> 64) as u64, (k >> 32) as u32, n)
        })
    }
}

/// Calls `f(labels, rank, first)` for the rows of `batches` in order, a run of rows of one block
/// within one batch at a time: `labels` are the rows' labels, `rank` the position of their block
/// among the job's distinct blocks (which it returns, sorted), `first` whether the rows start a
/// run (the rows before are of another block), where `key(b, i)` is row `i`'s block in batch `b`.
/// Rows arrive in runs of one block (a scan writes block by block): one pass finds the runs,
/// comparing each row's block with the one before, then each run's rank is looked up once and
/// its rows handed over without comparing blocks again. A block of another type than the first
/// batch's (`None`) is an error.
pub(super) fn ranks<K: Ord + Copy>(
    batches: &[RecordBatch],
    key: impl Fn(usize, usize) -> Option<K>,
    mut f: impl FnMut(&[u64], u32, bool),
) -> Result<Vec<K>> {
    let mixed = || Error::Internal("buffered batches of different block types".into());
    // The first row of each run (batch, row) and its block.
    let mut heads: Vec<(u32, u32)> = Vec::new();
    let mut distinct: Vec<K> = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        for i in 0..batch.num_rows() {
            let k = key(b, i).ok_or_else(mixed)?;
            if distinct.last() != Some(&k) {
                distinct.push(k);
                heads.push((b as u32, i as u32));
            }
        }
    }
    let firsts = distinct.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let end = (batches.len() as u32, 0);
    for (j, (&(b0, i0), k)) in heads.iter().zip(&firsts).enumerate() {
        let rank = distinct.binary_search(k).unwrap_or_default() as u32;
        let (b1, i1) = heads.get(j + 1).copied().unwrap_or(end);
        // The run's rows: from (b0, i0) up to (b1, i1), across batches.
        for b in b0..=b1.min(batches.len() as u32 - 1) {
            let labels = crate::schema::labels(&batches[b as usize]).values();
            let from = if b == b0 { i0 as usize } else { 0 };
            let to = if b == b1 { i1 as usize } else { labels.len() };
            if from < to {
                f(&labels[from..to], rank, b == b0);
            }
        }
    }
    Ok(distinct)
}
