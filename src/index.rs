//! Index data: where each (label, block)'s points are.
//!
//! Two levels:
//! - a **commit segment** per worker commit (`workers/<w>/commits/<seq>.parquet`): the entries of
//!   the parts that commit made complete. A segment is created with put-if-absent after all its
//!   parts are complete, so it never references a half-written part.
//! - the **unified index**: built by consolidate from the commit segments, as index segments named
//!   by a generation manifest (modules [`crate::segment`], [`crate::log`]). [`UnifiedEntry`] is
//!   its entry; [`UnifiedIndex`] is the whole-index form of format 1 (read through an
//!   [`IndexCodec`] when a store of the previous release is read or upgraded).
//!
//! An entry says: rows `row_start .. row_start + row_count` of `part` hold points of `label` in
//! `block`, with bounding box `bbox` (min x, y, z, max x, y, z).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};

use crate::error::{Error, Result};
use crate::schema::{ColumnType, StoreSchema};

/// A block id: the store fixes whether blocks are integers or strings.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum BlockId {
    /// An integer block id (BIGINT).
    Int(i64),
    /// A string block id (VARCHAR).
    Str(String),
}

impl std::fmt::Display for BlockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockId::Int(i) => write!(f, "{i}"),
            BlockId::Str(s) => f.write_str(s),
        }
    }
}

/// Reads block ids out of a block column (`Int64` or `Utf8`).
pub fn block_ids(col: &ArrayRef) -> Result<Vec<BlockId>> {
    if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
        Ok(a.values().iter().map(|v| BlockId::Int(*v)).collect())
    } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        Ok(a.iter()
            .map(|v| BlockId::Str(v.unwrap_or_default().to_string()))
            .collect())
    } else {
        Err(Error::Internal(format!(
            "unexpected block column type {}",
            col.data_type()
        )))
    }
}

/// Builds a block column of the store's block type.
pub fn block_array(ty: ColumnType, blocks: impl Iterator<Item = BlockId>) -> ArrayRef {
    match ty {
        ColumnType::Varchar => {
            Arc::new(StringArray::from_iter_values(blocks.map(|b| b.to_string())))
        }
        _ => Arc::new(Int64Array::from_iter_values(blocks.map(|b| match b {
            BlockId::Int(i) => i,
            BlockId::Str(_) => 0,
        }))),
    }
}

/// The box of no points (min +inf, max -inf): the start of a running min/max.
pub const EMPTY_BBOX: [f64; 6] = [
    f64::INFINITY,
    f64::INFINITY,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NEG_INFINITY,
    f64::NEG_INFINITY,
];

/// One entry of a commit segment.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentEntry {
    /// The label.
    pub label: u64,
    /// The block.
    pub block: BlockId,
    /// Part file path relative to the store root.
    pub part: String,
    /// First row in the part.
    pub row_start: u64,
    /// Number of rows.
    pub row_count: u64,
    /// min x, y, z, max x, y, z of the points.
    pub bbox: [f64; 6],
}

impl SegmentEntry {
    /// Extends `self` by `next` if `next` is the same (label, block) in the same part and starts
    /// where `self` ends (the bounding boxes are merged). Returns whether it did.
    pub fn absorb(&mut self, next: &SegmentEntry) -> bool {
        if self.label != next.label
            || self.block != next.block
            || self.part != next.part
            || self.row_start + self.row_count != next.row_start
        {
            return false;
        }
        self.row_count += next.row_count;
        widen_bbox(&mut self.bbox, &next.bbox);
        true
    }
}

/// Widens box `b` (min x, y, z, max x, y, z) to hold box `other`.
pub fn widen_bbox(b: &mut [f64; 6], other: &[f64; 6]) {
    for d in 0..3 {
        b[d] = b[d].min(other[d]);
        b[d + 3] = b[d + 3].max(other[d + 3]);
    }
}

/// Names of the bounding-box columns of commit and index segments.
pub(crate) const BBOX: [&str; 6] = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z"];

