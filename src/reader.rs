//! Reading: `pocaduck_points`, `pocaduck_labels`, `pocaduck_blocks`.
//!
//! A [`LoadedIndex`] is the unified index of one generation held in memory, with per-part Parquet
//! metadata (including the page index) cached as parts are first read. It is cached per process
//! and per store, and replaced as soon as a newer generation is published, so a query pays one
//! directory listing to check freshness and then reads only the pages holding its label's rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::RecordBatch;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;

use crate::consolidate::{latest_index, load_generation};
use crate::error::{Error, Result};
use crate::index::{BlockId, IndexCodec};
use crate::schema::StoreSchema;
use crate::storage::{block_on, OpenMode, Store};

pub(crate) struct Part {
    pub(crate) path: Path,
    meta: OnceLock<(ArrowReaderMetadata, u64)>,
}

/// Where a label's rows are.
#[derive(Clone, Debug)]
pub(crate) struct ReadEntry {
    pub(crate) part: u32,
    pub(crate) row_start: u64,
    pub(crate) row_count: u64,
    block: BlockId,
    bbox: [f64; 6],
}

/// An axis-aligned box, inclusive: min x, y, z, max x, y, z.
pub type BBox = [f64; 6];

fn overlaps(a: &BBox, b: &BBox) -> bool {
    (0..3).all(|d| a[d] <= b[d + 3] && b[d] <= a[d + 3])
}

/// What a read touched (for `pocaduck_explain`): counted from the plan and the page index.
#[derive(Debug, Default)]
pub struct ReadTrace {
    /// Part files read.
    pub parts: AtomicU64,
    /// Row groups read.
    pub row_groups: AtomicU64,
    /// Data pages read (all projected columns), per the offset index.
    pub pages: AtomicU64,
    /// Compressed bytes of those pages.
    pub page_bytes: AtomicU64,
    /// Rows selected.
    pub rows: AtomicU64,
}

impl ReadTrace {
    fn record(
        &self,
        md: &parquet::file::metadata::ParquetMetaData,
        rg_start: &[u64],
        groups: &[usize],
        ranges: &[(u64, u64)],
        cols: &[usize],
    ) {
        self.parts.fetch_add(1, Relaxed);
        self.row_groups.fetch_add(groups.len() as u64, Relaxed);
        self.rows
            .fetch_add(ranges.iter().map(|r| r.1).sum::<u64>(), Relaxed);
        let Some(oi) = md.offset_index() else {
            return;
        };
        let leaves = md.file_metadata().schema_descr().num_columns();
        for &g in groups {
            let (gs, ge) = (rg_start[g], rg_start[g + 1]);
            for &c in cols.iter().filter(|&&c| c < leaves) {
                let locs = oi[g][c].page_locations();
                for (k, loc) in locs.iter().enumerate() {
                    let ps = gs + loc.first_row_index as u64;
                    let pe = locs
                        .get(k + 1)
                        .map(|n| gs + n.first_row_index as u64)
                        .unwrap_or(ge);
                    if ranges.iter().any(|&(s, n)| s < pe && s + n > ps) {
                        self.pages.fetch_add(1, Relaxed);
                        self.page_bytes
                            .fetch_add(loc.compressed_page_size as u64, Relaxed);
                    }
                }
            }
        }
    }
}

/// One generation of a store's unified index, ready to answer queries.
pub struct LoadedIndex {
    /// The store.
    pub store: Store,
    /// Generation loaded.
    pub generation: u64,
    /// Size and modification time of the generation's file: a store deleted and rebuilt to the
    /// same generation number is not mistaken for the cached one.
    stamp: (u64, i64),
    /// The store schema.
    pub schema: StoreSchema,
    pub(crate) parts: Vec<Part>,
    labels: Vec<u64>,
    offsets: Vec<usize>,
    pub(crate) entries: Vec<ReadEntry>,
    stats: Vec<(u64, u64, u64)>,
}

fn cache() -> &'static Mutex<HashMap<std::path::PathBuf, Arc<LoadedIndex>>> {
    static C: OnceLock<Mutex<HashMap<std::path::PathBuf, Arc<LoadedIndex>>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// Opens the current unified index of `store_name`, from the process cache when it is current.
