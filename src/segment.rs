//! Index segments: immutable, label-sorted Parquet files of index entries, and the reads over a
//! generation's segments (one label, many labels, or every label in order).
//!
//! A segment file has the columns `label UBIGINT, block, worker VARCHAR, commit_seq UBIGINT,
//! part VARCHAR, row_start UBIGINT, row_count UBIGINT, min_x … max_z DOUBLE`, sorted by
//! (label, block, worker, part, row_start), in row groups of [`ROW_GROUP_ENTRIES`] entries and
//! pages of [`PAGE_ENTRIES`], and the key-value metadata `pocaduck.format` ([`SEGMENT_FORMAT`]),
//! `pocaduck.fences` (the first label of every row group, then the last label of the file),
//! `pocaduck.page_entries` and `pocaduck.page_fences` (the same per page). A lookup on a local
//! store reads the footer once per process (it is cached), picks the pages whose fences enclose
//! the label, and fetches their row groups (one ranged GET per row group: its column chunks are
//! contiguous), decompressing only the chosen pages. Files without page fences (older writers)
//! are read with the row group as the unit. On an object store a lookup skips the footer: the
//! manifest carries each file's row-group [`Directory`], and the row group is decoded through
//! metadata built for it ([`direct_metadata`]).
//!
//! **Supersession** is applied when entries are read: of the entries of one (label, block,
//! worker), only those of the highest commit count. Commits of a worker are numbered in order,
//! so this gives the same answer whichever segments hold the entries, and a merge may drop
//! superseded entries of the segments it merges.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::SchemaRef;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::footer;
use crate::index::{block_array, block_ids, SegmentEntry, UnifiedEntry, BBOX};
use crate::log::{Manifest, SegmentRef};
use crate::schema::ColumnType;
use crate::storage::{block_on, Store};
use crate::tombstone::{Filter, Tombstones};

/// Format version of segment files written by this release.
pub const SEGMENT_FORMAT: u32 = 2;

/// Entries per row group: the unit a lookup fetches and decodes.
pub const ROW_GROUP_ENTRIES: usize = 8192;

/// Entries per data page: the unit a lookup decompresses. `pocaduck.page_fences` holds the first
/// label of every page, so a lookup selects the pages that may hold a label and the Parquet
/// reader skips the others without decompressing them.
pub const PAGE_ENTRIES: usize = 1024;

/// A run's file is closed at the first label boundary after this many entries, so that a
/// footer stays small (128 row groups, ~115 KB, parsed by a cold lookup) and a lookup touches
/// one file of a run.
pub const FILE_ENTRIES: u64 = 1 << 20;

/// The columns a lookup without a box filter reads: `label` … `row_count`.
const LOOKUP_COLUMNS: usize = 7;

/// Version of [`Directory::encode`]'s layout; it also stands for the segment layout the
/// directory describes (LZ4 throughout, flat non-null columns in the segment schema's order).
const DIRECTORY_VERSION: u64 = 1;

/// A segment file's row-group directory, carried in the manifest ([`SegmentRef::dir`]), so
/// that a reader on an object store fetches a label's row group and decodes it without the
/// file's footer: the footer GET is what separates a cold lookup from a warm one (see
/// ARCHITECTURE.md, *Unified index*).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    /// The first label of every row group, then the file's last label.
    pub fences: Vec<u64>,
    /// The byte offset of every row group, then the end of the last.
    pub starts: Vec<u64>,
    /// The bytes of every row group's lookup columns (its first seven column chunks).
    pub lookup: Vec<u64>,
    /// The entries of every row group.
    pub rows: Vec<u64>,
}

impl Directory {
    /// The directory of a file written with `fences` (the first label of each row group) and
    /// `last` label, from its row groups' metadata; `None` when its column chunks do not lie
    /// end to end in schema order (a layout the directory cannot describe).
    fn of_row_groups(
        fences: &[u64],
        last: u64,
        rgs: &[parquet::file::metadata::RowGroupMetaData],
    ) -> Option<Directory> {
        if fences.len() != rgs.len() || rgs.is_empty() {
            return None;
        }
        let mut d = Directory {
            fences: fences.iter().copied().chain([last]).collect(),
            starts: Vec::new(),
            lookup: Vec::new(),
            rows: Vec::new(),
        };
        let mut end = None;
        for rg in rgs {
            let cols = rg.columns();
            let start = cols.first()?.byte_range().0;
            if end.is_some_and(|e| e != start) || cols.len() <= LOOKUP_COLUMNS {
                return None;
            }
            let mut at = start;
            for c in cols {
                let (a, n) = c.byte_range();
                if a != at {
                    return None;
                }
                at = a + n;
            }
            d.starts.push(start);
            d.lookup.push(cols[LOOKUP_COLUMNS].byte_range().0 - start);
            d.rows.push(u64::try_from(rg.num_rows()).ok()?);
            end = Some(at);
        }
        d.starts.push(end?);
        Some(d)
    }

    /// The directory as text for the manifest: base64 of LEB128 numbers (the version, the row
    /// group count, then per row group its first label, start and lookup bytes as deltas and
    /// its entries, then the last label and the end as deltas): ~14 characters per 8,192 entries.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let mut b = Vec::new();
        let mut put = |mut v: u64| loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                b.push(byte);
                break;
            }
            b.push(byte | 0x80);
        };
        put(DIRECTORY_VERSION);
        put(self.rows.len() as u64);
        let (mut label, mut pos) = (0u64, 0u64);
        for g in 0..=self.rows.len() {
            put(self.fences[g].wrapping_sub(label));
            put(self.starts[g].wrapping_sub(pos));
            (label, pos) = (self.fences[g], self.starts[g]);
            if g < self.rows.len() {
                put(self.lookup[g]);
                put(self.rows[g]);
            }
        }
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
    }

    /// Parses [`Directory::encode`]'s text, checking it against a file of `bytes` bytes.
    pub fn decode(text: &str, bytes: u64) -> std::result::Result<Directory, String> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .map_err(|e| format!("row-group directory: {e}"))?;
        let mut pos = 0usize;
        let mut get = || -> std::result::Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = *b.get(pos).ok_or("row-group directory: truncated")?;
                pos += 1;
                v |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("row-group directory: a number longer than 64 bits".into())
        };
        let version = get()?;
        if version != DIRECTORY_VERSION {
            return Err(format!(
                "row-group directory version {version} (this pocaduck reads {DIRECTORY_VERSION})"
            ));
        }
        let n = get()?;
        // Every row group takes at least four bytes: a corrupt count cannot allocate much.
        if n == 0 || n > text.len() as u64 {
            return Err(format!("row-group directory: {n} row groups"));
        }
        let n = n as usize;
        let mut d = Directory {
            fences: Vec::with_capacity(n + 1),
            starts: Vec::with_capacity(n + 1),
            lookup: Vec::with_capacity(n),
            rows: Vec::with_capacity(n),
        };
        let (mut label, mut at) = (0u64, 0u64);
        for g in 0..=n {
            label = label.wrapping_add(get()?);
            at = at
                .checked_add(get()?)
                .ok_or("row-group directory: offset overflow")?;
            d.fences.push(label);
            d.starts.push(at);
            if g < n {
                d.lookup.push(get()?);
                d.rows.push(get()?);
            }
        }
        let bad = (0..n).any(|g| {
            d.fences[g] > d.fences[g + 1]
                || d.starts[g] >= d.starts[g + 1]
                || d.lookup[g] == 0
                || d.lookup[g] > d.starts[g + 1] - d.starts[g]
                || d.rows[g] == 0
                || d.rows[g] > footer::MAX_PAGE_VALUES as u64
        });
        if bad || d.starts[n] > bytes {
            return Err("row-group directory: ranges out of order or outside the file".into());
        }
        Ok(d)
    }
}