/// Schema of entries as stored: `label, block, [worker, commit_seq,] part, row_start,
/// row_count, min_x … max_z` (with `provenance`: index segments; without: commit segments).
pub(crate) fn entry_schema(block: ColumnType, provenance: bool) -> Arc<Schema> {
    let mut f = vec![
        Field::new("label", DataType::UInt64, false),
        Field::new("block", block.arrow(), false),
    ];
    if provenance {
        f.push(Field::new("worker", DataType::Utf8, false));
        f.push(Field::new("commit_seq", DataType::UInt64, false));
    }
    f.extend([
        Field::new("part", DataType::Utf8, false),
        Field::new("row_start", DataType::UInt64, false),
        Field::new("row_count", DataType::UInt64, false),
    ]);
    f.extend(
        BBOX.iter()
            .map(|n| Field::new(*n, DataType::Float64, false)),
    );
    Arc::new(Schema::new(f))
}

/// Encodes a commit segment as a Parquet file.
pub fn encode_segment(
    entries: &[SegmentEntry],
    block: ColumnType,
    meta: &[(&str, String)],
) -> Result<Bytes> {
    encode_entries(
        entries,
        |e| (e.label, e.row_start, e.row_count, e.bbox),
        block_array(block, entries.iter().map(|e| e.block.clone())),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.part.as_str()),
        )),
        block,
        meta,
    )
}

/// Encodes a commit segment of `entries` given as their block and part columns and, for each,
/// `nums(entry)` = (label, row_start, row_count, box): the one place that lays out the columns
/// of [`entry_schema`] (without provenance), for [`encode_segment`] and ingest's pieces, whose
/// entries hold their block and part by number.
pub(crate) fn encode_entries<E>(
    entries: &[E],
    nums: impl Fn(&E) -> (u64, u64, u64, [f64; 6]),
    block_col: ArrayRef,
    part_col: ArrayRef,
    block: ColumnType,
    meta: &[(&str, String)],
) -> Result<Bytes> {
    // Generic, not a closure taking `&dyn Fn`: an indirect call per value was measurable.
    fn u64s<E>(entries: &[E], f: impl Fn(&E) -> u64) -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(entries.iter().map(f)))
    }
    let mut cols: Vec<ArrayRef> = vec![
        u64s(entries, |e| nums(e).0),
        block_col,
        part_col,
        u64s(entries, |e| nums(e).1),
        u64s(entries, |e| nums(e).2),
    ];
    for i in 0..6 {
        cols.push(Arc::new(Float64Array::from_iter_values(
            entries.iter().map(|e| nums(e).3[i]),
        )));
    }
    let batch = RecordBatch::try_new(entry_schema(block, false), cols)?;
    write_segment([Ok(batch)], block, meta)
}

/// Writes the commit segment whose entries are those of `pieces` (each encoded by
/// [`encode_segment`]) in order, splicing the pieces' row groups in as they are (their column
/// chunks' bytes copied, not decoded and encoded again): only the segment being written and the
/// piece being read (pieces are taken from the iterator one at a time) are in memory, and a
/// commit costs a copy of its encoded entries (about 20 bytes an entry). Until 2026-12-01 the
/// pieces were decoded and encoded again, 0.2 s for 1 M entries on the thread that commits.
pub fn concat_segments<W: std::io::Write + Send>(
    out: W,
    pieces: impl IntoIterator<Item = Result<Bytes>>,
    block: ColumnType,
    meta: &[(&str, String)],
) -> Result<W> {
    use parquet::column::writer::ColumnCloseResult;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let enc = encode_error;
    let dec =
        |e: parquet::errors::ParquetError| Error::Internal(format!("segment piece decode: {e}"));
    let props = segment_props(block, meta);
    let (mut w, _) = ArrowWriter::try_new(out, entry_schema(block, false), Some(props))
        .and_then(ArrowWriter::into_serialized_writer)
        .map_err(enc)?;
    for piece in pieces {
        let piece = piece?;
        let reader = SerializedFileReader::new(piece.clone()).map_err(dec)?;
        for rg in reader.metadata().row_groups() {
            let mut rgw = w.next_row_group().map_err(enc)?;
            for c in rg.columns() {
                let close = ColumnCloseResult {
                    bytes_written: c.compressed_size() as u64,
                    rows_written: rg.num_rows() as u64,
                    metadata: c.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: None,
                };
                rgw.append_column(&piece, close).map_err(enc)?;
            }
            rgw.close().map_err(enc)?;
        }
    }
    w.into_inner().map_err(enc)
}

fn write_segment(
    batches: impl IntoIterator<Item = Result<RecordBatch>>,
    block: ColumnType,
    meta: &[(&str, String)],
) -> Result<Bytes> {
    write_segment_to(Vec::new(), batches, block, meta).map(Bytes::from)
}