pub fn open(store_name: &str, codec: &dyn IndexCodec) -> Result<Arc<LoadedIndex>> {
    let store = Store::open(store_name, OpenMode::Existing)?;
    let key = store.cache_key();
    let latest = latest_index(&store)?;
    let Some((gen, meta)) = latest else {
        let msg = if crate::writer::read_schema(&store)?.is_some() {
            format!(
                "has no unified index yet: commit the workers' writes, then run pocaduck_consolidate('{store_name}')"
            )
        } else {
            "is not a pocaduck store (no _pocaduck.json and no index)".to_string()
        };
        return Err(Error::store(store_name, msg));
    };
    let stamp = crate::storage::object_stamp(&meta);
    if let Some(hit) = cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        if hit.generation == gen && hit.stamp == stamp {
            return Ok(hit);
        }
    }
    let loaded = Arc::new(LoadedIndex::load(store, gen, stamp, codec)?);
    if let Ok(mut c) = cache().lock() {
        c.insert(key, loaded.clone());
    }
    Ok(loaded)
}

impl LoadedIndex {
    fn load(
        store: Store,
        gen: u64,
        stamp: (u64, i64),
        codec: &dyn IndexCodec,
    ) -> Result<LoadedIndex> {
        let u = load_generation(&store, gen, codec)?;
        Ok(LoadedIndex::from_unified(store, gen, stamp, u))
    }

    /// Holds `u` (sorted by label) ready for queries, without caching it.
    pub(crate) fn from_unified(
        store: Store,
        gen: u64,
        stamp: (u64, i64),
        u: crate::index::UnifiedIndex,
    ) -> LoadedIndex {
        let stats = u.label_stats();
        let mut part_ids: HashMap<String, u32> = HashMap::new();
        let mut parts = Vec::new();
        let mut labels = Vec::with_capacity(stats.len());
        let mut offsets = Vec::with_capacity(stats.len() + 1);
        let mut entries = Vec::with_capacity(u.entries.len());
        for (i, ue) in u.entries.into_iter().enumerate() {
            if labels.last() != Some(&ue.e.label) {
                labels.push(ue.e.label);
                offsets.push(i);
            }
            let next = part_ids.len() as u32;
            let part = *part_ids.entry(ue.e.part.clone()).or_insert_with(|| {
                parts.push(Part {
                    path: Path::from(ue.e.part.as_str()),
                    meta: OnceLock::new(),
                });
                next
            });
            entries.push(ReadEntry {
                part,
                row_start: ue.e.row_start,
                row_count: ue.e.row_count,
                block: ue.e.block,
                bbox: ue.e.bbox,
            });
        }
        offsets.push(entries.len());
        LoadedIndex {
            store,
            generation: gen,
            stamp,
            schema: u.schema,
            parts,
            labels,
            offsets,
            entries,
            stats,
        }
    }

    fn label_entries(&self, label: u64) -> &[ReadEntry] {
        match self.labels.binary_search(&label) {
            Ok(i) => &self.entries[self.offsets[i]..self.offsets[i + 1]],
            Err(_) => &[],
        }
    }

    /// (label, points, blocks) of every label, in label order.
    pub fn label_stats(&self) -> &[(u64, u64, u64)] {
        &self.stats
    }

    /// (block, points) of one label, in block order. Empty for an unknown label.
    pub fn blocks(&self, label: u64) -> Vec<(BlockId, u64)> {
        let mut out: Vec<(BlockId, u64)> = Vec::new();
        for e in self.label_entries(label) {
            match out.last_mut() {
                Some(l) if l.0 == e.block => l.1 += e.row_count,
                _ => out.push((e.block.clone(), e.row_count)),
            }
        }
        out
    }

    /// Number of index entries (row ranges) of `label`.
    pub fn entry_count(&self, label: u64) -> usize {
        self.label_entries(label).len()
    }

    /// Number of points of `label` (0 if unknown), from the index alone.
    pub fn point_count(&self, label: u64) -> u64 {
        self.label_entries(label).iter().map(|e| e.row_count).sum()
    }

    /// Rows and Arrow schema of part `p`, from its (cached) footer.
    pub(crate) fn part_info(&self, p: u32) -> Result<(u64, arrow::datatypes::SchemaRef)> {
        let (meta, _) = block_on(self.part_meta(&self.parts[p as usize]))?;
        Ok((
            meta.metadata().file_metadata().num_rows() as u64,
            meta.schema().clone(),
        ))
    }