/// Runs merge when a tier holds this many.
pub const FANOUT: usize = 8;

/// The size tier of a run of `entries` entries: runs of one tier are within a factor
/// [`FANOUT`] of each other, so merging [`FANOUT`] of them rewrites each entry O(log N) times.
pub fn tier_of(entries: u64) -> u32 {
    let mut t = 0;
    let mut n = entries.max(1) / ROW_GROUP_ENTRIES as u64;
    while n > 0 {
        n /= FANOUT as u64;
        t += 1;
    }
    t
}

fn arrow_schema(block: ColumnType) -> SchemaRef {
    crate::index::entry_schema(block, true)
}

fn props(block: ColumnType) -> WriterProperties {
    // Every column is LZ4: decoding it costs no codec context (zstd's would be created per
    // column chunk read, which dominated a lookup). Integers delta-encoded, boxes
    // BYTE_STREAM_SPLIT: see `index::entry_encodings`.
    let b = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(ROW_GROUP_ENTRIES))
        .set_data_page_row_count_limit(PAGE_ENTRIES)
        .set_write_batch_size(PAGE_ENTRIES)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_column_statistics_enabled(ColumnPath::from("label"), EnabledStatistics::Chunk);
    crate::index::entry_encodings(b, block, true).build()
}

/// The label column (the first) of an index segment batch.
fn label_values(b: &RecordBatch) -> Result<arrow::buffer::ScalarBuffer<u64>> {
    Ok(b.column(0)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| Error::Internal("segment batch: label is not UBIGINT".into()))?
        .values()
        .clone())
}

fn entries_batch(
    chunk: &[UnifiedEntry],
    workers: &[String],
    schema: &SchemaRef,
    block: ColumnType,
) -> Result<RecordBatch> {
    let u = |f: &dyn Fn(&UnifiedEntry) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(chunk.iter().map(f)))
    };
    let mut cols: Vec<ArrayRef> = vec![
        u(&|e| e.entry.label),
        block_array(block, chunk.iter().map(|e| e.entry.block.clone())),
        Arc::new(StringArray::from_iter_values(
            chunk.iter().map(|e| workers[e.worker as usize].as_str()),
        )),
        u(&|e| e.commit),
        Arc::new(StringArray::from_iter_values(
            chunk.iter().map(|e| e.entry.part.as_str()),
        )),
        u(&|e| e.entry.row_start),
        u(&|e| e.entry.row_count),
    ];
    for i in 0..6 {
        cols.push(Arc::new(Float64Array::from_iter_values(
            chunk.iter().map(|e| e.entry.bbox[i]),
        )));
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// Writes one run of segment files from entries given in label order: label by label
/// ([`RunWriter::push_label`]) or as batches of whole labels in the segment schema
/// ([`RunWriter::push_batch`]).
pub struct RunWriter<'a> {
    store: &'a Store,
    block: ColumnType,
    schema: SchemaRef,
    workers: Vec<String>,
    run: u64,
    session: String,
    optimized: bool,
    /// Entries pushed label by label, not yet turned into a batch.
    staged: Vec<UnifiedEntry>,
    /// Batches of whole labels not yet written (less than a row group once a push returns).
    pending: std::collections::VecDeque<RecordBatch>,
    pending_rows: usize,
    file: Option<OpenFile>,
    done: Vec<SegmentRef>,
    total: u64,
    /// A file closes at the first label boundary after this many entries ([`FILE_ENTRIES`]).
    file_entries: u64,
}

struct OpenFile {
    writer: SerializedFileWriter<Vec<u8>>,
    columns: ArrowRowGroupWriterFactory,
    fences: Vec<u64>,
    page_fences: Vec<u64>,
    entries: u64,
    lo: u64,
    last: u64,
}

/// Writes columns `first ..` of `batches` (one row group, in order) with `writers`, in calls
/// cut on page boundaries ([`crate::part_sink::page_calls`]): every page of integer columns
/// holds exactly PAGE_ENTRIES entries, as the page fences assume (a lookup decodes the rows it
/// locates either way).
fn encode_columns(
    writers: &mut [ArrowColumnWriter],
    first: usize,
    fields: &arrow::datatypes::Fields,
    batches: &[RecordBatch],
) -> Result<()> {
    for (k, w) in writers.iter_mut().enumerate() {
        let (i, mut at) = (first + k, 0);
        for b in batches {
            for (s, n) in crate::part_sink::page_calls(at, b.num_rows(), PAGE_ENTRIES) {
                for leaf in
                    compute_leaves(&fields[i], &b.column(i).slice(s, n)).map_err(encode_err)?
                {
                    w.write(&leaf).map_err(encode_err)?;
                }
            }
            at += b.num_rows();
        }
    }
    Ok(())
}

fn encode_err(e: parquet::errors::ParquetError) -> Error {
    Error::Internal(format!("segment encode: {e}"))
}

impl<'a> RunWriter<'a> {
    /// A writer of run `run`; `workers` names the worker indexes of the entries.
    pub fn new(store: &'a Store, m: &Manifest, run: u64, optimized: bool) -> RunWriter<'a> {
        RunWriter {
            store,
            block: m.schema.block_type(),
            schema: arrow_schema(m.schema.block_type()),
            workers: m.workers.iter().map(|w| w.worker.clone()).collect(),
            run,
            session: crate::writer::new_session_id(),
            optimized,
            staged: Vec::new(),
            pending: Default::default(),
            pending_rows: 0,
            file: None,
            done: Vec::new(),
            total: 0,
            file_entries: FILE_ENTRIES,
        }
    }

    /// Closes files after `n` entries instead of [`FILE_ENTRIES`] (tests).
    #[cfg(test)]
    pub(crate) fn with_file_entries(mut self, n: u64) -> Self {
        self.file_entries = n;
        self
    }

    /// The Arrow schema of the batches [`RunWriter::push_batch`] takes (the segment schema).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Appends the entries of one label (all of them: a label never spans two files of a run).
    pub fn push_label(&mut self, entries: Vec<UnifiedEntry>) -> Result<()> {
        self.staged.extend(entries);
        if self.staged.len() >= ROW_GROUP_ENTRIES {
            self.push_staged()?;
        }
        Ok(())
    }

    fn push_staged(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.staged);
        let b = entries_batch(&staged, &self.workers, &self.schema, self.block)?;
        self.push_batch(b)
    }

