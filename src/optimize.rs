//! `pocaduck_optimize`: rewrite fragmented labels so each is one contiguous row range, and
//! compact the index into one run of non-overlapping segments.
//!
//! A label written by several workers, or by several buffer flushes of one worker, is spread over
//! many row ranges in many parts; a query then opens each part and decodes a page or more per
//! range. Optimize streams the index in label order and copies such labels, in label order and
//! within a label in index order (block, then worker), into new parts under `optimized/`, and
//! publishes a new generation whose single run of segments points there.
//!
//! - Columnar: the index is scanned in label-range chunks of whole labels as Arrow columns
//!   ([`crate::entry_chunks`]); a chunk's fragmented labels are read in pieces of at most
//!   `chunk_rows` rows, one row selection per source part (each page decoded about once per
//!   piece that needs it), gathered into label order with one `take` per column; the new
//!   entries are built as columns and written as one batch per chunk by the segment writer.
//!   Nothing is done per entry but arithmetic.
//! - Pipelined: [`fetch`] scans, plans and reads on a thread of its own, [`rewrite`] copies on
//!   the calling thread, the segment writer encodes on a third; channels of one item between.
//! - Boxes of moved entries are computed from their rows (as writers compute them); the index's
//!   box columns are read only for labels left in place.
//! - Block ids, workers and commit numbers are kept: each old entry becomes one new entry (adjacent
//!   entries of the same (label, block, worker, commit) are merged), so supersession by a later
//!   commit of the same worker works exactly as before, and `pocaduck_blocks` is unchanged.
//! - Incremental: a label already stored as one contiguous range is left where it is; a run
//!   with nothing to do publishes nothing.
//! - Splittable: `labels: Some((lo, hi))` optimizes only labels `lo ..= hi`; the rest of the
//!   index is kept by reference. Several processes can optimize disjoint ranges at once: one
//!   that loses the publish race re-bases onto the winner's generation when the segments it
//!   replaced are unchanged there, and fails with a conflict error otherwise.
//! - Bounded memory: up to five chunks of `chunk_entries` entries (one being planned, one
//!   waiting for the copy, one being copied, one waiting for the writer, one being encoded),
//!   up to three pieces of `chunk_rows` rows (one being read, one waiting, one being copied,
//!   whose batches the pending output may still hold), a part's row group and an index row
//!   group being encoded.
//! - Safe to interrupt: new parts and segments are complete before the new generation is
//!   published with put-if-absent; until then readers use the previous generation. A run that
//!   fails deletes what it wrote.
//! - Old parts are not deleted (readers may hold older generations); see `pocaduck_stats`'
//!   `unreferenced_bytes`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, DictionaryArray, Float64Array, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Schema, UInt32Type};
use object_store::path::Path;

use crate::entry_chunks::{c, u32s, u64s, Blocks, ChunkScan, EntryChunk, PartNames};
use crate::error::{Error, Result};
use crate::index::{IndexCodec, UnifiedEntry};
use crate::layout;
use crate::log::{self, Manifest, SegmentRef};
use crate::part_sink::PartSink;
use crate::reader::{gather_rows, LoadedIndex, RowRanges};
use crate::schema::col;
use crate::segment::RunWriter;
use crate::storage::{block_on, Store};
use crate::writer::new_session_id;

/// Settings of one optimize run.
#[derive(Clone, Debug)]
pub struct OptimizeOptions {
    /// A new part is started once the current one reaches this many bytes (checked between
    /// windows).
    pub target_file_size: u64,
    /// Most rows read at once (rows of fragmented labels are read in pieces of whole entries
    /// of at most this many rows, or one entry if bigger).
    pub chunk_rows: u64,
    /// Index entries scanned at once: the label-range chunk whose rewritten entries are
    /// computed and written together (about 100 bytes each).
    pub chunk_entries: usize,
    /// Only labels `lo ..= hi` (`None`: all).
    pub labels: Option<(u64, u64)>,
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        OptimizeOptions {
            target_file_size: crate::writer::WriterOptions::default().target_file_size,
            chunk_rows: 1 << 20,
            chunk_entries: 1 << 16,
            labels: None,
        }
    }
}

/// What optimize did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptimizeSummary {
    /// Generation now current (unchanged when nothing was rewritten).
    pub generation: u64,
    /// Labels in the index (in the range optimized).
    pub labels: u64,
    /// Labels rewritten by this run.
    pub labels_rewritten: u64,
    /// Points rewritten by this run.
    pub points_rewritten: u64,
    /// Index entries before and after.
    pub entries_before: u64,
    /// Index entries after.
    pub entries_after: u64,
    /// Part files written.
    pub files_written: u64,
}

/// True if the entries of one label (in index order) need no rewrite: one contiguous row range
/// of one part, or (a label larger than a part) consecutive ranges of optimized parts, each part
/// after the first starting at row 0.
pub(crate) fn is_contiguous(entries: &[UnifiedEntry]) -> bool {
    let optimized = |p: &str| p.starts_with("optimized/");
    entries.windows(2).all(|w| {
        let (a, b) = (&w[0].entry, &w[1].entry);
        if a.part == b.part {
            a.row_start + a.row_count == b.row_start
        } else {
            optimized(&a.part) && optimized(&b.part) && a.part < b.part && b.row_start == 0
        }
    })
}

/// Pending rows are encoded once there are this many.
const FLUSH_ROWS: usize = 1 << 16;

/// Spans of fewer rows are joined before they are encoded.
const SHORT_SPAN: usize = 4096;

/// Part ids of the parts optimize writes have this bit set (the rest is their index in
/// [`Output::names`]); ids without it are the scan's ids of the parts read.
const WRITTEN: u32 = 1 << 31;

/// The optimized parts being written.
struct Output {
    sink: PartSink,
    /// Paths of the parts written, by index (their ids are `WRITTEN | index`).
    names: Vec<Arc<str>>,
    /// The open part's id, and its rows written to the sink.
    part: Option<(u32, u64)>,
    /// Rows appended but not yet written to the open part (see [`Output::flush`]).
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// Estimated bytes of a row in memory (for deciding when to encode).
    row_bytes: usize,
}

impl Output {
    /// Appends rows to the open part (opened by [`Output::current`]).
    fn append(&mut self, rows: RecordBatch) {
        self.pending_rows += rows.num_rows();
        self.pending.push(rows);
    }

    /// Encodes the pending rows.
    fn flush(&mut self) -> Result<()> {
        // Long spans are written as they are; runs of short ones (each write costs per
        // column) are first joined into batches, each within what one string array holds.
        self.pending_rows = 0;
        let mut short = Vec::new();
        for b in std::mem::take(&mut self.pending) {
            if b.num_rows() < SHORT_SPAN {
                short.push(b);
                continue;
            }
            self.write_joined(&mut short)?;
            self.write(&b)?;
        }
        self.write_joined(&mut short)
    }

