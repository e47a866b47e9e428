//! `pocaduck_optimize`: rewrite fragmented labels so each is one contiguous row range.
//!
//! A label written by several workers, or by several buffer flushes of one worker, is spread over
//! many row ranges in many parts; a query then opens each part and decodes a page or more per
//! range. Optimize copies such labels, in label order and within a label in index order (block,
//! then worker), into new parts under `optimized/`, and publishes a new index generation whose
//! entries point there.
//!
//! - Block ids, workers and commit numbers are kept: each old entry becomes one new entry (adjacent
//!   entries of the same (label, block, worker) are merged), so supersession by a later commit of
//!   the same worker works exactly as before, and `pocaduck_blocks` is unchanged.
//! - Incremental: a label already stored as one contiguous range of one part is left where it is;
//!   a second run with nothing new rewrites nothing and publishes nothing.
//! - Bounded memory: a label is copied in chunks of at most `chunk_rows` rows (split between
//!   entries; an entry is never split), whatever the label's size.
//! - Safe to interrupt: new parts are complete before the new generation is published with
//!   put-if-absent; until then readers use the previous generation. An interrupted run leaves only
//!   unreferenced files under `optimized/`. If a consolidate publishes first, optimize deletes its
//!   new parts and fails with a conflict error, changing nothing.
//! - Old parts are not deleted (readers may hold older generations); see `pocaduck_stats`'
//!   `unreferenced_bytes`.

use object_store::path::Path;
use parquet::arrow::async_writer::{AsyncArrowWriter, ParquetObjectWriter};

use crate::consolidate::{latest_index, load_generation, publish};
use crate::error::{Error, Result};
use crate::index::{IndexCodec, SegmentEntry, UnifiedEntry, UnifiedIndex};
use crate::layout;
use crate::reader::LoadedIndex;
use crate::storage::{block_on, Store};
use crate::writer::{new_session_id, part_props};

/// Settings of one optimize run.
#[derive(Clone, Debug)]
pub struct OptimizeOptions {
    /// A new part is started once the current one reaches this many bytes (checked between
    /// chunks).
    pub target_file_size: u64,
    /// Most rows copied at once.
    pub chunk_rows: u64,
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        OptimizeOptions {
            target_file_size: crate::writer::WriterOptions::default().target_file_size,
            chunk_rows: 1 << 20,
        }
    }
}

/// What optimize did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptimizeSummary {
    /// Generation now current (unchanged when nothing was rewritten).
    pub generation: u64,
    /// Labels in the index.
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
        let (a, b) = (&w[0].e, &w[1].e);
        if a.part == b.part {
            a.row_start + a.row_count == b.row_start
        } else {
            optimized(&a.part) && optimized(&b.part) && a.part < b.part && b.row_start == 0
        }
    })
}

/// Start offsets of each label's entries in `entries` (sorted by label), plus the end.
pub(crate) fn label_bounds(entries: &[UnifiedEntry]) -> Vec<usize> {
    let mut b: Vec<usize> = Vec::new();
    for (i, u) in entries.iter().enumerate() {
        if i == 0 || entries[i - 1].e.label != u.e.label {
            b.push(i);
        }
    }
    b.push(entries.len());
    b
}

struct OutPart {
    path: Path,
    writer: AsyncArrowWriter<ParquetObjectWriter>,
    rows: u64,
}

struct Output<'a> {
    store: &'a Store,
    session: String,
    schema: arrow::datatypes::SchemaRef,
    part: Option<OutPart>,
    done: Vec<Path>,
}

impl Output<'_> {
    fn open(&mut self) -> Result<&mut OutPart> {
        if self.part.is_none() {
            let path = layout::optimized_part(&self.session, self.done.len() as u32);
            let obj = ParquetObjectWriter::new(self.store.os.clone(), path.clone());
            let writer =
                AsyncArrowWriter::try_new(obj, self.schema.clone(), Some(part_props(&self.schema)))
                    .map_err(|e| Error::file(&self.store.name, path.as_ref(), e))?;
            self.part = Some(OutPart {
                path,
                writer,
                rows: 0,
            });
        }
        self.part
            .as_mut()
            .ok_or_else(|| Error::Internal("no part".into()))
    }

    fn close(&mut self) -> Result<()> {
        if let Some(p) = self.part.take() {
            block_on(p.writer.close())
                .map_err(|e| Error::file(&self.store.name, p.path.as_ref(), e))?;
            self.done.push(p.path);
        }
        Ok(())
    }

    fn discard(&mut self) {
        drop(self.part.take());
        for p in self.done.drain(..) {
            let _ = self.store.delete(&p);
        }
    }
}