    /// Appends a batch of entries in the segment schema ([`RunWriter::schema`]; worker and part
    /// may also be dictionaries of their names, written the same way): whole labels,
    /// sorted, all after the labels pushed before. A file closes at the first label boundary
    /// after [`FILE_ENTRIES`] entries.
    pub fn push_batch(&mut self, b: RecordBatch) -> Result<()> {
        if b.num_columns() != self.schema.fields().len() {
            return Err(Error::Internal(format!(
                "segment writer: a batch of {} columns, the segment schema has {}",
                b.num_columns(),
                self.schema.fields().len()
            )));
        }
        self.push_staged()?;
        let labels = label_values(&b)?;
        let n = b.num_rows();
        let mut start = 0;
        while start < n {
            let have = self.file.as_ref().map_or(0, |f| f.entries) + self.pending_rows as u64;
            let need = self.file_entries.saturating_sub(have) as usize;
            // The first label boundary at or after `need` more entries closes the file.
            let mut j = start + need;
            while j < n && j > start && labels[j] == labels[j - 1] {
                j += 1;
            }
            if j >= n {
                self.append(b.slice(start, n - start));
                break;
            }
            if j > start {
                self.append(b.slice(start, j - start));
            }
            self.flush_pending(true)?;
            self.close_file()?;
            start = j;
        }
        self.flush_pending(false)
    }

    fn append(&mut self, b: RecordBatch) {
        self.pending_rows += b.num_rows();
        self.pending.push_back(b);
    }

    /// The first `n` pending entries, as the slices they are pending in (written one after
    /// the other into one row group: no copy into one batch).
    fn take_pending(&mut self, n: usize) -> Vec<RecordBatch> {
        let mut parts = Vec::new();
        let mut got = 0;
        while got < n {
            let Some(b) = self.pending.pop_front() else {
                break;
            };
            let k = b.num_rows().min(n - got);
            if k < b.num_rows() {
                self.pending.push_front(b.slice(k, b.num_rows() - k));
            }
            parts.push(b.slice(0, k));
            got += k;
        }
        self.pending_rows -= got;
        parts
    }

    fn flush_pending(&mut self, all: bool) -> Result<()> {
        while self.pending_rows >= ROW_GROUP_ENTRIES || (all && self.pending_rows > 0) {
            let n = self.pending_rows.min(ROW_GROUP_ENTRIES);
            let batches = self.take_pending(n);
            let mut labels = Vec::with_capacity(batches.len());
            for b in &batches {
                labels.push(label_values(b)?);
            }
            let (Some(first), Some(last)) = (
                labels.first().and_then(|l| l.first()),
                labels.last().and_then(|l| l.last()),
            ) else {
                return Err(Error::Internal("segment: an empty row group".into()));
            };
            let (first, last) = (*first, *last);
            if self.file.is_none() {
                let (writer, columns) =
                    ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(props(self.block)))
                        .and_then(|w| w.into_serialized_writer())
                        .map_err(encode_err)?;
                self.file = Some(OpenFile {
                    writer,
                    columns,
                    fences: Vec::new(),
                    page_fences: Vec::new(),
                    entries: 0,
                    lo: first,
                    last: 0,
                });
            }
            let f = self
                .file
                .as_mut()
                .ok_or_else(|| Error::Internal("no file".into()))?;
            f.fences.push(first);
            f.page_fences.extend(
                labels
                    .iter()
                    .flat_map(|l| l.iter())
                    .step_by(PAGE_ENTRIES)
                    .copied(),
            );
            f.last = last;
            f.entries += n as u64;
            let mut writers = f
                .columns
                .create_column_writers(f.writer.flushed_row_groups().len())
                .map_err(encode_err)?;
            // The columns are encoded in two halves at once: the box columns (about half
            // the work) on a thread of their own.
            let half = writers.len() - BBOX.len();
            let (ours, theirs) = writers.split_at_mut(half);
            let fields = self.schema.fields();
            std::thread::scope(|sc| {
                let t = std::thread::Builder::new()
                    .spawn_scoped(sc, || encode_columns(theirs, half, fields, &batches))
                    .map_err(|e| {
                        Error::Internal(format!("cannot start a segment encoder thread: {e}"))
                    });
                let mine = encode_columns(ours, 0, fields, &batches);
                let theirs = t.and_then(|t| {
                    t.join().unwrap_or_else(|p| {
                        Err(Error::Internal(format!(
                            "segment encode: a column encoder panicked: {}",
                            crate::error::panic_text(&*p)
                        )))
                    })
                });
                mine.and(theirs)
            })?;
            let mut rg = f.writer.next_row_group().map_err(encode_err)?;
            for w in writers {
                w.close()
                    .and_then(|c| c.append_to_row_group(&mut rg))
                    .map_err(encode_err)?;
            }
            rg.close().map_err(encode_err)?;
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<()> {
        let Some(mut f) = self.file.take() else {
            return Ok(());
        };
        let list = |v: &[u64]| {
            v.iter()
                .chain([&f.last])
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let kv = [
            ("pocaduck.format", SEGMENT_FORMAT.to_string()),
            ("pocaduck.fences", list(&f.fences)),
            ("pocaduck.page_entries", PAGE_ENTRIES.to_string()),
            ("pocaduck.page_fences", list(&f.page_fences)),
        ];
        for (k, v) in kv {
            f.writer
                .append_key_value_metadata(KeyValue::new(k.into(), v));
        }
        let dir = Directory::of_row_groups(&f.fences, f.last, f.writer.flushed_row_groups())
            .map(|d| d.encode());
        let bytes = f.writer.into_inner().map_err(encode_err)?;
        let path = crate::layout::segment_file(self.run, &self.session, self.done.len() as u32);
        let size = bytes.len() as u64;
        if !crate::log::create(self.store, &path, bytes.into())? {
            return Err(Error::Internal(format!("segment {path} exists already")));
        }
        self.total += f.entries;
        self.done.push(SegmentRef {
            file: path.to_string(),
            bytes: size,
            entries: f.entries,
            lo: f.lo,
            hi: f.last,
            run: self.run,
            tier: 0,
            optimized: self.optimized,
            dir,
        });
        Ok(())
    }

    /// Writes what is left and returns the run's files (none if no entry was pushed).
    pub fn finish(&mut self) -> Result<Vec<SegmentRef>> {
        self.push_staged()?;
        self.flush_pending(true)?;
        self.close_file()?;
        let tier = tier_of(self.total);
        for r in &mut self.done {
            r.tier = tier;
        }
        Ok(self.done())
    }

    /// The files completed so far.
    pub fn done(&self) -> Vec<SegmentRef> {
        self.done.clone()
    }

    /// Files written so far (to delete them when the run is abandoned).
    pub fn written(&self) -> Vec<Path> {
        self.done
            .iter()
            .map(|r| Path::from(r.file.as_str()))
            .collect()
    }
}

/// Keeps, for every (block, worker), only the entries of its highest commit, and sorts the
/// result into index order (block, worker, part, row_start). All entries are of one label.
pub fn supersede(entries: &mut Vec<UnifiedEntry>) {
    if entries.len() <= 1 {
        return;
    }
    entries.sort_by(|a, b| {
        (&a.entry.block, a.worker, &a.entry.part, a.entry.row_start).cmp(&(
            &b.entry.block,
            b.worker,
            &b.entry.part,
            b.entry.row_start,
        ))
    });
    // Entries of one (block, worker) are adjacent now: keep those of the group's top commit.
    let mut keep = vec![true; entries.len()];
    let mut g = 0;
    while g < entries.len() {
        let mut end = g + 1;
        while end < entries.len()
            && entries[end].entry.block == entries[g].entry.block
            && entries[end].worker == entries[g].worker
        {
            end += 1;
        }
        let top = entries[g..end].iter().map(|e| e.commit).max().unwrap_or(0);
        for (k, e) in entries[g..end].iter().enumerate() {
            keep[g + k] = e.commit == top;
        }
        g = end;
    }
    let mut i = 0;
    entries.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

/// A segment file's footer, parsed once per process.
pub(crate) struct Footer {
    pub(crate) meta: ArrowReaderMetadata,
    fences: Vec<u64>,
    /// First row of every row group, then the row count.
    pub(crate) rg_start: Vec<u64>,
    /// The stretches a lookup selects, as (first row, rows): the pages when the file has page
    /// fences (written since page fences exist), else the row groups.
    units: Vec<(u64, u64)>,
    /// The first label of every unit, then the file's last label.
    unit_fences: Vec<u64>,
}

/// Segment footers per (store, file).
type FooterCache = Mutex<crate::cache::FifoCache<(std::path::PathBuf, String), Arc<Footer>>>;

fn footer_cache() -> &'static FooterCache {
    static C: OnceLock<FooterCache> = OnceLock::new();
    C.get_or_init(|| Mutex::new(crate::cache::FifoCache::new(FOOTER_CACHE)))
}

/// Footers kept per process (~100 KB each); beyond this the oldest go.
const FOOTER_CACHE: usize = 512;

pub(crate) async fn footer(store: &Store, r: &SegmentRef, cached: bool) -> Result<Arc<Footer>> {
    let key = (store.cache_key(), r.file.clone());
    if !cached {
        if let Ok(mut c) = footer_cache().lock() {
            c.remove(&key);
        }
    }
    if let Some(f) = footer_cache().lock().ok().and_then(|c| c.get(&key)) {
        return Ok(f);
    }
    let err = |e: &dyn std::fmt::Display| {
        Error::file(&store.name, r.file.as_str(), format!("index segment: {e}"))
    };
    let (md, _) = crate::footer::load(
        store,
        &Path::from(r.file.as_str()),
        Some(r.bytes),
        256 << 10,
        false,
        "index segment: ",
    )
    .await?;
    let meta = crate::footer::arrow_metadata(md, ArrowReaderOptions::new()).map_err(|e| err(&e))?;
    let kv = meta.metadata().file_metadata().key_value_metadata();
    let get = |k: &str| {
        kv.and_then(|kv| kv.iter().find(|x| x.key == k))
            .and_then(|x| x.value.clone())
    };
    let format: u32 = get("pocaduck.format")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| err(&"not a pocaduck index segment (no pocaduck.format)"))?;
    if format > SEGMENT_FORMAT {
        return Err(err(&format!(
            "segment format {format} is newer than this pocaduck supports ({SEGMENT_FORMAT})"
        )));
    }
    let list = |k: &str| -> Result<Vec<u64>> {
        get(k)
            .unwrap_or_default()
            .split(',')
            .map(|x| x.parse::<u64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| err(&format!("bad {k}: {e}")))
    };
    let fences = list("pocaduck.fences")?;
    let rgs = meta.metadata().row_groups();
    if fences.len() != rgs.len() + 1 {
        return Err(err(&format!(
            "{} fences for {} row groups",
            fences.len(),
            rgs.len()
        )));
    }
    let mut rg_start = vec![0u64];
    for g in rgs {
        rg_start.push(rg_start[rg_start.len() - 1].saturating_add(g.num_rows().max(0) as u64));
    }
    let mut units: Vec<(u64, u64)> = rg_start.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    let mut unit_fences = fences.clone();
    if let Some(pe) = get("pocaduck.page_entries") {
        let pe: u64 = pe
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| err(&format!("bad pocaduck.page_entries '{pe}'")))?;
        let pf = list("pocaduck.page_fences")?;
        // Count before listing the pages: a corrupt footer may claim any number of rows.
        let count = units
            .iter()
            .try_fold(0u64, |acc, &(_, n)| acc.checked_add(n.div_ceil(pe)));
        if count != Some(pf.len() as u64 - 1) {
            return Err(err(&format!(
                "{} page fences for {count:?} pages",
                pf.len()
            )));
        }
        let pages: Vec<(u64, u64)> = units
            .iter()
            .flat_map(|&(s, n)| (0..n.div_ceil(pe)).map(move |k| (s + k * pe, pe.min(n - k * pe))))
            .collect();
        (units, unit_fences) = (pages, pf);
    }
    let f = Arc::new(Footer {
        meta,
        fences,
        rg_start,
        units,
        unit_fences,
    });
    if let Ok(mut c) = footer_cache().lock() {
        c.insert(key, f.clone());
    }
    Ok(f)
}

