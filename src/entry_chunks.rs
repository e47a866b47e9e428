//! Index entries as Arrow columns, streamed in label order in chunks of whole labels: the scan
//! `pocaduck_optimize` works on (the per-label scan of [`crate::segment::IndexView::scan`]
//! builds one `UnifiedEntry`, with its own strings, per entry; this one decodes row groups of
//! index segments into columns and never touches an entry alone unless a label needs sorting).
//!
//! A chunk ([`EntryChunk`]) holds every entry of its labels, with the same guarantees as the
//! per-label scan: superseded entries dropped (of one (label, block, worker), only the highest
//! commit's entries), and each label's entries in index order (block, worker, part, row_start).
//! Workers and parts are small integers: worker indexes of the manifest, and part ids of a
//! [`PartNames`] table the scan keeps (worker and part columns are read as Parquet
//! dictionaries, so a name is looked up once per row group, not once per entry).
//!
//! Memory: about `chunk_entries` entries decoded at a time (split between the runs that overlap),
//! plus the entries of a label bigger than that.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int64Array, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, UInt64Type};
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{Error, Result};
use crate::schema::ColumnType;
use crate::segment::{footer, groups_for, IndexView, ROW_GROUP_ENTRIES};
use crate::storage::block_on;

/// Column positions of a chunk's batch.
pub(crate) mod c {
    /// `label UBIGINT`
    pub const LABEL: usize = 0;
    /// `block` (BIGINT or VARCHAR)
    pub const BLOCK: usize = 1;
    /// `worker UINTEGER`: index into the manifest's workers
    pub const WORKER: usize = 2;
    /// `commit_seq UBIGINT`
    pub const COMMIT: usize = 3;
    /// `part UINTEGER`: id in the scan's [`super::PartNames`]
    pub const PART: usize = 4;
    /// `row_start UBIGINT`
    pub const ROW_START: usize = 5;
    /// `row_count UBIGINT`
    pub const ROW_COUNT: usize = 6;
    /// `src UBIGINT`: where the entry is, for [`super::ChunkScan::boxes`] (the scan's segment
    /// number << 40 | the row in that segment file)
    pub const SRC: usize = 7;
}

/// Columns of a segment file up to `row_count`: what a chunk reads first.
const READ_COLUMNS: usize = 7;

/// The schema of a chunk's batch: the segment schema up to `row_count` with worker and part as
/// ids, then `src`. (The boxes are read only for the entries that need them.)
pub(crate) fn chunk_schema(block: ColumnType) -> SchemaRef {
    let u64f = |n: &str| Field::new(n, DataType::UInt64, false);
    let f = vec![
        u64f("label"),
        Field::new("block", block.arrow(), false),
        Field::new("worker", DataType::UInt32, false),
        u64f("commit_seq"),
        Field::new("part", DataType::UInt32, false),
        u64f("row_start"),
        u64f("row_count"),
        u64f("src"),
    ];
    Arc::new(Schema::new(f))
}

/// The schema segments are read with: worker and part as dictionaries (their pages are
/// dictionary-encoded, so the reader hands the dictionary over instead of a string per entry).
fn read_schema(block: ColumnType) -> SchemaRef {
    let dict = || DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let mut f: Vec<Field> = crate::index::entry_schema(block, true)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    f[c::WORKER] = Field::new("worker", dict(), false);
    f[c::PART] = Field::new("part", dict(), false);
    Arc::new(Schema::new(f))
}