/// The encodings of entry columns, for commit segments (and their pieces) and, with
/// `provenance` (the `commit_seq` column), index segments: integers DELTA_BINARY_PACKED without a
/// dictionary (labels are sorted, so their deltas are mostly 0, 12x smaller than a dictionary,
/// and interning was most of the encoding), the box columns BYTE_STREAM_SPLIT (the bytes of each
/// position together: they compress 30% better with LZ4 than plain), dictionaries only for the
/// worker, part (and VARCHAR block) strings. Until 2026-12-01 commit segments used parquet-rs'
/// defaults (a dictionary for every column, no compression): interning each of an entry's
/// eleven values made the commit of a 1 M-entry session take 0.2 s, twice (pieces, then the
/// segment), and the segments were about as large. Readers take any encoding, so segments of
/// both kinds are read alike.
pub(crate) fn entry_encodings(
    mut b: WriterPropertiesBuilder,
    block: ColumnType,
    provenance: bool,
) -> WriterPropertiesBuilder {
    use parquet::basic::Encoding;
    use parquet::schema::types::ColumnPath;
    let mut ints = vec!["label", "row_start", "row_count"];
    if provenance {
        ints.push("commit_seq");
    }
    if block != ColumnType::Varchar {
        ints.push("block");
    }
    for c in ints {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
    }
    for c in BBOX {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_encoding(ColumnPath::from(c), Encoding::BYTE_STREAM_SPLIT);
    }
    b
}

/// Writer settings of commit segments and their pieces: [`entry_encodings`], LZ4, statistics of
/// the label only (readers skip row groups by it; the other columns' minimum and maximum, a
/// comparison per value to compute, serve no reader), and `meta` as key-value metadata.
fn segment_props(block: ColumnType, meta: &[(&str, String)]) -> WriterProperties {
    use parquet::file::properties::EnabledStatistics;
    let b = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::LZ4_RAW)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_column_statistics_enabled("label".into(), EnabledStatistics::Page)
        .set_key_value_metadata(Some(
            meta.iter()
                .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.to_string(), v.clone()))
                .collect(),
        ));
    entry_encodings(b, block, false).build()
}

/// A commit segment encoding error.
fn encode_error(e: parquet::errors::ParquetError) -> Error {
    Error::Internal(format!("segment encode: {e}"))
}

/// Writes a commit segment of `batches` into `out`, returned once the file is complete.
fn write_segment_to<W: std::io::Write + Send>(
    mut out: W,
    batches: impl IntoIterator<Item = Result<RecordBatch>>,
    block: ColumnType,
    meta: &[(&str, String)],
) -> Result<W> {
    let props = segment_props(block, meta);
    let enc = encode_error;
    let mut w =
        ArrowWriter::try_new(&mut out, entry_schema(block, false), Some(props)).map_err(enc)?;
    for b in batches {
        w.write(&b?).map_err(enc)?;
    }
    w.close().map_err(enc)?;
    Ok(out)
}

/// Commit-segment metadata key: the commit replaces every block it writes (`"true"`).
pub const META_REPLACE_BLOCKS: &str = "pocaduck.replace_blocks";
/// Commit-segment metadata key: the writer's clock when it committed (Unix milliseconds).
pub const META_COMMITTED_MS: &str = "pocaduck.committed_ms";
/// Commit-segment metadata key: what the commit hides ([`crate::tombstone::Hides`] as JSON).
pub const META_HIDES: &str = "pocaduck.hides";

/// A decoded commit segment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Commit {
    /// Its entries.
    pub entries: Vec<SegmentEntry>,
    /// What it hides in earlier commits and generations: every block it writes when it was
    /// written with `REPLACE_BLOCKS`, or what `pocaduck_delete` named.
    pub hides: Option<crate::tombstone::Hides>,
    /// The writer's clock when it committed (0: not recorded).
    pub committed_ms: u64,
}

/// Decodes a commit segment's entries. `file` is used in error messages.
pub fn decode_segment(bytes: Bytes, store: &str, file: &str) -> Result<Vec<SegmentEntry>> {
    Ok(decode_commit(bytes, store, file)?.entries)
}

/// Decodes a commit segment with what it hides. `file` is used in error messages.
pub fn decode_commit(bytes: Bytes, store: &str, file: &str) -> Result<Commit> {
    // The Parquet decoder can panic on corrupt input: report it as this file's error.
    std::panic::catch_unwind(|| decode_segment_inner(bytes, store, file)).unwrap_or_else(|_| {
        Err(Error::file(
            store,
            file,
            "corrupt commit segment: the Parquet decoder failed",
        ))
    })
}