/// Optimizes the current index generation of `store`.
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
    let Some((gen, meta)) = latest_index(store)? else {
        return Err(Error::store(
            &store.name,
            format!(
                "has no unified index to optimize: run pocaduck_consolidate('{}') first",
                store.name
            ),
        ));
    };
    let mut u = load_generation(store, gen, codec)?;
    u.sort();
    let bounds = label_bounds(&u.entries);
    let fragmented: Vec<(usize, usize)> = bounds
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|&(a, b)| !is_contiguous(&u.entries[a..b]))
        .collect();
    let mut summary = OptimizeSummary {
        generation: gen,
        labels: (bounds.len() - 1) as u64,
        entries_before: u.entries.len() as u64,
        entries_after: u.entries.len() as u64,
        ..Default::default()
    };
    if fragmented.is_empty() {
        return Ok(summary);
    }
    let stamp = crate::storage::object_stamp(&meta);
    let reader = LoadedIndex::from_unified(store.clone(), gen, stamp, u.clone());
    let mut out = Output {
        store,
        session: new_session_id(),
        schema: u.schema.arrow(),
        part: None,
        done: Vec::new(),
    };
    let res = rewrite(&u, &reader, &fragmented, &mut out, opts, &mut summary);
    let new_entries = match res {
        Ok(e) => e,
        Err(e) => {
            out.discard();
            return Err(e);
        }
    };
    let next = UnifiedIndex {
        generation: gen + 1,
        schema: u.schema.clone(),
        workers: u.workers.clone(),
        entries: new_entries,
    };
    let published = store
        .sync(&out.done)
        .and_then(|_| publish(store, &next, codec));
    if let Err(e) = published {
        out.discard();
        return Err(e);
    }
    summary.generation = next.generation;
    summary.entries_after = next.entries.len() as u64;
    summary.files_written = out.done.len() as u64;
    Ok(summary)
}