/// Every part path index segment `r` names (the whole file, whatever its label range: a
/// superset of what a generation clipping it references). Reads only the `part` column, as a
/// dictionary: the cost is its dictionary pages and keys, not a string per entry.
pub(crate) fn segment_part_names(
    store: &crate::storage::Store,
    r: &crate::log::SegmentRef,
    block: ColumnType,
) -> Result<Vec<String>> {
    let err = |e: &dyn std::fmt::Display| {
        Error::file(&store.name, r.file.as_str(), format!("index segment: {e}"))
    };
    let f = block_on(footer(store, r, false))?;
    let opts = ArrowReaderOptions::new().with_schema(read_schema(block));
    let meta =
        ArrowReaderMetadata::try_new(f.meta.metadata().clone(), opts).map_err(|e| err(&e))?;
    let mask = ProjectionMask::roots(meta.metadata().file_metadata().schema_descr(), [c::PART]);
    let reader = store.parquet_reader(&Path::from(r.file.as_str()), Some(r.bytes));
    let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
        .with_projection(mask)
        .with_batch_size(ROW_GROUP_ENTRIES)
        .build()
        .map_err(|e| err(&e))?;
    let mut names: std::collections::HashSet<String> = Default::default();
    let mut stream = AssertUnwindSafe(stream);
    loop {
        let next = block_on(AssertUnwindSafe(stream.next()).catch_unwind())
            .map_err(|_| err(&"corrupt file: the Parquet decoder failed"))?;
        let Some(b) = next else { break };
        let b = b.map_err(|e| err(&e))?;
        let d = b
            .column(0)
            .as_dictionary_opt::<Int32Type>()
            .ok_or_else(|| err(&"corrupt index segment: part is not a string dictionary"))?;
        let v = d
            .values()
            .as_string_opt::<i32>()
            .ok_or_else(|| err(&"corrupt index segment: part is not a string dictionary"))?;
        for s in v.iter().flatten() {
            if !names.contains(s) {
                names.insert(s.to_string());
            }
        }
    }
    Ok(names.into_iter().collect())
}

/// Part paths met by a scan (and added by its user), as dense ids.
#[derive(Default)]
pub(crate) struct PartNames {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
    optimized: Vec<bool>,
}

impl PartNames {
    /// The id of `name`, adding it if new.
    pub(crate) fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        let a: Arc<str> = Arc::from(name);
        self.names.push(a.clone());
        self.optimized.push(name.starts_with("optimized/"));
        self.ids.insert(a, i);
        i
    }

    /// Whether part `id` was written by optimize (is under `optimized/`).
    pub(crate) fn optimized(&self, id: u32) -> bool {
        self.optimized[id as usize]
    }

    /// The path of part `id`.
    pub(crate) fn name(&self, id: u32) -> &Arc<str> {
        &self.names[id as usize]
    }

    /// Every path, by id.
    pub(crate) fn names(&self) -> &[Arc<str>] {
        &self.names
    }
}

/// Whole labels' entries: `batch` in [`chunk_schema`], label-sorted, superseded entries
/// dropped, each label's entries in index order; `labels` holds the first row of every label,
/// then the row count.
pub(crate) struct EntryChunk {
    /// The entries.
    pub batch: RecordBatch,
    /// Label boundaries: first row of each label, then the number of rows.
    pub labels: Vec<usize>,
}