    async fn part_meta(&self, part: &Part) -> Result<(ArrowReaderMetadata, u64)> {
        if let Some(m) = part.meta.get() {
            return Ok(m.clone());
        }
        let err = |e: &dyn std::fmt::Display| Error::file(&self.store.name, part.path.as_ref(), e);
        let head = self.store.os.head(&part.path).await.map_err(|e| err(&e))?;
        let mut reader = ParquetObjectReader::new(self.store.os.clone(), part.path.clone())
            .with_file_size(head.size);
        let meta = AssertUnwindSafe(ArrowReaderMetadata::load_async(
            &mut reader,
            ArrowReaderOptions::new()
                .with_offset_index_policy(parquet::file::metadata::PageIndexPolicy::Optional),
        ))
        .catch_unwind()
        .await
        .map_err(|p| err(&panic_message(p)))?
        .map_err(|e| err(&e))?;
        let _ = part.meta.set((meta.clone(), head.size));
        Ok((meta, head.size))
    }

    /// Reads the rows of `labels`, returning the part-file columns `cols` (0 = label, 1 = block,
    /// 2.. = x, y, z, attributes) in that order.
    pub fn points(&self, labels: &[u64], cols: &[usize]) -> Result<Vec<RecordBatch>> {
        self.points_in(Some(labels), None, cols)
    }

    /// Reads the rows of `labels` (every label if `None`) whose x, y, z lie inside `bbox`
    /// (inclusive; no filter if `None`), returning the part-file columns `cols` in that order.
    ///
    /// Entries whose (label, block) bounds miss the box are skipped without reading; the rows
    /// of the others are filtered exactly.
    pub fn points_in(
        &self,
        labels: Option<&[u64]>,
        bbox: Option<BBox>,
        cols: &[usize],
    ) -> Result<Vec<RecordBatch>> {
        self.points_traced(labels, bbox, cols, None)
    }

    /// [`LoadedIndex::points_in`], recording what the read touched in `trace`.
    pub fn points_traced(
        &self,
        labels: Option<&[u64]>,
        bbox: Option<BBox>,
        cols: &[usize],
        trace: Option<&ReadTrace>,
    ) -> Result<Vec<RecordBatch>> {
        let mut by_part: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        let mut add = |e: &ReadEntry| {
            if bbox.is_none_or(|b| overlaps(&b, &e.bbox)) {
                by_part
                    .entry(e.part)
                    .or_default()
                    .push((e.row_start, e.row_count));
            }
        };
        match labels {
            Some(labels) => {
                let mut labels = labels.to_vec();
                labels.sort_unstable();
                labels.dedup();
                for &l in &labels {
                    self.label_entries(l).iter().for_each(&mut add);
                }
            }
            None => self.entries.iter().for_each(&mut add),
        }
        // With a box, read x, y, z too (to filter), then keep only the asked-for columns.
        let mut read_cols = cols.to_vec();
        if bbox.is_some() {
            read_cols.extend([2, 3, 4]);
        }
        let jobs = by_part
            .into_iter()
            .map(|(p, ranges)| self.read_part(p, ranges, &read_cols, trace));
        let per_part = block_on(futures::future::try_join_all(jobs))?;
        let batches = per_part.into_iter().flatten();
        match bbox {
            None => Ok(batches.collect()),
            Some(b) => batches
                .map(|batch| filter_box(&batch, &b, cols.len()))
                .collect(),
        }
    }