/// Empties the per-process footer cache (tests that rewrite files in place).
pub fn clear_caches() {
    if let Ok(mut c) = footer_cache().lock() {
        c.clear();
    }
}

/// Row groups of a file that may hold labels in `lo ..= hi`.
pub(crate) fn groups_for(f: &Footer, lo: u64, hi: u64) -> Vec<usize> {
    let n = f.fences.len() - 1;
    (0..n)
        .filter(|&g| f.fences[g] <= hi && f.fences[g + 1] >= lo)
        .collect()
}

/// Worker names → indexes of a manifest.
pub type WorkerIds = HashMap<String, u32>;

/// Worker ids of `m`.
pub fn worker_ids(m: &Manifest) -> WorkerIds {
    m.workers
        .iter()
        .enumerate()
        .map(|(i, w)| (w.worker.clone(), i as u32))
        .collect()
}

/// Decodes the entries with labels in `lo ..= hi` of a batch in the index-entry layout
/// (`entry_schema(_, true)`: index segments, and the `entries` table of a format-1 index).
/// `bad` makes the error for a malformed batch.
pub(crate) fn decode_entries(
    b: &RecordBatch,
    ids: &WorkerIds,
    (lo, hi): (u64, u64),
    bad: &dyn Fn(&str) -> Error,
    out: &mut Vec<UnifiedEntry>,
) -> Result<()> {
    if b.num_columns() != 13 && b.num_columns() != 7 {
        return Err(bad(&format!(
            "expected 13 columns (or the first 7, without the boxes), found {}",
            b.num_columns()
        )));
    }
    let u = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| bad("a UBIGINT column has another type"))
    };
    let s = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("a VARCHAR column has another type"))
    };
    let (label, commit, start, count) = (u(0)?, u(3)?, u(5)?, u(6)?);
    let (worker, part) = (s(2)?, s(4)?);
    // Without the box columns (a projected read), entries are unbounded.
    let bbox: Vec<&Float64Array> = (7..b.num_columns())
        .map(|i| {
            b.column(i)
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| bad("a bbox column is not DOUBLE"))
        })
        .collect::<Result<_>>()?;
    let first = label.values().partition_point(|&l| l < lo);
    let last = label.values().partition_point(|&l| l <= hi);
    if first >= last {
        return Ok(());
    }
    let blocks =
        block_ids(&b.column(1).slice(first, last - first)).map_err(|e| bad(&e.to_string()))?;
    for (k, block) in blocks.into_iter().enumerate() {
        let r = first + k;
        let w = *ids
            .get(worker.value(r))
            .ok_or_else(|| bad(&format!("entry of unknown worker '{}'", worker.value(r))))?;
        out.push(UnifiedEntry {
            worker: w,
            commit: commit.value(r),
            entry: SegmentEntry {
                label: label.value(r),
                block,
                part: part.value(r).to_string(),
                row_start: start.value(r),
                row_count: count.value(r),
                bbox: std::array::from_fn(|i| match bbox.get(i) {
                    Some(a) => a.value(r),
                    None if i < 3 => f64::NEG_INFINITY,
                    None => f64::INFINITY,
                }),
            },
        });
    }
    Ok(())
}