/// Block values of a batch: compared without building `BlockId`s, or read one at a time.
pub(crate) enum Blocks<'a> {
    /// BIGINT blocks.
    Int(&'a [i64]),
    /// VARCHAR blocks.
    Str(&'a StringArray),
}

impl<'a> Blocks<'a> {
    /// The block column of a batch.
    pub(crate) fn of(a: &'a ArrayRef) -> Result<Blocks<'a>> {
        if let Some(a) = a.as_any().downcast_ref::<Int64Array>() {
            Ok(Blocks::Int(a.values()))
        } else if let Some(a) = a.as_any().downcast_ref::<StringArray>() {
            Ok(Blocks::Str(a))
        } else {
            Err(Error::Internal(format!(
                "unexpected block column type {}",
                a.data_type()
            )))
        }
    }

    /// Compares the blocks of rows `i` and `j`.
    pub(crate) fn cmp(&self, i: usize, j: usize) -> std::cmp::Ordering {
        match self {
            Blocks::Int(v) => v[i].cmp(&v[j]),
            Blocks::Str(a) => a.value(i).cmp(a.value(j)),
        }
    }
}

/// The `UInt64` column `i` of a chunk batch.
pub(crate) fn u64s(b: &RecordBatch, i: usize) -> &[u64] {
    b.column(i).as_primitive::<UInt64Type>().values()
}

/// The `UInt32` column `i` of a chunk batch.
pub(crate) fn u32s(b: &RecordBatch, i: usize) -> &[u32] {
    b.column(i)
        .as_primitive::<arrow::datatypes::UInt32Type>()
        .values()
}

/// Decoded entries of one segment, waiting to be taken into a chunk (label-sorted).
struct Cursor {
    seg: usize,
    /// First row of every row group, then the row count.
    rg_start: Vec<u64>,
    lo: u64,
    hi: u64,
    /// Row groups not yet read.
    groups: VecDeque<usize>,
    meta: ArrowReaderMetadata,
    buf: VecDeque<RecordBatch>,
    buffered: usize,
}

impl Cursor {
    fn done(&self) -> bool {
        self.groups.is_empty()
    }

    /// The lowest label it may still yield (`None`: exhausted).
    fn floor(&self) -> Option<u64> {
        match self.buf.front() {
            Some(b) => Some(u64s(b, c::LABEL)[0]),
            None if !self.done() => Some(self.lo),
            None => None,
        }
    }

    fn last(&self) -> Option<u64> {
        self.buf.back().map(|b| {
            let l = u64s(b, c::LABEL);
            l[l.len() - 1]
        })
    }

    /// Takes the buffered entries with labels below `bound` (all with `None`).
    fn take_below(&mut self, bound: Option<u64>, out: &mut Vec<RecordBatch>) {
        while let Some(b) = self.buf.pop_front() {
            let l = u64s(&b, c::LABEL);
            let k = bound.map_or(l.len(), |x| l.partition_point(|&v| v < x));
            if k < l.len() {
                self.buf.push_front(b.slice(k, l.len() - k));
                if k > 0 {
                    out.push(b.slice(0, k));
                }
                self.buffered -= k;
                return;
            }
            self.buffered -= k;
            out.push(b);
        }
    }
}

/// A label-order scan of labels `lo ..= hi` of a generation's segments, in [`EntryChunk`]s of
/// about `chunk_entries` entries.
pub(crate) struct ChunkScan<'a> {
    view: &'a IndexView,
    cursors: Vec<Cursor>,
    per_cursor: usize,
    schema: SchemaRef,
    /// Worker names → manifest indexes.
    workers: HashMap<String, u32>,
    /// The part paths of the chunks' part ids.
    pub parts: PartNames,
}

impl<'a> ChunkScan<'a> {
    /// A scan of labels `lo ..= hi` of `view` (a generation of format 2).
    pub(crate) fn new(
        view: &'a IndexView,
        lo: u64,
        hi: u64,
        chunk_entries: usize,
    ) -> Result<ChunkScan<'a>> {
        let block = view.manifest.schema.block_type();
        let hint = read_schema(block);
        let mut cursors = Vec::new();
        let mut runs: Vec<u64> = Vec::new();
        for (seg, r) in view.manifest.segments.iter().enumerate() {
            let (a, b) = (r.lo.max(lo), r.hi.min(hi));
            if a > b {
                continue;
            }
            let f = block_on(footer(&view.store, r, true))?;
            let groups: VecDeque<usize> = groups_for(&f, a, b).into();
            let rg_start = f.rg_start.clone();
            let opts = ArrowReaderOptions::new().with_schema(hint.clone());
            let meta =
                ArrowReaderMetadata::try_new(f.meta.metadata().clone(), opts).map_err(|e| {
                    Error::file(&view.store.name, &r.file, format!("index segment: {e}"))
                })?;
            runs.push(r.run);
            cursors.push(Cursor {
                seg,
                rg_start,
                lo: a,
                hi: b,
                groups,
                meta,
                buf: VecDeque::new(),
                buffered: 0,
            });
        }
        runs.sort_unstable();
        runs.dedup();
        Ok(ChunkScan {
            view,
            cursors,
            per_cursor: (chunk_entries / runs.len().max(1)).max(1),
            schema: chunk_schema(block),
            workers: crate::segment::worker_ids(&view.manifest),
            parts: PartNames::default(),
        })
    }

    /// Reads the next row groups of cursor `k`: about `per_cursor` entries, at least one group.
    fn read_more(&mut self, k: usize) -> Result<()> {
        let per = self.per_cursor.div_ceil(ROW_GROUP_ENTRIES);
        let cur = &mut self.cursors[k];
        let n = per.min(cur.groups.len());
        let groups: Vec<usize> = cur.groups.drain(..n).collect();
        if groups.is_empty() {
            return Ok(());
        }
        let view = self.view;
        let r = &view.manifest.segments[cur.seg];
        let err = |e: &dyn std::fmt::Display| {
            Error::file(
                &view.store.name,
                r.file.as_str(),
                format!("index segment: {e}"),
            )
        };
        let bad = |m: &str| {
            Error::file(
                &view.store.name,
                r.file.as_str(),
                format!("corrupt index segment: {m}"),
            )
        };
        let reader = view
            .store
            .parquet_reader(&Path::from(r.file.as_str()), Some(r.bytes));
        // The groups are consecutive: rows are numbered on from the first group's start.
        let mut row = cur.rg_start[groups[0]];
        let schema = cur.meta.metadata().file_metadata().schema_descr();
        let mask = ProjectionMask::roots(schema, 0..READ_COLUMNS);
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, cur.meta.clone())
            .with_row_groups(groups)
            .with_projection(mask)
            .with_batch_size(ROW_GROUP_ENTRIES)
            .build()
            .map_err(|e| err(&e))?;
        // The Parquet decoder can panic on corrupt pages: report that as this file's error.
        let batches: Vec<_> = block_on(AssertUnwindSafe(stream.collect::<Vec<_>>()).catch_unwind())
            .map_err(|_| err(&"corrupt file: the Parquet decoder failed"))?;
        let (lo, hi) = (cur.lo, cur.hi);
        let hide = view.hidden(r.run);
        let tag = (k as u64) << 40;
        for b in batches {
            let b = b.map_err(|e| err(&e))?;
            if b.num_columns() != READ_COLUMNS {
                return Err(bad(&format!("expected {READ_COLUMNS} columns")));
            }
            let first_row = row;
            row += b.num_rows() as u64;
            let labels = b
                .column(c::LABEL)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .ok_or_else(|| bad("a UBIGINT column has another type"))?
                .values();
            let first = labels.partition_point(|&l| l < lo);
            let last = labels.partition_point(|&l| l <= hi);
            if first >= last {
                continue;
            }
            let b = b.slice(first, last - first);
            let src = first_row + first as u64;
            let worker = ids(b.column(c::WORKER), &bad, |s| {
                self.workers
                    .get(s)
                    .copied()
                    .ok_or_else(|| bad(&format!("entry of unknown worker '{s}'")))
            })?;
            let parts = &mut self.parts;
            let part = ids(b.column(c::PART), &bad, |s| Ok(parts.id(s)))?;
            let mut cols: Vec<ArrayRef> = b.columns().to_vec();
            cols[c::WORKER] = Arc::new(worker);
            cols[c::PART] = Arc::new(part);
            for i in [c::COMMIT, c::ROW_START, c::ROW_COUNT] {
                if cols[i].data_type() != &DataType::UInt64 {
                    return Err(bad("a UBIGINT column has another type"));
                }
            }
            cols.push(Arc::new(UInt64Array::from_iter_values(
                (0..b.num_rows() as u64).map(|i| tag | (src + i)),
            )));
            let mut b =
                RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| bad(&e.to_string()))?;
            if let Some(h) = &hide {
                if let Some(keep) = h.keep(u64s(&b, c::LABEL), b.column(c::BLOCK))? {
                    b = arrow::compute::filter_record_batch(&b, &keep)
                        .map_err(|e| bad(&e.to_string()))?;
                    if b.num_rows() == 0 {
                        continue;
                    }
                }
            }
            let cur = &mut self.cursors[k];
            cur.buffered += b.num_rows();
            cur.buf.push_back(b);
        }
        Ok(())
    }

    /// The next chunk (`None` when every label has been scanned).
    pub(crate) fn next_chunk(&mut self) -> Result<Option<EntryChunk>> {
        loop {
            // Read the cursors that may hold labels below the bound, lowest first: entries
            // below the lowest last-read label of the cursors that are not exhausted are
            // complete.
            let mut order: Vec<(u64, usize)> = self
                .cursors
                .iter()
                .enumerate()
                .filter_map(|(k, c)| c.floor().map(|f| (f, k)))
                .collect();
            if order.is_empty() {
                return Ok(None);
            }
            order.sort_unstable();
            let mut bound: Option<u64> = None;
            for &(floor, k) in &order {
                if bound.is_some_and(|b| floor >= b) {
                    break;
                }
                while !self.cursors[k].done() && self.cursors[k].buffered < self.per_cursor {
                    self.read_more(k)?;
                }
                let c = &self.cursors[k];
                if !c.done() {
                    if let Some(l) = c.last() {
                        bound = Some(bound.map_or(l, |b: u64| b.min(l)));
                    }
                }
            }
            let mut pieces: Vec<RecordBatch> = Vec::new();
            let mut sources = 0;
            for c in &mut self.cursors {
                let before = pieces.len();
                c.take_below(bound, &mut pieces);
                sources += usize::from(pieces.len() > before);
            }
            if pieces.is_empty() {
                // One label fills every buffer: read on where the lowest buffers end.
                let Some(b) = bound else { continue };
                for k in 0..self.cursors.len() {
                    if !self.cursors[k].done() && self.cursors[k].last() == Some(b) {
                        self.read_more(k)?;
                    }
                }
                continue;
            }
            let batch = match pieces.len() {
                1 => pieces
                    .pop()
                    .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())),
                _ => arrow::compute::concat_batches(&self.schema, &pieces)?,
            };
            return Ok(Some(self.order(batch, sources > 1)?));
        }
    }

    /// Puts a chunk's entries into index order and drops superseded ones. `merge`: the batch is
    /// several label-sorted runs (from several segments) one after the other.
    fn order(&self, batch: RecordBatch, merge: bool) -> Result<EntryChunk> {
        let n = batch.num_rows();
        let label = u64s(&batch, c::LABEL);
        let mut idx: Option<Vec<u32>> = None;
        if merge {
            let mut v: Vec<u32> = (0..n as u32).collect();
            // Stable and run-adaptive: merges the sorted runs.
            v.sort_by_key(|&i| label[i as usize]);
            idx = Some(v);
        }
        let at = |idx: &Option<Vec<u32>>, k: usize| idx.as_ref().map_or(k, |v| v[k] as usize);
        let blocks = Blocks::of(batch.column(c::BLOCK))?;
        let (worker, commit) = (u32s(&batch, c::WORKER), u64s(&batch, c::COMMIT));
        let (part, start) = (u32s(&batch, c::PART), u64s(&batch, c::ROW_START));
        let names = self.parts.names();
        // Index order within a label; ties of (block, worker) are supersession groups.
        let key = |i: usize, j: usize| {
            blocks
                .cmp(i, j)
                .then(worker[i].cmp(&worker[j]))
                .then_with(|| {
                    if part[i] == part[j] {
                        std::cmp::Ordering::Equal
                    } else {
                        names[part[i] as usize].cmp(&names[part[j] as usize])
                    }
                })
                .then(start[i].cmp(&start[j]))
        };
        let same_group = |i: usize, j: usize| blocks.cmp(i, j).is_eq() && worker[i] == worker[j];
        // Labels whose entries are out of order or superseded.
        let mut fix: Vec<(usize, usize)> = Vec::new();
        let mut s = 0;
        while s < n {
            let l = label[at(&idx, s)];
            let mut e = s + 1;
            let mut ok = true;
            while e < n && label[at(&idx, e)] == l {
                let (i, j) = (at(&idx, e - 1), at(&idx, e));
                ok &= key(i, j).is_lt() && (!same_group(i, j) || commit[i] == commit[j]);
                e += 1;
            }
            if !ok {
                fix.push((s, e));
            }
            s = e;
        }
        if fix.is_empty() && idx.is_none() {
            return Ok(EntryChunk {
                labels: label_starts(label),
                batch,
            });
        }
        let mut v = idx.unwrap_or_else(|| (0..n as u32).collect());
        let mut drop = vec![false; n];
        for &(s, e) in &fix {
            let g = &mut v[s..e];
            g.sort_by(|&a, &b| key(a as usize, b as usize));
            // Of each (block, worker), keep the top commit's entries.
            let mut a = 0;
            while a < g.len() {
                let mut b = a + 1;
                while b < g.len() && same_group(g[a] as usize, g[b] as usize) {
                    b += 1;
                }
                let top = g[a..b].iter().map(|&i| commit[i as usize]).max();
                for &i in &g[a..b] {
                    drop[i as usize] = Some(commit[i as usize]) != top;
                }
                a = b;
            }
        }
        v.retain(|&i| !drop[i as usize]);
        let batch = arrow::compute::take_record_batch(&batch, &UInt32Array::from(v))?;
        Ok(EntryChunk {
            labels: label_starts(u64s(&batch, c::LABEL)),
            batch,
        })
    }
}