/// Copies the `fragmented` labels (entry ranges of `u`) into `out`; returns every entry of the new
/// generation, sorted.
fn rewrite(
    u: &UnifiedIndex,
    reader: &LoadedIndex,
    fragmented: &[(usize, usize)],
    out: &mut Output,
    opts: &OptimizeOptions,
    summary: &mut OptimizeSummary,
) -> Result<Vec<UnifiedEntry>> {
    let ncols = u.schema.columns.len() + 1;
    let cols: Vec<usize> = (0..ncols).collect();
    let mut entries: Vec<UnifiedEntry> = Vec::with_capacity(u.entries.len());
    let mut next_frag = fragmented.iter().peekable();
    let mut i = 0;
    while i < u.entries.len() {
        let Some(&&(a, b)) = next_frag.peek().filter(|f| f.0 == i) else {
            // A contiguous label (or the rest of one): kept as it is.
            let end = next_frag.peek().map(|f| f.0).unwrap_or(u.entries.len());
            entries.extend_from_slice(&u.entries[i..end]);
            i = end;
            continue;
        };
        next_frag.next();
        summary.labels_rewritten += 1;
        let mut c = a;
        while c < b {
            // A chunk: whole entries, at most chunk_rows rows (at least one entry).
            let mut end = c + 1;
            let mut rows = u.entries[c].e.row_count;
            while end < b && rows + u.entries[end].e.row_count <= opts.chunk_rows {
                rows += u.entries[end].e.row_count;
                end += 1;
            }
            let batch = reader.read_entries(c..end, &cols)?;
            if batch.num_rows() as u64 != rows {
                return Err(Error::Internal(format!(
                    "optimize read {} rows for label {}, the index says {rows}",
                    batch.num_rows(),
                    u.entries[c].e.label
                )));
            }
            let store_name = out.store.name.clone();
            let part = out.open()?;
            let base = part.rows;
            let part_name = part.path.to_string();
            block_on(part.writer.write(&batch))
                .map_err(|e| Error::file(&store_name, &part_name, e))?;
            part.rows += rows;
            let full = (part.writer.bytes_written() + part.writer.in_progress_size()) as u64
                >= opts.target_file_size;
            let mut off = base;
            for old in &u.entries[c..end] {
                let e = SegmentEntry {
                    part: part_name.clone(),
                    row_start: off,
                    ..old.e.clone()
                };
                off += old.e.row_count;
                let merged = entries.last_mut().is_some_and(|l| {
                    l.worker == old.worker && l.commit == old.commit && l.e.absorb(&e)
                });
                if !merged {
                    entries.push(UnifiedEntry {
                        worker: old.worker,
                        commit: old.commit,
                        e,
                    });
                }
            }
            summary.points_rewritten += rows;
            if full {
                out.close()?;
            }
            c = end;
        }
        i = b;
    }
    out.close()?;
    let mut next = UnifiedIndex {
        generation: 0,
        schema: u.schema.clone(),
        workers: vec![],
        entries,
    };
    next.sort();
    Ok(next.entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consolidate::consolidate;
    use crate::consolidate::tests::{write, JsonCodec};
    use crate::index::BlockId;
    use crate::storage::OpenMode;
    use crate::writer::tests::rows;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int32Type;
    use std::collections::BTreeMap;

    type Points = BTreeMap<u64, Vec<(String, i32, i32, i32)>>;

    /// Every label's points as sorted (block, x, y, z), read through the index.
    fn read_all(name: &str) -> Points {
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        let labels: Vec<u64> = idx.label_stats().iter().map(|s| s.0).collect();
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
        }
    }

    fn contiguous_labels(name: &str) -> (usize, usize) {
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let g = crate::consolidate::latest_generation(&store).unwrap();
        let u = load_generation(&store, g, &JsonCodec).unwrap();
        let b = label_bounds(&u.entries);
        let n = b.len() - 1;
        let ok = b
            .windows(2)
            .filter(|w| is_contiguous(&u.entries[w[0]..w[1]]))
            .count();
        (ok, n)
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
            (1..6).map(|l| idx.blocks(l)).collect()
        };
        let (ok, n) = contiguous_labels(name);
        assert!(ok < n, "the test needs fragmented labels: {ok} of {n}");

        let s = optimize(&store, &JsonCodec, &small()).unwrap();
        assert_eq!(s.generation, 2);
        assert_eq!(s.labels, 5);
        // Label 2 (one commit) is left alone; labels 1, 3, 4, 5 span workers or commits.
        assert_eq!(s.labels_rewritten, 4);
        assert!(s.files_written > 1, "{s:?}");
        assert!(s.entries_after <= s.entries_before, "{s:?}");
        assert_eq!(read_all(name), expect);
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        let blocks_after: Vec<_> = (1..6).map(|l| idx.blocks(l)).collect();
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

    /// A codec that lets a "concurrent consolidate" publish the next generation right after
    /// optimize has read the current one.
    struct RacingCodec(std::path::PathBuf);
    impl IndexCodec for RacingCodec {
        fn write(&self, index: &UnifiedIndex, path: &std::path::Path) -> Result<()> {
            JsonCodec.write(index, path)
        }
        fn read(&self, path: &std::path::Path) -> Result<UnifiedIndex> {
            let u = JsonCodec.read(path)?;
            let next = self
                .0
                .join(format!("index/{:010}.duckdb", u.generation + 1));
            std::fs::copy(path, next).unwrap();
            Ok(u)
        }
    }

    #[test]
    fn losing_the_publish_race_leaves_no_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(name, "w1", &[rows(&[1; 3], "b0", &pts(1, 0, 3, 0))]);
        write(name, "w2", &[rows(&[1; 3], "b1", &pts(1, 1, 3, 0))]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let racing = RacingCodec(dir.path().to_path_buf());
        let e = optimize(&store, &racing, &small()).unwrap_err().to_string();
        assert!(
            e.contains("another consolidate or optimize published generation 2 first"),
            "{e}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path().join("optimized"))
            .map(|d| d.map(|f| f.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
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
        let _ = Array::len(&arrow::array::Int32Array::from(vec![1]));
    }
}