/// What [`read_groups`] reads of a segment: row groups, a selection of their rows, and whether
/// the bounding-box columns are wanted.
struct Read {
    groups: Vec<usize>,
    selection: Option<Vec<parquet::arrow::arrow_reader::RowSelector>>,
    with_bbox: bool,
    /// Entries the generation's tombstones hide in this segment (dropped).
    hide: Option<Arc<Filter>>,
}

impl Read {
    fn groups(groups: Vec<usize>, hide: Option<Arc<Filter>>) -> Read {
        Read {
            groups,
            selection: None,
            with_bbox: true,
            hide,
        }
    }
}

/// Streams rows of a segment (see [`Read`]), decoding the entries with labels in `lo ..= hi`;
/// `each` receives every decoded batch of entries (in file order).
async fn read_groups(
    store: &Store,
    r: &SegmentRef,
    (meta, reader): (&ArrowReaderMetadata, Box<dyn AsyncFileReader>),
    read: Read,
    ids: &WorkerIds,
    (lo, hi): (u64, u64),
    mut each: impl FnMut(Vec<UnifiedEntry>) -> Result<bool>,
) -> Result<()> {
    if read.groups.is_empty() {
        return Ok(());
    }
    let err = |e: &dyn std::fmt::Display| {
        Error::file(&store.name, r.file.as_str(), format!("index segment: {e}"))
    };
    let hide = read.hide;
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta.clone())
        .with_row_groups(read.groups)
        .with_batch_size(ROW_GROUP_ENTRIES);
    if let Some(sel) = read.selection {
        builder = builder.with_row_selection(sel.into());
    }
    if !read.with_bbox {
        let schema = meta.metadata().file_metadata().schema_descr();
        builder = builder.with_projection(parquet::arrow::ProjectionMask::roots(
            schema,
            0..LOOKUP_COLUMNS,
        ));
    }
    let mut stream = builder.build().map_err(|e| err(&e))?;
    loop {
        let next = AssertUnwindSafe(stream.next())
            .catch_unwind()
            .await
            .map_err(|_| err(&"corrupt file: the Parquet decoder failed"))?;
        let Some(b) = next else { break };
        let b = b.map_err(|e| err(&e))?;
        let mut out = Vec::new();
        let bad =
            |m: &str| Error::file(&store.name, &r.file, format!("corrupt index segment: {m}"));
        decode_entries(&b, ids, (lo, hi), &bad, &mut out)?;
        if let Some(h) = &hide {
            out.retain(|e| !h.hides(e.entry.label, &e.entry.block));
        }
        if !each(out)? {
            break;
        }
    }
    Ok(())
}

/// Parquet metadata for one row group of `rows` entries whose first `chunks.len()` column
/// chunks ([`footer::split_chunks`]) lie at `start` (the other columns are empty and must not
/// be read), in the layout [`Directory`] describes.
fn direct_metadata(
    schema: &SchemaRef,
    rows: u64,
    start: u64,
    chunks: &[(usize, usize)],
) -> std::result::Result<ArrowReaderMetadata, parquet::errors::ParquetError> {
    use parquet::file::metadata::{
        ColumnChunkMetaData, FileMetaData, ParquetMetaData, RowGroupMetaData,
    };
    let descr = Arc::new(parquet::arrow::ArrowSchemaConverter::new().convert(schema)?);
    let end = chunks.last().map_or(0, |&(o, n)| o + n) as u64;
    let cols = descr
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (at, len, values) = match chunks.get(i) {
                Some(&(o, n)) => (start + o as u64, n as u64, rows),
                None => (start + end, 0, 0),
            };
            ColumnChunkMetaData::builder(c.clone())
                .set_compression(Compression::LZ4_RAW)
                .set_data_page_offset(at as i64)
                .set_total_compressed_size(len as i64)
                .set_total_uncompressed_size(len as i64)
                .set_num_values(values as i64)
                .build()
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rg = RowGroupMetaData::builder(descr.clone())
        .set_num_rows(rows as i64)
        .set_total_byte_size(end as i64)
        .set_column_metadata(cols)
        .build()?;
    let md = ParquetMetaData::new(
        FileMetaData::new(1, rows as i64, None, None, descr, None),
        vec![rg],
    );
    ArrowReaderMetadata::try_new(
        Arc::new(md),
        ArrowReaderOptions::new().with_schema(schema.clone()),
    )
}

/// A row group's bytes fetched at `start` of its file, served as the file to the Parquet
/// reader (which asks only for the column chunks [`direct_metadata`] places there).
struct InMemory {
    start: u64,
    bytes: bytes::Bytes,
}

impl AsyncFileReader for InMemory {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        let (a, b) = (
            range.start.wrapping_sub(self.start),
            range.end.wrapping_sub(self.start),
        );
        let r = if range.start >= self.start && a <= b && b <= self.bytes.len() as u64 {
            Ok(self.bytes.slice(a as usize..b as usize))
        } else {
            Err(parquet::errors::ParquetError::General(format!(
                "bytes {}..{} lie outside the row group fetched",
                range.start, range.end
            )))
        };
        Box::pin(futures::future::ready(r))
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        parquet::errors::Result<Arc<parquet::file::metadata::ParquetMetaData>>,
    > {
        Box::pin(futures::future::ready(Err(
            parquet::errors::ParquetError::General("no footer: read through a directory".into()),
        )))
    }
}

/// Whether a label of `labels` (sorted) lies in `lo ..= hi`.
fn holds_any(labels: &[u64], lo: u64, hi: u64) -> bool {
    let i = labels.partition_point(|&x| x < lo);
    lo <= hi && i < labels.len() && labels[i] <= hi
}

/// A generation ready for index reads: its manifest, worker ids and (format 1) entries.
pub struct IndexView {
    /// The store.
    pub store: Store,
    /// The generation's manifest.
    pub manifest: Manifest,
    ids: WorkerIds,
    legacy: Option<Vec<UnifiedEntry>>,
    /// Whether segment footers may come from the process cache (`pocaduck_check` reads them
    /// afresh).
    cached: bool,
    /// What the generation's tombstones hide, per run.
    tombstones: Tombstones,
}

impl IndexView {
    /// Wraps a loaded generation.
    pub fn new(store: Store, g: crate::log::Generation) -> IndexView {
        let ids = worker_ids(&g.manifest);
        IndexView {
            store,
            tombstones: Tombstones::new(&g.manifest.tombstones),
            manifest: g.manifest,
            ids,
            legacy: g.legacy,
            cached: true,
        }
    }