impl ChunkScan<'_> {
    /// The boxes (min x, y, z, max x, y, z) of rows `rows` of `chunk`, as six columns in the
    /// order of `rows`: read from the segments, only the row groups and pages holding them.
    pub(crate) fn boxes(&self, chunk: &EntryChunk, rows: &[u32]) -> Result<[Vec<f64>; 6]> {
        let mut out: [Vec<f64>; 6] = std::array::from_fn(|_| vec![0.0; rows.len()]);
        let src = u64s(&chunk.batch, c::SRC);
        let mut want: Vec<(u64, u32)> = rows
            .iter()
            .enumerate()
            .map(|(k, &i)| (src[i as usize], k as u32))
            .collect();
        if !want.windows(2).all(|w| w[0].0 <= w[1].0) {
            want.sort_unstable();
        }
        let mut a = 0;
        while a < want.len() {
            let k = (want[a].0 >> 40) as usize;
            let mut b = a + 1;
            while b < want.len() && (want[b].0 >> 40) as usize == k {
                b += 1;
            }
            self.read_boxes(k, &want[a..b], &mut out)?;
            a = b;
        }
        Ok(out)
    }

    /// Reads the boxes of `want` ((src, output position), sorted) of cursor `k` into `out`.
    fn read_boxes(&self, k: usize, want: &[(u64, u32)], out: &mut [Vec<f64>; 6]) -> Result<()> {
        let cur = &self.cursors[k];
        let view = self.view;
        let r = &view.manifest.segments[cur.seg];
        let err = |e: &dyn std::fmt::Display| {
            Error::file(
                &view.store.name,
                r.file.as_str(),
                format!("index segment: {e}"),
            )
        };
        let mask = (1u64 << 40) - 1;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &(s, _) in want {
            let row = s & mask;
            match ranges.last_mut() {
                Some(last) if last.0 + last.1 == row => last.1 += 1,
                _ => ranges.push((row, 1)),
            }
        }
        let (groups, selection) = crate::reader::plan_selection(&cur.rg_start, &ranges);
        let reader = view
            .store
            .parquet_reader(&Path::from(r.file.as_str()), Some(r.bytes));
        let schema = cur.meta.metadata().file_metadata().schema_descr();
        let proj = ProjectionMask::roots(schema, c::ROW_COUNT + 1..c::ROW_COUNT + 7);
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, cur.meta.clone())
            .with_row_groups(groups)
            .with_row_selection(selection.into())
            .with_projection(proj)
            .with_batch_size(ROW_GROUP_ENTRIES)
            .build()
            .map_err(|e| err(&e))?;
        let batches: Vec<_> = block_on(AssertUnwindSafe(stream.collect::<Vec<_>>()).catch_unwind())
            .map_err(|_| err(&"corrupt file: the Parquet decoder failed"))?;
        let mut i = 0;
        for b in batches {
            let b = b.map_err(|e| err(&e))?;
            let cols: Vec<&[f64]> = (0..6)
                .map(|d| {
                    b.column(d)
                        .as_any()
                        .downcast_ref::<arrow::array::Float64Array>()
                        .map(|a| a.values().as_ref())
                        .ok_or_else(|| err(&"corrupt index segment: a bbox column is not DOUBLE"))
                })
                .collect::<Result<_>>()?;
            for r in 0..b.num_rows() {
                let Some(&(_, pos)) = want.get(i) else {
                    return Err(err(&"corrupt index segment: more box rows than selected"));
                };
                for (o, col) in out.iter_mut().zip(&cols) {
                    o[pos as usize] = col[r];
                }
                i += 1;
            }
        }
        if i != want.len() {
            return Err(err(&"corrupt index segment: fewer box rows than selected"));
        }
        Ok(())
    }
}

