//! The one writer of part files, for both writers of them: ingest sessions (`workers/<worker>/
//! parts/…`) and optimize (`optimized/…`), which differ only in the path scheme they give it.
//!
//! Owns the part-file encoding (see [`part_props`]: LZ4, pages of 8,192 rows, row groups of at
//! most 2^20 rows, page statistics of the label only; integers delta-encoded, dictionaries for strings only) and the part
//! life cycle: a part is opened on the first rows written to it, uploaded as it grows, and
//! published complete when closed (durability rule 1: a multipart upload, or a staging file
//! renamed into place, so a part is complete or absent). [`PartSink::discard`] abandons the open
//! part (no file appears) and deletes the completed ones. Callers decide when a part closes
//! ([`PartSink::size`] against their target size) and sync the completed parts before a commit
//! or generation references them.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use object_store::path::Path;
use parquet::arrow::async_writer::{AsyncArrowWriter, ParquetObjectWriter};
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::storage::{block_on, Store};

/// Rows per data page; small pages let readers fetch little more than a label's rows.
const PAGE_ROWS: usize = 8192;
/// String bytes per write call at most (see [`PartSink::write`]).
const PAGE_STRING_BYTES: usize = 64 << 20;
/// Rows per row group at most (a multiple of [`PAGE_ROWS`]).
const ROW_GROUP_ROWS: usize = 1 << 20;

/// Part file settings. Integer columns (the label, integer blocks, coordinates and attributes)
/// use DELTA_BINARY_PACKED without a dictionary: interning millions of distinct values is the
/// most expensive step of encoding, and labels and blocks are sorted within a flush, so their
/// deltas are tiny — and a reader of one page needs no dictionary page (which, for a part of
/// many small labels, is as large as the label column). Floats are PLAIN; strings (a VARCHAR
/// block, VARCHAR attributes) keep dictionaries. LZ4, not zstd: parquet-rs creates two zstd
/// contexts for every column chunk it reads, which made up half of a small label's read.
pub(crate) fn part_props(schema: &arrow::datatypes::Schema) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_write_batch_size(PAGE_ROWS)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // Statistics of the label only. Rows are in label order, so its minimum and maximum tell
        // a reader of the part files (DuckDB's `read_parquet`, say) which row groups and pages
        // hold a label; every other column's span a row group's whole range (a row group holds
        // many labels of many blocks) while costing a comparison per value to compute, and
        // pocaduck's readers locate pages by the offset index, which is written anyway.
        .set_statistics_enabled(EnabledStatistics::None)
        .set_column_statistics_enabled(
            ColumnPath::from(crate::schema::FIXED[crate::schema::col::LABEL]),
            EnabledStatistics::Page,
        );
    for f in schema.fields().iter() {
        let col = ColumnPath::from(f.name().as_str());
        if f.data_type().is_integer() {
            b = b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED);
        } else if f.data_type().is_floating() {
            b = b.set_column_dictionary_enabled(col, false);
        }
    }
    b.build()
}

/// Cuts `len` rows, written from row `at` of a column chunk whose pages hold `page` rows each,
/// into write calls `(start, rows)` that each start or end on a page boundary. parquet-rs
/// closes a page only after whole `write_batch_size` (= `page`) steps of a call, so a call that
/// starts mid-page would make a page of up to twice the size: cut like this, every page but a
/// chunk's last holds exactly `page` rows.
pub(crate) fn page_calls(
    at: usize,
    len: usize,
    page: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let (mut s, mut at) = (0, at);
    std::iter::from_fn(move || {
        if s >= len {
            return None;
        }
        let n = match at % page {
            0 => len - s,
            r => (page - r).min(len - s),
        };
        let call = (s, n);
        (s, at) = (s + n, at + n);
        Some(call)
    })
}

/// The path scheme of a sink: the path of its part number `n` (0, 1, …).
pub(crate) type PartPaths = Box<dyn Fn(u32) -> Path + Send>;

struct OpenPart {
    path: Path,
    writer: AsyncArrowWriter<ParquetObjectWriter>,
    /// Rows written so far.
    rows: u64,
}

/// Writes rows of one schema into a sequence of part files named by a path scheme.
pub(crate) struct PartSink {
    store: Store,
    schema: SchemaRef,
    paths: PartPaths,
    next: u32,
    part: Option<OpenPart>,
    done: Vec<Path>,
}

impl PartSink {
    /// A sink writing `schema` rows into `store`, its parts at `paths(0)`, `paths(1)`, ….
    pub(crate) fn new(store: Store, schema: SchemaRef, paths: PartPaths) -> PartSink {
        PartSink {
            store,
            schema,
            paths,
            next: 0,
            part: None,
            done: Vec::new(),
        }
    }

    fn open(&mut self) -> Result<&mut OpenPart> {
        if self.part.is_none() {
            let path = (self.paths)(self.next);
            self.next += 1;
            let obj = ParquetObjectWriter::new(self.store.objects.clone(), path.clone());
            let writer =
                AsyncArrowWriter::try_new(obj, self.schema.clone(), Some(part_props(&self.schema)))
                    .map_err(|e| Error::file(&self.store.name, path.as_ref(), e))?;
            self.part = Some(OpenPart {
                path,
                writer,
                rows: 0,
            });
        }
        self.part
            .as_mut()
            .ok_or_else(|| Error::Internal("no part".into()))
    }

    /// The schema of the rows.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The open part's name and its rows so far, opening a part if none is open.
    pub(crate) fn current(&mut self) -> Result<(&str, u64)> {
        let p = self.open()?;
        Ok((p.path.as_ref(), p.rows))
    }