    /// What hides entries of segments of run `run` (`None`: nothing).
    pub(crate) fn hidden(&self, run: u64) -> Option<Arc<Filter>> {
        self.tombstones.filter(run)
    }

    /// Reads every segment footer afresh (for verification), refreshing the process cache.
    pub fn uncached(mut self) -> IndexView {
        self.cached = false;
        self
    }

    /// Generation number.
    pub fn generation(&self) -> u64 {
        self.manifest.generation
    }

    /// Worker name of a worker index.
    pub fn worker_name(&self, w: u32) -> &str {
        self.manifest
            .workers
            .get(w as usize)
            .map(|w| w.worker.as_str())
            .unwrap_or("")
    }

    /// The entries of `label` (superseded ones dropped), in index order.
    pub fn entries(&self, label: u64) -> Result<Vec<UnifiedEntry>> {
        Ok(self
            .entries_of(&[label])?
            .into_iter()
            .next()
            .map(|x| x.1)
            .unwrap_or_default())
    }

    /// The entries of each of `labels` present in the index (sorted, deduplicated labels;
    /// labels without entries are left out), superseded entries dropped. Each row group of
    /// each segment is fetched at most once.
    pub fn entries_of(&self, labels: &[u64]) -> Result<Vec<(u64, Vec<UnifiedEntry>)>> {
        self.lookup(labels, true)
    }

    /// Like [`IndexView::entries_of`]; without `with_bbox` the entries' boxes are not read
    /// (they are left unbounded), which spares six columns of decoding.
    pub fn lookup(&self, labels: &[u64], with_bbox: bool) -> Result<Vec<(u64, Vec<UnifiedEntry>)>> {
        let mut labels = labels.to_vec();
        labels.sort_unstable();
        labels.dedup();
        let mut all: Vec<UnifiedEntry> = Vec::new();
        if let Some(l) = &self.legacy {
            for &x in &labels {
                let a = l.partition_point(|e| e.entry.label < x);
                let b = l.partition_point(|e| e.entry.label <= x);
                all.extend_from_slice(&l[a..b]);
            }
        }
        let jobs = self
            .manifest
            .segments
            .iter()
            .filter(|r| holds_any(&labels, r.lo, r.hi))
            .map(|r| self.lookup_segment(r, &labels, with_bbox));
        let found = block_on(
            futures::stream::iter(jobs)
                .buffer_unordered(16)
                .collect::<Vec<_>>(),
        );
        for f in found {
            all.extend(f?);
        }
        all.sort_by_key(|e| e.entry.label);
        let mut out: Vec<(u64, Vec<UnifiedEntry>)> = Vec::new();
        for e in all {
            match out.last_mut() {
                Some((l, v)) if *l == e.entry.label => v.push(e),
                _ => out.push((e.entry.label, vec![e])),
            }
        }
        for (_, v) in &mut out {
            supersede(v);
        }
        out.retain(|(_, v)| !v.is_empty());
        Ok(out)
    }

    async fn lookup_segment(
        &self,
        r: &SegmentRef,
        labels: &[u64],
        with_bbox: bool,
    ) -> Result<Vec<UnifiedEntry>> {
        if let Some(text) = r.dir.as_deref().filter(|_| !self.store.is_local()) {
            return self.lookup_direct(r, text, labels, with_bbox).await;
        }
        let f = footer(&self.store, r, self.cached).await?;
        // The units (pages, or row groups of older files) whose fences enclose a wanted label,
        // as row ranges of the file; adjacent units merge.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (u, &(start, n)) in f.units.iter().enumerate() {
            let (a, b) = (f.unit_fences[u].max(r.lo), f.unit_fences[u + 1].min(r.hi));
            if !holds_any(labels, a, b) {
                continue;
            }
            match ranges.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += n,
                _ => ranges.push((start, n)),
            }
        }
        let (groups, selection) = crate::reader::plan_selection(&f.rg_start, &ranges);
        let read = Read {
            groups,
            selection: Some(selection),
            with_bbox,
            hide: self.hidden(r.run),
        };
        let reader = self
            .store
            .parquet_reader(&Path::from(r.file.as_str()), Some(r.bytes));
        let mut out = Vec::new();
        self.read_wanted(r, (&f.meta, reader), read, labels, &mut out)
            .await?;
        Ok(out)
    }

    /// Reads `read` of segment `r` from `source` (its metadata and bytes), appending the entries
    /// of `labels` to `out`; only rows inside the wanted labels' span (and the segment's range)
    /// are decoded.
    async fn read_wanted(
        &self,
        r: &SegmentRef,
        source: (&ArrowReaderMetadata, Box<dyn AsyncFileReader>),
        read: Read,
        labels: &[u64],
        out: &mut Vec<UnifiedEntry>,
    ) -> Result<()> {
        let lo = r.lo.max(labels[0]);
        let hi = r.hi.min(labels[labels.len() - 1]);
        read_groups(&self.store, r, source, read, &self.ids, (lo, hi), |v| {
            out.extend(
                v.into_iter()
                    .filter(|e| labels.binary_search(&e.entry.label).is_ok()),
            );
            Ok(true)
        })
        .await
    }

    /// [`IndexView::lookup_segment`] through the file's row-group directory instead of its
    /// footer: one GET per row group whose fences enclose a wanted label (of its seven lookup
    /// columns, or of the whole row group for the boxes), decoded whole.
    async fn lookup_direct(
        &self,
        r: &SegmentRef,
        text: &str,
        labels: &[u64],
        with_bbox: bool,
    ) -> Result<Vec<UnifiedEntry>> {
        let err = |e: &dyn std::fmt::Display| {
            Error::file(
                &self.store.name,
                r.file.as_str(),
                format!("index segment: {e}"),
            )
        };
        let d = Directory::decode(text, r.bytes).map_err(|e| err(&e))?;
        let schema = self.schema();
        let path = Path::from(r.file.as_str());
        let mut out = Vec::new();
        for g in 0..d.rows.len() {
            if !holds_any(labels, d.fences[g].max(r.lo), d.fences[g + 1].min(r.hi)) {
                continue;
            }
            let start = d.starts[g];
            let (len, columns) = match with_bbox {
                true => (d.starts[g + 1] - start, schema.fields().len()),
                false => (d.lookup[g], LOOKUP_COLUMNS),
            };
            let bytes = self
                .store
                .parquet_reader(&path, Some(r.bytes))
                .get_bytes(start..start + len)
                .await
                .map_err(|e| err(&e))?;
            let chunks =
                footer::split_chunks(&bytes, d.rows[g] as i64, columns).map_err(|e| err(&e))?;
            if chunks
                .get(LOOKUP_COLUMNS)
                .is_some_and(|c| c.0 as u64 != d.lookup[g])
            {
                return Err(err(
                    &"row-group directory: the lookup columns end elsewhere",
                ));
            }
            let meta = direct_metadata(&schema, d.rows[g], start, &chunks).map_err(|e| err(&e))?;
            let reader = Box::new(InMemory { start, bytes });
            let read = Read {
                groups: vec![0],
                selection: None,
                with_bbox,
                hide: self.hidden(r.run),
            };
            self.read_wanted(r, (&meta, reader), read, labels, &mut out)
                .await?;
        }
        Ok(out)
    }

    /// The raw entries of `labels` (not superseded) read through every segment's row-group
    /// directory, whatever the store (fuzzing; lookups use the directory on object stores
    /// only).
    pub(crate) fn lookup_through_directories(
        &self,
        labels: &[u64],
        with_bbox: bool,
    ) -> Result<Vec<UnifiedEntry>> {
        let mut out = Vec::new();
        for r in &self.manifest.segments {
            if let Some(text) = r.dir.as_deref() {
                out.extend(block_on(self.lookup_direct(r, text, labels, with_bbox))?);
            }
        }
        Ok(out)
    }

    /// The Arrow schema of the generation's segments.
    fn schema(&self) -> SchemaRef {
        arrow_schema(self.manifest.schema.block_type())
    }

    /// Every label's entries (superseded ones dropped), in label order, streamed: memory holds
    /// one row group per segment file at a time.
    pub fn scan(&self) -> Scan<&IndexView> {
        Scan::new(self, 0, u64::MAX)
    }

    /// Like [`IndexView::scan`], for labels `lo ..= hi`.
    pub fn scan_range(&self, lo: u64, hi: u64) -> Scan<&IndexView> {
        Scan::new(self, lo, hi)
    }

    /// Like [`IndexView::scan`], owning a reference to the view.
    pub fn scan_shared(self: &Arc<Self>) -> Scan<Arc<IndexView>> {
        Scan::new(self.clone(), 0, u64::MAX)
    }
}