    /// Reads the rows of the entries at positions `range` (in the index's entry order) with the
    /// part-file columns `cols`, as one batch in entry order: entry `i`'s rows follow entry
    /// `i - 1`'s.
    pub(crate) fn read_entries(
        &self,
        range: std::ops::Range<usize>,
        cols: &[usize],
    ) -> Result<RecordBatch> {
        let entries = &self.entries[range];
        // Per part: the entries' ranges in row order, remembering each entry's position.
        let mut by_part: BTreeMap<u32, Vec<(u64, u64, usize)>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_part
                .entry(e.part)
                .or_default()
                .push((e.row_start, e.row_count, i));
        }
        let mut jobs = Vec::with_capacity(by_part.len());
        let mut placed: Vec<(usize, usize, u64)> = vec![(0, 0, 0); entries.len()];
        for (k, (p, mut rs)) in by_part.into_iter().enumerate() {
            rs.sort_unstable();
            let mut off = 0u64;
            for w in rs.windows(2) {
                if w[0].0 + w[0].1 > w[1].0 {
                    return Err(Error::file(
                        &self.store.name,
                        self.parts[p as usize].path.as_ref(),
                        format!(
                            "the index references overlapping rows {}..{} and {}..{}",
                            w[0].0,
                            w[0].0 + w[0].1,
                            w[1].0,
                            w[1].0 + w[1].1
                        ),
                    ));
                }
            }
            for &(_, n, i) in &rs {
                placed[i] = (k, off as usize, n);
                off += n;
            }
            jobs.push(self.read_part(p, rs.iter().map(|&(s, n, _)| (s, n)).collect(), cols, None));
        }
        let per_part = block_on(futures::future::try_join_all(jobs))?;
        let schema = arrow::datatypes::Schema::new(
            cols.iter()
                .map(|&c| self.schema.arrow().field(c).clone())
                .collect::<Vec<_>>(),
        );
        let schema = Arc::new(schema);
        let per_part: Vec<RecordBatch> = per_part
            .iter()
            .map(|b| arrow::compute::concat_batches(&schema, b))
            .collect::<std::result::Result<_, _>>()?;
        let pieces: Vec<RecordBatch> = placed
            .iter()
            .map(|&(k, off, n)| per_part[k].slice(off, n as usize))
            .collect();
        Ok(arrow::compute::concat_batches(&schema, &pieces)?)
    }

    async fn read_part(
        &self,
        part: u32,
        mut ranges: Vec<(u64, u64)>,
        cols: &[usize],
        trace: Option<&ReadTrace>,
    ) -> Result<Vec<RecordBatch>> {
        let p = &self.parts[part as usize];
        let (meta, size) = self.part_meta(p).await?;
        let err = |e: &dyn std::fmt::Display| Error::file(&self.store.name, p.path.as_ref(), e);
        ranges.sort_unstable();
        if let Some(w) = ranges.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(err(&format!(
                "the index references overlapping rows {}..{} and {}..{} (a corrupt index)",
                w[0].0,
                w[0].0 + w[0].1,
                w[1].0,
                w[1].0 + w[1].1
            )));
        }
        // Row groups touched, and the selection relative to them.
        let md = meta.metadata();
        let mut rg_start = Vec::with_capacity(md.num_row_groups() + 1);
        let mut acc = 0u64;
        for rg in md.row_groups() {
            rg_start.push(acc);
            acc += rg.num_rows() as u64;
        }
        rg_start.push(acc);
        if let Some(&(s, n)) = ranges.last() {
            if s + n > acc {
                return Err(err(&format!(
                    "index references rows {s}..{} but the part has {acc} rows",
                    s + n
                )));
            }
        }
        let (groups, selectors) = plan_selection(&rg_start, &ranges);
        if let Some(t) = trace {
            t.record(md, &rg_start, &groups, &ranges, cols);
        }
        let reader =
            ParquetObjectReader::new(self.store.os.clone(), p.path.clone()).with_file_size(size);
        let mut sorted_cols: Vec<usize> = cols.to_vec();
        sorted_cols.sort_unstable();
        sorted_cols.dedup();
        let mask = ProjectionMask::roots(
            md.file_metadata().schema_descr(),
            sorted_cols.iter().copied(),
        );
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta.clone())
            .with_row_groups(groups)
            .with_row_selection(RowSelection::from(selectors))
            .with_projection(mask)
            .with_batch_size(8192)
            .build()
            .map_err(|e| err(&e))?;
        // The Parquet decoder can panic on corrupt pages: report that as this file's error.
        let batches: Vec<RecordBatch> = AssertUnwindSafe(stream.try_collect::<Vec<_>>())
            .catch_unwind()
            .await
            .map_err(|p| err(&panic_message(p)))?
            .map_err(|e| err(&e))?;
        let order: Vec<usize> = cols
            .iter()
            .map(|c| sorted_cols.binary_search(c).unwrap_or(0))
            .collect();
        batches
            .into_iter()
            .map(|b| Ok(b.project(&order)?))
            .collect()
    }
}

/// Describes a panic caught while decoding a file (a corrupt file can make the decoder panic).
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let m = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("corrupt file: the Parquet decoder failed ({m})")
}

/// Keeps the rows of `batch` whose last three columns (x, y, z) lie in `b`, and its first `keep`
/// columns.
fn filter_box(batch: &RecordBatch, b: &BBox, keep: usize) -> Result<RecordBatch> {
    use arrow::array::{BooleanArray, Float64Array};
    let n = batch.num_columns();
    let mut mask = vec![true; batch.num_rows()];
    for d in 0..3 {
        let c = arrow::compute::cast(
            batch.column(n - 3 + d),
            &arrow::datatypes::DataType::Float64,
        )?;
        let v = c
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| Error::Internal("coordinate cast".into()))?;
        for (m, x) in mask.iter_mut().zip(v.values()) {
            *m &= *x >= b[d] && *x <= b[d + 3];
        }
    }
    let kept = arrow::compute::filter_record_batch(batch, &BooleanArray::from(mask))?;
    Ok(kept.project(&(0..keep).collect::<Vec<_>>())?)
}