    /// Writes `rows` to the open part (opening one if needed); returns the part's name and the
    /// number of the first row written.
    pub(crate) fn write(&mut self, rows: &RecordBatch) -> Result<(String, u64)> {
        let store_name = self.store.name.clone();
        let p = self.open()?;
        let (name, start) = (p.path.to_string(), p.rows);
        // parquet-rs closes a data page only between the values of one write call (in runs of
        // the write batch size): rows with large strings go in smaller calls, so that no page
        // passes what readers accept (`footer::MAX_PAGE_BYTES`).
        let pieces = if crate::bounded::string_bytes(rows) > PAGE_STRING_BYTES {
            let one = [rows];
            let pairs: Vec<(usize, usize)> = (0..rows.num_rows()).map(|r| (0, r)).collect();
            let mut v = Vec::new();
            let mut from = 0;
            while from < pairs.len() {
                let to = crate::bounded::cut(&one, &pairs, from, PAGE_ROWS, PAGE_STRING_BYTES);
                v.push(rows.slice(from, to - from));
                from = to;
            }
            v
        } else {
            vec![rows.clone()]
        };
        // Row groups hold a multiple of PAGE_ROWS rows, so pages start at multiples of it.
        let mut at = p.rows as usize;
        for piece in &pieces {
            for (s, n) in page_calls(at, piece.num_rows(), PAGE_ROWS) {
                block_on(p.writer.write(&piece.slice(s, n)))
                    .map_err(|e| Error::file(&store_name, &name, e))?;
            }
            at += piece.num_rows();
        }
        p.rows += rows.num_rows() as u64;
        Ok((name, start))
    }

    /// The open part's size: bytes uploaded plus bytes encoded but not yet uploaded (0 when no
    /// part is open).
    pub(crate) fn size(&self) -> u64 {
        self.part.as_ref().map_or(0, |p| {
            (p.writer.bytes_written() + p.writer.in_progress_size()) as u64
        })
    }

    /// Completes the open part, if any: it is published and joins [`PartSink::done`].
    pub(crate) fn close(&mut self) -> Result<()> {
        if let Some(p) = self.part.take() {
            block_on(p.writer.close())
                .map_err(|e| Error::file(&self.store.name, p.path.as_ref(), e))?;
            self.store.start_sync(&p.path);
            self.done.push(p.path);
        }
        Ok(())
    }

    /// How many parts this sink has opened (the next one is `paths(made())`).
    pub(crate) fn made(&self) -> u32 {
        self.next
    }

    /// The parts completed (and not yet taken).
    pub(crate) fn done(&self) -> &[Path] {
        &self.done
    }

    /// Takes the completed parts: the caller owns them from now on (a later
    /// [`PartSink::discard`] does not delete them).
    pub(crate) fn take_done(&mut self) -> Vec<Path> {
        std::mem::take(&mut self.done)
    }

    /// Abandons the open part (its upload never completes, so no file appears) and deletes the
    /// completed parts not taken.
    pub(crate) fn discard(&mut self) {
        drop(self.part.take());
        for p in self.done.drain(..) {
            let _ = self.store.delete(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::OpenMode;
    use arrow::array::UInt64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn writes_of_any_size_make_pages_of_page_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), OpenMode::Create).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("label", DataType::UInt64, false),
            Field::new("block", DataType::Utf8, false),
        ]));
        let mut sink = PartSink::new(
            store,
            schema.clone(),
            Box::new(|n| Path::from(format!("p{n}.parquet"))),
        );
        // Writes of 5,000 rows (and one of 1): none starts on a page boundary after the first.
        let mut total = 0u64;
        for k in 0..9u64 {
            let n = if k == 4 { 1 } else { 5000 };
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(UInt64Array::from_iter_values(total..total + n)),
                    Arc::new(arrow::array::StringArray::from_iter_values(
                        (total..total + n).map(|i| format!("b{}", i / 3000)),
                    )),
                ],
            )
            .unwrap();
            let (_, start) = sink.write(&b).unwrap();
            assert_eq!(start, total);
            total += n;
        }
        sink.close().unwrap();
        use parquet::file::reader::FileReader;
        let file = std::fs::File::open(dir.path().join("p0.parquet")).unwrap();
        let opts = parquet::file::serialized_reader::ReadOptionsBuilder::new()
            .with_page_index()
            .build();
        let rd =
            parquet::file::serialized_reader::SerializedFileReader::new_with_options(file, opts)
                .unwrap();
        let oi = rd.metadata().offset_index().unwrap();
        let want: Vec<i64> = (0..total as i64).step_by(PAGE_ROWS).collect();
        // Both columns, the string one (written without statistics) included.
        assert_eq!(oi[0].len(), 2);
        for (c, col) in oi[0].iter().enumerate() {
            let firsts: Vec<i64> = col
                .page_locations()
                .iter()
                .map(|p| p.first_row_index)
                .collect();
            assert_eq!(firsts, want, "column {c}");
        }
    }

    #[test]
    fn page_calls_start_or_end_on_page_boundaries() {
        let calls: Vec<(usize, usize)> = page_calls(5, 30, 8).collect();
        assert_eq!(calls, vec![(0, 3), (3, 27)]);
        let calls: Vec<(usize, usize)> = page_calls(16, 5, 8).collect();
        assert_eq!(calls, vec![(0, 5)]);
        let calls: Vec<(usize, usize)> = page_calls(7, 1, 8).collect();
        assert_eq!(calls, vec![(0, 1)]);
        assert_eq!(page_calls(3, 0, 8).count(), 0);
    }
}