enum Source {
    /// Entries `.0 .. .1` of the legacy vector.
    Legacy(usize, usize),
    Segment {
        /// Index into the manifest's segments.
        seg: usize,
        lo: u64,
        hi: u64,
        /// Row groups still to read (filled on first use).
        groups: Option<std::collections::VecDeque<usize>>,
    },
}

struct Cursor {
    src: Source,
    buf: Vec<UnifiedEntry>,
    pos: usize,
}

impl Cursor {
    /// Makes sure the cursor has a head entry, reading on; `false` when exhausted.
    fn fill(&mut self, view: &IndexView) -> Result<bool> {
        while self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            match &mut self.src {
                Source::Legacy(a, b) => {
                    let l = view.legacy.as_deref().unwrap_or_default();
                    if *a >= *b {
                        return Ok(false);
                    }
                    let n = (*b - *a).min(ROW_GROUP_ENTRIES);
                    self.buf.extend_from_slice(&l[*a..*a + n]);
                    *a += n;
                }
                Source::Segment {
                    seg,
                    lo,
                    hi,
                    groups,
                } => {
                    let (r, lo, hi) = (&view.manifest.segments[*seg], *lo, *hi);
                    let f = block_on(footer(&view.store, r, view.cached || groups.is_some()))?;
                    if groups.is_none() {
                        *groups = Some(groups_for(&f, lo, hi).into());
                    }
                    let Some(g) = groups.as_mut().and_then(|g| g.pop_front()) else {
                        return Ok(false);
                    };
                    let buf = &mut self.buf;
                    let reader = view
                        .store
                        .parquet_reader(&Path::from(r.file.as_str()), Some(r.bytes));
                    block_on(read_groups(
                        &view.store,
                        r,
                        (&f.meta, reader),
                        Read::groups(vec![g], view.hidden(r.run)),
                        &view.ids,
                        (lo, hi),
                        |v| {
                            buf.extend(v);
                            Ok(true)
                        },
                    ))?;
                }
            }
        }
        Ok(true)
    }
}

/// Iterator of (label, entries) over a generation in label order; see [`IndexView::scan`].
pub struct Scan<V: std::ops::Deref<Target = IndexView>> {
    view: V,
    cursors: Vec<Cursor>,
}

impl<V: std::ops::Deref<Target = IndexView>> Scan<V> {
    fn new(view: V, lo: u64, hi: u64) -> Scan<V> {
        let mut cursors = Vec::new();
        if let Some(l) = &view.legacy {
            let a = l.partition_point(|e| e.entry.label < lo);
            let b = l.partition_point(|e| e.entry.label <= hi);
            cursors.push(Cursor {
                src: Source::Legacy(a, b),
                buf: Vec::new(),
                pos: 0,
            });
        }
        for (seg, r) in view.manifest.segments.iter().enumerate() {
            let (a, b) = (r.lo.max(lo), r.hi.min(hi));
            if a <= b {
                cursors.push(Cursor {
                    src: Source::Segment {
                        seg,
                        lo: a,
                        hi: b,
                        groups: None,
                    },
                    buf: Vec::new(),
                    pos: 0,
                });
            }
        }
        Scan { view, cursors }
    }

    fn next_label(&mut self) -> Result<Option<(u64, Vec<UnifiedEntry>)>> {
        let view: &IndexView = &self.view;
        let mut label: Option<u64> = None;
        for c in &mut self.cursors {
            if c.fill(view)? {
                let l = c.buf[c.pos].entry.label;
                label = Some(label.map_or(l, |x: u64| x.min(l)));
            }
        }
        let Some(label) = label else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for c in &mut self.cursors {
            while c.fill(view)? && c.buf[c.pos].entry.label == label {
                // Moved out (the slot is dead once pos passes it): no clone of the part path.
                let e = &mut c.buf[c.pos];
                out.push(UnifiedEntry {
                    worker: e.worker,
                    commit: e.commit,
                    entry: SegmentEntry {
                        part: std::mem::take(&mut e.entry.part),
                        block: e.entry.block.clone(),
                        ..e.entry
                    },
                });
                c.pos += 1;
            }
        }
        supersede(&mut out);
        Ok(Some((label, out)))
    }
}