    fn write_joined(&mut self, short: &mut Vec<RecordBatch>) -> Result<()> {
        let schema = self.sink.schema().clone();
        for b in
            crate::bounded::concat(&schema, std::mem::take(short), crate::bounded::STRING_BYTES)?
        {
            self.write(&b)?;
        }
        Ok(())
    }

    fn write(&mut self, b: &RecordBatch) -> Result<()> {
        self.sink.write(b)?;
        if let Some(p) = &mut self.part {
            p.1 += b.num_rows() as u64;
        }
        Ok(())
    }

    /// The open part's id and its rows so far (appended ones), opening a part if needed.
    fn current(&mut self) -> Result<(u32, u64)> {
        let pending = self.pending_rows as u64;
        let (id, written) = match self.part {
            Some(p) => p,
            None => {
                let (name, written) = self.sink.current()?;
                let id = WRITTEN | self.names.len() as u32;
                self.names.push(Arc::from(name));
                *self.part.insert((id, written))
            }
        };
        Ok((id, written + pending))
    }

    /// At a point where the part may close: once enough rows are waiting (in `rows` and here),
    /// encodes them, and closes the part once it reaches `target` bytes.
    fn boundary(&mut self, rows: &mut RowCursor, target: u64) -> Result<()> {
        let waiting = rows.pending() + self.pending_rows;
        if waiting >= FLUSH_ROWS || (waiting * self.row_bytes) as u64 >= target / 2 {
            rows.cut(self);
            self.flush()?;
            self.close_if_full(target)?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        self.flush()?;
        self.part = None;
        self.sink.close()
    }

    fn close_if_full(&mut self, target: u64) -> Result<()> {
        if self.sink.size() >= target {
            self.close()?;
        }
        Ok(())
    }
}

/// Optimizes `store` (its newest generation). `codec` reads format-1 generations, which must be
/// upgraded by `pocaduck_consolidate` first.
pub fn optimize(
    store: &Store,
    codec: &dyn IndexCodec,
    opts: &OptimizeOptions,
) -> Result<OptimizeSummary> {
    if opts.target_file_size < 1024 {
        return Err(Error::arg(
            "target_file_size",
            format!("must be at least 1KB, got {} bytes", opts.target_file_size),
        ));
    }
    let (lo, hi) = opts.labels.unwrap_or((0, u64::MAX));
    let Some(g) = log::latest(store)? else {
        return Err(Error::store(
            &store.name,
            format!(
                "has no unified index to optimize: run pocaduck_consolidate('{}') first",
                store.name
            ),
        ));
    };
    let gen = log::load(store, &g, codec)?;
    if gen.legacy.is_some() {
        return Err(Error::store(
            &store.name,
            format!(
                "has an index of format 1: run pocaduck_consolidate('{}') once to upgrade it, then optimize",
                store.name
            ),
        ));
    }
    let base = gen.manifest.clone();
    let idx = LoadedIndex::from_generation(store.clone(), gen);
    let mut summary = OptimizeSummary {
        generation: base.generation,
        ..Default::default()
    };
    // Nothing to do: the range is one optimized run already and no label in it is fragmented.
    let in_range: Vec<&SegmentRef> = base
        .segments
        .iter()
        .filter(|r| r.lo <= hi && r.hi >= lo)
        .collect();
    // A tombstone above the run hides entries the run still holds: they must go.
    let one_run = in_range.windows(2).all(|w| w[0].run == w[1].run)
        && in_range.iter().all(|r| r.optimized)
        && in_range
            .first()
            .is_none_or(|r| idx.view.hidden(r.run).is_none());
    if one_run {
        let mut fragmented = false;
        let mut scan = ChunkScan::new(&idx.view, lo, hi, opts.chunk_entries)?;
        while let Some(chunk) = scan.next_chunk()? {
            summary.labels += chunk.labels.len() as u64 - 1;
            summary.entries_before += chunk.batch.num_rows() as u64;
            fragmented |= chunk
                .labels
                .windows(2)
                .any(|g| !contiguous(&chunk.batch, &scan.parts, g[0], g[1]));
        }
        if !fragmented {
            summary.entries_after = summary.entries_before;
            return Ok(summary);
        }
        summary = OptimizeSummary {
            generation: base.generation,
            ..Default::default()
        };
    }
    let session = new_session_id();
    let paths = Box::new(move |n| layout::optimized_part(&session, n));
    let mut out = Output {
        sink: PartSink::new(store.clone(), idx.schema.arrow(), paths),
        names: Vec::new(),
        part: None,
        pending: Vec::new(),
        pending_rows: 0,
        row_bytes: 8 * (idx.schema.part_columns()),
    };
    let mut written: Vec<Path> = Vec::new();
    let res = (|| {
        let refs = copy_and_index(
            store,
            &idx,
            &base,
            lo,
            hi,
            &mut out,
            opts,
            &mut summary,
            &mut written,
        )?;
        out.close()?;
        store.sync(out.sink.done())?;
        publish_rebased(store, codec, &base, lo, hi, refs)
    })();
    match res {
        Ok(g) => {
            summary.generation = g;
            summary.files_written = out.sink.done().len() as u64;
            Ok(summary)
        }
        Err(e) => {
            out.sink.discard();
            for p in &written {
                let _ = store.delete(p);
            }
            Err(e)
        }
    }
}

/// Runs [`rewrite`] while [`fetch`] scans the index and reads the rows to copy on one thread,
/// and the new run's segments are encoded and written on another. Returns the run's files; `written` receives every segment
/// file written, for the caller to delete if the optimize fails.
#[allow(clippy::too_many_arguments)]
fn copy_and_index(
    store: &Store,
    idx: &LoadedIndex,
    base: &Manifest,
    lo: u64,
    hi: u64,
    out: &mut Output,
    opts: &OptimizeOptions,
    summary: &mut OptimizeSummary,
    written: &mut Vec<Path>,
) -> Result<Vec<SegmentRef>> {
    let copied = std::sync::atomic::AtomicBool::new(false);
    let (copy, index, files) = std::thread::scope(|sc| {
        // One batch in the channel, one being encoded: the copy runs at most two chunks ahead.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1);
        let copied = &copied;
        let workers = StringArray::from_iter_values(base.workers.iter().map(|w| w.worker.as_str()));
        let spawn_err =
            |e: std::io::Error| Error::Internal(format!("optimize: cannot start a thread: {e}"));
        let writer = std::thread::Builder::new().spawn_scoped(sc, move || {
            let mut w = RunWriter::new(store, base, base.next_run, true);
            // The segment schema, with worker and part names as dictionaries (see
            // NewEntries::batch).
            let fields = w.schema().fields().iter().map(|f| match f.name().as_str() {
                "worker" | "part" => Arc::new(f.as_ref().clone().with_data_type(
                    DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
                )),
                _ => f.clone(),
            });
            let schema = Arc::new(Schema::new(fields.collect::<Vec<_>>()));
            // Caught, so that the files written so far are still known (and deleted).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut r = rx.iter().try_for_each(|j| {
                    let b = j.new.batch(&j.chunk, &workers, &j.parts, j.read, &schema)?;
                    w.push_batch(b)
                });
                // The copy failed: the run is abandoned, so its last file is not written.
                if r.is_ok() && copied.load(std::sync::atomic::Ordering::Acquire) {
                    r = w.finish().map(|_| ());
                }
                r
            }))
            .unwrap_or_else(|p| Err(panicked("index segment writer", p)));
            (r.map(|()| w.done()), w.written())
        });
        // The scan and the reads run on a thread of their own, at most a piece ahead.
        let (ftx, frx) = std::sync::mpsc::sync_channel::<Fetched>(1);
        let fetcher = std::thread::Builder::new()
            .spawn_scoped(sc, move || fetch(idx, lo, hi, opts, &ftx))
            .map_err(spawn_err);
        let mut copy = match (&writer, &fetcher) {
            (Ok(_), Ok(_)) => rewrite(&frx, out, &tx, opts, summary),
            _ => Err(Error::Internal(SCAN_STOPPED.into())),
        };
        drop(frx);
        // A scan that failed is why the copy stopped (unless the copy failed on its own).
        let fetched =
            fetcher.and_then(|f| f.join().unwrap_or_else(|p| Err(panicked("index scan", p))));
        if let Err(e) = fetched {
            let stopped = match &copy {
                Ok(()) => true,
                Err(Error::Internal(m)) => m == SCAN_STOPPED,
                Err(_) => false,
            };
            if stopped {
                copy = Err(e);
            }
        }
        copied.store(copy.is_ok(), std::sync::atomic::Ordering::Release);
        drop(tx);
        match writer.map_err(spawn_err).map(|w| w.join()) {
            Ok(Ok((index, files))) => (copy, index, files),
            Ok(Err(p)) => (copy, Err(panicked("index segment writer", p)), Vec::new()),
            Err(e) => (copy, Err(e), Vec::new()),
        }
    });
    written.extend(files);
    // The writer's error first: a copy that failed to hand it a batch failed because of it;
    // then the copy's (which is the scan's when the scan failed).
    let refs = index?;
    copy?;
    Ok(refs)
}

