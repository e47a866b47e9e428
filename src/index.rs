//! Index data: where each (label, block)'s points are.
//!
//! Two levels:
//! - a **commit segment** per worker commit (`workers/<w>/commits/<seq>.parquet`): the entries of
//!   the parts that commit made complete. A segment is created with put-if-absent after all its
//!   parts are complete, so it never references a half-written part.
//! - the **unified index** ([`UnifiedIndex`]), built by consolidate from all segments, persisted by
//!   an [`IndexCodec`] (a DuckDB database file in the extension).
//!
//! An entry says: rows `row_start .. row_start + row_count` of `part` hold points of `label` in
//! `block`, with bounding box `bbox` (min x, y, z, max x, y, z).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

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
        for d in 0..3 {
            self.bbox[d] = self.bbox[d].min(next.bbox[d]);
            self.bbox[d + 3] = self.bbox[d + 3].max(next.bbox[d + 3]);
        }
        true
    }
}

const BBOX: [&str; 6] = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z"];

fn segment_schema(block: ColumnType) -> Arc<Schema> {
    let mut f = vec![
        Field::new("label", DataType::UInt64, false),
        Field::new("block", block.arrow(), false),
        Field::new("part", DataType::Utf8, false),
        Field::new("row_start", DataType::UInt64, false),
        Field::new("row_count", DataType::UInt64, false),
    ];
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
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            entries.iter().map(|e| e.label),
        )),
        block_array(block, entries.iter().map(|e| e.block.clone())),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.part.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            entries.iter().map(|e| e.row_start),
        )),
        Arc::new(UInt64Array::from_iter_values(
            entries.iter().map(|e| e.row_count),
        )),
    ];
    for i in 0..6 {
        cols.push(Arc::new(Float64Array::from_iter_values(
            entries.iter().map(|e| e.bbox[i]),
        )));
    }
    let batch = RecordBatch::try_new(segment_schema(block), cols)?;
    let mut buf = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(
            meta.iter()
                .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.to_string(), v.clone()))
                .collect(),
        ))
        .build();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))
        .map_err(|e| Error::Internal(format!("segment encode: {e}")))?;
    w.write(&batch)
        .map_err(|e| Error::Internal(format!("segment encode: {e}")))?;
    w.close()
        .map_err(|e| Error::Internal(format!("segment encode: {e}")))?;
    Ok(Bytes::from(buf))
}

/// Decodes a commit segment. `file` is used in error messages.
pub fn decode_segment(bytes: Bytes, store: &str, file: &str) -> Result<Vec<SegmentEntry>> {
    // The Parquet decoder can panic on corrupt input: report it as this file's error.
    std::panic::catch_unwind(|| decode_segment_inner(bytes, store, file)).unwrap_or_else(|_| {
        Err(Error::file(
            store,
            file,
            "corrupt commit segment: the Parquet decoder failed",
        ))
    })
}