/// The first row of every run of equal labels, then the length.
fn label_starts(label: &[u64]) -> Vec<usize> {
    let mut v = Vec::with_capacity(label.len() / 2 + 2);
    for (i, l) in label.iter().enumerate() {
        if i == 0 || label[i - 1] != *l {
            v.push(i);
        }
    }
    v.push(label.len());
    v
}

/// Maps a dictionary (or plain string) column to ids, looking each distinct string up once.
fn ids(
    a: &ArrayRef,
    bad: &dyn Fn(&str) -> Error,
    mut f: impl FnMut(&str) -> Result<u32>,
) -> Result<UInt32Array> {
    if let Some(d) = a.as_any().downcast_ref::<DictionaryArray<Int32Type>>() {
        let values = d
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("a VARCHAR column has another type"))?;
        let map: Vec<u32> = (0..values.len())
            .map(|i| f(values.value(i)))
            .collect::<Result<_>>()?;
        let keys = d.keys().values();
        let mut out = Vec::with_capacity(keys.len());
        for &k in keys.iter() {
            out.push(
                *map.get(k as usize)
                    .ok_or_else(|| bad("a dictionary key is out of range"))?,
            );
        }
        return Ok(UInt32Array::from(out));
    }
    let s = a
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| bad("a VARCHAR column has another type"))?;
    Ok(UInt32Array::from(
        (0..s.len())
            .map(|i| f(s.value(i)))
            .collect::<Result<Vec<u32>>>()?,
    ))
}