/// The error of an optimize thread that panicked.
fn panicked(what: &str, p: Box<dyn std::any::Any + Send>) -> Error {
    Error::Internal(format!(
        "optimize: the {what} panicked: {}",
        crate::error::panic_text(&*p)
    ))
}

/// `base`'s segments without labels `lo ..= hi`.
fn clip(segments: &[SegmentRef], lo: u64, hi: u64, only: impl Fn(&str) -> bool) -> Vec<SegmentRef> {
    let mut out = Vec::new();
    for r in segments {
        if !only(&r.file) || r.hi < lo || r.lo > hi {
            out.push(r.clone());
            continue;
        }
        if r.lo < lo {
            out.push(SegmentRef {
                hi: lo - 1,
                ..r.clone()
            });
        }
        if r.hi > hi {
            out.push(SegmentRef {
                lo: hi + 1,
                ..r.clone()
            });
        }
    }
    out
}

/// The label ranges of `file` within `lo ..= hi` in `m`.
fn coverage(m: &Manifest, file: &str, lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = m
        .segments
        .iter()
        .filter(|r| r.file == file && r.lo <= hi && r.hi >= lo)
        .map(|r| (r.lo.max(lo), r.hi.min(hi)))
        .collect();
    v.sort_unstable();
    v
}

/// Publishes `base` with labels `lo ..= hi` replaced by `refs`. If another generation was
/// published meanwhile and the segments this run replaced are unchanged in it (a consolidate
/// added a run, or an optimize of another range ran), the replacement is applied to that
/// generation instead; otherwise a conflict error.
fn publish_rebased(
    store: &Store,
    codec: &dyn IndexCodec,
    base: &Manifest,
    lo: u64,
    hi: u64,
    refs: Vec<SegmentRef>,
) -> Result<u64> {
    let replaced: Vec<&str> = base
        .segments
        .iter()
        .filter(|r| r.lo <= hi && r.hi >= lo)
        .map(|r| r.file.as_str())
        .collect();
    let mut on = base.clone();
    for _ in 0..16 {
        let mut m = on.clone();
        let run = m.next_run;
        m.segments = clip(&on.segments, lo, hi, |f| replaced.contains(&f));
        m.segments
            .extend(refs.iter().map(|r| SegmentRef { run, ..r.clone() }));
        m.next_run = run + 1;
        m.generation = on.generation + 1;
        m.created_ms = log::now_ms();
        match log::publish(store, &m) {
            Ok(()) => return Ok(m.generation),
            Err(Error::Conflict { store: s, msg }) => {
                let Some(g) = log::latest(store)? else {
                    return Err(Error::Conflict { store: s, msg });
                };
                let latest = log::load(store, &g, codec)?.manifest;
                let unchanged = replaced
                    .iter()
                    .all(|f| coverage(&latest, f, lo, hi) == coverage(base, f, lo, hi));
                // A tombstone published meanwhile may hide entries this run copied: its run is
                // below the number the replacement gets, so it would not apply to them.
                let new_hides = latest.tombstones.iter().any(|t| t.run >= base.next_run);
                if !unchanged || new_hides || latest.format < log::MANIFEST_FORMAT_PLAIN {
                    return Err(Error::Conflict { store: s, msg });
                }
                on = latest;
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict {
        store: store.name.clone(),
        msg: "could not publish after 16 tries (other writers keep publishing)".into(),
    })
}

/// True if rows `s .. e` of a chunk (one label's entries, in index order) need no rewrite; see
/// [`is_contiguous`].
pub(crate) fn contiguous(b: &RecordBatch, names: &PartNames, s: usize, e: usize) -> bool {
    let (part, start, count) = (
        u32s(b, c::PART),
        u64s(b, c::ROW_START),
        u64s(b, c::ROW_COUNT),
    );
    (s + 1..e).all(|k| {
        let (a, b) = (k - 1, k);
        if part[a] == part[b] {
            start[a] + count[a] == start[b]
        } else {
            names.optimized(part[a])
                && names.optimized(part[b])
                && names.name(part[a]) < names.name(part[b])
                && start[b] == 0
        }
    })
}

/// The entries of the new run for one chunk, as columns: each is an entry of the chunk (`src`)
/// with a new place (part, rows) and box.
struct NewEntries {
    src: Vec<u32>,
    part: Vec<u32>,
    row_start: Vec<u64>,
    row_count: Vec<u64>,
    bbox: [Vec<f64>; 6],
}

impl NewEntries {
    fn with_capacity(n: usize) -> NewEntries {
        NewEntries {
            src: Vec::with_capacity(n),
            part: Vec::with_capacity(n),
            row_start: Vec::with_capacity(n),
            row_count: Vec::with_capacity(n),
            bbox: std::array::from_fn(|_| Vec::with_capacity(n)),
        }
    }

    fn push(&mut self, src: usize, part: u32, row_start: u64, row_count: u64, bbox: [f64; 6]) {
        self.src.push(src as u32);
        self.part.push(part);
        self.row_start.push(row_start);
        self.row_count.push(row_count);
        for (v, x) in self.bbox.iter_mut().zip(bbox) {
            v.push(x);
        }
    }

    /// The entries in the segment schema. `chunk` is the chunk they come from, `workers` the
    /// worker names by index, `parts` the part paths by id.
    fn batch(
        self,
        chunk: &RecordBatch,
        workers: &StringArray,
        parts: &StringArray,
        read: u32,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<RecordBatch> {
        use arrow::compute::take;
        // Usually every entry of the chunk, in order (nothing merged): no gather needed.
        let same = self.src.len() == chunk.num_rows()
            && self.src.iter().enumerate().all(|(k, &i)| k == i as usize);
        let src = UInt32Array::from(self.src);
        let pick = |i: usize| -> Result<ArrayRef> {
            Ok(match same {
                true => chunk.column(i).clone(),
                false => take(chunk.column(i), &src, None)?,
            })
        };
        let worker_ids = pick(c::WORKER)?.as_primitive::<UInt32Type>().clone();
        // Worker and part names as dictionaries of the few names (the segment writer takes
        // them for its string columns): no copy of a path per entry.
        let names = |keys: UInt32Array, values: &StringArray| -> Result<ArrayRef> {
            Ok(Arc::new(DictionaryArray::<UInt32Type>::try_new(
                keys,
                Arc::new(values.clone()),
            )?))
        };
        let u = |v: Vec<u64>| -> ArrayRef { Arc::new(UInt64Array::from(v)) };
        let mut cols: Vec<ArrayRef> = vec![
            pick(c::LABEL)?,
            pick(c::BLOCK)?,
            names(worker_ids, workers)?,
            pick(c::COMMIT)?,
            names(
                UInt32Array::from_iter_values(self.part.into_iter().map(|p| match p & WRITTEN {
                    0 => p,
                    _ => read + (p & !WRITTEN),
                })),
                parts,
            )?,
            u(self.row_start),
            u(self.row_count),
        ];
        for v in self.bbox {
            cols.push(Arc::new(Float64Array::from(v)));
        }
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }
}

/// A chunk's new entries, handed to the segment writer's thread (which builds their batch).
struct Job {
    chunk: RecordBatch,
    new: NewEntries,
    /// Part paths by id: the scan's parts (as of the chunk), then the parts written (ids
    /// `WRITTEN | k` stand for `parts[read + k]`).
    parts: StringArray,
    read: u32,
}

/// What the fetching thread hands the copy, in order: a chunk's plan, then the rows of each of
/// its pieces.
enum Fetched {
    Chunk(Box<Plan>),
    Rows(Vec<RecordBatch>),
    /// Every chunk was sent (without it, a closed channel means the scan failed).
    End,
}

/// The copy's error when the scan ended without [`Fetched::End`] (the scan's error replaces it).
const SCAN_STOPPED: &str = "optimize: the index scan stopped";

/// A chunk of whole labels and what to do with it.
struct Plan {
    chunk: EntryChunk,
    /// Per label: fragmented (its rows are copied), or kept where it is.
    frag: Vec<bool>,
    /// Entries of the fragmented labels, in order.
    moved: Vec<u32>,
    /// The pieces their rows are read in: each ends before this index of `moved`.
    pieces: Vec<usize>,
    /// Boxes are read from the index for every entry (else computed from the moved rows, and
    /// read for the kept entries only, in order).
    index_boxes: bool,
    kept_boxes: [Vec<f64>; 6],
    /// Part paths the scan named since the previous chunk (ids go on from there).
    new_parts: Vec<Arc<str>>,
}

/// Scans labels `lo ..= hi` of `idx` chunk by chunk on a thread of its own, ahead of the copy:
/// plans each chunk and reads the fragmented labels' rows in pieces of whole entries of at
/// most `chunk_rows` rows, passing plans and rows to `tx`. Returns when the copy stops
/// listening (the copy then has the error).
fn fetch(
    idx: &LoadedIndex,
    lo: u64,
    hi: u64,
    opts: &OptimizeOptions,
    tx: &std::sync::mpsc::SyncSender<Fetched>,
) -> Result<()> {
    let cols: Vec<usize> = (0..idx.schema.part_columns()).collect();
    let schema = idx.projected(&cols);
    let mut scan = ChunkScan::new(&idx.view, lo, hi, opts.chunk_entries)?;
    let mut named = 0;
    while let Some(chunk) = scan.next_chunk()? {
        let batch = chunk.batch.clone();
        let b = &batch;
        let frag: Vec<bool> = chunk
            .labels
            .windows(2)
            .map(|g| !contiguous(b, &scan.parts, g[0], g[1]))
            .collect();
        let moved: Vec<u32> = chunk
            .labels
            .windows(2)
            .zip(&frag)
            .filter(|x| *x.1)
            .flat_map(|(g, _)| g[0] as u32..g[1] as u32)
            .collect();
        let (label, part, start, count) = (
            u64s(b, c::LABEL),
            u32s(b, c::PART),
            u64s(b, c::ROW_START),
            u64s(b, c::ROW_COUNT),
        );
        // Boxes of the kept entries come from the index; those of moved entries from their
        // rows, unless entries are long (then reading a box is cheaper than scanning its rows).
        let moved_rows: u64 = moved.iter().map(|&i| count[i as usize]).sum();
        let index_boxes = moved_rows >= 64 * moved.len() as u64;
        let kept: Vec<u32> = match index_boxes {
            true => (0..b.num_rows() as u32).collect(),
            false => chunk
                .labels
                .windows(2)
                .zip(&frag)
                .filter(|x| !*x.1)
                .flat_map(|(g, _)| g[0] as u32..g[1] as u32)
                .collect(),
        };
        let kept_boxes = scan.boxes(&chunk, &kept)?;
        let mut pieces = Vec::new();
        let mut q = 0;
        while q < moved.len() {
            let mut n = count[moved[q] as usize];
            let mut end = q + 1;
            while end < moved.len() && n + count[moved[end] as usize] <= opts.chunk_rows {
                n += count[moved[end] as usize];
                end += 1;
            }
            pieces.push(end);
            q = end;
        }
        let sels: Vec<Vec<u32>> = std::iter::once(0)
            .chain(pieces.iter().copied())
            .zip(&pieces)
            .map(|(from, &to)| moved[from..to].to_vec())
            .collect();
        let names = scan.parts.names();
        let plan = Plan {
            frag,
            moved,
            pieces,
            index_boxes,
            kept_boxes,
            new_parts: names[named..].to_vec(),
            chunk,
        };
        named = names.len();
        if tx.send(Fetched::Chunk(Box::new(plan))).is_err() {
            return Ok(());
        }
        for sel in sels {
            let pick = |v: &[u64]| -> Vec<u64> { sel.iter().map(|&i| v[i as usize]).collect() };
            let p: Vec<u32> = sel.iter().map(|&i| part[i as usize]).collect();
            let (st, ct) = (pick(start), pick(count));
            let n: u64 = ct.iter().sum();
            let got = block_on(gather_rows(
                &idx.store,
                RowRanges {
                    parts: scan.parts.names(),
                    part: &p,
                    start: &st,
                    count: &ct,
                },
                &cols,
                &schema,
                None,
                true,
            ))?;
            let m: usize = got.iter().map(|b| b.num_rows()).sum();
            if m as u64 != n {
                return Err(Error::Internal(format!(
                    "optimize read {m} rows for labels {}..={}, the index says {n}",
                    label[sel[0] as usize],
                    label[sel[sel.len() - 1] as usize]
                )));
            }
            if tx.send(Fetched::Rows(got)).is_err() {
                return Ok(());
            }
        }
    }
    let _ = tx.send(Fetched::End);
    Ok(())
}

/// Takes the chunks [`fetch`] planned and their rows from `rx`, copies the fragmented labels'
/// rows into `out` and passes every label's entries — moved or kept — to `w`.
fn rewrite(
    rx: &std::sync::mpsc::Receiver<Fetched>,
    out: &mut Output,
    w: &std::sync::mpsc::SyncSender<Job>,
    opts: &OptimizeOptions,
    summary: &mut OptimizeSummary,
) -> Result<()> {
    let stopped = || Error::Internal(SCAN_STOPPED.into());
    let mut read_names: Vec<Arc<str>> = Vec::new();
    loop {
        let plan = match rx.recv() {
            Ok(Fetched::Chunk(plan)) => plan,
            Ok(Fetched::End) => return Ok(()),
            Ok(Fetched::Rows(_)) => {
                return Err(Error::Internal("optimize: rows without their chunk".into()))
            }
            Err(_) => return Err(stopped()),
        };
        let Plan {
            chunk,
            frag,
            moved,
            pieces,
            index_boxes,
            kept_boxes,
            new_parts,
        } = *plan;
        read_names.extend(new_parts);
        let b = &chunk.batch;
        summary.labels += frag.len() as u64;
        summary.entries_before += b.num_rows() as u64;
        let (label, worker, commit) = (u64s(b, c::LABEL), u32s(b, c::WORKER), u64s(b, c::COMMIT));
        let (part, start, count) = (
            u32s(b, c::PART),
            u64s(b, c::ROW_START),
            u64s(b, c::ROW_COUNT),
        );
        let mut kept_at = 0;
        let index_box = |i: usize| -> [f64; 6] { std::array::from_fn(|d| kept_boxes[d][i]) };
        let blocks = Blocks::of(b.column(c::BLOCK))?;
        let mut new = NewEntries::with_capacity(b.num_rows());
        let mut rows = RowCursor::default();
        let (mut q, mut piece, mut read_end) = (0usize, 0usize, 0usize);
        for (g, &fr) in frag.iter().enumerate() {
            let (s, e) = (chunk.labels[g], chunk.labels[g + 1]);
            if !fr {
                for i in s..e {
                    let bbox = index_box(if index_boxes { i } else { kept_at });
                    kept_at += 1;
                    new.push(i, part[i], start[i], count[i], bbox);
                }
                continue;
            }
            summary.labels_rewritten += 1;
            // Entries of `new` from this index on were moved (and may be extended).
            let moved_from = new.src.len();
            // A part closes at the target size between labels, or within a label bigger than
            // chunk_rows every chunk_rows rows (so a label is split only when it must be).
            let mut since_check = 0u64;
            for i in s..e {
                if q == read_end {
                    rows.cut(out);
                    match rx.recv() {
                        Ok(Fetched::Rows(got)) => rows.load(got),
                        Ok(Fetched::Chunk(_) | Fetched::End) => {
                            return Err(Error::Internal(
                                "optimize: a chunk's rows are missing".into(),
                            ))
                        }
                        Err(_) => return Err(stopped()),
                    }
                    read_end = *pieces.get(piece).ok_or_else(stopped)?;
                    piece += 1;
                }
                debug_assert_eq!(moved[q] as usize, i);
                q += 1;
                let (pid, base) = out.current()?;
                let row_start = base + rows.pending() as u64;
                let n = count[i];
                summary.points_rewritten += n;
                // Extends the previous new entry when this one continues it (same label,
                // block, worker and commit, same part, next row); else a new entry.
                let bbox = match index_boxes {
                    true => {
                        rows.advance(n as usize, out, false)?;
                        index_box(i)
                    }
                    false => rows.advance(n as usize, out, true)?,
                };
                let k = new.src.len();
                let merged = k > moved_from && {
                    let j = new.src[k - 1] as usize;
                    worker[j] == worker[i]
                        && commit[j] == commit[i]
                        && label[j] == label[i]
                        && new.part[k - 1] == pid
                        && new.row_start[k - 1] + new.row_count[k - 1] == row_start
                        && blocks.cmp(j, i).is_eq()
                };
                if merged {
                    new.row_count[k - 1] += n;
                    for d in 0..3 {
                        let v = &mut new.bbox[d][k - 1];
                        *v = v.min(bbox[d]);
                        let v = &mut new.bbox[d + 3][k - 1];
                        *v = v.max(bbox[d + 3]);
                    }
                } else {
                    new.push(i, pid, row_start, n, bbox);
                }
                since_check += n;
                if since_check >= opts.chunk_rows {
                    since_check = 0;
                    out.boundary(&mut rows, opts.target_file_size)?;
                }
            }
            out.boundary(&mut rows, opts.target_file_size)?;
        }
        rows.cut(out);
        summary.entries_after += new.src.len() as u64;
        let parts =
            StringArray::from_iter_values(read_names.iter().chain(&out.names).map(|n| n.as_ref()));
        let job = Job {
            chunk: chunk.batch.clone(),
            new,
            parts,
            read: read_names.len() as u32,
        };
        w.send(job)
            .map_err(|_| Error::Internal("optimize: the index segment writer stopped".into()))?;
    }
}

/// Rows read for the moved entries, in entry order, consumed in spans.
#[derive(Default)]
struct RowCursor {
    batches: std::collections::VecDeque<RecordBatch>,
    /// The batch being consumed, and its x, y, z as DOUBLE (for the boxes).
    cur: Option<(RecordBatch, Option<[Float64Array; 3]>)>,
    /// Start of the span not yet appended to the output.
    start: usize,
    pos: usize,
}

impl RowCursor {
    /// Rows consumed but not yet appended.
    fn pending(&self) -> usize {
        self.pos - self.start
    }

    /// Replaces the rows (all consumed and cut) by the next ones read.
    fn load(&mut self, batches: Vec<RecordBatch>) {
        self.batches = batches.into();
        self.cur = None;
        self.start = 0;
        self.pos = 0;
    }

    /// Appends the pending span to `out`.
    fn cut(&mut self, out: &mut Output) {
        if let Some((b, _)) = &self.cur {
            if self.pos > self.start {
                out.append(b.slice(self.start, self.pos - self.start));
            }
        }
        self.start = self.pos;
    }

    /// Consumes `n` rows (appending spans to `out` as batches end); returns their box (with
    /// `want_box`; else an empty box), computed as writers compute it (coordinates as DOUBLE;
    /// min and max ignore NaN).
    fn advance(&mut self, mut n: usize, out: &mut Output, want_box: bool) -> Result<[f64; 6]> {
        let mut bbox = crate::index::EMPTY_BBOX;
        while n > 0 {
            let len = self.cur.as_ref().map_or(0, |c| c.0.num_rows());
            if self.pos >= len {
                self.cut(out);
                let b = self
                    .batches
                    .pop_front()
                    .ok_or_else(|| Error::Internal("optimize: rows ran out".into()))?;
                self.cur = Some((b, None));
                self.start = 0;
                self.pos = 0;
                continue;
            }
            let k = n.min(len - self.pos);
            if let Some((b, xyz)) = self.cur.as_mut().filter(|_| want_box) {
                if xyz.is_none() {
                    let [x, y, z] = col::XYZ.map(|i| {
                        arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Float64)
                            .map(|a| a.as_primitive::<arrow::datatypes::Float64Type>().clone())
                    });
                    *xyz = Some([x?, y?, z?]);
                }
                for (d, a) in xyz.iter().flatten().enumerate() {
                    for &v in &a.values()[self.pos..self.pos + k] {
                        bbox[d] = bbox[d].min(v);
                        bbox[d + 3] = bbox[d + 3].max(v);
                    }
                }
            }
            self.pos += k;
            n -= k;
        }
        Ok(bbox)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::consolidate::consolidate;
    use crate::consolidate::tests::{write, JsonCodec};
    use crate::index::BlockId;
    use crate::storage::OpenMode;
    use crate::vacuum::tests::files;
    use crate::writer::tests::rows;
    use arrow::array::AsArray;
    use arrow::datatypes::Int32Type;
    use std::collections::BTreeMap;

    pub(crate) type Points = BTreeMap<u64, Vec<(String, i32, i32, i32)>>;

    /// Every label's points as sorted (block, x, y, z), read through the index.
    pub(crate) fn read_all(name: &str) -> Points {
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        let labels: Vec<u64> = idx.label_stats().map(|s| s.unwrap().0).collect();
        let mut out = Points::new();
        for l in labels {
            let mut v = Vec::new();
            for b in idx.points(&[l], &[1, 2, 3, 4]).unwrap() {
                let blk = b.column(0).as_string::<i32>();
                let c: Vec<_> = (1..4)
                    .map(|i| b.column(i).as_primitive::<Int32Type>().clone())
                    .collect();
                for r in 0..b.num_rows() {
                    v.push((
                        blk.value(r).to_string(),
                        c[0].value(r),
                        c[1].value(r),
                        c[2].value(r),
                    ));
                }
            }
            v.sort();
            out.insert(l, v);
        }
        out
    }

    /// Label `l`'s points in block `blk`: distinct, recognisable coordinates.
    fn pts(l: u64, blk: u32, n: u32, tag: i32) -> Vec<[i32; 3]> {
        (0..n)
            .map(|i| [l as i32, blk as i32 * 1000 + i as i32, tag])
            .collect()
    }

    fn add(expect: &mut Points, l: u64, blk: u32, p: &[[i32; 3]]) {
        let v = expect.entry(l).or_default();
        v.extend(p.iter().map(|q| (format!("b{blk}"), q[0], q[1], q[2])));
        v.sort();
    }

    fn small() -> OptimizeOptions {
        OptimizeOptions {
            target_file_size: 1024,
            chunk_rows: 7,
            chunk_entries: 3,
            labels: None,
        }
    }

    fn contiguous_labels(name: &str) -> (usize, usize) {
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        let labels: Vec<Vec<UnifiedEntry>> = idx.view.scan().map(|r| r.unwrap().1).collect();
        let ok = labels.iter().filter(|v| is_contiguous(v)).count();
        (ok, labels.len())
    }

    #[test]
    fn optimize_keeps_every_point_and_block_and_makes_labels_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut expect = Points::new();
        // Two workers, several commits each; label 1 everywhere, label 2 in two blocks of one
        // commit (contiguous already), labels 3.. scattered.
        for (w, blocks) in [("w1", [0u32, 1, 2]), ("w2", [3, 4, 5])] {
            for blk in blocks {
                let mut ls = Vec::new();
                let mut ps = Vec::new();
                for l in [1u64, 3 + (blk as u64 % 3)] {
                    // Label 1 is big enough to span several optimized parts.
                    let n = if l == 1 { 3000 } else { 5 + blk };
                    let p = pts(l, blk, n, 0);
                    add(&mut expect, l, blk, &p);
                    ls.extend(std::iter::repeat_n(l, p.len()));
                    ps.extend(p);
                }
                write(name, w, &[rows(&ls, &format!("b{blk}"), &ps)]);
            }
        }
        let p2: Vec<[i32; 3]> = pts(2, 9, 4, 0);
        add(&mut expect, 2, 9, &p2);
        write(name, "w3", &[rows(&[2; 4], "b9", &p2)]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        assert_eq!(read_all(name), expect);
        let blocks_before: Vec<_> = {
            let idx = crate::reader::open(name, &JsonCodec).unwrap();
            (1..6).map(|l| idx.blocks(l).unwrap()).collect()
        };
        let (ok, n) = contiguous_labels(name);
        assert!(ok < n, "the test needs fragmented labels: {ok} of {n}");
        let boxes_before = boxes(name);

        let s = optimize(&store, &JsonCodec, &small()).unwrap();
        assert_eq!(s.generation, 2);
        assert_eq!(s.labels, 5);
        // Label 2 (one commit) is left alone; labels 1, 3, 4, 5 span workers or commits.
        assert_eq!(s.labels_rewritten, 4);
        assert!(s.files_written > 1, "{s:?}");
        assert!(s.entries_after <= s.entries_before, "{s:?}");
        assert_eq!(read_all(name), expect);
        assert_eq!(boxes(name), boxes_before);
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        let blocks_after: Vec<_> = (1..6).map(|l| idx.blocks(l).unwrap()).collect();
        assert_eq!(blocks_after, blocks_before);
        assert_eq!(
            blocks_after[0]
                .iter()
                .map(|b| b.0.clone())
                .collect::<Vec<_>>(),
            (0..6)
                .map(|b| BlockId::Str(format!("b{b}")))
                .collect::<Vec<_>>()
        );
        let (ok, n) = contiguous_labels(name);
        assert_eq!(ok, n);

        // Nothing new: nothing rewritten, no new generation.
        let again = optimize(&store, &JsonCodec, &small()).unwrap();
        assert_eq!((again.generation, again.labels_rewritten), (2, 0));

        // Supersession still works on optimized entries: w1 reruns (label 1, block b1) with
        // other points. Label 4's points in b1 are another (label, block) and stay.
        let p1: Vec<[i32; 3]> = pts(1, 1, 3, 77);
        expect.get_mut(&1).unwrap().retain(|q| q.0 != "b1");
        add(&mut expect, 1, 1, &p1);
        write(name, "w1", &[rows(&[1; 3], "b1", &p1)]);
        consolidate(&store, &JsonCodec).unwrap();
        assert_eq!(read_all(name), expect);
        // Incremental: only label 1 is fragmented again.
        let s3 = optimize(&store, &JsonCodec, &small()).unwrap();
        assert_eq!((s3.generation, s3.labels_rewritten), (4, 1));
        assert_eq!(read_all(name), expect);
        let (ok, n) = contiguous_labels(name);
        assert_eq!(ok, n);
    }

    /// Every label's (block → union of its entries' boxes), from a scan of the index.
    fn boxes(name: &str) -> BTreeMap<(u64, String), [f64; 6]> {
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        let mut out: BTreeMap<(u64, String), [f64; 6]> = BTreeMap::new();
        for r in idx.view.scan() {
            for e in r.unwrap().1 {
                let b = out
                    .entry((e.entry.label, e.entry.block.to_string()))
                    .or_insert(crate::index::EMPTY_BBOX);
                crate::index::widen_bbox(b, &e.entry.bbox);
            }
        }
        out
    }

    #[test]
    fn chunked_rewrite_keeps_points_boxes_and_blocks_across_chunks_parts_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut expect = Points::new();
        // 4,000 labels in 3 blocks, by 3 workers, each in two commits (two parts each): over
        // 12,000 entries, so the index scan takes several row groups and chunks. Labels that
        // are a multiple of 7 are written once, by one worker in one block: contiguous, kept.
        let n = 4000u64;
        for (wi, w) in ["w1", "w2", "w3"].iter().enumerate() {
            for half in 0..2u64 {
                let blk = wi as u32;
                let mut ls = Vec::new();
                let mut ps = Vec::new();
                for l in (0..n).filter(|l| l % 2 == half) {
                    if l % 7 == 0 && wi > 0 {
                        continue;
                    }
                    // 1 to 3 points, the first one off the label's grid so boxes differ.
                    let k = 1 + (l % 3) as u32;
                    let p: Vec<[i32; 3]> = (0..k)
                        .map(|i| {
                            [
                                l as i32,
                                blk as i32 * 100 + i as i32,
                                -(i as i32) * (l % 5) as i32,
                            ]
                        })
                        .collect();
                    add(&mut expect, l, blk, &p);
                    ls.extend(std::iter::repeat_n(l, p.len()));
                    ps.extend(p);
                }
                write(name, w, &[rows(&ls, &format!("b{blk}"), &ps)]);
            }
        }
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        assert_eq!(read_all(name), expect);
        let boxes_before = boxes(name);
        let opts = |labels| OptimizeOptions {
            target_file_size: 4 << 10,
            chunk_rows: 1000,
            chunk_entries: 5000,
            labels,
        };
        // Two label ranges, one after the other (the split of `labels := [lo, hi)`).
        let a = optimize(&store, &JsonCodec, &opts(Some((0, 2499)))).unwrap();
        let b = optimize(&store, &JsonCodec, &opts(Some((2500, u64::MAX)))).unwrap();
        assert_eq!(a.labels + b.labels, n, "{a:?} {b:?}");
        let kept = (0..n).filter(|l| l % 7 == 0).count() as u64;
        assert_eq!(a.labels_rewritten + b.labels_rewritten, n - kept);
        assert!(a.files_written > 1 && b.files_written > 1, "{a:?} {b:?}");
        assert_eq!(read_all(name), expect);
        assert_eq!(boxes(name), boxes_before);
        assert_eq!(contiguous_labels(name), (n as usize, n as usize));

        // A rerun of some (label, block)s by w2, consolidated: those labels are fragmented
        // again (superseded entries in an older run), the rest kept with their boxes read
        // from the optimized run.
        let mut ls = Vec::new();
        let mut ps = Vec::new();
        for l in (0..n).filter(|l| l % 11 == 1) {
            let p = vec![[7, 7, l as i32]];
            expect.get_mut(&l).unwrap().retain(|q| q.0 != "b1");
            add(&mut expect, l, 1, &p);
            ls.push(l);
            ps.extend(p);
        }
        write(name, "w2", &[rows(&ls, "b1", &ps)]);
        consolidate(&store, &JsonCodec).unwrap();
        assert_eq!(read_all(name), expect);
        let boxes_before = boxes(name);
        let c = optimize(&store, &JsonCodec, &opts(None)).unwrap();
        assert_eq!(c.labels_rewritten, ls.len() as u64, "{c:?}");
        assert_eq!(read_all(name), expect);
        assert_eq!(boxes(name), boxes_before);
        assert_eq!(contiguous_labels(name), (n as usize, n as usize));
    }

    #[test]
    fn label_ranges_optimize_separately_and_compose() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut expect = Points::new();
        for (w, blk) in [("w1", 0u32), ("w2", 1)] {
            let mut ls = Vec::new();
            let mut ps = Vec::new();
            for l in 1..=6u64 {
                let p = pts(l, blk, 4, 0);
                add(&mut expect, l, blk, &p);
                ls.extend(std::iter::repeat_n(l, p.len()));
                ps.extend(p);
            }
            write(name, w, &[rows(&ls, &format!("b{blk}"), &ps)]);
        }
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let (ok, n) = contiguous_labels(name);
        assert_eq!((ok, n), (0, 6));
        let range = |lo, hi| OptimizeOptions {
            labels: Some((lo, hi)),
            ..small()
        };
        let a = optimize(&store, &JsonCodec, &range(1, 3)).unwrap();
        assert_eq!((a.generation, a.labels, a.labels_rewritten), (2, 3, 3));
        assert_eq!(read_all(name), expect);
        assert_eq!(contiguous_labels(name), (3, 6));
        // A consolidate in between adds a run; the next range still composes.
        let p = pts(9, 5, 2, 0);
        add(&mut expect, 9, 5, &p);
        write(name, "w3", &[rows(&[9, 9], "b5", &p)]);
        consolidate(&store, &JsonCodec).unwrap();
        let b = optimize(&store, &JsonCodec, &range(4, 6)).unwrap();
        assert_eq!((b.generation, b.labels_rewritten), (4, 3));
        assert_eq!(read_all(name), expect);
        assert_eq!(contiguous_labels(name), (7, 7));
    }

    #[test]
    fn a_file_clipped_into_two_ranges_counts_once_in_stats() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        for (w, blk) in [("w1", 0u32), ("w2", 1)] {
            let ls: Vec<u64> = (1..=6).collect();
            let ps: Vec<[i32; 3]> = (1..=6).map(|l| pts(l, blk, 1, 0)[0]).collect();
            write(name, w, &[rows(&ls, &format!("b{blk}"), &ps)]);
        }
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let opts = OptimizeOptions {
            labels: Some((3, 4)),
            ..small()
        };
        optimize(&store, &JsonCodec, &opts).unwrap();
        let g = crate::log::latest(&store).unwrap().unwrap();
        let m = crate::log::load(&store, &g, &JsonCodec).unwrap().manifest;
        let mut files: Vec<&str> = m.segments.iter().map(|r| r.file.as_str()).collect();
        assert_eq!(
            files.len(),
            3,
            "the first file clipped around 3..=4, plus the new run"
        );
        files.sort_unstable();
        files.dedup();
        let on_disk: u64 = files
            .iter()
            .map(|f| std::fs::metadata(dir.path().join(f)).unwrap().len())
            .sum();
        let s = crate::stats::stats(&store, &JsonCodec).unwrap();
        assert_eq!(s.index_bytes, g.meta.size + on_disk);
    }

    #[test]
    fn losing_the_publish_race_to_a_consolidate_rebases() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(name, "w1", &[rows(&[1; 3], "b0", &pts(1, 0, 3, 0))]);
        write(name, "w2", &[rows(&[1; 3], "b1", &pts(1, 1, 3, 0))]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let base = newest_manifest(&store);
        // A consolidate publishes generation 2 (a new run) after optimize read generation 1.
        write(name, "w3", &[rows(&[1; 2], "b2", &pts(1, 2, 2, 0))]);
        consolidate(&store, &JsonCodec).unwrap();
        let refs = vec![];
        let g = publish_rebased(&store, &JsonCodec, &base, 1, 1, refs).unwrap();
        assert_eq!(g, 3);
        let m = newest_manifest(&store);
        // Label 1 of the first run was clipped away; the consolidate's run is kept.
        assert_eq!(m.segments.len(), 1);
        // A merge that rewrote the replaced segments is a conflict.
        let mut merged = m.clone();
        merged.generation = 4;
        merged.segments.clear();
        crate::log::publish(&store, &merged).unwrap();
        let e = publish_rebased(&store, &JsonCodec, &m, 0, 5, vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("published generation"), "{e}");
    }

    /// The newest generation's manifest.
    fn newest_manifest(store: &Store) -> crate::log::Manifest {
        let g = crate::log::latest(store).unwrap().unwrap();
        crate::log::load(store, &g, &JsonCodec).unwrap().manifest
    }

    #[test]
    fn a_part_that_cannot_be_read_fails_the_run_naming_it_and_leaves_the_store_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        // Every label written by two workers (fragmented); w1 writes labels 0..60 in one
        // commit and 60..120 in a second, whose part is then damaged: the run fails after
        // it has copied the lower labels into new parts.
        let (lo, hi): (Vec<u64>, Vec<u64>) = ((0..60).collect(), (60..120).collect());
        let p = |ls: &[u64]| -> Vec<[i32; 3]> { ls.iter().map(|&l| [l as i32, 1, 2]).collect() };
        write(name, "w1", &[rows(&lo, "b0", &p(&lo))]);
        let before_second = files(dir.path());
        write(name, "w1", &[rows(&hi, "b0", &p(&hi))]);
        let all: Vec<u64> = (0..120).collect();
        write(name, "w2", &[rows(&all, "b1", &p(&all))]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let expect = read_all(name);
        let second = files(dir.path())
            .into_iter()
            .find(|f| f.starts_with("workers/w1/parts/") && !before_second.contains(f))
            .unwrap();
        let path = dir.path().join(&second);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let before = files(dir.path());
        let g = |s: &Store| crate::log::latest(s).unwrap().map(|f| f.generation);
        let g0 = g(&store);
        let e = optimize(&store, &JsonCodec, &small())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&second), "{e}");
        assert_eq!(g(&store), g0);
        assert_eq!(
            files(dir.path()),
            before,
            "the failed run left files behind"
        );
        // The same store undamaged optimizes.
        let dir2 = tempfile::tempdir().unwrap();
        let name2 = dir2.path().to_str().unwrap();
        write(name2, "w1", &[rows(&lo, "b0", &p(&lo))]);
        write(name2, "w1", &[rows(&hi, "b0", &p(&hi))]);
        write(name2, "w2", &[rows(&all, "b1", &p(&all))]);
        let store2 = Store::open(name2, OpenMode::Existing).unwrap();
        consolidate(&store2, &JsonCodec).unwrap();
        let s = optimize(&store2, &JsonCodec, &small()).unwrap();
        assert_eq!(s.labels_rewritten, 120);
        assert_eq!(read_all(name2), expect);
    }

    #[test]
    fn an_index_that_cannot_be_read_midway_fails_the_run_and_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        // 10,000 entries: the run's one segment file has two row groups; the second is
        // damaged, so the scan fails after it has handed the copy its first chunks.
        let all: Vec<u64> = (0..5000).collect();
        let p: Vec<[i32; 3]> = all.iter().map(|&l| [l as i32, 1, 2]).collect();
        write(name, "w1", &[rows(&all, "b0", &p)]);
        write(name, "w2", &[rows(&all, "b1", &p)]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let g = |s: &Store| crate::log::latest(s).unwrap().map(|f| f.generation);
        let m = newest_manifest(&store);
        assert_eq!(m.segments.len(), 1, "{:?}", m.segments);
        let r = &m.segments[0];
        let d = crate::segment::Directory::decode(r.dir.as_deref().unwrap(), r.bytes).unwrap();
        assert!(d.starts.len() >= 3, "{d:?}");
        let path = dir.path().join(&r.file);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = d.starts[1] as usize;
        bytes[at..at + 64].fill(7);
        std::fs::write(&path, bytes).unwrap();
        let before = files(dir.path());
        let g0 = g(&store);
        let opts = OptimizeOptions {
            chunk_entries: 100,
            ..small()
        };
        let e = optimize(&store, &JsonCodec, &opts).unwrap_err().to_string();
        assert!(e.contains(&r.file), "{e}");
        assert_eq!(g(&store), g0);
        assert_eq!(
            files(dir.path()),
            before,
            "the failed run left files behind"
        );
    }

    #[test]
    fn unconsolidated_store_and_bad_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(name, "w1", &[rows(&[1], "b0", &[[0, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let e = optimize(&store, &JsonCodec, &OptimizeOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has no unified index to optimize: run pocaduck_consolidate("),
            "{e}"
        );
        let bad = OptimizeOptions {
            target_file_size: 10,
            ..Default::default()
        };
        let e = optimize(&store, &JsonCodec, &bad).unwrap_err().to_string();
        assert_eq!(
            e,
            "argument 'target_file_size' must be at least 1KB, got 10 bytes"
        );
    }
}