fn decode_segment_inner(bytes: Bytes, store: &str, file: &str) -> Result<Vec<SegmentEntry>> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::file(store, file, format!("corrupt commit segment: {e}"))
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| bad(&e))?
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
    Ok(out)
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
    pub e: SegmentEntry,
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
            (a.e.label, &a.e.block, a.worker, &a.e.part, a.e.row_start).cmp(&(
                b.e.label,
                &b.e.block,
                b.worker,
                &b.e.part,
                b.e.row_start,
            ))
        });
    }

    /// Number of distinct part files referenced.
    pub fn part_count(&self) -> usize {
        let mut parts: Vec<&str> = self.entries.iter().map(|e| e.e.part.as_str()).collect();
        parts.sort_unstable();
        parts.dedup();
        parts.len()
    }

    /// Per-label (label, points, blocks), in label order.
    pub fn label_stats(&self) -> Vec<(u64, u64, u64)> {
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        let mut last_block: Option<&BlockId> = None;
        for u in &self.entries {
            match out.last_mut() {
                Some(l) if l.0 == u.e.label => {
                    l.1 += u.e.row_count;
                    if last_block != Some(&u.e.block) {
                        l.2 += 1;
                    }
                }
                _ => out.push((u.e.label, u.e.row_count, 1)),
            }
            last_block = Some(&u.e.block);
        }
        out
    }

    /// Index of a worker, adding it if new.
    pub fn worker_index(&mut self, worker: &str) -> u32 {
        if let Some(i) = self.workers.iter().position(|w| w.worker == worker) {
            return i as u32;
        }
        self.workers.push(WorkerState {
            worker: worker.to_string(),
            last_commit: 0,
        });
        (self.workers.len() - 1) as u32
    }

    /// Merges a worker's new commits (in ascending sequence). A (label, block) written by a later
    /// commit of the same worker replaces what earlier commits of that worker wrote for it.
    pub fn merge_commits(&mut self, worker: &str, commits: Vec<(u64, Vec<SegmentEntry>)>) {
        let w = self.worker_index(worker);
        let mut latest: HashMap<(u64, BlockId), u64> = HashMap::new();
        for (seq, entries) in &commits {
            for e in entries {
                latest.insert((e.label, e.block.clone()), *seq);
            }
        }
        self.entries
            .retain(|u| u.worker != w || !latest.contains_key(&(u.e.label, u.e.block.clone())));
        let mut last = self.workers[w as usize].last_commit;
        for (seq, entries) in commits {
            last = last.max(seq);
            for e in entries {
                if latest.get(&(e.label, e.block.clone())) == Some(&seq) {
                    self.entries.push(UnifiedEntry {
                        worker: w,
                        commit: seq,
                        e,
                    });
                }
            }
        }
        self.workers[w as usize].last_commit = last;
        self.sort();
    }
}

/// Persists a unified index as a file on the local file system.
///
/// The extension stores it as a DuckDB database; the core only needs the round trip.
pub trait IndexCodec: Send + Sync {
    /// Writes `index` to a new file at `path`.
    fn write(&self, index: &UnifiedIndex, path: &std::path::Path) -> Result<()>;
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

    fn empty() -> UnifiedIndex {
        UnifiedIndex {
            generation: 0,
            schema: crate::schema::schema_for_input(&[const { DataType::Int64 }; 5], &[]).unwrap(),
            workers: vec![],
            entries: vec![],
        }
    }

    #[test]
    fn later_commit_replaces_same_label_block_of_same_worker_only() {
        let mut u = empty();
        u.merge_commits(
            "w1",
            vec![(1, vec![e(7, 1, "a", 0, 10), e(7, 2, "a", 10, 3)])],
        );
        u.merge_commits("w2", vec![(1, vec![e(7, 1, "b", 0, 4)])]);
        // w1 reruns block 1 of label 7: replaces its own (7, 1), keeps (7, 2) and w2's (7, 1).
        u.merge_commits("w1", vec![(2, vec![e(7, 1, "c", 0, 9)])]);
        let got: Vec<(&str, u64)> = u
            .entries
            .iter()
            .map(|x| (x.e.part.as_str(), x.e.row_count))
            .collect();
        // Sorted by (label, block, worker): w1 (index 0) before w2 within block 1.
        assert_eq!(got, vec![("c", 9), ("b", 4), ("a", 3)]);
        assert_eq!(u.label_stats(), vec![(7, 16, 2)]);
        assert_eq!(u.workers[0].last_commit, 2);
    }

    #[test]
    fn entries_of_one_commit_accumulate() {
        let mut u = empty();
        u.merge_commits(
            "w1",
            vec![
                (1, vec![e(7, 1, "a", 0, 10), e(7, 1, "a", 20, 5)]),
                (2, vec![e(8, 1, "b", 0, 1)]),
            ],
        );
        assert_eq!(u.label_stats(), vec![(7, 15, 1), (8, 1, 1)]);
        assert_eq!(u.part_count(), 2);
    }
}