fn decode_segment_inner(bytes: Bytes, store: &str, file: &str) -> Result<Commit> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::file(store, file, format!("corrupt commit segment: {e}"))
    };
    let size = bytes.len() as u64;
    let md = match crate::footer::decode(&bytes, size, false).map_err(|e| bad(&e))? {
        crate::footer::Footer::Meta(m) => m,
        crate::footer::Footer::Need(n) => {
            return Err(bad(&format!("needs {n} bytes of a {size}-byte file")))
        }
    };
    crate::footer::check_file_pages(&bytes, &md).map_err(|e| bad(&e))?;
    let meta = crate::footer::arrow_metadata(*md, Default::default()).map_err(|e| bad(&e))?;
    let kv = |key: &str| -> Option<String> {
        meta.metadata()
            .file_metadata()
            .key_value_metadata()?
            .iter()
            .find(|k| k.key == key)?
            .value
            .clone()
    };
    let replace = kv(META_REPLACE_BLOCKS).is_some_and(|v| v == "true");
    let mut hides = match kv(META_HIDES) {
        Some(v) => Some(
            crate::tombstone::Hides::from_json(&v)
                .map_err(|e| bad(&format!("{META_HIDES}: {e}")))?,
        ),
        None => None,
    };
    let committed_ms = kv(META_COMMITTED_MS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, meta)
        .build()
        .map_err(|e| bad(&e))?;
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.map_err(|e| bad(&e))?;
        if b.num_columns() != 11 {
            return Err(bad(&format!(
                "expected 11 columns, found {}",
                b.num_columns()
            )));
        }
        let u = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .ok_or_else(|| bad(&format!("column {i} is not UBIGINT")))
        };
        let (label, start, count) = (u(0)?, u(3)?, u(4)?);
        let blocks = block_ids(b.column(1)).map_err(|e| bad(&e))?;
        let part = b
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad(&"part column is not VARCHAR"))?;
        let mut bb = Vec::with_capacity(6);
        for i in 5..11 {
            bb.push(
                b.column(i)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| bad(&"bbox column is not DOUBLE"))?,
            );
        }
        for (r, block) in blocks.into_iter().enumerate() {
            out.push(SegmentEntry {
                label: label.value(r),
                block,
                part: part.value(r).to_string(),
                row_start: start.value(r),
                row_count: count.value(r),
                bbox: std::array::from_fn(|i| bb[i].value(r)),
            });
        }
    }
    if replace && hides.is_none() {
        let mut blocks: Vec<crate::tombstone::Block> =
            out.iter().map(|e| (&e.block).into()).collect();
        blocks.sort();
        blocks.dedup();
        hides = Some(crate::tombstone::Hides {
            labels: None,
            blocks: Some(blocks),
        });
    }
    Ok(Commit {
        entries: out,
        hides,
        committed_ms,
    })
}

/// A worker's state in the unified index.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerState {
    /// Worker id.
    pub worker: String,
    /// Highest commit sequence merged.
    pub last_commit: u64,
}

/// An entry of the unified index.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnifiedEntry {
    /// Index into [`UnifiedIndex::workers`].
    pub worker: u32,
    /// Commit sequence of the worker that wrote it.
    pub commit: u64,
    /// The segment entry.
    pub entry: SegmentEntry,
}

/// The unified index: every committed entry of every worker, sorted by label.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnifiedIndex {
    /// Generation number (1 for the first consolidate).
    pub generation: u64,
    /// The store schema.
    pub schema: StoreSchema,
    /// Workers merged so far.
    pub workers: Vec<WorkerState>,
    /// Entries sorted by (label, block, worker, part, row_start).
    pub entries: Vec<UnifiedEntry>,
}

impl UnifiedIndex {
    /// Sorts entries into their canonical order.
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| {
            (
                a.entry.label,
                &a.entry.block,
                a.worker,
                &a.entry.part,
                a.entry.row_start,
            )
                .cmp(&(
                    b.entry.label,
                    &b.entry.block,
                    b.worker,
                    &b.entry.part,
                    b.entry.row_start,
                ))
        });
    }
}