impl<V: std::ops::Deref<Target = IndexView>> Iterator for Scan<V> {
    type Item = Result<(u64, Vec<UnifiedEntry>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_label() {
                Ok(Some((_, v))) if v.is_empty() => continue,
                Ok(Some(x)) => return Some(Ok(x)),
                Ok(None) => return None,
                Err(e) => {
                    self.cursors.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::BlockId;
    use crate::schema::StoreSchema;
    use crate::storage::OpenMode;

    fn entry(label: u64, k: u64) -> UnifiedEntry {
        UnifiedEntry {
            worker: 0,
            commit: 1,
            entry: SegmentEntry {
                label,
                block: BlockId::Int(k as i64),
                part: format!("workers/w/parts/p{}.parquet", label % 3),
                row_start: label * 10 + k,
                row_count: 1,
                bbox: [k as f64, 0.0, 0.0, k as f64, 1.0, 2.0],
            },
        }
    }

    /// A store in `dir` with one run of labels 0..`labels` (1 to 7 entries each) in files of
    /// about `file_entries` entries; returns the view and every entry in index order.
    fn written_run(
        dir: &std::path::Path,
        labels: u64,
        file_entries: u64,
    ) -> (IndexView, Vec<UnifiedEntry>) {
        let store = Store::open(dir.to_str().unwrap(), OpenMode::Create).unwrap();
        let schema = StoreSchema::from_json(
            br#"{"format": 1, "columns": [{"name": "block", "type": "BIGINT"},
                {"name": "x", "type": "INTEGER"}, {"name": "y", "type": "INTEGER"},
                {"name": "z", "type": "INTEGER"}]}"#,
        )
        .unwrap();
        let mut m = Manifest::empty(schema);
        m.workers.push(crate::index::WorkerState {
            worker: "w".into(),
            last_commit: 1,
        });
        // Labels of 1 to 7 entries; batches cut anywhere between labels.
        let all: Vec<UnifiedEntry> = (0..labels)
            .flat_map(|l| (0..1 + l % 7).map(move |k| entry(l, k)))
            .collect();
        let mut w = RunWriter::new(&store, &m, 1, true).with_file_entries(file_entries);
        let schema = w.schema().clone();
        let mut at = 0;
        // Batches of whole labels, of very different sizes; then labels one by one.
        let one_by_one = labels - 400;
        for n in [1u64, 400, 2000, one_by_one] {
            let end = all.partition_point(|e| e.entry.label < n);
            let b = entries_batch(&all[at..end], &["w".into()], &schema, ColumnType::Bigint);
            w.push_batch(b.unwrap()).unwrap();
            at = end;
        }
        for l in one_by_one..labels {
            let end = all.partition_point(|e| e.entry.label <= l);
            w.push_label(all[at..end].to_vec()).unwrap();
            at = end;
        }
        assert_eq!(at, all.len());
        let refs = w.finish().unwrap();
        assert!(refs.len() >= 2, "{refs:?}");
        for f in refs.windows(2) {
            assert!(
                f[0].hi < f[1].lo,
                "files overlap or split a label: {refs:?}"
            );
        }
        for f in &refs {
            // A file closes at the first label boundary after `file_entries` entries: at most
            // one label (of at most 7 entries) beyond.
            assert!(f.entries <= file_entries + 7, "{f:?}");
        }
        m.segments = refs;
        let view = IndexView::new(
            store.clone(),
            crate::log::Generation {
                manifest: m,
                legacy: None,
            },
        );
        (view, all)
    }

    #[test]
    fn batches_split_into_files_at_label_boundaries_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (view, all) = written_run(dir.path(), 3000, 5000);
        let got: Vec<UnifiedEntry> = view.scan().flat_map(|r| r.unwrap().1).collect();
        assert_eq!(got, all);
    }

    #[test]
    fn lookups_through_the_row_group_directory_match_lookups_through_the_footer() {
        let dir = tempfile::tempdir().unwrap();
        let (view, all) = written_run(dir.path(), 12_000, 20_000);
        let mut groups = 0;
        for r in &view.manifest.segments {
            let text = r.dir.as_deref().expect("every file has a directory");
            let d = Directory::decode(text, r.bytes).unwrap();
            assert_eq!(Directory::decode(&d.encode(), r.bytes).unwrap(), d);
            let f = block_on(footer(&view.store, r, true)).unwrap();
            assert_eq!(d.fences, f.fences, "{r:?}");
            assert_eq!(d.rows.iter().sum::<u64>(), r.entries);
            assert_eq!(*d.starts.last().unwrap(), {
                let rgs = f.meta.metadata().row_groups();
                let c = rgs[rgs.len() - 1].columns();
                let (a, n) = c[c.len() - 1].byte_range();
                a + n
            });
            groups += d.rows.len();
        }
        // Row groups of 8,192 entries: the directory must work across several per file.
        assert!(groups >= view.manifest.segments.len() * 2, "{groups}");
        // The batches were pushed in pieces of odd sizes, yet every page but a row group's
        // last holds exactly PAGE_ENTRIES entries (what the page fences assume).
        let mut pages = 0;
        for r in &view.manifest.segments {
            use parquet::file::reader::FileReader;
            let file = std::fs::File::open(dir.path().join(&r.file)).unwrap();
            let opts = parquet::file::serialized_reader::ReadOptionsBuilder::new()
                .with_page_index()
                .build();
            let rd = parquet::file::serialized_reader::SerializedFileReader::new_with_options(
                file, opts,
            )
            .unwrap();
            let meta = rd.metadata();
            let oi = meta.offset_index().expect("segments have an offset index");
            for (g, cols) in oi.iter().enumerate() {
                let rows = meta.row_group(g).num_rows();
                for c in cols {
                    let firsts: Vec<i64> = c
                        .page_locations()
                        .iter()
                        .map(|p| p.first_row_index)
                        .collect();
                    let want: Vec<i64> = (0..rows).step_by(PAGE_ENTRIES).collect();
                    assert_eq!(firsts, want, "{} row group {g}", r.file);
                    pages += firsts.len();
                }
            }
        }
        assert!(pages > groups * 4, "{pages}");
        let direct = |labels: &[u64], with_bbox: bool| -> Vec<UnifiedEntry> {
            view.lookup_through_directories(labels, with_bbox).unwrap()
        };
        let expect = |labels: &[u64]| -> Vec<UnifiedEntry> {
            all.iter()
                .filter(|e| labels.contains(&e.entry.label))
                .cloned()
                .collect()
        };
        // Labels alone, with boxes: every row group's first and last labels, and a sample.
        let mut alone: Vec<u64> = (0..12_000u64).step_by(97).collect();
        for r in &view.manifest.segments {
            let d = Directory::decode(r.dir.as_deref().unwrap(), r.bytes).unwrap();
            alone.extend(&d.fences);
            alone.extend(d.fences.iter().map(|&l| l.saturating_sub(1)));
        }
        for l in alone {
            assert_eq!(direct(&[l], true), expect(&[l]), "label {l}");
        }
        // Several labels at once, across files; without boxes they come back unbounded.
        let labels = [0u64, 7, 1234, 5000, 8191, 11_600, 11_999];
        let unbounded: Vec<UnifiedEntry> = expect(&labels)
            .into_iter()
            .map(|mut e| {
                e.entry.bbox = [f64::NEG_INFINITY; 3]
                    .into_iter()
                    .chain([f64::INFINITY; 3])
                    .collect::<Vec<_>>()
                    .try_into()
                    .unwrap();
                e
            })
            .collect();
        assert_eq!(direct(&labels, false), unbounded);
        assert!(direct(&[12_000, 50_000], true).is_empty());
    }

    #[test]
    fn a_wrong_row_group_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (view, _) = written_run(dir.path(), 12_000, 20_000);
        let r = &view.manifest.segments[0];
        let d = Directory::decode(r.dir.as_deref().unwrap(), r.bytes).unwrap();
        let label = d.fences[1];
        let mut wrong = Vec::new();
        // A start one byte off, a row count one off, lookup columns cut short, a file
        // shorter than the directory says, and text that is not a directory.
        let mut x = d.clone();
        x.starts[1] += 1;
        wrong.push(x.encode());
        let mut x = d.clone();
        x.rows[1] -= 1;
        wrong.push(x.encode());
        let mut x = d.clone();
        x.lookup[1] -= 10;
        wrong.push(x.encode());
        wrong.push("not a directory!".into());
        wrong.push(String::new());
        for text in &wrong {
            for bbox in [false, true] {
                let e = block_on(view.lookup_direct(r, text, &[label], bbox))
                    .expect_err(&format!("{text} accepted"));
                assert!(e.to_string().contains(&r.file), "{e}");
            }
        }
        let short = SegmentRef {
            bytes: d.starts[1],
            ..r.clone()
        };
        let e = Directory::decode(r.dir.as_deref().unwrap(), short.bytes).unwrap_err();
        assert!(e.contains("outside the file"), "{e}");
    }
}