/// Plans a read of the sorted, disjoint row `ranges` of a file whose row groups start at
/// `rg_start` (with the total row count appended): the row groups to read, and a selection over
/// the concatenation of exactly those row groups.
fn plan_selection(rg_start: &[u64], ranges: &[(u64, u64)]) -> (Vec<usize>, Vec<RowSelector>) {
    let mut groups = Vec::new();
    let mut selectors = Vec::new();
    let mut ri = 0;
    for g in 0..rg_start.len().saturating_sub(1) {
        let (gs, ge) = (rg_start[g], rg_start[g + 1]);
        // Ranges that ended before this group are done.
        while ri < ranges.len() && ranges[ri].0 + ranges[ri].1 <= gs {
            ri += 1;
        }
        if ri >= ranges.len() {
            break;
        }
        if ranges[ri].0 >= ge {
            continue;
        }
        groups.push(g);
        let mut pos = gs;
        let mut k = ri;
        while k < ranges.len() && ranges[k].0 < ge {
            let (a, b) = (ranges[k].0.max(gs), (ranges[k].0 + ranges[k].1).min(ge));
            if a > pos {
                selectors.push(RowSelector::skip((a - pos) as usize));
            }
            if b > a {
                selectors.push(RowSelector::select((b - a) as usize));
            }
            pos = pos.max(b);
            k += 1;
        }
        if ge > pos {
            selectors.push(RowSelector::skip((ge - pos) as usize));
        }
    }
    (groups, selectors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consolidate::consolidate;
    use crate::consolidate::tests::{write, JsonCodec};
    use crate::writer::tests::rows;
    use arrow::array::{Array, Int32Array};

    fn xs(batches: &[RecordBatch]) -> Vec<i32> {
        let mut v: Vec<i32> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int32Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn points_of_a_label_come_from_every_worker_and_block() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(
            name,
            "w1",
            &[
                rows(&[5, 6, 5], "a", &[[1, 0, 0], [2, 0, 0], [3, 0, 0]]),
                rows(&[5], "b", &[[4, 0, 0]]),
            ],
        );
        write(name, "w2", &[rows(&[5, 7], "c", &[[10, 0, 0], [11, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let e = open(name, &JsonCodec).err().unwrap().to_string();
        assert!(e.contains("has no unified index yet"), "{e}");
        consolidate(&store, &JsonCodec).unwrap();
        let idx = open(name, &JsonCodec).unwrap();
        assert_eq!(xs(&idx.points(&[5], &[2]).unwrap()), vec![1, 3, 4, 10]);
        assert_eq!(xs(&idx.points(&[6, 7], &[2]).unwrap()), vec![2, 11]);
        assert!(idx
            .points(&[99], &[2])
            .unwrap()
            .iter()
            .all(|b| b.num_rows() == 0));
        assert_eq!(
            idx.blocks(5),
            vec![
                (BlockId::Str("a".into()), 2),
                (BlockId::Str("b".into()), 1),
                (BlockId::Str("c".into()), 1)
            ]
        );
        assert_eq!(idx.label_stats(), &[(5, 4, 3), (6, 1, 1), (7, 1, 1)]);
    }

    #[test]
    fn selection_spans_row_groups_and_parts() {
        // Many labels over several parts; every label must come back exactly.
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let opts = crate::writer::WriterOptions {
            target_file_size: 16 << 10,
            buffer_size: 1 << 20,
        };
        let mut s = crate::writer::Session::start(name, "w1", vec![], "ATTRIBUTES", opts).unwrap();
        let mut expect: HashMap<u64, Vec<i32>> = HashMap::new();
        for blk in 0..20 {
            let n = 20_000;
            let labels: Vec<u64> = (0..n).map(|i| ((i * 31 + blk) % 211) as u64).collect();
            let pts: Vec<[i32; 3]> = (0..n).map(|i| [blk * 1_000_000 + i, 0, 0]).collect();
            for (l, p) in labels.iter().zip(&pts) {
                expect.entry(*l).or_default().push(p[0]);
            }
            s.append(&rows(&labels, &format!("b{blk}"), &pts)).unwrap();
        }
        let c = s.commit().unwrap();
        assert!(c.parts > 3, "{c:?}");
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let idx = open(name, &JsonCodec).unwrap();
        for l in [0u64, 1, 100, 210] {
            let mut want = expect[&l].clone();
            want.sort();
            let got = idx.points(&[l], &[2]).unwrap();
            assert_eq!(xs(&got), want, "label {l}");
            assert_eq!(idx.point_count(l), want.len() as u64);
        }
    }

    /// Brute force: the rows a plan selects are exactly the rows of the ranges.
    fn selected_rows(rg_start: &[u64], groups: &[usize], sel: &[RowSelector]) -> Vec<u64> {
        let rows: Vec<u64> = groups
            .iter()
            .flat_map(|&g| rg_start[g]..rg_start[g + 1])
            .collect();
        let mut out = Vec::new();
        let mut i = 0;
        for s in sel {
            if !s.skip {
                out.extend_from_slice(&rows[i..i + s.row_count]);
            }
            i += s.row_count;
        }
        assert_eq!(
            i,
            rows.len(),
            "selection must cover the selected row groups exactly"
        );
        out
    }

    #[test]
    fn selection_plans_match_brute_force() {
        let rg_start = [0u64, 10, 20, 30, 40, 45];
        let cases: Vec<Vec<(u64, u64)>> = vec![
            vec![(0, 45)],
            vec![(3, 2)],
            vec![(8, 15), (25, 2), (27, 1), (44, 1)],
            vec![(5, 30), (36, 2)],
            vec![(10, 10)],
            vec![(0, 1), (19, 2), (39, 2)],
            vec![],
        ];
        for ranges in cases {
            let (groups, sel) = plan_selection(&rg_start, &ranges);
            let want: Vec<u64> = ranges.iter().flat_map(|&(s, n)| s..s + n).collect();
            assert_eq!(selected_rows(&rg_start, &groups, &sel), want, "{ranges:?}");
            for &g in &groups {
                assert!(
                    ranges
                        .iter()
                        .any(|&(s, n)| s < rg_start[g + 1] && s + n > rg_start[g]),
                    "group {g} read needlessly"
                );
            }
        }
    }

    #[test]
    fn box_queries_return_exactly_the_points_inside() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        // Label 1 in blocks a (x 0..100) and b (x 1000..1100); label 2 in block a.
        let pts_a: Vec<[i32; 3]> = (0..100).map(|i| [i, i % 10, 0]).collect();
        let pts_b: Vec<[i32; 3]> = (0..100).map(|i| [1000 + i, 0, 0]).collect();
        let la: Vec<u64> = (0..100).map(|i| 1 + (i % 2) as u64).collect();
        write(
            name,
            "w1",
            &[rows(&la, "a", &pts_a), rows(&[1; 100], "b", &pts_b)],
        );
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let idx = open(name, &JsonCodec).unwrap();
        let bx = [10.0, 0.0, 0.0, 19.0, 4.0, 0.0];
        // Brute force over what was written.
        let want = |label: Option<u64>| -> Vec<i32> {
            let mut v: Vec<i32> = pts_a
                .iter()
                .zip(&la)
                .filter(|(p, l)| {
                    label.is_none_or(|x| x == **l)
                        && (10..=19).contains(&p[0])
                        && (0..=4).contains(&p[1])
                })
                .map(|(p, _)| p[0])
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            xs(&idx.points_in(Some(&[1]), Some(bx), &[2]).unwrap()),
            want(Some(1))
        );
        assert_eq!(
            xs(&idx.points_in(None, Some(bx), &[2]).unwrap()),
            want(None)
        );
        assert_eq!(want(None).len(), 5);
        // A box that misses everything reads nothing.
        assert!(idx
            .points_in(None, Some([5000.0, 0.0, 0.0, 6000.0, 1.0, 1.0]), &[2])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn missing_part_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(name, "w1", &[rows(&[5], "a", &[[1, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        for f in std::fs::read_dir(dir.path().join("workers/w1/parts")).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let idx = open(name, &JsonCodec).unwrap();
        let e = idx.points(&[5], &[2]).unwrap_err().to_string();
        assert!(e.contains("file 'workers/w1/parts/"), "{e}");
        let _ = Array::len(&Int32Array::from(vec![1]));
    }
}