/// Reads a format-1 unified index: one file holding every
/// entry. The extension's is a DuckDB database; format 2 replaced it by manifests and segments
/// (module [`crate::log`]).
pub trait IndexCodec: Send + Sync {
    /// Reads the index stored at `path`.
    fn read(&self, path: &std::path::Path) -> Result<UnifiedIndex>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(label: u64, block: i64, part: &str, start: u64, count: u64) -> SegmentEntry {
        SegmentEntry {
            label,
            block: BlockId::Int(block),
            part: part.into(),
            row_start: start,
            row_count: count,
            bbox: [0.0; 6],
        }
    }

    #[test]
    fn segment_round_trip() {
        let entries = vec![e(0, 1, "p/a", 0, 5), e(u64::MAX, -4, "p/b", 5, 2)];
        let bytes =
            encode_segment(&entries, ColumnType::Bigint, &[("session", "s".into())]).unwrap();
        assert_eq!(decode_segment(bytes, "st", "f").unwrap(), entries);
    }

    /// A commit segment spliced from pieces holds their entries in order, one row group per
    /// piece's row group, with the commit's metadata; a VARCHAR block store's too.
    #[test]
    fn concatenated_pieces_hold_every_entry_in_order_with_the_commits_metadata() {
        for block in [ColumnType::Bigint, ColumnType::Varchar] {
            let entry = |i: u64| {
                let mut x = e(i * 7 % 5, i as i64 - 3, &format!("p/{}", i % 3), i, i + 1);
                if block == ColumnType::Varchar {
                    x.block = BlockId::Str(format!("b{}", i % 4));
                }
                x.bbox = [i as f64, 1.5, -2.0, i as f64 + 1.0, 2.5, 3.0];
                x
            };
            let all: Vec<SegmentEntry> = (0..9).map(entry).collect();
            let pieces: Vec<Bytes> = [&all[..3], &all[3..3], &all[3..]]
                .iter()
                .map(|c| encode_segment(c, block, &[]).unwrap())
                .collect();
            let meta = [(META_COMMITTED_MS, "1234".to_string())];
            let out =
                concat_segments(Vec::new(), pieces.into_iter().map(Ok), block, &meta).unwrap();
            let c = decode_commit(Bytes::from(out.clone()), "st", "f").unwrap();
            assert_eq!(c.entries, all, "{block:?}");
            assert_eq!(c.committed_ms, 1234);
            let r = parquet::file::reader::SerializedFileReader::new(Bytes::from(out)).unwrap();
            use parquet::file::reader::FileReader;
            assert_eq!(r.metadata().num_row_groups(), 2);
        }
        // A piece that is not Parquet is an error, not a panic.
        let bad = concat_segments(
            Vec::new(),
            [Ok(Bytes::from_static(b"garbage!"))],
            ColumnType::Bigint,
            &[],
        );
        assert!(bad.is_err());
    }

    #[test]
    fn garbled_segment_names_file() {
        let err = decode_segment(
            Bytes::from_static(b"garbage!"),
            "st",
            "workers/w/commits/1.parquet",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "store 'st', file 'workers/w/commits/1.parquet': corrupt commit segment"
            ),
            "{err}"
        );
    }

    fn u(worker: u32, commit: u64, x: SegmentEntry) -> UnifiedEntry {
        UnifiedEntry {
            worker,
            commit,
            entry: x,
        }
    }

    #[test]
    fn later_commit_replaces_same_label_block_of_same_worker_only() {
        // Worker 0 wrote (7, 1) and (7, 2) in commit 1; worker 1 wrote (7, 1); worker 0 reruns
        // block 1 in commit 2: it replaces its own (7, 1) only.
        let mut v = vec![
            u(0, 2, e(7, 1, "c", 0, 9)),
            u(0, 1, e(7, 1, "a", 0, 10)),
            u(1, 1, e(7, 1, "b", 0, 4)),
            u(0, 1, e(7, 2, "a", 10, 3)),
        ];
        crate::segment::supersede(&mut v);
        let got: Vec<(&str, u64)> = v
            .iter()
            .map(|x| (x.entry.part.as_str(), x.entry.row_count))
            .collect();
        // Index order (block, worker): w0 before w1 within block 1.
        assert_eq!(got, vec![("c", 9), ("b", 4), ("a", 3)]);
    }

    #[test]
    fn entries_of_one_commit_accumulate() {
        let mut v = vec![u(0, 1, e(7, 1, "a", 20, 5)), u(0, 1, e(7, 1, "a", 0, 10))];
        crate::segment::supersede(&mut v);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].entry.row_start, 0);
    }
}
